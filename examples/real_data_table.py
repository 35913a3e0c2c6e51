"""Real TCGA checks of the predictor (no slides needed): expression-only model, 5-fold CV.

    python examples/real_data_table.py --out runs/real_data_table

For TCGA-BLCA (MCAT table + MCAT splits), TCGA-GBMLGG and TCGA-KIRC (PORPOISE tables + PORPOISE
splits) it trains the expression-only SNN over MCAT's six gene families (exact symbol matching,
``_rnaseq`` z-scores standardised with training statistics) on each fold's training patients,
stops early on a validation part carved from the training patients (the splits' ``val`` column
is the held-out fold, used once), and reports the test C-index per fold and mean +- sd, next to
MCAT's published genomics-only SNN numbers (``mcat/results/ICCV/SNN*/cindex.csv``; same split files)
with paired tests across the five identical folds. A second run per glioma and renal cohort adds
the grade head (0.7 grade CE + 0.3 survival NLL, the published weighting) and reports the grade
AUC (macro and micro one-vs-rest), balanced accuracy and quadratic kappa:

- GBMLGG WHO grade: ``pathomicfusion_gbmlgg/grade_data_LGG_grade2_grade3_subset.csv`` (II, III) and
  GBM (``oncotree_code == "GBM"``) = IV;
- KIRC G1-G4: ``histological_grade`` of the PANTHER survival splits (GX = missing).

Writes ``<out>/real_data_table.md`` and ``<out>/real_data_table.json`` plus one
``train-predictor`` run folder per row. Runs in about 6 minutes on 2 (shared) CPU cores.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pathgen.data.expression import read_expression
from pathgen.data.families import load_gene_families
from pathgen.data.manifest import read_manifest
from pathgen.data.paths import shared_data_dir
from pathgen.data.splits import read_splits
from pathgen.eval.stats import paired_fold_tests
from pathgen.pipelines.cohort import Cohort
from pathgen.pipelines.train_predictor import PredictorOptions, train_predictor_cv
from pathgen.utils.io import atomic_write_text

MCAT_SNN = Path("mcat/results/ICCV/SNNsm_nll_surv_a0.0_reg1e-04_5foldcv_gc32_sig")

COHORTS = {
    "BLCA": {"table": "mcat/datasets_csv_sig/tcga_blca_all_clean.csv.zip", "splits": "mcat/splits/5foldcv/tcga_blca",
             "mcat": "blca", "grade": None},
    "GBMLGG": {"table": "porpoise/datasets_csv_mutsig/tcga_gbmlgg_all_clean.csv.zip",
               "splits": "porpoise/splits/5foldcv/tcga_gbmlgg", "mcat": "gbmlgg", "grade": "who"},
    "KIRC": {"table": "porpoise/datasets_csv_mutsig/tcga_kirc_all_clean.csv.zip",
             "splits": "porpoise/splits/5foldcv/tcga_kirc", "mcat": None, "grade": "panther"},
}


def gbmlgg_who_grades(data: Path, table: pd.DataFrame) -> pd.DataFrame:
    """WHO grade per case: II/III from the PathomicFusion LGG file, IV for GBM (oncotree code)."""
    lgg = pd.read_csv(data / "pathomicfusion_gbmlgg/grade_data_LGG_grade2_grade3_subset.csv")
    roman = {2: "II", 3: "III", 4: "IV"}
    g = pd.DataFrame({"case_id": lgg["TCGA ID"].astype(str), "grade": lgg["Grade"].map(roman)})
    gbm = table.loc[table["oncotree_code"] == "GBM", "case_id"].astype(str).unique()
    clash = sorted(set(gbm) & set(g["case_id"]))
    if clash:
        raise ValueError(f"{len(clash)} GBM cases also have an LGG grade (e.g. {clash[:3]})")
    g = pd.concat([g, pd.DataFrame({"case_id": gbm, "grade": "IV"})], ignore_index=True)
    return g.dropna().drop_duplicates("case_id")


def kirc_panther_grades(data: Path) -> pd.DataFrame:
    """``histological_grade`` per case from every PANTHER KIRC survival split file."""
    frames = [pd.read_csv(p, usecols=["case_id", "histological_grade"])
              for p in sorted((data / "panther/src/splits/survival").glob("TCGA_KIRC_overall_survival_k=*/*.csv"))
              if p.name in ("train.csv", "test.csv")]
    g = pd.concat(frames, ignore_index=True).drop_duplicates()
    conflict = g.groupby("case_id")["histological_grade"].nunique()
    if (conflict > 1).any():
        raise ValueError(f"PANTHER files disagree on the grade of {list(conflict[conflict > 1].index[:3])}")
    return g.drop_duplicates("case_id").rename(columns={"histological_grade": "grade"})


def load_real_cohort(data: Path, spec: dict, with_grade: bool) -> Cohort:
    table_path = data / spec["table"]
    table = pd.read_csv(table_path, compression="zip", low_memory=False)
    grades = None
    if with_grade and spec["grade"] == "who":
        grades = gbmlgg_who_grades(data, table)
    elif with_grade and spec["grade"] == "panther":
        grades = kirc_panther_grades(data)
    manifest = read_manifest(table.drop(columns=["train"], errors="ignore"), grade_table=grades)
    expression = read_expression(table)
    families, _ = load_gene_families(expression.columns, source=str(table_path))
    folds = read_splits(data / spec["splits"])
    return Cohort(manifest=manifest, expression=expression, families=families,
                  features={c: [] for c in manifest.case_ids}, folds=folds)


def published_snn(data: Path, project: str | None) -> dict | None:
    """MCAT's genomics-only SNN: mean, sd and per-fold C-index (ICCV 2021 results folder)."""
    if project is None:
        return None
    table = pd.read_csv(data / MCAT_SNN / "cindex.csv")
    row = table[table.iloc[:, 0] == project].iloc[0]
    per = sorted((data / MCAT_SNN).glob(f"tcga_{project}_*/summary_latest.csv"))
    folds = pd.read_csv(per[0])["val_cindex"].tolist() if per else None
    return {"mean": float(row["Val C-Index (Mean)"]), "sd": float(row["Val C-Index (STD)"]), "folds": folds}


