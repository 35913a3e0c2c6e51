"""Generator checkpoints: weights + everything needed to use them (config, families, transform,
the split it was trained on, versions), written atomically."""
from __future__ import annotations

import copy
import platform
from pathlib import Path

import torch

from pathgen.data.families import GeneFamilies
from pathgen.data.transforms import ExpressionTransform
from pathgen.models.generator.config import GeneratorConfig
from pathgen.models.generator.model import PathGenDenoiser
from pathgen.utils.io import atomic_path
from pathgen.utils.versions import warn_if_other_pathgen


class EMA:
    """Exponential moving average of a model's parameters (and buffers), for sampling."""

    def __init__(self, model: torch.nn.Module, decay: float = 0.995):
        self.decay = decay
        self.steps = 0
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        # warm-up (as in diffusers' EMAModel): early averages do not drag the initial weights along
        self.steps += 1
        decay = min(self.decay, (1 + self.steps) / (10 + self.steps))
        for e, p in zip(self.model.parameters(), model.parameters()):
            e.lerp_(p.detach(), 1.0 - decay)
        for e, b in zip(self.model.buffers(), model.buffers()):
            e.copy_(b)


def versions() -> dict:
    import pathgen

    return {"pathgen": pathgen.__version__, "torch": torch.__version__, "python": platform.python_version()}


def save_checkpoint(path: Path, *, model_state: dict, config: GeneratorConfig, families: GeneFamilies,
                    transform: ExpressionTransform, extra: dict | None = None) -> None:
    payload = {
        "kind": "pathgen.generator",
        "config": config.to_dict(),
        "families": families.to_dict(),
        "transform": transform.state_dict(),
        "model": model_state,
        "versions": versions(),
        **(extra or {}),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def train_case_ids(ckpt: dict) -> list[str] | None:
    """The patients whose real expression trained this generator (sorted), or None if not recorded:
    written beside synthesized tables so ``pathgen evaluate`` can check they are held out."""
    ids = ckpt.get("train_case_ids")
    return sorted(set(ids)) if ids is not None else None


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Read a generator checkpoint (``generator.pt`` or ``last.pt``) and check it.

    Raises:
        FileNotFoundError / IsADirectoryError: nothing, or a folder, at ``path``.
        ValueError: unreadable (truncated, corrupted, not a PyTorch file), another kind of checkpoint,
            or a config this pathgen cannot build (unknown fields: written by a newer pathgen); the
            message names the file and the fix.
    Warns (``UserWarning``) when it was written by another pathgen major.minor version.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no generator checkpoint here (train one with `pathgen train-generator`)")
    if path.is_dir():
        raise IsADirectoryError(f"{path}: a folder, not a generator checkpoint; pass the generator.pt inside a "
                                "`pathgen train-generator` run folder")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # truncated zip, text, pickle garbage: torch raises many types
        raise ValueError(f"{path}: cannot read this generator checkpoint ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:200] if str(e) else ''}); it is truncated, corrupted or not a "
                         "PyTorch file: copy it again from where it was trained, or re-train it with "
                         "`pathgen train-generator`") from e
    if not isinstance(ckpt, dict) or ckpt.get("kind") != "pathgen.generator":
        kind = ckpt.get("kind") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"{path}: not a pathgen generator checkpoint (kind {kind!r}, expected 'pathgen.generator'); "
                         "pass a `pathgen train-generator` run's generator.pt")
    import pathgen

    saved = (ckpt.get("versions") or {}).get("pathgen")
    warn_if_other_pathgen(path, saved, "it may load or behave differently: re-train it with this version, or "
                          "install pathgen {series}.x to use it as it was")
    try:
        GeneratorConfig.from_dict(ckpt["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: its generator config cannot be built by pathgen {pathgen.__version__} "
                         f"(written by pathgen {saved}): {e}") from e
    return ckpt


def model_from_checkpoint(ckpt: dict, device="cpu") -> tuple[PathGenDenoiser, GeneFamilies, ExpressionTransform]:
    cfg = GeneratorConfig.from_dict(ckpt["config"])
    model = PathGenDenoiser(cfg)
    model.load_state_dict(ckpt["model"])
    model.to(device).eval()
    return model, GeneFamilies.from_dict(ckpt["families"]), ExpressionTransform.from_state_dict(ckpt["transform"])
