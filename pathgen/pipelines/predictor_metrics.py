"""Patient-level metrics of predictor runs: per fold, mean +- sd over folds, and fold-averaged
metrics with patient-bootstrap CIs, all computed from per-patient prediction tables.

A prediction table has one row per (patient, fold, part) with ``survival_months``,
``censorship`` (1 = censored), ``risk`` (-sum_k S_k), ``surv_0..surv_{K-1}``, ``grade_index``
(-1 = unknown) and ``prob_<category>`` columns (see ``pathgen.pipelines.train_predictor``).
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from pathgen.eval.metrics import (auc_macro, c_index, fold_averaged, grade_metrics, integrated_brier_score,
                                  ipcw_c_index)
from pathgen.eval.stats import bootstrap_ci

FOLD_KEYS = ("c_index", "c_index_ipcw", "ibs", "grade_auc_macro", "grade_auc_micro", "balanced_accuracy",
             "kappa_quadratic", "grade_accuracy")


def surv_columns(df: pd.DataFrame) -> list[str]:
    cols = [c for c in df.columns if c.startswith("surv_")]
    return sorted(cols, key=lambda c: int(c.split("_")[1]))


def prob_columns(df: pd.DataFrame, categories: Sequence[str]) -> list[str]:
    return [f"prob_{c}" for c in categories if f"prob_{c}" in df.columns]


def survival_arrays(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(time [N], event [N], risk [N])`` (event = 1 - censorship)."""
    return (df["survival_months"].to_numpy(float), (1 - df["censorship"].to_numpy(float)).astype(int),
            df["risk"].to_numpy(float))


def _maybe(fn: Callable[[], float | None], notes: list[str], what: str) -> float | None:
    try:
        v = fn()
    except ValueError as exc:
        notes.append(f"{what}: {exc}")
        return None
    return None if v is None or not math.isfinite(v) else float(v)


def fold_metrics(test: pd.DataFrame, train: pd.DataFrame, bin_edges: Sequence[float], categories: Sequence[str],
                 *, n_boot: int = 1000, seed: int = 0) -> dict:
    """Metrics of one fold's TEST patients (one row each), with patient-bootstrap 95% CIs.

    Survival: Harrell's C-index, Uno's IPCW C-index and the integrated Brier score (censoring
    distribution from the fold's TRAINING patients). Grade (patients with a grade only): AUC macro
    and micro one-vs-rest, balanced accuracy, quadratic-weighted kappa, accuracy.
    Values that are not computable are None with a note.
    """
    if test["case_id"].duplicated().any():
        raise ValueError("fold_metrics: one row per test patient expected (aggregate slides per case first)")
    notes: list[str] = []
    out: dict = {"n_test": int(len(test)), "n_events": int((test["censorship"] == 0).sum())}
    t, e, r = survival_arrays(test)
    tt, te, _ = survival_arrays(train)
    out["c_index"] = _maybe(lambda: c_index(t, e, r), notes, "c_index")
    out["c_index_ci"] = None
    if out["c_index"] is not None and n_boot:
        b = bootstrap_ci(c_index, [t, e, r], n_boot=n_boot, seed=seed)
        out["c_index_ci"] = [b["ci_low"], b["ci_high"]]
    ipcw = ipcw_c_index(t, e, r, tt, te) if e.any() else {"value": None, "reason": "no event"}
    out["c_index_ipcw"] = ipcw["value"]
    if ipcw["value"] is None:
        notes.append(f"c_index_ipcw: {ipcw['reason']}")
    S = test[surv_columns(test)].to_numpy(float)
    ibs = integrated_brier_score(t, e, S, np.asarray(bin_edges, float), tt, te)
    out["ibs"] = ibs["value"]
    if ibs["value"] is None:
        notes.append(f"ibs: {ibs['reason']}")
    for k in ("grade_auc_macro", "grade_auc_macro_ci", "grade_auc_micro", "balanced_accuracy", "kappa_quadratic",
              "grade_accuracy"):
        out[k] = None
    pcols = prob_columns(test, categories)
    if pcols:
        g = test[test["grade_index"] >= 0]
        out["n_graded"] = int(len(g))
        if len(g):
            y = g["grade_index"].to_numpy(int)
            P = g[pcols].to_numpy(float)
            gm = grade_metrics(y, P)
            out.update(grade_auc_macro=gm["auc_macro"], grade_auc_micro=gm["auc_micro"],
                       balanced_accuracy=gm["balanced_accuracy"], kappa_quadratic=gm["kappa_quadratic"],
                       grade_accuracy=gm["accuracy"], grade_classes_absent=gm["classes_absent"])
            if gm["auc_macro"] is not None and n_boot:
                b = bootstrap_ci(auc_macro, [y, P], n_boot=n_boot, seed=seed)
                out["grade_auc_macro_ci"] = [b["ci_low"], b["ci_high"]]
    out["notes"] = notes
    return out


def mean_sd(fold_rows: Sequence[dict], keys: Sequence[str] = FOLD_KEYS) -> tuple[dict, dict]:
    """Mean and sample sd (ddof = 1) over folds of each key, over the folds where it is defined."""
    mean, sd = {}, {}
    for k in keys:
        vals = [f[k] for f in fold_rows if f.get(k) is not None]
        mean[k] = float(np.mean(vals)) if vals else None
        sd[k] = float(np.std(vals, ddof=1)) if len(vals) > 1 else None
    return mean, sd


FOLD_MEAN_C_INDEX = fold_averaged(c_index)
FOLD_MEAN_AUC_MACRO = fold_averaged(auc_macro)


def pooled_bootstrap(tests: pd.DataFrame, categories: Sequence[str], *, n_boot: int = 1000, seed: int = 0) -> dict:
    """Fold-averaged C-index (and grade AUC macro) over all out-of-fold test patients with a
    patient-bootstrap 95% CI (``bootstrap_ci`` over the stacked test parts of every fold)."""
    out = {}
    fold = tests["fold"].to_numpy(int)
    t, e, r = survival_arrays(tests)
    out["c_index"] = bootstrap_summary(FOLD_MEAN_C_INDEX, [fold, t, e, r], n_boot, seed)
    pcols = prob_columns(tests, categories)
    if pcols:
        g = tests[tests["grade_index"] >= 0]
        if len(g) and g["grade_index"].nunique() >= 2:
            arrays = [g["fold"].to_numpy(int), g["grade_index"].to_numpy(int), g[pcols].to_numpy(float)]
            out["grade_auc_macro"] = bootstrap_summary(FOLD_MEAN_AUC_MACRO, arrays, n_boot, seed)
    return out


def bootstrap_summary(metric, arrays, n_boot: int, seed: int) -> dict:
    """``bootstrap_ci`` reduced to estimate, CI, n_valid and method; a note instead of an error when undefined."""
    try:
        b = bootstrap_ci(metric, arrays, n_boot=max(1, n_boot), seed=seed)
    except ValueError as exc:
        return {"estimate": None, "ci_low": None, "ci_high": None, "note": str(exc)}
    return {k: b[k] for k in ("estimate", "ci_low", "ci_high", "n_valid", "method")}
