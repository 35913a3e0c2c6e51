"""One shape for benchmark results, whether they come from ``--benchmark-json`` or a saved baseline.

Judged figures (higher is better) are the ``extra_info`` keys that do not depend on how fast the
machine happens to be today:

- ``speedup_vs_<reference>``: reference time / our time, both timed in the same process;
- ``pct_of_floor``: achieved bandwidth as a percentage of a bandwidth probe run in the same process.

Everything else in ``extra_info`` (milliseconds, GB/s, slides/s, probe speeds) is kept as
information and never judged.

Baseline file (``benchmarks/baselines/<name>.json``)::

    {"schema": "pathgen-bench-baseline/1", "name", "created", "machine": {...}, "versions": {...},
     "commit": {"id", "dirty", "branch"}, "runs": [{"bench_size", "bench_device", "k", "paths"}],
     "benchmarks": {<node id>: {"label", "size", "group", "params", "figures": {...}, "info": {...},
                                "stats_ms": {"min", "median", "mean", "iqr", "rounds"}}}}
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import os
import statistics
from pathlib import Path
from typing import Any, Iterable

BASELINE_SCHEMA = "pathgen-bench-baseline/1"
JUDGED_PREFIXES = ("speedup_vs_", "pct_of_floor")


def is_judged(key: str) -> bool:
    """True for figures regressions are judged on (same-run ratios and % of the measured floor)."""
    return key.startswith(JUDGED_PREFIXES)


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


@dataclasses.dataclass
class BenchResult:
    """One benchmark's figures. ``name`` is pytest's node id from the repository root
    (``benchmarks/bench_x.py::test_y[case]``), so it can be re-run as is."""

    name: str
    figures: dict[str, float]
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
    stats_ms: dict[str, float] = dataclasses.field(default_factory=dict)
    params: dict[str, Any] = dataclasses.field(default_factory=dict)
    label: str | None = None
    size: str | None = None
    group: str | None = None
    spread: dict[str, float] = dataclasses.field(default_factory=dict)  # (max - min) / median over repeats

    @property
    def kernel(self) -> str:
        """``test_denoise_step[...]`` -> ``denoise_step``."""
        test = self.name.split("::")[-1].split("[")[0]
        return test[5:] if test.startswith("test_") else test

    @property
    def case(self) -> str:
        return self.name.split("[", 1)[1].rstrip("]") if "[" in self.name else ""

    def to_dict(self) -> dict:
        d = {"label": self.label, "size": self.size, "group": self.group, "params": self.params,
             "figures": self.figures, "info": self.info, "stats_ms": self.stats_ms}
        if self.spread:
            d["spread"] = self.spread
        return d

    @classmethod
    def from_pytest(cls, b: dict) -> "BenchResult":
        extra = dict(b.get("extra_info") or {})
        figures, info = {}, {}
        for k, v in extra.items():
            num = _number(v)
            if is_judged(k) and num is not None:
                figures[k] = num
            elif k not in ("label", "size"):
                info[k] = v
        stats = b.get("stats") or {}
        stats_ms = {k: round(stats[k] * 1e3, 6) for k in ("min", "median", "mean", "iqr") if _number(stats.get(k))
                    is not None}
        if "rounds" in stats:
            stats_ms["rounds"] = stats["rounds"]
        params = {k: v for k, v in (b.get("params") or {}).items()
                  if isinstance(v, (str, int, float, bool)) or v is None}
        return cls(name=b.get("fullname") or b["name"], figures=figures, info=info, stats_ms=stats_ms,
                   params=params, label=extra.get("label"), size=extra.get("size"), group=b.get("group"))

    @classmethod
    def from_baseline(cls, name: str, d: dict) -> "BenchResult":
        figures = {k: float(v) for k, v in (d.get("figures") or {}).items() if _number(v) is not None}
        spread = {k: float(v) for k, v in (d.get("spread") or {}).items() if _number(v) is not None}
        return cls(name=name, figures=figures, info=dict(d.get("info") or {}), stats_ms=dict(d.get("stats_ms") or {}),
                   params=dict(d.get("params") or {}), label=d.get("label"), size=d.get("size"), group=d.get("group"),
                   spread=spread)


@dataclasses.dataclass
class Results:
    """A set of benchmark results plus where and how they were measured."""

    benchmarks: dict[str, BenchResult]
    machine: dict[str, Any] = dataclasses.field(default_factory=dict)
    versions: dict[str, Any] = dataclasses.field(default_factory=dict)
    commit: dict[str, Any] = dataclasses.field(default_factory=dict)
    created: str = ""
    runs: list[dict] = dataclasses.field(default_factory=list)
    source: str = ""
    name: str | None = None
    kind: str = "pytest-benchmark"

    @property
    def device(self) -> str | None:
        return self.machine.get("bench_device")

    def busy(self) -> str | None:
        """A warning when the 1-minute load average exceeded the core count (a shared machine)."""
        load, cores = self.machine.get("loadavg"), self.machine.get("cpu_count")
        if load and cores and float(load[0]) > float(cores):
            return f"load average {load[0]} on {cores} cores"
        return None

    def machine_kind(self) -> str:
        """A short description used to warn when baseline and current machines differ."""
        m = self.machine
        gpu = m.get("gpu")
        dev = str(m.get("bench_device") or "cpu")
        if dev.startswith("cuda") and gpu:
            return f"{gpu}"
        return f"{m.get('cpu') or '?'} x{m.get('cpu_count') or '?'} cores"


def _machine_from_pytest(mi: dict) -> dict:
    cpu = mi.get("cpu") or {}
    extra = mi.get("pathgen") or {}
    out = {"node": mi.get("node"), "system": mi.get("system"), "release": mi.get("release"),
           "machine": mi.get("machine"), "cpu": cpu.get("brand_raw") or mi.get("processor"),
           "cpu_count": cpu.get("count")}
    out.update({k: v for k, v in extra.items() if k not in ("torch", "pathgen", "python", "run")})
    return out


def _versions_from_pytest(d: dict) -> dict:
    mi = d.get("machine_info") or {}
    extra = mi.get("pathgen") or {}
    return {"pathgen": extra.get("pathgen"), "torch": extra.get("torch"),
            "python": mi.get("python_version"), "pytest-benchmark": d.get("version")}


def load_results(path: str | os.PathLike) -> Results:
    """Read a pytest-benchmark ``--benchmark-json`` file or a saved baseline.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the JSON is neither format.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such results file")
    try:
        d = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON ({exc})") from None
    if isinstance(d, dict) and str(d.get("schema", "")).startswith("pathgen-bench-baseline/"):
        return Results(benchmarks={k: BenchResult.from_baseline(k, v) for k, v in d.get("benchmarks", {}).items()},
                       machine=d.get("machine", {}), versions=d.get("versions", {}), commit=d.get("commit", {}),
                       created=d.get("created", ""), runs=list(d.get("runs", [])), source=str(path),
                       name=d.get("name"), kind="baseline")
    if isinstance(d, dict) and isinstance(d.get("benchmarks"), list) and "machine_info" in d:
        benches = {}
        for b in d["benchmarks"]:
            r = BenchResult.from_pytest(b)
            benches[r.name] = r
        ci = d.get("commit_info") or {}
        run = (d.get("machine_info") or {}).get("pathgen", {}).get("run")
        return Results(benchmarks=benches, machine=_machine_from_pytest(d.get("machine_info") or {}),
                       versions=_versions_from_pytest(d),
                       commit={k: ci.get(k) for k in ("id", "dirty", "branch", "time")},
                       created=d.get("datetime", ""), runs=[run] if run else [], source=str(path),
                       kind="pytest-benchmark")
    raise ValueError(f"{path}: neither a pytest-benchmark JSON (keys machine_info, benchmarks) nor a "
                     f"pathgen baseline (schema {BASELINE_SCHEMA})")


