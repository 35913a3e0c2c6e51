"""Per-patient co-attention files: reading, block combination, splitting by slide.

Layout (written by ``pathgen synthesize --save-attention``, and by :func:`write_attention_h5` for the
predictor's maps): ``<dir>/<case_id>.h5`` with

- ``attention`` [n_blocks, n, F] float: probabilities over the patient's n patches, one column per
  gene family (each block's column f sums to 1 over the patches); [n, F] is read as one block;
- ``coords`` [n, 2] int64: level-0 top-left (x, y) of each patch, copied from the feature files;
- ``slide_index`` [n] int64: which of the patient's slides each patch is on;
- attrs ``slide_ids`` (JSON list) and ``families`` (JSON list of family names).
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Iterator

import numpy as np

from pathgen.utils.io import atomic_path


@dataclasses.dataclass
class AttentionMaps:
    """One patient's co-attention maps.

    Attributes:
        case_id: the patient (file stem).
        attention: [n_blocks, n, F] probabilities over patches per family.
        coords: [n, 2] int64 level-0 top-left (x, y).
        slide_index: [n] int64 index into ``slide_ids``.
        slide_ids: the patient's slides.
        families: family names, one per column of ``attention``.
        source: the file read.
    """

    case_id: str
    attention: np.ndarray  # [n_blocks, n, F]
    coords: np.ndarray  # [n, 2]
    slide_index: np.ndarray  # [n]
    slide_ids: list[str]
    families: list[str]
    source: Path | None = None

    def combined(self, block: str | int = "mean") -> np.ndarray:  # -> [n, F]
        """Blocks combined: ``mean`` over blocks, ``last`` block, or a block index."""
        a = self.attention
        if block == "mean":
            return a.mean(axis=0)
        if block == "last":
            return a[-1]
        try:
            i = int(block)
        except (TypeError, ValueError):
            raise ValueError(f"block must be 'mean', 'last' or an integer, not {block!r}") from None
        if not -a.shape[0] <= i < a.shape[0]:
            raise ValueError(f"{self.source or self.case_id}: block {i} out of range (file has {a.shape[0]} blocks)")
        return a[i]

    def slide_rows(self, slide: int) -> np.ndarray:
        """Row indices of the patches on slide number ``slide``."""
        return np.flatnonzero(self.slide_index == slide)


def read_attention_h5(path: str | os.PathLike) -> AttentionMaps:
    """Read one patient's attention file (layout in the module docstring).

    Raises:
        ValueError: missing datasets or inconsistent shapes, naming the file.
    """
    import h5py

    path = Path(path)
    with h5py.File(path, "r") as f:
        for name in ("attention", "coords"):
            if name not in f:
                raise ValueError(f"{path}: no {name!r} dataset (found {list(f)}); write attention maps with "
                                 "`pathgen synthesize --save-attention`")
        att = np.asarray(f["attention"][()], dtype=np.float64)
        coords = np.asarray(f["coords"][()], dtype=np.int64)
        sidx = np.asarray(f["slide_index"][()], dtype=np.int64) if "slide_index" in f else \
            np.zeros(len(coords), dtype=np.int64)
        slide_ids = json.loads(f.attrs["slide_ids"]) if "slide_ids" in f.attrs else [path.stem]
        families = json.loads(f.attrs["families"]) if "families" in f.attrs else None
    if att.ndim == 2:
        att = att[None]
    if att.ndim != 3 or att.shape[1] != len(coords) or coords.ndim != 2 or coords.shape[1] != 2:
        raise ValueError(f"{path}: attention must be [n_blocks, n, F] and coords [n, 2] with the same n, got "
                         f"{att.shape} and {coords.shape}")
    if sidx.shape != (len(coords),) or (len(sidx) and (sidx.min() < 0 or sidx.max() >= len(slide_ids))):
        raise ValueError(f"{path}: slide_index must be [n] with values in [0, {len(slide_ids)}), got shape "
                         f"{sidx.shape}")
    families = list(families) if families is not None else [f"family_{i}" for i in range(att.shape[2])]
    if len(families) != att.shape[2]:
        raise ValueError(f"{path}: {len(families)} family names for {att.shape[2]} attention columns")
    return AttentionMaps(path.stem, att, coords, sidx, [str(s) for s in slide_ids], families, path)


def write_attention_h5(path: str | os.PathLike, maps: AttentionMaps) -> Path:
    """Write ``maps`` in the layout above, atomically (used for the predictor's co-attention)."""
    import h5py

    path = Path(path)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("attention", data=np.asarray(maps.attention, dtype=np.float32))
        f.create_dataset("coords", data=np.asarray(maps.coords, dtype=np.int64))
        f.create_dataset("slide_index", data=np.asarray(maps.slide_index, dtype=np.int64))
        f.attrs["slide_ids"] = json.dumps(list(maps.slide_ids))
        f.attrs["families"] = json.dumps(list(maps.families))
    return path


def attention_files(source: str | os.PathLike) -> list[Path]:
    """The ``.h5`` files of a folder (sorted), or the one file given.

    Raises:
        FileNotFoundError: nothing there, with the command that writes such files.
    """
    p = Path(source)
    if p.is_file():
        return [p]
    # dot files are other writers' temp files (utils.io.atomic_path), not finished attention files
    files = sorted(f for f in p.glob("*.h5") if not f.name.startswith(".")) if p.is_dir() else []
    if not files:
        raise FileNotFoundError(f"{p}: no attention .h5 files; write them with `pathgen synthesize ... "
                                "--save-attention` (they land in <out>/attention/)")
    return files


def iter_attention(source: str | os.PathLike) -> Iterator[AttentionMaps]:
    for path in attention_files(source):
        yield read_attention_h5(path)
