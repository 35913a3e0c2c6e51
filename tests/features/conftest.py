"""Feature tests run torch on one thread: on a shared 2-core machine, OpenMP's two threads
fight other jobs and run a ResNet forward 20x slower than one thread does."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
