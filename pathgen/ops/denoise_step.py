"""``denoise_step``: one fused DDPM/DDIM reverse step over a batch of expression vectors."""
from __future__ import annotations

import torch

from pathgen._extension import HAS_OPS, has_kernel
from pathgen.ops.reference import denoise_step_ref

__all__ = ["denoise_step"]

_MODES = ("ddpm", "ddim")
_PREDICTIONS = ("epsilon", "sample", "v_prediction")
_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _check(x_t, model_output, t, t_prev, alphas_cumprod, mode, eta, prediction, noise, clip,
           guidance_scale, model_output_uncond, out) -> None:
    for name, v in (("x_t", x_t), ("model_output", model_output), ("t", t), ("t_prev", t_prev),
                    ("alphas_cumprod", alphas_cumprod)):
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"denoise_step: {name} must be a torch.Tensor, got {type(v).__name__}")
    if mode not in _MODES:
        raise ValueError(f"denoise_step: mode must be one of {_MODES}, got {mode!r}")
    if prediction not in _PREDICTIONS:
        raise ValueError(f"denoise_step: prediction must be one of {_PREDICTIONS}, got {prediction!r}")
    if not 0.0 <= float(eta) <= 1.0:
        raise ValueError(f"denoise_step: eta must lie in [0, 1], got {eta}")
    if x_t.dim() != 2:
        raise ValueError(f"denoise_step: x_t must be [B, G], got shape {tuple(x_t.shape)}")
    if x_t.dtype not in _DTYPES:
        raise ValueError(f"denoise_step: x_t dtype must be float32/float16/bfloat16/float64, got {x_t.dtype}")
    named = [("model_output", model_output), ("noise", noise), ("model_output_uncond", model_output_uncond),
             ("out", out)]
    for name, v in named:
        if v is None:
            continue
        if v.shape != x_t.shape:
            raise ValueError(f"denoise_step: {name} shape {tuple(v.shape)} != x_t shape {tuple(x_t.shape)}")
        if v.dtype != x_t.dtype:
            raise ValueError(f"denoise_step: {name} dtype {v.dtype} != x_t dtype {x_t.dtype}")
        if v.device != x_t.device:
            raise ValueError(f"denoise_step: {name} is on {v.device}, x_t on {x_t.device}")
    B = x_t.shape[0]
    for name, v in (("t", t), ("t_prev", t_prev)):
        if v.dim() != 1 or v.shape[0] != B:
            raise ValueError(f"denoise_step: {name} must be [B] = [{B}], got shape {tuple(v.shape)}")
        if v.dtype.is_floating_point or v.dtype == torch.bool:
            raise ValueError(f"denoise_step: {name} must be an integer tensor, got {v.dtype}")
    if alphas_cumprod.dim() != 1 or not alphas_cumprod.dtype.is_floating_point:
        raise ValueError("denoise_step: alphas_cumprod must be a 1-D floating tensor [T]")
    if (model_output_uncond is None) != (guidance_scale is None):
        raise ValueError("denoise_step: classifier-free guidance needs both guidance_scale and model_output_uncond")
    if clip is not None:
        if len(clip) != 2 or not clip[0] <= clip[1]:
            raise ValueError(f"denoise_step: clip must be a (min, max) pair with min <= max, got {clip}")
    if not torch.compiler.is_compiling():  # value checks (one small sync on GPU)
        T = alphas_cumprod.shape[0]
        if B and (int(t.min()) < 0 or int(t.max()) >= T):
            raise ValueError(f"denoise_step: t must lie in [0, {T}), got range [{int(t.min())}, {int(t.max())}]")
        if B and bool(((t_prev < -1) | (t_prev >= t.to(t_prev.device))).any()):
            raise ValueError("denoise_step: every t_prev must lie in [-1, t) (use -1 for the final step)")


def _stochastic(mode: str, eta: float, t_prev: torch.Tensor) -> bool:
    if mode == "ddim" and float(eta) == 0.0:
        return False
    if torch.compiler.is_compiling():
        return True
    return bool((t_prev >= 0).any())


