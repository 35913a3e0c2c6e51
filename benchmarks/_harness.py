"""Timing helpers shared by every benchmark: same-run references, not absolute milliseconds.

These machines swing 2.5-3.7x in memory bandwidth between runs, so every kernel timing is also
reported as (a) a ratio to alternatives timed in the same process, interleaved round-robin, and
(b) a fraction of the memory-bandwidth floor measured by a probe in the same process.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch


def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def interleaved_medians(fns: dict[str, Callable[[], object]], device, rounds: int = 7,
                        warmup: int = 2, inner: int = 1) -> dict[str, float]:
    """Median seconds per call of each fn, timed round-robin so drift hits all alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync(device)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            sync(device)
            times[name].append((time.perf_counter() - t0) / inner)
    return {k: statistics.median(v) for k, v in times.items()}


class BandwidthProbe:
    """Measured memory bandwidth of this process's device, right now.

    read:   ``x.sum()`` over a large buffer (bytes read / s)            -> floors of read-only kernels
    stream: ``torch.add(a, b, out=c)`` (2 reads + 1 write per element)  -> floors of streaming kernels
    """

    def __init__(self, device: str | torch.device = "cpu", mbytes: int = 512, rounds: int = 5):
        self.device = torch.device(device)
        n = mbytes * 2**20 // 4
        a = torch.rand(n, device=self.device)
        b = torch.rand(n, device=self.device)
        c = torch.empty_like(a)
        med = interleaved_medians({"read": lambda: a.sum(), "stream": lambda: torch.add(a, b, out=c)},
                                  self.device, rounds=rounds, warmup=1)
        self.read_gbs = 4 * n / med["read"] / 1e9
        self.stream_gbs = 12 * n / med["stream"] / 1e9
        del a, b, c

    def as_dict(self) -> dict:
        return {"probe_read_GBps": round(self.read_gbs, 2), "probe_stream_GBps": round(self.stream_gbs, 2)}


def floor_fraction(bytes_moved: int, seconds: float, probe_gbs: float) -> float:
    """Achieved bandwidth over the probe's: 1.0 means at the measured floor."""
    return bytes_moved / seconds / 1e9 / probe_gbs
