"""Patient bags: patch features + expression per family + labels, packed for the co-attention op.

``PatientBags`` is a ``torch.utils.data.Dataset`` with one item per patient. An item holds the
patient's patch features read lazily from its HDF5 files (CLAM/TRIDENT/``pathgen embed`` layout:
datasets ``features`` [N, D] float32 and ``coords`` [N, 2]; several slides are concatenated in
manifest order), the expression vector of the concatenated gene families (already transformed),
and the labels. A patient without any feature file yields an expression-only item (zero patches).

``collate_bags`` packs items flash-attention "varlen" style: ``features`` [total_n, D] with
``cu_seqlens`` int32 [B + 1] (bag b is rows ``cu_seqlens[b]:cu_seqlens[b+1]``) and ``max_seqlen``
(a Python int). Empty bags are allowed: they contribute equal consecutive offsets.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import h5py
import numpy as np
import pandas as pd
import torch
from torch import Tensor
from torch.utils.data import Dataset

from pathgen.data.families import GeneFamilies
from pathgen.data.survival import SurvivalBins
from pathgen.data.transforms import ExpressionTransform, family_matrix


def _open_bag(path: str | os.PathLike) -> h5py.File:
    """Open a feature file for reading, with errors that name it and say what to do."""
    if str(path).endswith(".pt"):
        raise ValueError(f"{path}: .pt feature files (CLAM's pt_files, read by MCAT/PORPOISE) hold no patch "
                         "coordinates; fix: point --features (or the manifest's features_path) at the .h5 files "
                         "CLAM writes beside them (h5_files/<slide_id>.h5), or embed with pathgen embed")
    try:
        return h5py.File(path, "r")
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{path}: feature file not found; fix: check --features / features_path, or "
                                "embed the slide with pathgen embed") from exc
    except OSError as exc:  # truncated, half-copied or not HDF5 at all
        raise ValueError(f"{path}: not a readable HDF5 feature file ({exc}); fix: copy it again or re-embed the "
                         "slide with pathgen embed") from exc


def _features_dataset(f: h5py.File, path) -> tuple[h5py.Dataset, bool]:
    """The ``features`` dataset and whether it is stored [1, N, D] (as some CLAM forks save it)."""
    if "features" not in f:
        raise ValueError(f"{path}: no 'features' dataset (found {list(f)}); expected 'features' [N, D] and "
                         "'coords' [N, 2] (CLAM/TRIDENT layout)")
    d = f["features"]
    if d.ndim == 3 and d.shape[0] == 1:
        return d, True
    if d.ndim != 2:
        raise ValueError(f"{path}: 'features' must be [N, D] (or [1, N, D]), found shape {d.shape}")
    return d, False


def read_h5_bag(path: str | os.PathLike, indices: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read ``features`` [N, D] and ``coords`` [N, 2] (optionally rows ``indices``) from one HDF5 file.

    A leading singleton axis ([1, N, D] features, [1, N, 2] coords) is dropped.

    Raises:
        ValueError: unreadable file, missing datasets, wrong shapes or mismatched row counts, naming the file.
    """
    with _open_bag(path) as f:
        feats, squeeze = _features_dataset(f, path)
        if "coords" not in f:
            raise ValueError(f"{path}: expected datasets 'features' [N, D] and 'coords' [N, 2], found {list(f)}")
        coords = f["coords"]
        c_squeeze = coords.ndim == 3 and coords.shape[0] == 1
        n = feats.shape[1] if squeeze else feats.shape[0]
        c_shape = coords.shape[1:] if c_squeeze else coords.shape
        if len(c_shape) != 2 or c_shape[1] != 2:
            raise ValueError(f"{path}: 'coords' must be [N, 2], found shape {coords.shape}")
        if n != c_shape[0]:
            raise ValueError(f"{path}: {n} feature rows but {c_shape[0]} coords")
        sel = slice(None) if indices is None else np.sort(np.asarray(indices, dtype=np.int64))
        x = feats[0, sel] if squeeze else feats[sel]
        c = coords[0, sel] if c_squeeze else coords[sel]
        return np.asarray(x, dtype=np.float32), np.asarray(c, dtype=np.int64)


def h5_bag_shape(path: str | os.PathLike) -> tuple[int, int]:
    """``(N, D)`` of a feature file without reading it."""
    with _open_bag(path) as f:
        d, squeeze = _features_dataset(f, path)
        shape = d.shape[1:] if squeeze else d.shape
        return int(shape[0]), int(shape[1])


@dataclass
class BagItem:
    """One patient (fields documented in ``PatientBags.__getitem__``)."""

    case_id: str
    features: Tensor  # [n, D] float32
    coords: Tensor  # [n, 2] int64 level-0 x, y
    slide_index: Tensor  # [n] int64, which of ``slide_ids`` each patch came from
    slide_ids: list[str]
    expression: Tensor  # [G_total] float32
    grade: int
    survival_bin: int
    survival_months: float
    censorship: float