def denoise_step(
    x_t: torch.Tensor,  # [B, G] noisy sample at step t
    model_output: torch.Tensor,  # [B, G] denoiser output (conditional branch under guidance)
    t: torch.Tensor,  # [B] int timesteps
    t_prev: torch.Tensor,  # [B] int previous timesteps, -1 = final step (alpha_prev = 1)
    alphas_cumprod: torch.Tensor,  # [T] cumulative product of (1 - beta)
    *,
    mode: str = "ddim",
    eta: float = 0.0,
    prediction: str = "epsilon",
    noise: torch.Tensor | None = None,  # [B, G]
    clip: tuple[float, float] | None = None,
    guidance_scale: float | None = None,
    model_output_uncond: torch.Tensor | None = None,  # [B, G]
    out: torch.Tensor | None = None,  # [B, G]
    generator: torch.Generator | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """One reverse diffusion step x_t -> x_{t_prev} in a single pass over memory.

    Args:
        x_t: [B, G] current sample (float32/float16/bfloat16 storage; math in float32).
        model_output: [B, G] prediction of the denoiser: epsilon, x0 ("sample") or v.
        t, t_prev: [B] per-sample integer timesteps; ``t_prev = -1`` is the last step.
        alphas_cumprod: [T] the schedule (``pathgen.diffusion.NoiseSchedule``).
        mode: "ddim" (eta in [0, 1]) or "ddpm" (posterior with its standard deviation; eta ignored).
        noise: [B, G] standard normal noise for stochastic steps; drawn when None.
        clip: (min, max) clamp of the predicted x0 (eps is re-derived from the clamped x0).
        guidance_scale, model_output_uncond: classifier-free guidance m = m_u + w (m_c - m_u).
        out: [B, G] preallocated output (may be ``x_t`` itself for an in-place update).
        generator: RNG used when noise must be drawn.
        backend: "auto" (fused kernel when compiled for this device, else the twin), "fused", "reference".

    Returns:
        [B, G] x_{t_prev}, in ``x_t.dtype`` (``out`` when given).
    """
    _check(x_t, model_output, t, t_prev, alphas_cumprod, mode, eta, prediction, noise, clip,
           guidance_scale, model_output_uncond, out)
    if noise is None and _stochastic(mode, eta, t_prev):
        noise = torch.randn(x_t.shape, generator=generator, device=x_t.device, dtype=x_t.dtype)
    use_fused = backend == "fused" or (backend == "auto" and has_kernel("denoise_step", x_t.device))
    if backend not in ("auto", "fused", "reference"):
        raise ValueError(f"denoise_step: backend must be auto|fused|reference, got {backend!r}")
    if backend == "fused" and not has_kernel("denoise_step", x_t.device):
        raise RuntimeError(f"denoise_step: no fused kernel for device {x_t.device} (pathgen._C: "
                           f"{'loaded' if HAS_OPS else 'not loaded'}); use backend='auto' or 'reference'")
    if not use_fused:
        return denoise_step_ref(x_t, model_output, t, t_prev, alphas_cumprod, mode=mode, eta=eta,
                                prediction=prediction, noise=noise, clip=clip, guidance_scale=guidance_scale,
                                model_output_uncond=model_output_uncond, out=out)
    lo, hi = (None, None) if clip is None else (float(clip[0]), float(clip[1]))
    w = None if guidance_scale is None else float(guidance_scale)
    if out is not None:
        torch.ops.pathgen.denoise_step_out(x_t, model_output, t, t_prev, alphas_cumprod, mode, float(eta),
                                           prediction, noise, lo, hi, w, model_output_uncond, out)
        return out
    return torch.ops.pathgen.denoise_step(x_t, model_output, t, t_prev, alphas_cumprod, mode, float(eta),
                                          prediction, noise, lo, hi, w, model_output_uncond)


if HAS_OPS:

    @torch.library.register_fake("pathgen::denoise_step")
    def _denoise_step_fake(x_t, model_output, t, t_prev, alphas_cumprod, sampler, eta, prediction, noise,
                           clip_min, clip_max, guidance_scale, model_output_uncond):
        return torch.empty_like(x_t, memory_format=torch.contiguous_format)

    @torch.library.register_fake("pathgen::denoise_step_out")
    def _denoise_step_out_fake(x_t, model_output, t, t_prev, alphas_cumprod, sampler, eta, prediction, noise,
                               clip_min, clip_max, guidance_scale, model_output_uncond, out):
        return None