def fmt(m, s=None) -> str:
    if m is None:
        return "-"
    return f"{m:.3f}" + (f" ± {s:.3f}" if s is not None else "")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("runs/real_data_table"))
    p.add_argument("--data", type=Path, default=None, help="shared data folder (default: ../shared/data)")
    p.add_argument("--cohorts", default="BLCA,GBMLGG,KIRC")
    p.add_argument("--width", type=int, default=256, help="SNN width (MCAT's small omic SNN: 256)")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--patience", type=int, default=8)
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (1 is fastest for these small SNNs on a shared 2-core machine)")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data = args.data or shared_data_dir()
    base = PredictorOptions(model="expression", width=args.width, epochs=args.epochs, patience=args.patience,
                            n_boot=args.n_boot, seed=args.seed)
    rows, t_start = [], time.perf_counter()
    for name in args.cohorts.split(","):
        spec = COHORTS[name]
        runs = [("survival", False)] + ([("grade + survival", True)] if spec["grade"] else [])
        for label, with_grade in runs:
            t0 = time.perf_counter()
            cohort = load_real_cohort(data, spec, with_grade)
            opts = dataclasses.replace(base, use_grade=with_grade)
            run_dir = args.out / f"{name.lower()}_{'grade' if with_grade else 'survival'}"
            m = train_predictor_cv(cohort, opts, run_dir, progress=not args.quiet,
                                   inputs={"table": str(data / spec["table"]), "splits": str(data / spec["splits"])})
            pub = published_snn(data, spec["mcat"]) if not with_grade else None
            ours = [f["c_index"] for f in m["folds"]]
            paired = None
            if pub and pub["folds"] and len(pub["folds"]) == len(ours) and None not in ours:
                paired = paired_fold_tests(ours, pub["folds"])
            rows.append({
                "cohort": name, "run": label, "n_patients": m["n_patients_tested"],
                "families": dict(zip(cohort.families.names, cohort.families.sizes)),
                "c_index_folds": ours, "c_index_mean": m["mean"]["c_index"], "c_index_sd": m["sd"]["c_index"],
                "c_index_fold_avg_ci": m["fold_averaged_bootstrap"]["c_index"],
                "c_index_ipcw_mean": m["mean"]["c_index_ipcw"], "ibs_mean": m["mean"]["ibs"],
                "mcat_snn": pub, "paired_vs_mcat": paired,
                "grade_categories": m["grade_categories"],
                "n_graded": sum(f.get("n_graded") or 0 for f in m["folds"]) if with_grade else None,
                **{k: m["mean"].get(k) for k in ("grade_auc_macro", "grade_auc_micro", "balanced_accuracy",
                                                  "kappa_quadratic")},
                **{f"{k}_sd": m["sd"].get(k) for k in ("grade_auc_macro", "grade_auc_micro", "balanced_accuracy",
                                                        "kappa_quadratic")},
                "grade_auc_macro_fold_avg_ci": m["fold_averaged_bootstrap"].get("grade_auc_macro"),
                "best_epochs": [f["best_epoch"] for f in m["folds"]], "seconds": round(time.perf_counter() - t0, 1),
                "run_dir": str(run_dir),
            })
            print(f"{name} {label}: C-index {fmt(m['mean']['c_index'], m['sd']['c_index'])}"
                  + (f", grade AUC macro {fmt(m['mean']['grade_auc_macro'], m['sd']['grade_auc_macro'])}"
                     if with_grade else "") + f" ({rows[-1]['seconds']} s)", flush=True)
    md = markdown(rows, time.perf_counter() - t_start, args)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "real_data_table.json", json.dumps(rows, indent=2, default=_np))
    atomic_write_text(args.out / "real_data_table.md", md)
    print(md)
    return 0


