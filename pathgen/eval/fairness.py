"""Per-group audit of the predictor: performance and conformal behaviour by demographic group.

Groups: sex (from ``is_female``), age bands ``<40`` / ``40-60`` / ``>=60`` (40 <= age < 60 is the
middle band, as in the published subgroup analysis), race where the column is present and not
empty, and any column the user names. Per group: n, C-index, macro AUC, balanced accuracy, accuracy,
conformal coverage and mean set size, each with a patient bootstrap CI, and per metric the
largest between-group gap. Grade metrics per group are computed through fairlearn's
``MetricFrame`` (Bird et al. 2020); survival and conformal metrics directly.

Groups smaller than ``min_group_n`` are FLAGGED, not hidden: their numbers are reported with
``small=True`` and excluded only from the headline gap (``gap``); ``gap_all_groups`` includes them.
Patients with a missing attribute form a ``missing`` group, reported but never part of a gap.
A group is also flagged when ceil((n+1)(1-alpha)) > n, i.e. too small for a group-conditional
(Mondrian) conformal threshold at that alpha.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from pathgen.eval import metrics as M
from pathgen.eval.conformal import min_calibration_size
from pathgen.eval.stats import bootstrap_ci

AGE_BANDS = ("<40", "40-60", ">=60")
MISSING = "missing"


def age_band(age: pd.Series) -> pd.Series:
    """Age in years -> ``<40`` / ``40-60`` (40 <= age < 60) / ``>=60``; NaN -> ``missing``."""
    a = pd.to_numeric(age, errors="coerce")
    out = pd.Series(MISSING, index=age.index, dtype=object)
    out[a < 40] = "<40"
    out[(a >= 40) & (a < 60)] = "40-60"
    out[a >= 60] = ">=60"
    return out


def sex_from_is_female(is_female: pd.Series) -> pd.Series:
    """MCAT's ``is_female`` (1/0, True/False) -> ``female`` / ``male``; other values -> ``missing``."""
    v = pd.to_numeric(is_female.map(lambda x: int(x) if isinstance(x, (bool, np.bool_)) else x), errors="coerce")
    out = pd.Series(MISSING, index=is_female.index, dtype=object)
    out[v == 1] = "female"
    out[v == 0] = "male"
    return out


def demographic_groups(
    df: pd.DataFrame,
    extra: Sequence[str] = (),
    sex_col: str = "is_female",
    age_col: str = "age",
    race_col: str = "race",
) -> dict[str, pd.Series]:
    """Attribute name -> group label per patient (strings; missing values labelled ``missing``).

    ``sex`` and ``age_band`` appear when their source columns exist, ``race`` when its column has
    at least one value; every name in ``extra`` must be a column.
    """
    attrs: dict[str, pd.Series] = {}
    if sex_col in df:
        attrs["sex"] = sex_from_is_female(df[sex_col])
    if age_col in df:
        attrs["age_band"] = age_band(df[age_col])
    if race_col in df and df[race_col].notna().any():
        attrs["race"] = df[race_col].astype(object).where(df[race_col].notna(), MISSING).astype(str)
    for col in extra:
        if col not in df:
            raise ValueError(f"fairness attribute {col!r} is not a column; have {list(df.columns)}")
        attrs[col] = df[col].astype(object).where(df[col].notna(), MISSING).astype(str)
    if not attrs:
        raise ValueError(f"no demographic column found ({sex_col!r}, {age_col!r}, {race_col!r}) and none named")
    return attrs


