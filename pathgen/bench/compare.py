"""Verdicts: a judged figure (higher is better) regresses when it falls more than its threshold
below the baseline in EVERY one of ``needed`` measurements (default two: the run, then a re-run of
just the regressed benchmarks). A single noisy blip is reported, never failed on.

Thresholds: ``threshold`` (default 10%) for the ``speedup_vs_*`` ratios; ``floor_threshold``
(default 25%) for ``pct_of_floor``, whose probe competes with the neighbours for DRAM differently
from the kernel: on unchanged code it moved by -13%/-24% (two measurements, denoise_step 4096x5000)
where the ratios to the twin stayed within 10% on the re-run; a kernel made deliberately slower
moved it by -54% to -71%. A baseline saved with ``--repeat N`` records each figure's spread over
its repeats, ``(max - min) / median``; a figure is never judged on a limit tighter than that
(capped at 90%).

Verdicts per (benchmark, figure):

- ``improved``    first measurement above baseline x (1 + threshold)
- ``ok``          within the threshold
- ``noise``       below the threshold once, but a repeated measurement was not: not a regression
- ``unconfirmed`` below the threshold in every measurement so far, fewer than ``needed`` of them
- ``REGRESSED``   below the threshold in ``needed`` measurements: the exit code is 1
- ``missing`` / ``new``: the figure exists on one side only (listed, never a failure)
"""
from __future__ import annotations

import dataclasses

from pathgen.bench.results import Results

IMPROVED, OK, NOISE, UNCONFIRMED, REGRESSED, MISSING, NEW = (
    "improved", "ok", "noise", "unconfirmed", "REGRESSED", "missing", "new")


@dataclasses.dataclass
class Row:
    benchmark: str
    figure: str
    baseline: float | None
    current: list[float]  # one value per measurement that covered this benchmark, in order
    verdict: str
    label: str | None = None
    limit: float | None = None  # the threshold this figure was judged on

    def change(self, i: int = 0) -> float | None:
        """Relative change of measurement ``i`` against the baseline (-0.25 = 25% worse)."""
        if self.baseline is None or i >= len(self.current) or self.baseline <= 0:
            return None
        return self.current[i] / self.baseline - 1.0


@dataclasses.dataclass
class Comparison:
    rows: list[Row]
    missing: list[str]  # benchmarks in the baseline that were not measured
    new: list[str]  # benchmarks measured that the baseline lacks
    threshold: float
    needed: int
    floor_threshold: float = 0.25
    unjudged: list[str] = dataclasses.field(default_factory=list)  # on both sides, but no judged figure

    def count(self, verdict: str) -> int:
        return sum(r.verdict == verdict for r in self.rows)

    def needs_rerun(self) -> list[str]:
        """Benchmarks with a regression not yet seen in ``needed`` measurements."""
        return sorted({r.benchmark for r in self.rows if r.verdict == UNCONFIRMED})

    @property
    def regressed(self) -> bool:
        return self.count(REGRESSED) > 0

    @property
    def exit_code(self) -> int:
        return 1 if self.regressed else 0


def _verdict(base: float, values: list[float], threshold: float, needed: int) -> str:
    if base <= 0:  # no meaningful ratio against a zero baseline
        return OK
    low = base * (1.0 - threshold)
    if values[0] >= low:
        return IMPROVED if values[0] > base * (1.0 + threshold) else OK
    if any(v >= low for v in values[1:]):
        return NOISE
    return REGRESSED if len(values) >= needed else UNCONFIRMED


def threshold_for(figure: str, threshold: float, floor_threshold: float) -> float:
    return floor_threshold if figure.startswith("pct_of_floor") else threshold


