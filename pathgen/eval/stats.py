"""Statistics over patients and folds: bootstrap CIs, paired comparisons, Kaplan-Meier risk groups.

- :func:`bootstrap_ci`: percentile bootstrap (Efron & Tibshirani 1993) resampling PATIENTS.
- :func:`paired_bootstrap`: the same resamples applied to two models scored on the same patients;
  CI of the metric difference and a two-sided p-value.
- :func:`paired_fold_tests`: Wilcoxon signed-rank and paired t-test across CV folds.
- :func:`km_risk_groups`: low/high predicted-risk groups split at the median TRAINING risk,
  log-rank test and a PNG of both Kaplan-Meier curves.

A metric is any ``metric(*arrays) -> float`` over patient-aligned arrays (first axis = patient),
e.g. ``lambda t, e, r: c_index(t, e, r)``. A replicate where the metric raises ``ValueError`` or
returns NaN (no event, one class) is skipped and counted; the full-sample metric is never caught.
"""
from __future__ import annotations

import math
import os
from typing import Callable, Sequence

import numpy as np
from scipy import stats as sps

from pathgen.utils.io import atomic_path

Metric = Callable[..., float]


def _patient_arrays(arrays: Sequence, name: str = "arrays") -> list[np.ndarray]:
    arrs = [np.asarray(a) for a in arrays]
    if not arrs:
        raise ValueError(f"{name} is empty: pass the metric's patient-aligned inputs")
    n = len(arrs[0])
    for a in arrs:
        if a.ndim == 0 or len(a) != n:
            raise ValueError(f"all {name} need the same first dimension (patients); got {[x.shape for x in arrs]}")
    return arrs


def _resample_indices(n: int, n_boot: int, seed: int, case_ids=None):
    """Yield row-index arrays of bootstrap replicates, resampling cases when case_ids is given."""
    rng = np.random.default_rng(seed)
    if case_ids is None:
        for _ in range(n_boot):
            yield rng.integers(0, n, n)
        return
    ids = np.asarray(case_ids)
    if ids.shape != (n,):
        raise ValueError(f"case_ids must be [N] = [{n}], got {ids.shape}")
    _, inv = np.unique(ids, return_inverse=True)
    order = np.argsort(inv, kind="stable")
    starts = np.concatenate([[0], np.cumsum(np.bincount(inv))])
    rows = [order[starts[c] : starts[c + 1]] for c in range(len(starts) - 1)]
    for _ in range(n_boot):
        pick = rng.integers(0, len(rows), len(rows))
        yield np.concatenate([rows[c] for c in pick])


def _safe(metric: Metric, arrs) -> float:
    try:
        v = metric(*arrs)
    except ValueError:
        return math.nan
    return math.nan if v is None else float(v)


def _check_boot(n_boot: int, level: float) -> None:
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")


def bootstrap_ci(
    metric: Metric,
    arrays: Sequence,  # each [N, ...], aligned on patients
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    case_ids: Sequence | None = None,  # [N] resample cases (all their rows) instead of rows
) -> dict:
    """Patient-level percentile bootstrap confidence interval of ``metric(*arrays)``.

    Args:
        metric: function of the resampled arrays.
        arrays: the metric's inputs, first axis = patient (or slide, with ``case_ids``).
        n_boot: replicates. level: CI coverage. seed: numpy Generator seed.
        case_ids: when rows are slides, the case of each row; whole cases are resampled.

    Returns:
        ``{"estimate", "ci_low", "ci_high", "level", "n_boot", "n_valid", "se", "method"}``;
        ``n_valid`` counts replicates where the metric was defined.

    Raises:
        ValueError: if the metric fails on every replicate.
    """
    _check_boot(n_boot, level)
    arrs = _patient_arrays(arrays)
    estimate = float(metric(*arrs))
    reps = np.array([_safe(metric, [a[idx] for a in arrs])
                     for idx in _resample_indices(len(arrs[0]), n_boot, seed, case_ids)])
    valid = reps[np.isfinite(reps)]
    if len(valid) == 0:
        raise ValueError("the metric was undefined on every bootstrap replicate")
    lo, hi = np.quantile(valid, [(1 - level) / 2, (1 + level) / 2])
    return {
        "estimate": estimate, "ci_low": float(lo), "ci_high": float(hi), "level": level,
        "n_boot": n_boot, "n_valid": int(len(valid)), "se": float(np.std(valid, ddof=1)) if len(valid) > 1 else 0.0,
        "method": "percentile bootstrap over patients",
    }


