"""Figures the report draws from a run's JSON / CSV files (matplotlib Agg canvases, no pyplot state)."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

METHOD_LABELS = {"pathgen": "PathGen (synthesized)", "train_mean": "baseline: training mean",
                 "ridge": "baseline: ridge on mean patch features"}
METHOD_COLORS = {"pathgen": "tab:blue", "train_mean": "tab:gray", "ridge": "tab:orange"}


def new_figure(figsize: tuple[float, float]):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=110)
    FigureCanvasAgg(fig)
    return fig


def fidelity_bars(per_method: Mapping[str, Mapping[str, Mapping]], families: Sequence[str]):
    """Per family: per-gene Spearman median (IQR as error bars) and nMAE, PathGen vs the baselines.

    Args:
        per_method: method -> {"families": {name: block}, "overall": block}, blocks as written by
            ``pathgen.eval.metrics.fidelity_report``.
        families: family names in display order (``overall`` appended).
    """
    names = list(families) + ["overall"]
    methods = list(per_method)
    fig = new_figure((max(7.0, 1.25 * len(names) + 2), 6.2))
    axes = fig.subplots(2, 1, sharex=True)
    width = 0.8 / max(len(methods), 1)
    x = np.arange(len(names))

    def block(method, name):
        m = per_method[method]
        return (m.get("overall") if name == "overall" else (m.get("families") or {}).get(name)) or {}

    for j, method in enumerate(methods):
        med = np.array([_num(block(method, n).get("spearman_gene_median")) for n in names])
        iqr = [block(method, n).get("spearman_gene_iqr") or [np.nan, np.nan] for n in names]
        lo = med - np.array([_num(q[0]) for q in iqr])
        hi = np.array([_num(q[1]) for q in iqr]) - med
        err = np.nan_to_num(np.vstack([lo, hi]), nan=0.0).clip(min=0)
        pos = x + (j - (len(methods) - 1) / 2) * width
        color = METHOD_COLORS.get(method)
        axes[0].bar(pos, np.nan_to_num(med), width, yerr=err, capsize=2, color=color,
                    label=METHOD_LABELS.get(method, method))
        nmae = np.array([_num(block(method, n).get("nmae")) for n in names])
        axes[1].bar(pos, np.nan_to_num(nmae), width, color=color)
    axes[0].axhline(0, color="k", lw=0.6)
    axes[0].set_ylabel("per-gene Spearman\n(median, IQR bars)")
    axes[0].legend(fontsize=7, loc="best")
    axes[1].set_ylabel("nMAE (lower is better)")
    axes[1].set_xticks(x)
    axes[1].set_xticklabels([_wrap(n) for n in names], fontsize=7)
    fig.suptitle("Generator fidelity on held-out patients", fontsize=10)
    fig.tight_layout()
    return fig


def training_curves(logs: Mapping[str, "object"]):
    """Generator training log per fold: every numeric column against ``epoch`` (one panel per column)."""
    import pandas as pd

    cols = []
    for df in logs.values():
        for c in df.columns:
            if c not in ("epoch", "seconds") and c not in cols and pd.api.types.is_numeric_dtype(df[c]):
                cols.append(c)
    if not cols:
        return None
    fig = new_figure((4.0 * len(cols), 3.0))
    axes = np.atleast_1d(fig.subplots(1, len(cols)))
    for ax, c in zip(axes, cols):
        for name, df in logs.items():
            if c in df.columns:
                xs = df["epoch"] if "epoch" in df.columns else np.arange(len(df))
                ax.plot(xs, df[c], marker=".", label=name)
        ax.set_xlabel("epoch")
        ax.set_title(c, fontsize=9)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def forest(rows: Sequence[tuple[str, float | None, float | None, float | None]], xlabel: str, ref: float = 0.5):
    """Point estimates with CIs, one row per arm (``(label, estimate, low, high)``)."""
    rows = [r for r in rows if r[1] is not None]
    if not rows:
        return None
    fig = new_figure((6.4, 0.45 * len(rows) + 1.2))
    ax = fig.add_subplot()
    for i, (label, est, lo, hi) in enumerate(rows):
        y = len(rows) - 1 - i
        if lo is not None and hi is not None:
            ax.plot([lo, hi], [y, y], color="tab:blue", lw=2)
        ax.plot([est], [y], "o", color="tab:blue")
    ax.axvline(ref, color="k", lw=0.6, ls="--")
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([r[0] for r in rows][::-1], fontsize=8)
    ax.set_xlabel(xlabel)
    fig.tight_layout()
    return fig


def _num(v) -> float:
    try:
        return float(v) if v is not None else np.nan
    except (TypeError, ValueError):
        return np.nan


def _wrap(text: str, width: int = 14) -> str:
    lines, line = [], ""
    for word in str(text).split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return "\n".join(lines + ([line] if line else []))
