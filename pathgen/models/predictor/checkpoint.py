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
from pathgen.utils.versions import warn_if_other_pathgen

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
    """Read a predictor checkpoint written by ``save_predictor``.

    Unreadable files (truncated, not a torch file, a folder) and other checkpoints raise a
    ``ValueError`` naming the file and the fix; a checkpoint written by another pathgen
    major.minor warns. The returned dict carries its file under ``"_source"`` (for later errors).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no predictor checkpoint here (train one with `pathgen train-predictor`)")
    if path.is_dir():
        raise ValueError(f"{path}: is a folder, not a predictor checkpoint; pass the file inside it, e.g. "
                         f"{path / 'fold_0' / 'predictor.pt'} or {path / 'predictor.pt'}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # truncated zip, pickle garbage, text file, ...: all mean "not readable"
        raise ValueError(f"{path}: cannot be read as a predictor checkpoint ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:200] if str(exc) else ''}); the file is truncated or not a "
                         "torch checkpoint: point to a fold's predictor.pt of a finished run, or delete that fold_<k> "
                         "folder and re-run `pathgen train-predictor ... --out RUN` (it retrains only missing folds)"
                         ) from exc
    if not isinstance(ckpt, dict) or ckpt.get("kind") != KIND:
        kind = ckpt.get("kind") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"{path}: not a pathgen predictor checkpoint (kind {kind!r}, expected {KIND!r}); pass a "
                         "fold's predictor.pt of a `pathgen train-predictor` run folder")
    check_versions(ckpt.get("versions") or {}, path)
    ckpt["_source"] = str(path)
    return ckpt


def check_versions(stored: dict, path: str | Path) -> bool:
    """Warn when the checkpoint's pathgen major.minor differs from the running one; True if they match."""
    return warn_if_other_pathgen(path, stored.get("pathgen"), "the model or its data transforms may have changed "
                                 "since: install pathgen {series}.x to reproduce it, or retrain with this version "
                                 "(`pathgen train-predictor`)", stacklevel=4)


def predictor_from_checkpoint(ckpt: dict, device="cpu") -> tuple[nn.Module, PredictorConfig, dict]:
    """Rebuild the model (eval mode) and its data objects.

    Returns:
        ``(model, config, {"families", "transform", "bins", "grade_categories"})``.
    """
    source = ckpt.get("_source", "predictor checkpoint")
    cfg = PredictorConfig.from_dict(ckpt["config"], source=source)
    model = build_predictor(cfg)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        saved = (ckpt.get("versions") or {}).get("pathgen", "unknown")
        raise ValueError(f"{source}: its weights do not fit the model its config describes (written by pathgen "
                         f"{saved}): {str(exc).splitlines()[0]} ...; the file was altered or comes from another "
                         "pathgen version: retrain it with `pathgen train-predictor`") from exc
    model.to(device).eval()
    fam = GeneFamilies.from_dict(ckpt["families"]) if ckpt.get("families") else None
    tr = ExpressionTransform.from_state_dict(ckpt["transform"]) if ckpt.get("transform") else None
    return model, cfg, {"families": fam, "transform": tr, "bins": SurvivalBins.from_dict(ckpt["survival_bins"]),
                        "grade_categories": list(ckpt.get("grade_categories", []))}
