"""Predictor checkpoints: weights + everything needed to reuse them on new inputs (config, gene
families, the TRAINING expression transform, survival bins, grade categories, the fold), written
atomically. Synthesized expression is transformed with the same training transform at evaluation."""
from __future__ import annotations

import platform
from pathlib import Path

import torch
from torch import nn

from pathgen.data.families import GeneFamilies
from pathgen.data.survival import SurvivalBins
from pathgen.data.transforms import ExpressionTransform
from pathgen.models.predictor.config import PredictorConfig
from pathgen.models.predictor.factory import build_predictor
from pathgen.utils.io import atomic_path

KIND = "pathgen.predictor"


def versions() -> dict:
    import pathgen

    return {"pathgen": pathgen.__version__, "torch": torch.__version__, "python": platform.python_version()}


def save_predictor(path: str | Path, *, model_state: dict, config: PredictorConfig, families: GeneFamilies | None,
                   transform: ExpressionTransform | None, bins: SurvivalBins, grade_categories: list[str],
                   extra: dict | None = None) -> None:
    """Write a predictor checkpoint atomically (``torch.save`` of a plain dict)."""
    payload = {
        "kind": KIND,
        "config": config.to_dict(),
        "families": families.to_dict() if families is not None else None,
        "transform": transform.state_dict() if transform is not None else None,
        "survival_bins": bins.to_dict(),
        "grade_categories": list(grade_categories),
        "model": model_state,
        "versions": versions(),
        **(extra or {}),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_predictor_checkpoint(path: str | Path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no predictor checkpoint here (train one with `pathgen train-predictor`)")
    ckpt = torch.load(path, map_location=map_location, weights_only=False)
    if not isinstance(ckpt, dict) or ckpt.get("kind") != KIND:
        raise ValueError(f"{path}: not a pathgen predictor checkpoint")
    return ckpt


def predictor_from_checkpoint(ckpt: dict, device="cpu") -> tuple[nn.Module, PredictorConfig, dict]:
    """Rebuild the model (eval mode) and its data objects.

    Returns:
        ``(model, config, {"families", "transform", "bins", "grade_categories"})``.
    """
    cfg = PredictorConfig.from_dict(ckpt["config"])
    model = build_predictor(cfg)
    model.load_state_dict(ckpt["model"])
    model.to(device).eval()
    fam = GeneFamilies.from_dict(ckpt["families"]) if ckpt.get("families") else None
    tr = ExpressionTransform.from_state_dict(ckpt["transform"]) if ckpt.get("transform") else None
    return model, cfg, {"families": fam, "transform": tr, "bins": SurvivalBins.from_dict(ckpt["survival_bins"]),
                        "grade_categories": list(ckpt.get("grade_categories", []))}