class PatientBags(Dataset):
    """One item per patient: lazily read patch features, transformed family expression and labels.

    Args:
        case_ids: patients in this dataset (e.g. one fold part), in item order.
        expression: raw samples x genes frame indexed by case_id (``read_expression``); ``None`` for
            feature-only bags (expression is then an empty vector).
        families: the gene families; the expression vector is ``families.columns`` concatenated.
        labels: one row per patient indexed by case_id (``Manifest.cases()``): ``grade`` (ordered
            categorical or None), ``survival_months``, ``censorship``. Missing labels become -1 / NaN.
        features: ``{case_id: [h5 paths]}`` (``Manifest.features_paths(dir)``); missing or empty ->
            expression-only item.
        transform: fitted ``ExpressionTransform`` over ``families.columns`` (fit it on TRAIN patients).
        survival_bins: fitted ``SurvivalBins`` (fit on TRAIN patients); ``None`` -> bin -1.
        max_patches: cap per patient (``None`` = all patches).
        random_subsample: with ``max_patches``, draw a fresh random subset each access (training);
            otherwise take a fixed evenly spaced subset (evaluation, deterministic). The random draws
            follow torch's RNG (``torch.manual_seed``; DataLoader workers get distinct seeds).
        feature_dim: D for expression-only items when no feature file exists at all.

    Raises:
        ValueError: cases without expression, features files with different D, unknown cases.
    """

    def __init__(self, case_ids: Sequence[str], *, expression: pd.DataFrame | None, families: GeneFamilies,
                 labels: pd.DataFrame | None = None, features: Mapping[str, Sequence[str | os.PathLike]] | None = None,
                 transform: ExpressionTransform | None = None, survival_bins: SurvivalBins | None = None,
                 max_patches: int | None = None, random_subsample: bool = False,
                 feature_dim: int | None = None) -> None:
        self.case_ids = [str(c) for c in case_ids]
        if len(set(self.case_ids)) != len(self.case_ids):
            raise ValueError("PatientBags: case_ids repeated; one item per patient")
        self.families = families
        self.max_patches = max_patches
        self.random_subsample = random_subsample

        if expression is not None:
            missing = [c for c in self.case_ids if c not in expression.index]
            if missing:
                raise ValueError(f"PatientBags: {len(missing)} patients have no expression (e.g. {missing[:5]}); "
                                 "check_cohort() lists them; pass only patients with expression")
            raw = family_matrix(expression, families.columns, self.case_ids)
            if transform is not None:
                values = transform.transform(raw.to_numpy(np.float64))
            else:
                values = raw.to_numpy(np.float64)
            if np.isnan(values).any():
                raise ValueError("PatientBags: NaN in family expression; read_expression(on_nan='drop_genes') "
                                 "drops such genes before the families are matched")
            self.expression = torch.from_numpy(values.astype(np.float32))  # [n_cases, G_total]
        else:
            self.expression = torch.zeros(len(self.case_ids), 0)

        n = len(self.case_ids)
        self.grade = np.full(n, -1, dtype=np.int64)
        self.survival_months = np.full(n, np.nan, dtype=np.float64)
        self.censorship = np.full(n, np.nan, dtype=np.float64)
        self.survival_bin = np.full(n, -1, dtype=np.int64)
        if labels is not None:
            lab = labels.reindex(self.case_ids)
            if "grade" in lab.columns and hasattr(labels["grade"], "cat"):
                codes = pd.Categorical(lab["grade"], categories=labels["grade"].cat.categories).codes
                self.grade = codes.astype(np.int64)
            if "survival_months" in lab.columns:
                self.survival_months = lab["survival_months"].to_numpy(np.float64)
                self.censorship = lab["censorship"].to_numpy(np.float64)
                ok = ~np.isnan(self.survival_months)
                if survival_bins is not None and ok.any():
                    self.survival_bin[ok] = survival_bins.assign(self.survival_months[ok])

        self.features: dict[str, list[Path]] = {c: [] for c in self.case_ids}
        self._n_patches: dict[Path, int] = {}
        dims = set()
        if features is not None:
            for c in self.case_ids:
                for p in features.get(c, []) or []:
                    p = Path(p)
                    n_p, d = h5_bag_shape(p)
                    self._n_patches[p] = n_p
                    dims.add(d)
                    self.features[c].append(p)
        if len(dims) > 1:
            raise ValueError(f"PatientBags: feature files have different dimensions {sorted(dims)}; embed all "
                             "slides with one encoder")
        self.feature_dim = dims.pop() if dims else int(feature_dim or 0)

    @classmethod
    def from_manifest(cls, manifest, case_ids: Sequence[str] | None = None, *, expression: pd.DataFrame | None,
                      families: GeneFamilies, features_dir: str | os.PathLike | None = None,
                      **kwargs) -> "PatientBags":
        """Bags for ``case_ids`` (default: every patient) of a ``Manifest``; labels from ``manifest.cases()``,
        feature files from ``manifest.features_paths(features_dir)``; other arguments as for the constructor."""
        ids = manifest.case_ids if case_ids is None else list(case_ids)
        return cls(ids, expression=expression, families=families, labels=manifest.cases(),
                   features=manifest.features_paths(features_dir), **kwargs)

    def __len__(self) -> int:
        return len(self.case_ids)

    def n_patches(self, i: int) -> int:
        """Patches of item ``i`` before any cap."""
        return sum(self._n_patches[p] for p in self.features[self.case_ids[i]])

    def _choose(self, total: int) -> np.ndarray | None:
        """Global patch indices to keep, or None for all."""
        if self.max_patches is None or total <= self.max_patches:
            return None
        if self.random_subsample:
            return np.sort(torch.randperm(total)[: self.max_patches].numpy().astype(np.int64))
        return np.unique(np.linspace(0, total - 1, self.max_patches).round().astype(np.int64))

    def __getitem__(self, i: int) -> BagItem:
        """Return the ``BagItem`` of patient ``i``.

        ``features`` [n, D] float32, ``coords`` [n, 2] int64 (level-0 x, y of each patch),
        ``slide_index`` [n] int64 into ``slide_ids``, ``expression`` [G_total] float32 (families in
        order; ``families.slices``), ``grade`` (category index, -1 missing), ``survival_bin`` (0-based,
        -1 missing), ``survival_months``, ``censorship`` (1 = censored).
        """
        case = self.case_ids[i]
        paths = self.features[case]
        sizes = [self._n_patches[p] for p in paths]
        keep = self._choose(sum(sizes))
        feats, coords, sidx = [], [], []
        offset = 0
        for j, (p, n_p) in enumerate(zip(paths, sizes)):
            local = None if keep is None else keep[(keep >= offset) & (keep < offset + n_p)] - offset
            offset += n_p
            if local is not None and local.size == 0:
                continue
            f, c = read_h5_bag(p, local)
            feats.append(f)
            coords.append(c)
            sidx.append(np.full(f.shape[0], j, dtype=np.int64))
        if feats:
            features = torch.from_numpy(np.concatenate(feats))
            coords_t = torch.from_numpy(np.concatenate(coords))
            slide_index = torch.from_numpy(np.concatenate(sidx))
        else:
            features = torch.zeros(0, self.feature_dim)
            coords_t = torch.zeros(0, 2, dtype=torch.int64)
            slide_index = torch.zeros(0, dtype=torch.int64)
        return BagItem(case, features, coords_t, slide_index, [p.stem for p in paths], self.expression[i],
                       int(self.grade[i]), int(self.survival_bin[i]), float(self.survival_months[i]),
                       float(self.censorship[i]))


