"""Speedup table for people: Markdown (``speedups.md``) + bar chart (``speedups.png``).

One row per benchmark (kernel x case x size x device): every ``speedup_vs_*`` figure, the % of the
same-run bandwidth floor, and the time for information.
"""
from __future__ import annotations

import os
from pathlib import Path

from pathgen.bench.results import BenchResult, Results
from pathgen.utils.io import atomic_path, atomic_write_text

TIME_KEYS = ("fused_ms", "ours_ms", "e2e_ms", "ms")
# references that get a column and a bar series of their own, in this order; any other
# speedup_vs_* figure goes to the "other ratios" column (and, for a row with none of these, its
# largest one is drawn hatched and named)
HEADLINE = ("speedup_vs_twin", "speedup_vs_compiled", "speedup_vs_sdpa", "speedup_vs_mha", "speedup_vs_published")


def _speedup_keys(results: list[Results]) -> list[str]:
    present = {k for r in results for b in r.benchmarks.values() for k in b.figures}
    return [k for k in HEADLINE if k in present]


def _others(b: BenchResult) -> dict[str, float]:
    return {k: v for k, v in b.figures.items() if k.startswith("speedup_vs_") and k not in HEADLINE}


def _time_ms(b: BenchResult) -> float | None:
    for k in TIME_KEYS:
        v = b.info.get(k)
        if isinstance(v, (int, float)):
            return float(v)
    return b.stats_ms.get("median")


def _rows(results: list[Results]) -> list[tuple[Results, BenchResult]]:
    rows = [(r, b) for r in results for b in r.benchmarks.values()]
    size_order = {"small": 0, "realistic": 1}
    return sorted(rows, key=lambda rb: (rb[1].kernel, str(rb[0].device), size_order.get(rb[1].size or "", 2),
                                        rb[1].case))


def _device(r: Results) -> str:
    dev = str(r.device or "cpu")
    if dev.startswith("cuda") and r.machine.get("gpu"):
        return f"{dev} ({r.machine['gpu']})"
    return dev


def _x(v: float | None) -> str:
    return "" if v is None else (f"{v:.1f}x" if v < 100 else f"{v:.0f}x")


def _ms(t: float | None) -> str:
    return "" if t is None else (f"{t:.3g}" if t < 100 else f"{t:.0f}")


def provenance(r: Results) -> str:
    v, c = r.versions, r.commit
    commit = (c.get("id") or "?")[:10] + (" (dirty tree)" if c.get("dirty") else "")
    threads = r.machine.get("threads")
    tdesc = f", {threads} torch thread{'s' if threads != 1 else ''}" if threads else ""
    return (f"{r.machine_kind()}{tdesc}; torch {v.get('torch') or '?'}, "
            f"pathgen {v.get('pathgen') or '?'}, commit {commit}, measured {r.created or '?'} "
            f"(`{os.path.relpath(r.source) if r.source else '?'}`)")


def render_markdown(results: list[Results]) -> str:
    keys = _speedup_keys(results)
    has_other = any(_others(b) for r in results for b in r.benchmarks.values())
    head = ["kernel", "case", "size", "device"] + [k.replace("speedup_vs_", "vs ") for k in keys] + \
        (["other ratios"] if has_other else []) + ["% of floor", "% of roofline", "time (ms)"]
    lines = ["Speedups are ratios of times measured in the same process, interleaved (higher is better); "
             "% of floor is the achieved bandwidth over a bandwidth probe run in the same process (where the "
             "benchmark provides one, a probe moving the same bytes in the same rounds; above 100% the kernel "
             "streams faster than that probe, e.g. with more concurrent streams on one thread); % of roofline, where "
             "given, is the time against the larger of that bytes floor and the multiply-adds over a same-run GEMM "
             "probe (b: bytes bind, f: multiply-adds bind). "
             "Absolute times are for information only: these machines vary 2.5-3.7x between runs.", ""]
    for r in results:
        lines.append(f"- {provenance(r)}")
    lines += ["", "| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 4 + ["---:"] * (len(head) - 4)) + "|"]
    for r, b in _rows(results):
        floor = b.figures.get("pct_of_floor")
        roof = b.info.get("pct_of_roofline")
        roof_s = f"{roof:.0f}% ({str(b.info.get('roofline_bound', '?'))[0]})" if isinstance(roof, (int, float)) else ""
        t = _time_ms(b)
        other = ", ".join(f"{k.replace('speedup_vs_', '')} {_x(v)}" for k, v in sorted(_others(b).items()))
        cells = [b.kernel, b.case, b.size or "", _device(r)] + [_x(b.figures.get(k)) for k in keys] + \
            ([other] if has_other else []) + ["" if floor is None else f"{floor:.0f}%", roof_s, _ms(t)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def render_chart(results: list[Results], path: str | os.PathLike) -> None:
    """Horizontal bars: every speedup (log scale, 1x marked) and % of floor (100% marked)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = _rows(results)
    keys = _speedup_keys(results)
    labels = [" ".join(x for x in (b.kernel, f"[{b.case}]" if b.case and b.case != b.size else "", b.size or "",
                                    str(r.device or "cpu")) if x) for r, b in rows]
    n = max(len(rows), 1)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 1.2 + 0.42 * n), sharey=True,
                                   gridspec_kw={"width_ratios": [3, 2]})
    y = np.arange(len(rows))
    h = 0.8 / max(len(keys), 1)
    for i, k in enumerate(keys):
        vals = [b.figures.get(k, np.nan) for _, b in rows]
        ax1.barh(y - 0.4 + h * (i + 0.5), vals, height=h, label=k.replace("speedup_vs_", "vs "))
    ax1.set_xscale("log")
    ax1.axvline(1.0, color="k", lw=0.8)
    ax1.set_xlabel("speedup (same-run ratio, log scale; > 1 = faster than the reference)")
    for yi, (_, b) in enumerate(rows):  # rows with no headline reference: their largest other ratio
        other = _others(b)
        if other and not any(k in b.figures for k in keys):
            k, v = max(other.items(), key=lambda kv: kv[1])
            ax1.barh(yi, v, height=0.6, color="white", edgecolor="tab:gray", hatch="//")
            ax1.text(v, yi, f" {k.replace('speedup_vs_', 'vs ')}", va="center", fontsize=7)
    if keys:
        ax1.legend(fontsize=8, loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=len(keys), frameon=False)
    floors = [b.figures.get("pct_of_floor", np.nan) for _, b in rows]
    ax2.barh(y, floors, color="tab:gray")
    ax2.axvline(100.0, color="k", lw=0.8, ls="--")
    ax2.set_xlabel("% of the measured bandwidth floor")
    ax1.set_yticks(y)
    ax1.set_yticklabels(labels, fontsize=8)
    ax1.invert_yaxis()
    fig.suptitle("pathgen vs its references (same-run ratios)", fontsize=11, y=0.995)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def write_report(results: list[Results], out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``speedups.md`` and ``speedups.png`` into ``out_dir``; returns both paths.

    Raises:
        ValueError: no benchmarks in ``results``.
    """
    if not any(r.benchmarks for r in results):
        raise ValueError("report: the results hold no benchmarks")
    out = Path(out_dir)
    md, png = out / "speedups.md", out / "speedups.png"
    text = render_markdown(results)
    atomic_write_text(md, f"# pathgen benchmark speedups\n\n{text}\n![speedups](speedups.png)\n")
    render_chart(results, png)
    return md, png
