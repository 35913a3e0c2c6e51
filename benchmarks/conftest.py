"""pytest-benchmark suite configuration.

Sizes: ``--bench-size small`` (default; seconds, run by CI as a smoke test), ``realistic``, or ``all``.
Every benchmark stores its ratios and floor fractions in ``benchmark.extra_info``; a table of
them is printed at the end of the run (and lands in ``--benchmark-json`` output).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from pathgen.cli import huge_pages_for_tensors

huge_pages_for_tensors()  # as the `pathgen` command runs (before torch's first allocation)
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import BandwidthProbe  # noqa: E402

_ROWS: list[dict] = []


def pytest_addoption(parser):
    parser.addoption("--bench-size", default="small", choices=["small", "realistic", "all"],
                     help="which benchmark sizes to run (default: small)")
    parser.addoption("--bench-device", default="cpu", help="device for kernel benchmarks (cpu or cuda)")
    parser.addoption("--bench-threads", type=int, default=None,
                     help="torch CPU threads (default: torch's own). Regression baselines on shared 2-core "
                          "VMs use 1: with 2 threads a busy neighbour stalls every parallel region, see "
                          "benchmarks/README.md")


def _steady_malloc() -> bool:
    """glibc: serve allocations under 32 MB from the heap and never trim it.

    glibc's mmap threshold adapts to what a process freed before, so one process maps fresh pages
    (and page-faults) for every 1 MB temporary of the eager twin while the next reuses its heap: the
    same twin/fused ratio of denoise_step (cfg, 256x1000, 1 thread) measured 17, 24, 4.6 and 3.8 in
    four processes, and 3.5-3.9 in eight of nine with the threshold fixed. Fixing it gives every
    reference its steady-state allocator (the fast one), in every run.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        return bool(libc.mallopt(M_MMAP_THRESHOLD, 32 * 2**20) and libc.mallopt(M_TRIM_THRESHOLD, 2**30))
    except (OSError, AttributeError):  # not glibc
        return False


def pytest_configure(config):
    config.addinivalue_line("markers", "realistic: realistic-size benchmark (opt-in with --bench-size)")
    config._pathgen_steady_malloc = _steady_malloc()
    if config.getoption("--bench-threads"):
        torch.set_num_threads(config.getoption("--bench-threads"))


def pytest_collection_modifyitems(config, items):
    size = config.getoption("--bench-size")
    for item in items:
        realistic = item.get_closest_marker("realistic") is not None
        if size == "small" and realistic:
            item.add_marker(pytest.mark.skip(reason="realistic size: run with --bench-size realistic"))
        if size == "realistic" and not realistic:
            item.add_marker(pytest.mark.skip(reason="small size: run with --bench-size small"))


@pytest.fixture(scope="session")
def bench_device(request) -> torch.device:
    dev = torch.device(request.config.getoption("--bench-device"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    return dev


@pytest.fixture(scope="session")
def probe(bench_device) -> BandwidthProbe:
    return BandwidthProbe(bench_device)


@pytest.fixture
def report(benchmark, probe, request):
    """Call ``report(name, **figures)`` to store figures in extra_info and the summary table.

    Judged by ``pathgen bench compare`` (higher is better): ``speedup_vs_<reference>`` (same-run
    ratios) and ``pct_of_floor``; everything else (ms, GB/s, slides/s) is information only.
    """

    def _report(name: str, **figures):
        figures = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in figures.items()}
        benchmark.extra_info.update(probe.as_dict())
        benchmark.extra_info.update(
            label=name, size="realistic" if request.node.get_closest_marker("realistic") else "small")
        benchmark.extra_info.update(figures)
        _ROWS.append({"name": name, **figures})

    return _report


def pytest_benchmark_update_machine_info(config, machine_info):
    """Record what ``pathgen bench`` needs to compare and re-run: versions, threads, device, the run."""
    import os

    import pathgen

    dev = config.getoption("--bench-device")
    cuda = torch.device(dev).type == "cuda" and torch.cuda.is_available()
    targets = []
    for arg in config.args:
        path, sep, rest = str(arg).partition("::")
        if os.path.isabs(path):
            path = os.path.relpath(path, config.rootpath)
        targets.append(path + sep + rest)
    machine_info["pathgen"] = {
        "pathgen": pathgen.__version__, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "bench_device": dev, "gpu": torch.cuda.get_device_name(torch.device(dev)) if cuda else None,
        "loadavg": [round(x, 2) for x in os.getloadavg()],  # at the end of the run: was the machine shared?
        "steady_malloc": getattr(config, "_pathgen_steady_malloc", False),
        "thp_alloc": os.environ.get("THP_MEM_ALLOC_ENABLE"),  # huge pages for tensors (pathgen/cli.py)
        "run": {"bench_size": config.getoption("--bench-size"), "bench_device": dev,
                "bench_threads": config.getoption("--bench-threads"),
                "k": config.getoption("keyword") or None, "paths": targets},
    }


def pytest_terminal_summary(terminalreporter):
    if not _ROWS:
        return
    tr = terminalreporter
    tr.section("pathgen benchmark figures (ratios from one run; % of the same-run bandwidth floor)")
    keys = []
    for row in _ROWS:
        for k in row:
            if k != "name" and k not in keys:
                keys.append(k)
    tr.write_line(" | ".join(["benchmark"] + keys))
    for row in _ROWS:
        tr.write_line(" | ".join([row["name"]] + [str(row.get(k, "")) for k in keys]))
