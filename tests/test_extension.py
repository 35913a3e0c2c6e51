"""The compiled extension's CPU kernels run on torch's threads.

ATen's parallel_for is a header template: with OpenMP as torch's backend it spawns threads only in
code compiled with -fopenmp. Built without it, every CPU kernel silently ran on one thread whatever
torch.set_num_threads said (found 2026-11-27: case B took 571 ms of CPU time in 499 ms on 2 threads).
"""
from __future__ import annotations

import pytest
import torch

from pathgen import _extension as ext
from pathgen.info import collect, format_report

pytestmark = pytest.mark.skipif(not ext.HAS_OPS, reason="pathgen._C not built")


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_cpu_kernels_run_on_torchs_threads(two_threads):
    assert torch.ops.pathgen._parallel_threads(64) == 2
    assert torch.ops.pathgen._parallel_threads(1) == 1  # one item: no team


def test_one_thread_is_respected():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert torch.ops.pathgen._parallel_threads(64) == 1
    finally:
        torch.set_num_threads(before)


def test_info_reports_kernel_threads(two_threads):
    info = collect()
    assert info["kernel_threads"] == 2
    assert "the CPU kernels run on 2" in format_report(info)
