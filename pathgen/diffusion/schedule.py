"""Noise schedules (DDPM's linear betas, cosine) and sampling timetables."""
from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import torch


@dataclasses.dataclass(frozen=True)
class ScheduleConfig:
    """Forward-process configuration, serialised with every checkpoint.

    PathGen's published setting is T = 1000 with linear betas 1e-4 -> 0.02.
    """

    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"  # "linear" | "cosine"
    beta_start: float = 1e-4
    beta_end: float = 0.02

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: dict) -> "ScheduleConfig":
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})


class NoiseSchedule:
    """``alphas_cumprod`` [T] (float32) and the forward noising q(x_t | x_0)."""

    def __init__(self, config: ScheduleConfig = ScheduleConfig()):
        self.config = config
        T = config.num_train_timesteps
        if config.beta_schedule == "linear":
            betas = torch.linspace(config.beta_start, config.beta_end, T, dtype=torch.float64)
        elif config.beta_schedule == "cosine":  # Nichol & Dhariwal 2021, eq. 17
            s = 0.008
            steps = torch.arange(T + 1, dtype=torch.float64) / T
            f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
            betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
        else:
            raise ValueError(f"unknown beta_schedule {config.beta_schedule!r}; use 'linear' or 'cosine'")
        self.betas = betas.float()  # [T]
        self.alphas_cumprod = torch.cumprod(1 - betas, 0).float()  # [T]

    @property
    def num_train_timesteps(self) -> int:
        return self.config.num_train_timesteps

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps  (DDPM eq. 4), per-sample t [B]."""
        a = self.alphas_cumprod.to(x0.device)[t].to(x0.dtype)
        a = a.view(-1, *([1] * (x0.dim() - 1)))
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def velocity(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """v = sqrt(a_t) eps - sqrt(1 - a_t) x0 (Salimans & Ho 2022)."""
        a = self.alphas_cumprod.to(x0.device)[t].to(x0.dtype)
        a = a.view(-1, *([1] * (x0.dim() - 1)))
        return a.sqrt() * noise - (1 - a).sqrt() * x0


def ddim_timesteps(num_train_timesteps: int, num_steps: int) -> list[int]:
    """Evenly spaced descending timesteps starting at T - 1 ("trailing" spacing, Lin et al. 2024,
    diffusers' ``timestep_spacing="trailing"``); the sampler's last step goes to t = -1 (x0).

    The "leading" spacing ``range(0, steps * (T // steps), T // steps)`` starts at ``steps - 1`` for any
    ``steps`` above T / 2 (and well below T - 1 when steps does not divide T): the sampler would then
    start from pure noise at a t whose x_t still holds sqrt(abar_t) x0 of signal, biasing every sample.
    """
    if not 1 <= num_steps <= num_train_timesteps:
        raise ValueError(f"num_steps must lie in [1, {num_train_timesteps}], got {num_steps}")
    T = num_train_timesteps
    return [int(t) for t in np.round(np.arange(T, 0, -T / num_steps)).astype(np.int64) - 1]