def compare_runs(baseline: Results, measurements: list[Results], threshold: float = 0.10,
                 needed: int = 2, floor_threshold: float = 0.25) -> Comparison:
    """Judge ``measurements`` (the full run first, then any re-runs, which may cover only some
    benchmarks) against ``baseline``.

    Raises:
        ValueError: no measurements, a threshold outside (0, 1), or ``needed`` < 1.
    """
    if not measurements:
        raise ValueError("compare_runs: no measurements")
    if not (0 < threshold < 1 and 0 < floor_threshold < 1):
        raise ValueError(f"thresholds must be in (0, 1), got {threshold} and {floor_threshold}")
    if needed < 1:
        raise ValueError(f"needed must be >= 1, got {needed}")
    first = measurements[0]
    rows: list[Row] = []
    for name in sorted(set(baseline.benchmarks) & set(first.benchmarks)):
        b, c = baseline.benchmarks[name], first.benchmarks[name]
        label = c.label or b.label
        for fig in sorted(set(b.figures) | set(c.figures)):
            if fig not in c.figures:
                rows.append(Row(name, fig, b.figures[fig], [], MISSING, label))
                continue
            values = [m.benchmarks[name].figures[fig] for m in measurements
                      if name in m.benchmarks and fig in m.benchmarks[name].figures]
            if fig not in b.figures:
                rows.append(Row(name, fig, None, values, NEW, label))
                continue
            # never tighter than the spread the baseline's own repeats showed
            thr = max(threshold_for(fig, threshold, floor_threshold), b.spread.get(fig, 0.0))
            thr = min(thr, 0.9)
            rows.append(Row(name, fig, b.figures[fig], values, _verdict(b.figures[fig], values, thr, needed), label,
                            thr))
    missing = sorted(set(baseline.benchmarks) - set(first.benchmarks))
    new = sorted(set(first.benchmarks) - set(baseline.benchmarks))
    judged = {r.benchmark for r in rows}
    unjudged = sorted(n for n in set(baseline.benchmarks) & set(first.benchmarks) if n not in judged)
    return Comparison(rows, missing, new, threshold, needed, floor_threshold, unjudged)


def _short(name: str) -> str:
    return name[len("benchmarks/"):] if name.startswith("benchmarks/") else name


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:+.1f}%"


def format_table(cmp: Comparison, markdown: bool = False) -> str:
    """The compare table (benchmark, figure, baseline, current, change, re-run, verdict) + summary."""
    header = ["benchmark", "figure", "baseline", "current", "change", "re-run", "limit", "verdict"]
    body = []
    for r in cmp.rows:
        rerun = "-"
        if len(r.current) > 1:
            rerun = ", ".join(f"{_fmt(v)} ({_pct(r.change(i))})" for i, v in enumerate(r.current[1:], start=1))
        limit = "-" if r.limit is None else f"-{100 * r.limit:.0f}%"
        body.append([_short(r.benchmark), r.figure, _fmt(r.baseline), _fmt(r.current[0] if r.current else None),
                     _pct(r.change(0)), rerun, limit, r.verdict])
    lines = []
    if markdown:
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join("---" for _ in header) + "|")
        lines += ["| " + " | ".join(row) + " |" for row in body]
    else:
        widths = [max(len(h), *(len(row[i]) for row in body)) if body else len(h) for i, h in enumerate(header)]
        fmt = "  ".join(f"{{:{'<' if i < 2 or i == 7 else '>'}{w}}}" for i, w in enumerate(widths))
        lines.append(fmt.format(*header))
        lines.append("  ".join("-" * w for w in widths))
        lines += [fmt.format(*row) for row in body]
    for title, names in (("missing (in the baseline, not measured now)", cmp.missing),
                         ("new (measured now, not in the baseline)", cmp.new),
                         ("not judged (no speedup_vs_* or pct_of_floor figure)", cmp.unjudged)):
        if names:
            lines.append(f"{title}:")
            lines += [f"  {_short(n)}" for n in names]
    lines.append(summary_line(cmp))
    return "\n".join(lines)


def summary_line(cmp: Comparison) -> str:
    parts = [f"{cmp.count(v)} {v}" for v in (IMPROVED, OK, NOISE, UNCONFIRMED, REGRESSED, MISSING, NEW)
             if cmp.count(v)]
    limits = f"its limit ({cmp.threshold:.0%} speedups, {cmp.floor_threshold:.0%} % of floor, or the baseline's spread)"
    verdict = (f"FAIL: {cmp.count(REGRESSED)} figure(s) regressed by more than {limits} "
               f"in {cmp.needed} measurements" if cmp.regressed else
               f"PASS: no figure regressed by more than {limits} in {cmp.needed} measurements")
    extra = ""
    if cmp.count(UNCONFIRMED):
        extra = f" ({cmp.count(UNCONFIRMED)} unconfirmed: re-run to confirm)"
    return f"{len(cmp.rows)} figures: {', '.join(parts) or 'none'}. {verdict}{extra}"