def _np(o):
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(type(o).__name__)


def markdown(rows: list[dict], seconds: float, args) -> str:
    lines = [
        "### Expression-only predictor on real TCGA tables (5-fold CV, test folds = the published split files)",
        "",
        "| cohort | heads | patients (graded) | C-index mean ± sd (folds) | C-index fold-avg [95% CI] | MCAT SNN "
        "(published) | p vs MCAT (Wilcoxon / t, folds) | IPCW C-index | IBS | grade AUC macro | grade AUC micro "
        "| balanced acc. | QWK |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ci = r["c_index_fold_avg_ci"] or {}
        pub = fmt(r["mcat_snn"]["mean"], r["mcat_snn"]["sd"]) if r["mcat_snn"] else "-"
        graded = f" ({r['n_graded']})" if r["n_graded"] else ""
        pv = "-"
        if r["paired_vs_mcat"]:
            w, t = r["paired_vs_mcat"]["wilcoxon"]["p_value"], r["paired_vs_mcat"]["ttest"]["p_value"]
            pv = f"{w:.3f} / {t:.3f}"
        lines.append(
            f"| {r['cohort']} | {r['run']} | {r['n_patients']}{graded} | {fmt(r['c_index_mean'], r['c_index_sd'])} | "
            f"{fmt(ci.get('estimate'))} [{fmt(ci.get('ci_low'))}, {fmt(ci.get('ci_high'))}] | {pub} | {pv} | "
            f"{fmt(r['c_index_ipcw_mean'])} | {fmt(r['ibs_mean'])} | "
            f"{fmt(r['grade_auc_macro'], r['grade_auc_macro_sd'])} | "
            f"{fmt(r['grade_auc_micro'], r['grade_auc_micro_sd'])} | "
            f"{fmt(r['balanced_accuracy'], r['balanced_accuracy_sd'])} | "
            f"{fmt(r['kappa_quadratic'], r['kappa_quadratic_sd'])} |")
    lines += ["", "Per-fold C-index (ours vs MCAT SNN):"]
    for r in rows:
        ours = ", ".join("-" if v is None else f"{v:.3f}" for v in r["c_index_folds"])
        mc = ", ".join(f"{v:.3f}" for v in r["mcat_snn"]["folds"]) if r["mcat_snn"] and r["mcat_snn"]["folds"] else "-"
        lines.append(f"- {r['cohort']} ({r['run']}): ours {ours}; MCAT {mc}; best epochs {r['best_epochs']}")
    graded = [f"{r['cohort']} {r['grade_categories']}" for r in rows if r["grade_categories"]]
    lines += ["", "Grade classes: " + ("; ".join(graded) if graded else "none"),
              f"SNN width {args.width}, max {args.epochs} epochs, patience {args.patience}, seed {args.seed}, "
              f"{args.n_boot} bootstrap replicates, {args.threads} CPU thread(s); total {seconds / 60:.1f} min.",
              "Command: `python examples/real_data_table.py --out " + str(args.out) + "`"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
