"""The compiled extension's CPU kernels run on torch's threads.

ATen's parallel_for is a header template: with OpenMP as torch's backend it spawns threads only in
code compiled with -fopenmp. Built without it, every CPU kernel silently ran on one thread whatever
torch.set_num_threads said (found 2026-11-27: case B took 499 ms of CPU time in 499 ms wall on 2 threads).
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from pathgen import _extension as ext
from pathgen.info import collect, format_report, thp_mode

pytestmark = pytest.mark.skipif(not ext.HAS_OPS, reason="pathgen._C not built")


@pytest.fixture
def set_threads():
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


@pytest.fixture
def two_threads(set_threads):
    set_threads(2)


def test_cpu_kernels_run_on_torchs_threads(two_threads):
    assert torch.ops.pathgen._parallel_threads(64) == 2
    assert torch.ops.pathgen._parallel_threads(1) == 1  # one item: no team


def test_one_thread_is_respected(set_threads):
    set_threads(1)
    assert torch.ops.pathgen._parallel_threads(64) == 1


def test_info_reports_kernel_threads(two_threads):
    info = collect()
    assert info["kernel_threads"] == 2
    assert "the CPU kernels run on 2" in format_report(info)


def test_cli_asks_for_huge_pages_before_torch_loads():
    """`pathgen` sets THP_MEM_ALLOC_ENABLE before torch's first allocation; a user's value wins."""
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    out = subprocess.run([sys.executable, "-m", "pathgen", "info"], env=env, capture_output=True, text=True,
                         check=True).stdout
    assert "huge pages for tensors: asked (THP_MEM_ALLOC_ENABLE)" in out
    out = subprocess.run([sys.executable, "-m", "pathgen", "info"], env={**env, "THP_MEM_ALLOC_ENABLE": "0"},
                         capture_output=True, text=True, check=True).stdout
    assert "huge pages for tensors: not asked" in out


@pytest.mark.skipif(thp_mode() not in ("always", "madvise") or not os.path.exists("/proc/self/smaps_rollup"),
                    reason="no transparent huge pages on this system")
def test_large_tensors_land_on_huge_pages():
    """What the setting buys: torch then backs a large tensor with huge pages (a new process, since
    torch reads the variable once)."""
    code = ("from pathgen.cli import huge_pages_for_tensors; huge_pages_for_tensors()\n"
            "import torch\nx = torch.ones(32 * 2**20)\n"
            "print(next(l.split()[1] for l in open('/proc/self/smaps_rollup') if l.startswith('AnonHugePages')))")
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    kib = int(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                             check=True).stdout.strip())
    assert kib >= 2048, f"a 128 MiB tensor got {kib} KiB of huge pages"