def collate_bags(items: Sequence[BagItem]) -> dict:
    """Pack a batch of bags in the ``cu_seqlens`` layout the co-attention op takes.

    Returns:
        dict with ``features`` [total_n, D] float32, ``coords`` [total_n, 2] int64, ``slide_index``
        [total_n] int64, ``cu_seqlens`` [B + 1] int32, ``max_seqlen`` int, ``expression`` [B, G_total]
        float32, ``grade`` [B] int64, ``survival_bin`` [B] int64, ``survival_months`` [B] float32,
        ``censorship`` [B] float32, ``case_ids`` list[str], ``slide_ids`` list[list[str]].
        An empty bag gives ``cu_seqlens[b] == cu_seqlens[b + 1]``.

    Raises:
        ValueError: an empty batch or bags with different feature dimensions.
    """
    if not items:
        raise ValueError("collate_bags: empty batch")
    dims = {it.features.shape[1] for it in items}
    if len(dims) > 1:
        raise ValueError(f"collate_bags: bags with different feature dimensions {sorted(dims)}")
    lengths = torch.tensor([it.features.shape[0] for it in items], dtype=torch.int64)
    cu = torch.zeros(len(items) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(lengths, 0).to(torch.int32)
    return {
        "features": torch.cat([it.features for it in items], 0),  # [total_n, D]
        "coords": torch.cat([it.coords for it in items], 0),  # [total_n, 2]
        "slide_index": torch.cat([it.slide_index for it in items], 0),  # [total_n]
        "cu_seqlens": cu,  # [B + 1]
        "max_seqlen": int(lengths.max()),
        "expression": torch.stack([it.expression for it in items], 0),  # [B, G_total]
        "grade": torch.tensor([it.grade for it in items], dtype=torch.int64),  # [B]
        "survival_bin": torch.tensor([it.survival_bin for it in items], dtype=torch.int64),  # [B]
        "survival_months": torch.tensor([it.survival_months for it in items], dtype=torch.float32),  # [B]
        "censorship": torch.tensor([it.censorship for it in items], dtype=torch.float32),  # [B]
        "case_ids": [it.case_id for it in items],
        "slide_ids": [it.slide_ids for it in items],
    }
