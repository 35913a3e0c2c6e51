"""pytest-benchmark suite configuration.

Sizes: ``--bench-size small`` (default; seconds, run by CI as a smoke test), ``realistic``, or ``all``.
Every benchmark stores its ratios and floor fractions in ``benchmark.extra_info``; a table of
them is printed at the end of the run (and lands in ``--benchmark-json`` output).
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import BandwidthProbe  # noqa: E402

_ROWS: list[dict] = []


def pytest_addoption(parser):
    parser.addoption("--bench-size", default="small", choices=["small", "realistic", "all"],
                     help="which benchmark sizes to run (default: small)")
    parser.addoption("--bench-device", default="cpu", help="device for kernel benchmarks (cpu or cuda)")


def pytest_configure(config):
    config.addinivalue_line("markers", "realistic: realistic-size benchmark (opt-in with --bench-size)")


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
def report(benchmark, probe):
    """Call ``report(name, **figures)`` to store figures in extra_info and the summary table."""

    def _report(name: str, **figures):
        figures = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in figures.items()}
        benchmark.extra_info.update(probe.as_dict())
        benchmark.extra_info.update(figures)
        _ROWS.append({"name": name, **figures})

    return _report


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
