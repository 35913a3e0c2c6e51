"""``pathgen make-demo-cohort --out DIR``: real TCGA expression + survival, slides that encode it."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from pathgen.data.demo_cohort import make_demo_cohort


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True, help="output folder (re-running finishes it)")
    p.add_argument("--cases", type=int, default=60, help="patients, one slide each (default 60)")
    p.add_argument("--seed", type=int, default=0, help="selection and rendering seed (default 0)")
    p.add_argument("--size", type=int, default=2048, help="level-0 slide width = height in px (default 2048)")
    p.add_argument("--table", type=Path, default=None,
                   help="MCAT-style table with <GENE>_rnaseq, survival_months, censorship "
                        "(default: TCGA-BLCA from ../shared/data)")
    p.add_argument("--clinical", type=Path, default=None,
                   help="case_id, grade table (default: SurvPath's BLCA clinical file for the default table)")
    p.add_argument("--signatures", type=Path, default=None, help="gene-family signatures CSV (default: MCAT's)")
    p.add_argument("--workers", type=int, default=None, help="rendering processes (default: up to 2)")


def main(args: argparse.Namespace) -> int:
    summary = make_demo_cohort(args.out, cases=args.cases, seed=args.seed, size=args.size, table=args.table,
                               clinical=args.clinical, signatures=args.signatures, workers=args.workers)
    print(json.dumps({k: v for k, v in summary.items() if k != "artefacts"}, indent=2))
    print(f"wrote {args.out}/manifest.csv, expression.csv, family_scores.csv, slides/ ({summary['cases']} slides)")
    return 0