def paired_bootstrap(
    metric: Metric,
    shared: Sequence,  # arrays common to both models (labels: time, event / grade), each [N, ...]
    pred_a: np.ndarray,  # [N, ...] model A's predictions (last argument of metric)
    pred_b: np.ndarray,  # [N, ...] model B's predictions on the SAME patients
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    case_ids: Sequence | None = None,
) -> dict:
    """Paired patient bootstrap of delta = metric(*shared, pred_a) - metric(*shared, pred_b).

    Both models are scored on the same resampled patients. The two-sided p-value tests delta = 0
    with the bootstrap distribution shifted to the null (Efron & Tibshirani 1993, sec. 16.4):
    p = (1 + #{|delta* - delta| >= |delta|}) / (1 + B). Identical models give delta* = 0 and p = 1.

    Returns:
        ``{"delta", "ci_low", "ci_high", "p_value", "metric_a", "metric_b", "level", "n_boot",
        "n_valid", "method"}``.
    """
    _check_boot(n_boot, level)
    arrs = _patient_arrays(list(shared) + [pred_a, pred_b], "shared + predictions")
    sh, a, b = arrs[:-2], arrs[-2], arrs[-1]
    m_a = float(metric(*sh, a))
    m_b = float(metric(*sh, b))
    delta = m_a - m_b
    reps = []
    for idx in _resample_indices(len(a), n_boot, seed, case_ids):
        s_idx = [x[idx] for x in sh]
        reps.append(_safe(metric, s_idx + [a[idx]]) - _safe(metric, s_idx + [b[idx]]))
    reps = np.asarray(reps)
    valid = reps[np.isfinite(reps)]
    if len(valid) == 0:
        raise ValueError("the metric difference was undefined on every bootstrap replicate")
    lo, hi = np.quantile(valid, [(1 - level) / 2, (1 + level) / 2])
    # tolerance so that float noise in identical models does not count as an extreme replicate
    extreme = np.abs(valid - delta) >= abs(delta) - 1e-12
    p = (1 + int(extreme.sum())) / (1 + len(valid))
    return {
        "delta": delta, "ci_low": float(lo), "ci_high": float(hi), "p_value": float(min(1.0, p)),
        "metric_a": m_a, "metric_b": m_b, "level": level, "n_boot": n_boot, "n_valid": int(len(valid)),
        "method": "paired percentile bootstrap over patients; p from the null-shifted distribution",
    }


