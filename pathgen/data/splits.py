"""Patient-level splits: stratified k-fold with validation and calibration parts, and MCAT split files.

``make_folds`` deals patients (never slides) into ``n_folds`` test folds stratified by grade and
event. Inside each fold's remaining patients it carves a validation part (early stopping, model
selection) and a separate calibration part (split-conformal prediction), also stratified; the rest
is training. Everything is reproducible from ``seed``.

``read_splits`` reads MCAT/PORPOISE ``splits_{k}.csv`` (unnamed index + columns ``train, val``
[, ``test``, ``calibration``] of case ids, NaN-padded). In MCAT's files ``val`` is the held-out
fold that results are reported on; ``Fold.heldout`` returns ``test`` when present, else ``val``.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from pathgen.utils.io import atomic_path

PARTS = ("train", "val", "calibration", "test")


@dataclass
class Fold:
    """Case ids of one fold's parts (disjoint)."""

    k: int
    train: list[str]
    val: list[str] = field(default_factory=list)
    calibration: list[str] = field(default_factory=list)
    test: list[str] = field(default_factory=list)

    @property
    def heldout(self) -> list[str]:
        """The evaluation part: ``test`` if any, else ``val`` (MCAT files)."""
        return self.test if self.test else self.val

    def parts(self) -> dict[str, list[str]]:
        return {p: getattr(self, p) for p in PARTS}

    def check_disjoint(self, source: str = "fold") -> None:
        """Raise if a case sits in two parts."""
        seen: dict[str, str] = {}
        for part, ids in self.parts().items():
            if len(set(ids)) != len(ids):
                raise ValueError(f"{source}: case ids repeated inside {part!r}")
            for c in ids:
                if c in seen:
                    raise ValueError(f"{source}: case {c} is in both {seen[c]!r} and {part!r}; "
                                     "splits must be patient-disjoint")
                seen[c] = part

    def to_dict(self) -> dict:
        return {"k": self.k, **{p: list(v) for p, v in self.parts().items()}}


def strata_labels(cases: pd.DataFrame, by: Sequence[str] = ("grade", "event"), min_count: int = 2) -> np.ndarray:
    """One stratum label per patient (``grade|event``); strata smaller than ``min_count`` are pooled.

    ``event`` is derived from ``censorship`` (1 - censorship). Missing values form their own level.
    """
    parts = []
    for col in by:
        if col == "event":
            if "censorship" not in cases.columns:
                continue
            v = (1 - cases["censorship"]).astype("Int64").astype(str)
        elif col in cases.columns:
            v = cases[col].astype(str)
        else:
            continue
        parts.append(v.fillna("NA").to_numpy())
    if not parts:
        return np.zeros(len(cases), dtype=object)
    labels = np.array(["|".join(t) for t in zip(*parts)], dtype=object)
    vals, counts = np.unique(labels, return_counts=True)
    rare = set(vals[counts < min_count])
    if rare:
        labels = np.array(["rare" if x in rare else x for x in labels], dtype=object)
    return labels


# MCAT/PORPOISE folds carry no validation part of their own (their ``val`` column is the reported,
# held-out fold): ``resolve_folds`` carves one of this share from ``train``.
INNER_VAL_FRACTION = 0.15


def carve_validation(train: Sequence[str], cases: pd.DataFrame, fraction: float, seed: int
                     ) -> tuple[list[str], list[str]]:
    """Split ``train`` into (train, val), ``val`` ~ ``fraction`` of it, stratified by grade and event."""
    from sklearn.model_selection import train_test_split

    ids = np.asarray(sorted(train), dtype=object)
    if fraction <= 0 or len(ids) < 4:
        return list(ids), []
    known = cases.reindex(ids)
    labels = strata_labels(known, ("grade", "event"), min_count=2)
    n_val = max(2, int(round(fraction * len(ids))))
    try:
        tr, va = train_test_split(ids, test_size=n_val, stratify=labels, random_state=seed)
    except ValueError:  # a stratum too small for the requested size
        tr, va = train_test_split(ids, test_size=n_val, random_state=seed)
    return sorted(tr), sorted(va)


def resolve_folds(folds: Sequence[Fold], cases: pd.DataFrame, inner_val_fraction: float, seed: int) -> list[Fold]:
    """Make every fold have a test part and a validation part disjoint from it.

    Folds with a ``test`` part are kept as they are. MCAT/PORPOISE folds (``train``, ``val`` only,
    where ``val`` is the held-out fold the results are reported on) become
    ``test = val`` and ``val`` = a stratified ``inner_val_fraction`` of ``train``. ``load_cohort``
    applies this when it reads such a split, so the generator and the predictor of a run select
    their checkpoints on the same validation patients and never on the reported fold.
    """
    out = []
    for f in folds:
        if f.test:
            out.append(f)
            continue
        tr, va = carve_validation(f.train, cases, inner_val_fraction, seed + f.k)
        nf = Fold(f.k, tr, va, list(f.calibration), list(f.val))
        nf.check_disjoint(f"fold {f.k}")
        out.append(nf)
    return out


