"""Cohort inputs shared by the training, synthesis and evaluation jobs: manifest + expression +
gene families + feature files + patient-level folds, loaded and checked once.

The folds are written to (and re-read from) a ``splits.json`` so every stage of a run, the
generator and the predictor alike, uses the same patient-level parts.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import warnings
from pathlib import Path

import pandas as pd

from pathgen.data.expression import read_expression
from pathgen.data.families import GeneFamilies, load_gene_families
from pathgen.data.manifest import Manifest, check_cohort, read_manifest
from pathgen.data.expression import read_table
from pathgen.data.splits import INNER_VAL_FRACTION, Fold, make_folds, resolve_folds
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
        families, _ = load_gene_families(expression.columns, getattr(args, "signatures", None),
                                         source=str(expr_src))
    features_dir = getattr(args, "features", None)
    if features_dir is not None and not Path(features_dir).is_dir():
        raise FileNotFoundError(f"--features {features_dir}: no such folder; fix: pass the folder of <slide_id>.h5 "
                                "files (pathgen embed's <out>/features)")
    feats = manifest.features_paths(features_dir)
    # patients with slides but no expression (or the reverse) are listed in a warning, never dropped
    # silently; with none in common the two files cannot be the same cohort's
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # re-issued below, naming the two files
        check = check_cohort(manifest, expression)
    both = check.cases_with_both
    if check.slides_without_expression or check.expression_without_slides:
        warnings.warn(f"{args.manifest} vs {expr_src}: {check.format()}; only patients with both are put in "
                      "folds (check the ids match if this is unexpected)", UserWarning, stacklevel=2)
    if not both:
        raise ValueError(f"{args.manifest} and {expr_src}: no patient has both slides and expression "
                         f"(manifest ids e.g. {manifest.case_ids[:3]}, expression ids e.g. "
                         f"{list(map(str, expression.index[:3]))}); fix: use one cohort's files, with the same "
                         "TCGA patient ids (12 characters, no sample suffix) in both")
    if args.splits is not None:
        folds = read_folds(Path(args.splits), manifest, seed=args.seed, manifest_path=args.manifest)
    else:
        folds = make_folds(manifest.cases().loc[both], n_folds=args.n_folds, seed=args.seed)
    if write_splits is not None:
        save_splits(write_splits, folds)
    return Cohort(manifest=manifest, expression=expression, families=families, features=feats, folds=folds)


def save_splits(path: Path, folds: list[Fold]) -> None:
    atomic_write_text(path, json.dumps({"folds": [f.to_dict() for f in folds]}, indent=1))


def read_folds(path: Path, manifest: Manifest, *, seed: int, manifest_path: Path | str = "the manifest") -> list[Fold]:
    """Folds from ``--splits``: a run's ``splits.json`` as written, or a folder (or file) of MCAT/PORPOISE
    ``splits_{k}.csv`` resolved to train / val / test (``test`` = MCAT's held-out ``val`` column)."""
    if not path.exists():
        raise FileNotFoundError(f"--splits {path}: no such file or folder; fix: pass the splits.json the run's first "
                                "job wrote (e.g. <generator out>/splits.json) or a folder of MCAT splits_{k}.csv, "
                                "or leave --splits out to make new folds")
    if path.suffix == ".json":
        return read_splits(path)
    folds = read_mcat_splits(path)
    known = set(manifest.case_ids)
    unknown = sorted({c for f in folds for ids in f.parts().values() for c in ids if c not in known})
    if unknown:
        warnings.warn(f"{path}: {len(unknown)} case ids are not in {manifest_path} (e.g. {unknown[:3]}); they are "
                      "left out of every part. If most are missing, this is another cohort's split.",
                      UserWarning, stacklevel=3)
    return resolve_folds(folds, manifest.cases(), INNER_VAL_FRACTION, seed)


def read_splits(path: Path) -> list[Fold]:
    d = json.loads(Path(path).read_text())
    folds = [Fold(k=f["k"], train=f["train"], val=f.get("val", []), calibration=f.get("calibration", []),
                  test=f.get("test", [])) for f in d["folds"]]
    for f in folds:
        f.check_disjoint(str(path))
    return folds
