"""``pathgen report RUN_DIR``: one self-contained HTML file for a run folder.

Sections (``pathgen.report.sections``): headline numbers, cohort summary, generator fidelity per
family with the baselines, the predictor table (slide-only / +real / +synthesized expression with
CIs and p-values), Kaplan-Meier curves, calibration and conformal coverage, fairness by group,
the heatmap gallery, and the exact configuration and versions. Figures are embedded as base64
PNGs; the file has no scripts and loads nothing from the network. A stage that has not run yet
shows what is missing and which command makes it.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from pathgen.report.html import write_report


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", type=Path, help="the run folder (pathgen demo --out DIR)")
    p.add_argument("--out", type=Path, default=None, help="HTML file to write (default: RUN_DIR/report.html)")
    p.add_argument("--max-heatmap-cases", type=int, default=4, help="patients shown in the heatmap gallery")


def main(args: argparse.Namespace) -> int:
    path = write_report(args.run_dir, args.out, max_heatmap_cases=args.max_heatmap_cases)
    size = path.stat().st_size / 1e6
    print(f"wrote {path} ({size:.1f} MB, self-contained: open it in any browser)")
    return 0
