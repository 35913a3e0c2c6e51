"""Timing helpers shared by every benchmark: same-run references, not absolute milliseconds.

These machines swing 2.5-3.7x in memory bandwidth between runs, so every kernel timing is also
reported as (a) a ratio to alternatives timed in the same process, interleaved round-robin, and
(b) a fraction of the memory-bandwidth floor measured by a probe in the same process.

Byte accounting (one rule for kernels and probes alike, ``stream_bytes``): bytes read count once;
bytes written with plain stores count ``write_allocate(device)`` times: twice on a CPU, whose
plain store first reads the destination line for ownership (write-allocate), so writing a line
moves it in and out; once on a GPU (full-sector writes are not read). The CPU stream probe used
to count 12 bytes per element while moving 16, and the kernel's bytes counted each write once too:
with writes a smaller share of the kernel's bytes (1 in 4 or 5) than of the probe's (1 in 3), the
probe looked slower per counted byte than the kernel, and denoise_step measured 107-111 % of its
"floor" (``cpu-2core.json``) from the accounting alone.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch


def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def write_allocate(device) -> int:
    """Bytes moved per byte written with plain (not streaming) stores: 2 on a CPU (read for
    ownership, then written back), 1 on a GPU."""
    return 2 if torch.device(device).type == "cpu" else 1


def stream_bytes(read: int, written: int, device) -> int:
    """Bytes a kernel moves that reads ``read`` bytes and writes ``written`` bytes with plain stores
    (write-allocate counted, see the module docstring): what its floor must be sized by."""
    return read + write_allocate(device) * written


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


def interleaved_best(fns: dict[str, Callable[[], object]], device, min_rounds: int = 5, max_rounds: int = 200,
                     min_time: float = 0.5, warmup: int = 2, floor_bytes: int | None = None,
                     floor_kind: str = "stream") -> dict[str, float]:
    """Fastest seconds per call of each fn over round-robin rounds: the estimator to take ratios of.

    With ``floor_bytes`` (the bytes the kernel must move, counted by ``stream_bytes``), a bandwidth
    probe moving the same bytes by the same rule joins the rounds as ``"floor"``:
    ``torch.add(a, b, out=c)`` for ``floor_kind="stream"`` (2 reads + 1 write-allocated write per
    element: 16 bytes on a CPU, 12 on a GPU), ``a.sum()`` for ``"read"`` (reads only; as a floor
    for a kernel that also writes, its counted bytes include the write-allocate). Above
    ``FLOOR_MAX_BYTES`` the probe passes several times over a buffer of that size (far beyond
    any cache), so it moves the same bytes without allocating them. ``100 * best["floor"] /
    best["fused"]`` is then the % of the floor measured in the same rounds and at the same cache
    level as the kernel. A probe
    timed once per session is not: on the shared VM, denoise_step 256x1000 measured 193% of the
    session probe in one run and 132% and 139% in the next two, with the same code.

    Rounds continue until every fn has run ``min_rounds`` times and all of them together for
    ``min_time`` seconds (at most ``max_rounds`` rounds), so sub-millisecond kernels get hundreds
    of tries and a one-second twin five. On a shared 2-core VM the median is useless for ratios: a reference made
    of many small parallel ops loses whole scheduler slices at every barrier whenever another
    process holds a core, which inflated the median twin/fused ratio of denoise_step at 256x1000
    from ~2.5 to 28-467 in six back-to-back runs, while the ratio of the fastest rounds stayed at
    2.1-2.8 (load average 5-6 on 2 cores).
    """
    if floor_bytes:
        fns = {**fns, "floor": _floor_fn(floor_bytes, floor_kind, device)}
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync(device)
    best = {k: float("inf") for k in fns}
    total = {k: 0.0 for k in fns}
    rounds = 0
    while rounds < max_rounds and (rounds < min_rounds or sum(total.values()) < min_time):
        for name, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            dt = time.perf_counter() - t0
            best[name] = min(best[name], dt)
            total[name] += dt
        rounds += 1
    return best


FLOOR_MAX_BYTES = 512 * 2**20  # the largest buffer a same-round probe allocates


def _floor_fn(nbytes: int, kind: str, device) -> Callable[[], object]:
    if kind not in ("stream", "read"):
        raise ValueError(f"floor_kind must be 'stream' or 'read', got {kind!r}")
    passes = max(1, -(-nbytes // FLOOR_MAX_BYTES))  # ceil
    per_pass = nbytes // passes
    if kind == "stream":  # 2 reads + 1 write of n fp32 each, the write counted with write-allocate
        n = max(per_pass // stream_bytes(8, 4, device), 1)
        a, b = torch.rand(n, device=device), torch.rand(n, device=device)
        c = torch.empty_like(a)

        def fn():
            for _ in range(passes):
                torch.add(a, b, out=c)
        return fn
    a = torch.rand(max(per_pass // 4, 1), device=device)

    def fn():
        for _ in range(passes):
            a.sum()
    return fn


class BandwidthProbe:
    """Measured memory bandwidth of this process's device, right now.

    read:   ``x.sum()`` over a large buffer (bytes read / s)            -> floors of read-only kernels
    stream: ``torch.add(a, b, out=c)`` (2 reads + 1 write per element, the write counted with
            write-allocate: 16 bytes per element on a CPU, 12 on a GPU) -> floors of streaming kernels

    Timed once per session: information only (``pct_of_session_probe``); judged floors come from a
    probe in the same rounds as the kernel (``interleaved_best(..., floor_bytes=...)``).
    """

    def __init__(self, device: str | torch.device = "cpu", mbytes: int = 512, rounds: int = 5):
        self.device = torch.device(device)
        n = mbytes * 2**20 // 4
        a = torch.rand(n, device=self.device)
        b = torch.rand(n, device=self.device)
        c = torch.empty_like(a)
        # the floor is the best the machine does right now: fastest rounds, not the median
        best = interleaved_best({"read": lambda: a.sum(), "stream": lambda: torch.add(a, b, out=c)},
                                self.device, min_rounds=rounds, max_rounds=max(rounds, 20), min_time=1.0, warmup=1)
        self.read_gbs = 4 * n / best["read"] / 1e9
        self.stream_gbs = stream_bytes(8 * n, 4 * n, self.device) / best["stream"] / 1e9
        del a, b, c

    def as_dict(self) -> dict:
        return {"probe_read_GBps": round(self.read_gbs, 2), "probe_stream_GBps": round(self.stream_gbs, 2)}


def floor_fraction(bytes_moved: int, seconds: float, probe_gbs: float) -> float:
    """Achieved bandwidth over the probe's: 1.0 means at the measured floor."""
    return bytes_moved / seconds / 1e9 / probe_gbs