def _nan_on_error(fn: Callable) -> Callable:
    def wrapped(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ValueError:
            return math.nan
    return wrapped


def _graded(fn: Callable) -> Callable:
    """A grade metric ``fn(y, p)`` over the patients with a known grade (``y >= 0``; -1 or NaN = ungraded).

    ``fold`` (optional): the fold each patient was tested in; the metric is then computed within
    each fold and averaged (``metrics.fold_averaged``), so scores of different folds' models are
    never ranked against each other.
    """
    def wrapped(y, p, fold=None):
        y = np.asarray(y, dtype=float)
        keep = np.isfinite(y) & (y >= 0)
        yy, pp = y[keep].astype(int), np.asarray(p)[keep]
        if fold is None:
            return fn(yy, pp)
        return M.fold_averaged(fn)(np.asarray(fold)[keep], yy, pp)
    return wrapped


def _accuracy(y, p):
    if len(y) == 0:
        raise ValueError("no graded patient")
    return float(np.mean(p.argmax(axis=1) == y))


def _finite_mean(x):
    x = np.asarray(x, dtype=float)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        raise ValueError("no value")
    return float(x.mean())


def _metric_specs(df, time_col, event_col, risk_col, grade_col, prob_cols, covered_col, set_size_col, fold_col):
    """name -> (metric function, list of patient-aligned arrays) for the metrics that apply."""
    specs = {}
    fold = [df[fold_col].to_numpy()] if fold_col is not None else []
    if risk_col is not None:
        arrays = [df[time_col].to_numpy(float), df[event_col].to_numpy(int), df[risk_col].to_numpy(float)]
        specs["c_index"] = ((M.fold_averaged(M.c_index), fold + arrays) if fold else (M.c_index, arrays))
    if grade_col is not None:
        y = pd.to_numeric(df[grade_col], errors="coerce").to_numpy(float)
        p = df[list(prob_cols)].to_numpy(float)
        specs["auc_macro"] = (_graded(M.auc_macro), [y, p] + fold)
        # decisions (argmax) of different folds' models can be pooled: no fold averaging needed
        specs["balanced_accuracy"] = (_graded(M.balanced_accuracy), [y, p])
        specs["accuracy"] = (_graded(_accuracy), [y, p])
    if covered_col is not None:  # NaN (no set, e.g. an ungraded patient) is left out
        specs["conformal_coverage"] = (_finite_mean, [df[covered_col].to_numpy(float)])
    if set_size_col is not None:
        specs["conformal_set_size"] = (_finite_mean, [df[set_size_col].to_numpy(float)])
    return specs


def fairness_report(
    df: pd.DataFrame,  # one row per TEST patient: demographics + predictions + labels
    *,
    attributes: Sequence[str] = (),
    time_col: str = "time",
    event_col: str = "event",
    risk_col: str | None = "risk",
    grade_col: str | None = None,
    prob_cols: Sequence[str] | None = None,
    covered_col: str | None = None,
    set_size_col: str | None = None,
    fold_col: str | None = None,
    min_group_n: int = 30,
    alpha: float = 0.1,
    n_boot: int = 200,
    level: float = 0.95,
    seed: int = 0,
    sex_col: str = "is_female",
    age_col: str = "age",
    race_col: str = "race",
) -> tuple[pd.DataFrame, dict]:
    """Per-group metrics with bootstrap CIs and the largest between-group gap.

    Args:
        df: patient-level table (aggregate slides per case first).
        attributes: extra columns to audit, besides sex, age band and race.
        time_col, event_col, risk_col: survival labels (event 1 = death) and predicted risk;
            ``risk_col=None`` skips the C-index.
        grade_col, prob_cols: integer grade and the class-probability columns (in class order);
            patients with grade -1 or NaN (ungraded) are left out of the grade metrics.
        covered_col, set_size_col: per-patient conformal outputs (e.g. ``SetPrediction.covered``
            and ``set_size`` of a marginal calibration) for per-group coverage and set size.
        fold_col: the cross-validation fold each patient was tested in, when the table stacks
            several folds' test patients: the C-index and AUC (rank metrics) are then computed
            within each fold and averaged, never across folds' models.
        min_group_n: groups below it are flagged ``small``.
        alpha: conformal miscoverage, for the Mondrian-size flag.
        n_boot, level, seed: bootstrap settings (patients resampled within each group).

    Returns:
        ``(table, summary)``. ``table`` is tidy: one row per (attribute, group, metric) with columns
        ``attribute, group, n, small, flag, metric, value, ci_low, ci_high``. ``summary`` is
        ``{"min_group_n", "alpha", "attributes": {attr: {"groups": {group: {"n", "small", "flag",
        "metrics": {metric: {"value", "ci_low", "ci_high"}}}}, "gaps": {metric: {"gap",
        "max_group", "min_group", "gap_all_groups", "note"}}}}}``.
    """
    from fairlearn.metrics import MetricFrame

    if min_group_n < 1:
        raise ValueError("min_group_n must be >= 1")
    if (grade_col is None) != (prob_cols is None):
        raise ValueError("give grade_col and prob_cols together")
    needed = [time_col, event_col] if risk_col is not None else []
    needed += [c for c in (risk_col, grade_col, covered_col, set_size_col, fold_col) if c is not None]
    needed += list(prob_cols or [])
    for col in needed:
        if col not in df:
            raise ValueError(f"column {col!r} missing from the fairness table")
    if df.empty:
        raise ValueError("the fairness table is empty")
    df = df.reset_index(drop=True)
    attrs = demographic_groups(df, attributes, sex_col, age_col, race_col)
    specs = _metric_specs(df, time_col, event_col, risk_col, grade_col, prob_cols, covered_col, set_size_col,
                          fold_col)
    if not specs:
        raise ValueError("nothing to audit: give risk_col, grade_col + prob_cols, or conformal columns")
    min_conf = min_calibration_size(alpha)

    rows = []
    summary = {"min_group_n": min_group_n, "alpha": alpha, "n_patients": int(len(df)), "attributes": {}}
    for attr, labels in attrs.items():
        lab = labels.to_numpy()
        # fairlearn MetricFrame for the grade (classification) metrics
        mf_values = {}
        if grade_col is not None:
            names = ("auc_macro", "balanced_accuracy", "accuracy")
            mf = MetricFrame(
                metrics={name: _nan_on_error(specs[name][0]) for name in names},
                y_true=specs["accuracy"][1][0], y_pred=specs["accuracy"][1][1],
                sensitive_features=pd.Series(lab, name=attr),
                sample_params={"auc_macro": {"fold": specs["auc_macro"][1][2]}} if fold_col is not None else None,
            )
            mf_values = mf.by_group.to_dict()  # metric -> {group: value}
        groups = {}
        for g in sorted(set(lab.tolist())):
            m = lab == g
            n = int(m.sum())
            flags = []
            if n < min_group_n:
                flags.append(f"n={n} < min_group_n={min_group_n}")
            if n < min_conf:
                flags.append(f"too small for a group-conditional conformal threshold at alpha={alpha} (needs n >= {min_conf})")
            entry = {"n": n, "small": n < min_group_n, "flag": "; ".join(flags) or None, "metrics": {}}
            for name, (fn, arrays) in specs.items():
                sub = [a[m] for a in arrays]
                value = mf_values[name][g] if name in mf_values else _nan_on_error(fn)(*sub)
                res = {"value": None, "ci_low": None, "ci_high": None}
                if value is not None and np.isfinite(value):
                    res["value"] = float(value)
                    if n >= 2:
                        try:
                            b = bootstrap_ci(fn, sub, n_boot=n_boot, level=level, seed=seed)
                            res["ci_low"], res["ci_high"] = b["ci_low"], b["ci_high"]
                        except ValueError:
                            pass
                else:
                    res["note"] = "undefined in this group (e.g. no death or a single class)"
                entry["metrics"][name] = res
                rows.append({"attribute": attr, "group": g, "n": n, "small": entry["small"], "flag": entry["flag"],
                             "metric": name, **{k: res[k] for k in ("value", "ci_low", "ci_high")}})
            groups[g] = entry
        gaps = {}
        for name in specs:
            vals_all = {g: e["metrics"][name]["value"] for g, e in groups.items()
                        if g != MISSING and e["metrics"][name]["value"] is not None}
            vals = {g: v for g, v in vals_all.items() if not groups[g]["small"]}
            gap = {"gap": None, "max_group": None, "min_group": None, "gap_all_groups": None, "note": None}
            if len(vals_all) >= 2:
                gap["gap_all_groups"] = float(max(vals_all.values()) - min(vals_all.values()))
            if len(vals) >= 2:
                hi = max(vals, key=vals.get)
                lo = min(vals, key=vals.get)
                gap.update(gap=float(vals[hi] - vals[lo]), max_group=hi, min_group=lo)
            else:
                gap["note"] = "fewer than two groups with n >= min_group_n and a defined value"
            gaps[name] = gap
        summary["attributes"][attr] = {"groups": groups, "gaps": gaps}
    table = pd.DataFrame(rows, columns=["attribute", "group", "n", "small", "flag", "metric", "value", "ci_low", "ci_high"])
    return table, summary
