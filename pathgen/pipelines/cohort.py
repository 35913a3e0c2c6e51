"""Cohort inputs shared by the training, synthesis and evaluation jobs: manifest + expression +
gene families + feature files + patient-level folds, loaded and checked once.

The folds are written to (and re-read from) a ``splits.json`` so every stage of a run, the
generator and the predictor alike, uses the same patient-level parts.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import pandas as pd

from pathgen.data.expression import read_expression
from pathgen.data.families import GeneFamilies, load_gene_families
from pathgen.data.manifest import Manifest, read_manifest
from pathgen.data.expression import read_table
from pathgen.data.splits import Fold, make_folds
from pathgen.data.splits import read_splits as read_mcat_splits
from pathgen.utils.io import atomic_write_text


@dataclasses.dataclass
class Cohort:
    manifest: Manifest
    expression: pd.DataFrame | None  # samples x genes (raw units), indexed by case_id
    families: GeneFamilies
    features: dict[str, list[Path]]  # case_id -> feature .h5 files
    folds: list[Fold]

    def fold(self, k: int) -> Fold:
        for f in self.folds:
            if f.k == k:
                return f
        raise ValueError(f"fold {k} not in the splits (have {[f.k for f in self.folds]})")

    def cases_with_features(self, ids) -> list[str]:
        return [c for c in ids if self.features.get(c)]


def add_cohort_arguments(p: argparse.ArgumentParser, features: bool = True) -> None:
    p.add_argument("--manifest", "--cohort", dest="manifest", type=Path, required=True,
                   help="cohort manifest CSV or MCAT-style table (one row per slide)")
    p.add_argument("--expression", type=Path, default=None,
                   help="expression table (default: the manifest itself, MCAT-style <GENE>_rnaseq columns)")
    p.add_argument("--signatures", type=Path, default=None, help="gene-family signatures CSV (default: MCAT's six)")
    if features:
        p.add_argument("--features", type=Path, default=None,
                       help="folder of <slide_id>.h5 feature files (pathgen embed's <out>/features)")
    p.add_argument("--splits", type=Path, default=None,
                   help="splits.json to reuse (written by the first job of a run), or a folder of MCAT/PORPOISE "
                   "splits_{k}.csv; default: make folds")
    p.add_argument("--n-folds", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)


def load_cohort(args: argparse.Namespace, *, families: GeneFamilies | None = None,
                write_splits: Path | None = None) -> Cohort:
    grade_table = getattr(args, "grade_table", None)
    manifest = read_manifest(args.manifest, grade_column=getattr(args, "grade_column", None),
                             grade_table=read_table(grade_table) if grade_table is not None else None)
    expr_src = args.expression or args.manifest
    expression = read_expression(expr_src)
    if families is None:
        families, _ = load_gene_families(expression.columns, getattr(args, "signatures", None))
    feats = manifest.features_paths(getattr(args, "features", None))
    if args.splits is not None and Path(args.splits).exists():
        sp = Path(args.splits)
        folds = read_splits(sp) if sp.suffix == ".json" else read_mcat_splits(sp)
    else:
        keep = [c for c in manifest.case_ids if c in expression.index]
        cases = manifest.cases().loc[keep]
        folds = make_folds(cases, n_folds=args.n_folds, seed=args.seed)
    if write_splits is not None:
        save_splits(write_splits, folds)
    return Cohort(manifest=manifest, expression=expression, families=families, features=feats, folds=folds)


def save_splits(path: Path, folds: list[Fold]) -> None:
    atomic_write_text(path, json.dumps({"folds": [f.to_dict() for f in folds]}, indent=1))


def read_splits(path: Path) -> list[Fold]:
    d = json.loads(Path(path).read_text())
    folds = [Fold(k=f["k"], train=f["train"], val=f.get("val", []), calibration=f.get("calibration", []),
                  test=f.get("test", [])) for f in d["folds"]]
    for f in folds:
        f.check_disjoint(str(path))
    return folds