def merge_results(parts: Iterable[Results]) -> Results:
    """Union of several results (later parts win for the same benchmark); metadata from the last."""
    parts = list(parts)
    if not parts:
        raise ValueError("merge_results: nothing to merge")
    merged = dataclasses.replace(parts[-1], benchmarks={}, runs=[])
    for p in parts:
        merged.benchmarks.update(p.benchmarks)
        for r in p.runs:
            if r not in merged.runs:
                merged.runs.append(r)
    merged.source = ", ".join(p.source for p in parts if p.source)
    return merged


def combine_repeats(repeats: list[Results]) -> Results:
    """Repeated measurements of the same suite -> one result: per figure the median over the
    repeats, and its spread ``(max - min) / median`` (``compare`` never judges a figure on a
    threshold tighter than the spread its own baseline showed)."""
    if not repeats:
        raise ValueError("combine_repeats: no measurements")
    out = merge_results(repeats)
    for name, b in out.benchmarks.items():
        figures, spread = {}, {}
        for fig in b.figures:
            vals = sorted(r.benchmarks[name].figures[fig] for r in repeats
                          if name in r.benchmarks and fig in r.benchmarks[name].figures)
            med = float(statistics.median(vals))
            figures[fig] = med
            if len(vals) > 1 and med > 0:
                spread[fig] = round((vals[-1] - vals[0]) / med, 4)
        out.benchmarks[name] = dataclasses.replace(b, figures=figures, spread=spread)
    return out


def make_baseline(results: Results, name: str) -> dict:
    """The JSON payload of a baseline named ``name`` from measured ``results``."""
    return {
        "schema": BASELINE_SCHEMA,
        "name": name,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "measured": results.created,
        "machine": results.machine,
        "versions": results.versions,
        "commit": results.commit,
        "runs": results.runs,
        "note": ("Judged figures: speedup_vs_* (same-run ratios) and pct_of_floor (same-run bandwidth probe); "
                 "milliseconds under info/stats_ms are for information only."),
        "benchmarks": {k: results.benchmarks[k].to_dict() for k in sorted(results.benchmarks)},
    }