def _stratified_take(ids: np.ndarray, labels: np.ndarray, fraction: float, rng: np.random.Generator
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Take ``round(fraction * n)`` ids spread over strata proportionally; return (taken, rest)."""
    n_take = int(round(fraction * len(ids)))
    if n_take <= 0:
        return ids[:0], ids
    n_take = min(n_take, len(ids) - 1)
    order = rng.permutation(len(ids))
    ids, labels = ids[order], labels[order]
    # largest-remainder allocation over strata
    strata, inv = np.unique(labels, return_inverse=True)
    counts = np.bincount(inv)
    exact = counts * n_take / len(ids)
    alloc = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - alloc))[: n_take - alloc.sum()]:
        alloc[i] += 1
    take = np.zeros(len(ids), dtype=bool)
    for s in range(len(strata)):
        idx = np.flatnonzero(inv == s)[: alloc[s]]
        take[idx] = True
    return ids[take], ids[~take]


def make_folds(cases: pd.DataFrame, n_folds: int = 5, *, val_fraction: float = 0.15,
               calibration_fraction: float = 0.15, seed: int = 0, stratify: Sequence[str] = ("grade", "event")
               ) -> list[Fold]:
    """Patient-level stratified k-fold with validation and calibration parts inside each training part.

    Args:
        cases: one row per patient indexed by ``case_id`` (``Manifest.cases()``), with the ``stratify``
            columns (``event`` comes from ``censorship``).
        n_folds: number of test folds (each patient is tested exactly once).
        val_fraction: share of the non-test patients held out for validation.
        calibration_fraction: share of the non-test patients held out for conformal calibration (0 = none).
        seed: seeds the permutation; the same inputs and seed give the same folds.
        stratify: columns to stratify by.

    Returns:
        ``n_folds`` disjoint ``Fold`` objects.

    Raises:
        ValueError: repeated case ids, too few patients, fractions that leave no training patients.
    """
    if cases.index.has_duplicates:
        raise ValueError("make_folds: cases must have one row per patient (use Manifest.cases())")
    n = len(cases)
    if n_folds < 2 or n < n_folds:
        raise ValueError(f"make_folds: {n} patients cannot fill {n_folds} folds (n_folds >= 2)")
    if val_fraction < 0 or calibration_fraction < 0 or val_fraction + calibration_fraction >= 0.9:
        raise ValueError(f"make_folds: val_fraction {val_fraction} + calibration_fraction {calibration_fraction} "
                         "must be >= 0 and leave room for training")
    cases = cases.sort_index()  # folds depend on the set of patients, not on row order
    rng = np.random.default_rng(seed)
    ids = np.asarray(cases.index.astype(str), dtype=object)
    labels = strata_labels(cases, stratify, min_count=n_folds)
    # deal each stratum, shuffled, round-robin over folds starting at a rotating fold
    fold_of = np.empty(n, dtype=int)
    offset = 0
    for s in np.unique(labels):
        idx = np.flatnonzero(labels == s)
        idx = idx[rng.permutation(len(idx))]
        fold_of[idx] = (np.arange(len(idx)) + offset) % n_folds
        offset = (offset + len(idx)) % n_folds
    lab_of = dict(zip(ids, labels))
    folds = []
    for k in range(n_folds):
        test = ids[fold_of == k]
        rest, rest_labels = ids[fold_of != k], labels[fold_of != k]
        val, rest2 = _stratified_take(rest, rest_labels, val_fraction, rng)
        rest2_labels = np.array([lab_of[c] for c in rest2], dtype=object)
        cal_frac = calibration_fraction / max(1e-12, 1.0 - val_fraction)
        cal, train = _stratified_take(rest2, rest2_labels, cal_frac, rng)
        fold = Fold(k, sorted(train), sorted(val), sorted(cal), sorted(test))
        fold.check_disjoint(f"fold {k}")
        folds.append(fold)
    return folds


def write_splits(folds: Sequence[Fold], out_dir: str | os.PathLike) -> list[Path]:
    """Write ``splits_{k}.csv`` (columns train, val, calibration, test; NaN-padded, MCAT-like)."""
    out_dir = Path(out_dir)
    paths = []
    for f in folds:
        cols = {p: pd.Series(v, dtype=object) for p, v in f.parts().items()}
        frame = pd.DataFrame(cols)
        path = out_dir / f"splits_{f.k}.csv"
        with atomic_path(path) as tmp:
            frame.to_csv(tmp)
        paths.append(path)
    return paths


def read_splits(path: str | os.PathLike, known_cases: Sequence[str] | None = None) -> list[Fold]:
    """Read one ``splits_{k}.csv`` file or every ``splits_{k}.csv`` in a folder (sorted by k).

    Args:
        path: a file or a folder of MCAT/PORPOISE split files.
        known_cases: if given, case ids not in it are reported in a ``ValueError`` (a split that names
            patients the cohort lacks is usually the wrong cohort's split).

    Raises:
        ValueError: no ``train`` column, overlapping parts, unknown cases.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("splits_*.csv"), key=lambda p: int(re.findall(r"\d+", p.stem)[-1]))
        files = [p for p in files if re.fullmatch(r"splits_\d+", p.stem)]
        if not files:
            raise ValueError(f"{path}: no splits_{{k}}.csv files")
        return [read_splits(p, known_cases)[0] for p in files]
    frame = pd.read_csv(path, dtype=str)
    frame = frame.loc[:, [c for c in frame.columns if not str(c).startswith("Unnamed:")]]
    if "train" not in frame.columns:
        raise ValueError(f"{path}: no 'train' column (columns {list(frame.columns)}); expected MCAT splits "
                         "with columns train, val")
    m = re.search(r"(\d+)$", path.stem)
    k = int(m.group(1)) if m else 0
    parts = {}
    for p in PARTS:
        aliases = {"calibration": ("calibration", "cal")}.get(p, (p,))
        col = next((a for a in aliases if a in frame.columns), None)
        parts[p] = [s.strip() for s in frame[col].dropna()] if col else []
    fold = Fold(k, **parts)
    fold.check_disjoint(str(path))
    if known_cases is not None:
        known = set(known_cases)
        unknown = sorted({c for v in parts.values() for c in v if c not in known})
        if unknown:
            raise ValueError(f"{path}: {len(unknown)} case ids are not in the cohort (e.g. {unknown[:5]}); "
                             "is this the right cohort's split?")
    return [fold]
