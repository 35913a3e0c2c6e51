"""Patch grids by physical resolution (µm/px), not by pyramid level.

``plan_patches`` picks the coarsest pyramid level that is still at least as fine as the target
resolution and the size to read there; the loader resizes the read region to ``patch_size``
("residual resize"). Example: a 40x slide (0.25 µm/px) with a 4x level (1.0 µm/px):

* target 1.0 µm/px, 256 px -> level 1, read 256 px, no resize;
* target 0.5 µm/px, 256 px -> level 0, read 512 px, 2x downscale.
"""
from __future__ import annotations

import csv
import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pathgen.slides.errors import MissingMPPError


@dataclass(frozen=True)
class PatchPlan:
    """How to cut a slide into patches at a target resolution.

    Attributes:
        target_mpp: requested µm/px of the patches.
        mpp: level-0 µm/px of the slide.
        patch_size: output patch side in pixels (at ``target_mpp``).
        level: pyramid level read (CLAM's ``patch_level``).
        level_downsample: that level's downsample.
        read_size: side read at ``level`` (CLAM's ``patch_size``); resized to ``patch_size``.
        patch_size_level0: side covered in level-0 pixels (TRIDENT's ``patch_size_level0``).
        step_level0: grid step in level-0 pixels.
        overlap: overlap between neighbours in output pixels (TRIDENT's ``overlap``).
    """

    target_mpp: float
    mpp: float
    patch_size: int
    level: int
    level_downsample: float
    read_size: int
    patch_size_level0: int
    step_level0: int
    overlap: int = 0

    @property
    def resize(self) -> bool:
        """True when the region read must be resized to ``patch_size``."""
        return self.read_size != self.patch_size

    @property
    def effective_mpp(self) -> float:
        """µm/px of the output patches after rounding to whole pixels."""
        return self.mpp * self.patch_size_level0 / self.patch_size

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "resize": self.resize, "effective_mpp": self.effective_mpp}


def magnification_from_mpp(mpp: float) -> float:
    """The usual objective magnification for a resolution (0.25 µm/px -> 40x, 0.5 -> 20x)."""
    return 10.0 / mpp


def plan_patches(level_downsamples, mpp: float | None, target_mpp: float = 0.5, patch_size: int = 256,
                 overlap: int = 0, level_tolerance: float = 0.01, resize_tolerance: float = 0.02,
                 path: str | os.PathLike = "slide") -> PatchPlan:
    """Choose the pyramid level and read size for patches at ``target_mpp``.

    Args:
        level_downsamples: the slide's downsample per level (level 0 first).
        mpp: level-0 µm/px (None raises ``MissingMPPError``).
        target_mpp: wanted µm/px of the patches (0.5 = 20x).
        patch_size: output patch side (e.g. 256 or 224).
        overlap: overlap between neighbouring patches, in output pixels.
        level_tolerance: a level counts as fine enough if its downsample exceeds the wanted one by
            at most this fraction (Aperio levels are "4.0002x").
        resize_tolerance: read exactly ``patch_size`` (no resize) when the ideal read size is within
            this fraction of it (e.g. 0.499 vs 0.5 µm/px).
        path: slide path, for the error message.

    Raises:
        MissingMPPError: ``mpp`` is None.
    """
    if mpp is None:
        raise MissingMPPError(path)
    if not (target_mpp > 0 and patch_size > 0 and 0 <= overlap < patch_size):
        raise ValueError(f"need target_mpp > 0, patch_size > 0 and 0 <= overlap < patch_size; got "
                         f"{target_mpp}, {patch_size}, {overlap}")
    want = target_mpp / mpp  # level-0 pixels per output pixel
    level = 0
    for i, ds in enumerate(level_downsamples):
        if ds <= want * (1 + level_tolerance) and ds >= level_downsamples[level]:
            level = i
    ds = float(level_downsamples[level])
    read = max(1, round(patch_size * want / ds))
    if abs(read - patch_size) <= resize_tolerance * patch_size:
        read = patch_size
    size0 = max(1, round(read * ds))
    step0 = max(1, round(size0 * (patch_size - overlap) / patch_size))
    return PatchPlan(target_mpp=float(target_mpp), mpp=float(mpp), patch_size=int(patch_size), level=level,
                     level_downsample=ds, read_size=int(read), patch_size_level0=int(size0),
                     step_level0=int(step0), overlap=int(overlap))


def grid_coords(dimensions: tuple[int, int], plan: PatchPlan) -> np.ndarray:
    """Level-0 top-left ``(x, y)`` of every whole patch on the regular grid, row-major.

    Returns:
        ``[N, 2]`` int64.
    """
    w0, h0 = dimensions
    xs = np.arange(0, w0 - plan.patch_size_level0 + 1, plan.step_level0, dtype=np.int64)
    ys = np.arange(0, h0 - plan.patch_size_level0 + 1, plan.step_level0, dtype=np.int64)
    gx, gy = np.meshgrid(xs, ys)
    return np.stack([gx.ravel(), gy.ravel()], axis=1)


def tissue_coords(dimensions: tuple[int, int], plan: PatchPlan, tissue,
                  min_tissue_fraction: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    """Grid patches whose tissue fraction reaches ``min_tissue_fraction``.

    Args:
        dimensions: level-0 ``(width, height)``.
        plan: from ``plan_patches``.
        tissue: a ``TissueMask``.
        min_tissue_fraction: keep a patch when at least this fraction of it is tissue.

    Returns:
        ``coords`` ``[N, 2]`` int64 level-0 top-left and their tissue ``fractions`` ``[N]`` float32.
    """
    coords = grid_coords(dimensions, plan)
    frac = tissue.fractions(coords, plan.patch_size_level0)
    keep = frac >= min_tissue_fraction if min_tissue_fraction > 0 else frac > 0
    return coords[keep], frac[keep]


def read_mpp_csv(path: str | os.PathLike) -> dict[str, float]:
    """Per-slide MPP overrides from a CSV with columns ``slide_id,mpp`` (TRIDENT's ``wsi,mpp`` works too).

    Slide ids may carry an extension (``a.svs``); both the name as written and the name without
    its extension (``os.path.splitext``) are keys.

    Raises:
        ValueError: a missing column or a non-positive MPP, naming the file and row.
    """
    path = Path(path)
    out: dict[str, float] = {}
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        cols = reader.fieldnames or []
        id_col = next((c for c in ("slide_id", "wsi", "slide") if c in cols), None)
        if id_col is None or "mpp" not in cols:
            raise ValueError(f"{path}: needs columns slide_id,mpp (found {', '.join(cols) or 'none'}); "
                             "fix: add a header line 'slide_id,mpp'")
        for i, row in enumerate(reader, start=2):
            try:
                mpp = float(row["mpp"])
            except (TypeError, ValueError):
                mpp = -1.0
            if not (math.isfinite(mpp) and mpp > 0):
                raise ValueError(f"{path}:{i}: mpp must be a finite positive number, got {row['mpp']!r}")
            name = os.path.basename(row[id_col].strip())
            out[name] = mpp  # ids like "TCGA-...-DX1.<uuid>" contain dots: keep the raw name too
            out.setdefault(os.path.splitext(name)[0], mpp)
    return out