def paired_fold_tests(
    a: Sequence[float],  # [F] metric of model A per fold
    b: Sequence[float],  # [F] metric of model B on the same folds
    test_train_ratio: float | None = None,
) -> dict:
    """Wilcoxon signed-rank and paired t-test of per-fold metrics (scipy), two-sided.

    Cross-validation folds share most of their training patients, so their differences are
    correlated and the plain paired t-test is anti-conservative. With ``test_train_ratio``
    (n_test / n_train of a fold, 1 / (K - 1) for K-fold CV), ``ttest_corrected`` is Nadeau &
    Bengio's (2003) corrected resampled t-test: t = mean(d) / sqrt((1/F + n_test/n_train) var(d)),
    F - 1 degrees of freedom.

    Returns:
        ``{"n", "mean_diff", "wilcoxon": {"statistic", "p_value", "note"}, "ttest": {...},
        "ttest_corrected": {...}}``.
        With all differences zero both p-values are 1 (no evidence of a difference) and a note says
        so; with n < 2 the tests are not run (None). With 5 folds the exact Wilcoxon p cannot go
        below 0.0625, which the note states.
    """
    x = np.asarray(a, dtype=float)
    y = np.asarray(b, dtype=float)
    if x.ndim != 1 or x.shape != y.shape:
        raise ValueError(f"a and b must be 1-D of equal length, got {x.shape} and {y.shape}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("per-fold metrics must be finite")
    d = x - y
    n = len(d)
    out = {
        "n": n, "mean_diff": float(d.mean()) if n else None,
        "wilcoxon": {"statistic": None, "p_value": None, "note": None},
        "ttest": {"statistic": None, "p_value": None, "note": None},
        "ttest_corrected": {"statistic": None, "p_value": None,
                            "note": None if test_train_ratio is not None else "no test/train ratio given"},
    }
    if n < 2:
        note = f"n = {n} paired values: too few for a paired test"
        out["wilcoxon"]["note"] = out["ttest"]["note"] = out["ttest_corrected"]["note"] = note
        return out
    if np.all(d == 0):
        note = "all paired differences are zero: p set to 1 (no evidence of a difference)"
        out["wilcoxon"].update(statistic=0.0, p_value=1.0, note=note)
        out["ttest"].update(statistic=0.0, p_value=1.0, note=note)
        if test_train_ratio is not None:
            out["ttest_corrected"].update(statistic=0.0, p_value=1.0, note=note)
        return out
    if test_train_ratio is not None:
        if not (math.isfinite(test_train_ratio) and test_train_ratio >= 0):
            raise ValueError(f"test_train_ratio must be a finite number >= 0, got {test_train_ratio}")
        var = float(np.var(d, ddof=1))
        if var == 0:
            out["ttest_corrected"].update(statistic=math.copysign(math.inf, d[0]), p_value=0.0,
                                          note="constant non-zero difference: zero variance, t infinite")
        else:
            tc = float(d.mean()) / math.sqrt((1.0 / n + test_train_ratio) * var)
            out["ttest_corrected"].update(statistic=tc, p_value=float(2 * sps.t.sf(abs(tc), n - 1)))
    w = sps.wilcoxon(x, y, zero_method="wilcox", alternative="two-sided")
    n_nonzero = int(np.sum(d != 0))
    min_p = 2.0 / 2**n_nonzero
    note = None
    if min_p > 0.05:
        note = f"only {n_nonzero} non-zero differences: the smallest attainable two-sided p is {min_p:.4f}"
    out["wilcoxon"].update(statistic=float(w.statistic), p_value=float(w.pvalue), note=note)
    if np.all(d == d[0]):
        out["ttest"].update(statistic=math.copysign(math.inf, d[0]), p_value=0.0,
                            note="constant non-zero difference: zero variance, t infinite")
    else:
        t = sps.ttest_rel(x, y)
        out["ttest"].update(statistic=float(t.statistic), p_value=float(t.pvalue))
    return out


def km_risk_groups(
    train_risk: np.ndarray,  # [M] predicted risk of TRAINING patients (sets the threshold)
    risk: np.ndarray,  # [N] predicted risk of test patients
    time: np.ndarray,  # [N]
    event: np.ndarray,  # [N] 1 = death observed
    png: str | os.PathLike | None = None,
    title: str = "Predicted risk groups",
    time_unit: str = "months",
) -> dict:
    """Split test patients at the median TRAINING risk, log-rank test, Kaplan-Meier PNG.

    High risk = risk > threshold. The log-rank test is lifelines' ``logrank_test``; the plot uses
    ``KaplanMeierFitter`` (matplotlib Agg backend) and is written atomically.

    Returns:
        ``{"threshold", "n_low", "n_high", "events_low", "events_high", "median_survival_low",
        "median_survival_high", "logrank_statistic", "p_value", "reason", "png"}``; ``p_value`` is
        None with a ``reason`` when a group is empty.
    """
    from lifelines import KaplanMeierFitter
    from lifelines.statistics import logrank_test

    tr = np.asarray(train_risk, dtype=float)
    r = np.asarray(risk, dtype=float)
    t = np.asarray(time, dtype=float)
    e = np.asarray(event)
    if tr.ndim != 1 or len(tr) == 0:
        raise ValueError("train_risk must be a non-empty 1-D array")
    if r.ndim != 1 or t.shape != r.shape or e.shape != r.shape:
        raise ValueError(f"risk, time and event must be 1-D of equal length, got {r.shape}, {t.shape}, {e.shape}")
    if not np.isin(e, (0, 1, True, False)).all():
        raise ValueError("event must be 0/1")
    e = e.astype(bool)
    thr = float(np.median(tr))
    high = r > thr
    out = {
        "threshold": thr, "n_low": int((~high).sum()), "n_high": int(high.sum()),
        "events_low": int(e[~high].sum()), "events_high": int(e[high].sum()),
        "median_survival_low": None, "median_survival_high": None,
        "logrank_statistic": None, "p_value": None, "reason": None, "png": None,
    }
    if high.all() or (~high).all():
        out["reason"] = "one risk group is empty at the training-median threshold"
    else:
        lr = logrank_test(t[~high], t[high], event_observed_A=e[~high], event_observed_B=e[high])
        out["logrank_statistic"] = float(lr.test_statistic)
        out["p_value"] = float(lr.p_value)
    fits = {}
    for name, m in (("low", ~high), ("high", high)):
        if m.any():
            kmf = KaplanMeierFitter(label=f"{name} risk (n={int(m.sum())})").fit(t[m], e[m])
            med = kmf.median_survival_time_
            out[f"median_survival_{name}"] = float(med) if np.isfinite(med) else None
            fits[name] = kmf
    if png is not None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(5, 4), dpi=120)  # Agg canvas, no pyplot global state
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        for name, color in (("low", "tab:blue"), ("high", "tab:red")):
            if name in fits:
                fits[name].plot_survival_function(ax=ax, ci_show=True, color=color)
        p_txt = "n/a" if out["p_value"] is None else f"{out['p_value']:.3g}"
        ax.set_title(f"{title}\nlog-rank p = {p_txt}")
        ax.set_xlabel(f"time ({time_unit})")
        ax.set_ylabel("survival probability")
        ax.set_ylim(0, 1.05)
        fig.tight_layout()
        with atomic_path(png) as tmp:
            fig.savefig(tmp, format="png")
        out["png"] = str(png)
    return out


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's (1979) step-down adjustment of a family of p-values (None entries kept as None)."""
    idx = [i for i, p in enumerate(p_values) if p is not None]
    order = sorted(idx, key=lambda i: p_values[i])
    m, out, running = len(order), [None] * len(p_values), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * float(p_values[i])))
        out[i] = running
    return out
