"""denoise_step: fused kernel vs the eager twin vs ``torch.compile`` of the twin.

Bytes floor per step: read x_t, model output (twice with guidance) and noise, write once. The
write is a plain store, so on a CPU it is counted twice (the line is read for ownership first), as
the same-round stream probe's write is (``_harness.stream_bytes``): both sides by one rule, so the
% of floor cannot pass 100 for a reason of accounting. (Counting the kernel's write once against
a probe counted at 12 bytes per element but moving 16 gave 107-111 % at the realistic size.)
Both the fused op and the compiled twin write into a preallocated ``out`` (a fresh 80 MB output
costs ~2.5x on CPU in first-touch page faults; PERFORMANCE.md 3.2).
"""
from __future__ import annotations

import pytest
import torch

from _harness import floor_fraction, interleaved_best, stream_bytes
from pathgen.diffusion import NoiseSchedule
from pathgen.ops import denoise_step, has_kernel
from pathgen.ops.reference import denoise_step_ref

SIZES = [pytest.param(256, 1000, id="B256xG1000"),
         pytest.param(4096, 5000, id="B4096xG5000", marks=pytest.mark.realistic)]


@pytest.mark.parametrize("guided", [False, True], ids=["plain", "cfg"])
@pytest.mark.parametrize("B,G", SIZES)
def test_denoise_step(benchmark, report, probe, bench_device, B, G, guided):
    if not has_kernel("denoise_step", bench_device):
        pytest.skip(f"no fused denoise_step kernel for {bench_device}")
    dev = bench_device
    ac = NoiseSchedule().alphas_cumprod.to(dev)
    x, m, n = (torch.randn(B, G, device=dev) for _ in range(3))
    mu = torch.randn(B, G, device=dev) if guided else None
    w = 2.0 if guided else None
    t = torch.randint(1, 1000, (B,), device=dev)
    tp = (t - 20).clamp(min=-1)
    out = torch.empty_like(x)
    kw = dict(mode="ddpm", noise=n, guidance_scale=w, model_output_uncond=mu)

    # correctness first
    want = denoise_step_ref(x, m, t, tp, ac, **kw)
    got = denoise_step(x, m, t, tp, ac, out=out, **kw)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)

    compiled = torch.compile(denoise_step_ref)
    fns = {
        "fused": lambda: denoise_step(x, m, t, tp, ac, out=out, **kw),
        "twin": lambda: denoise_step_ref(x, m, t, tp, ac, **kw),
        "compiled_twin": lambda: compiled(x, m, t, tp, ac, out=out, **kw),
    }
    n_read = 3 + (1 if guided else 0)  # x, m, noise (+ m_uncond) read; out written (write-allocate counted)
    one = x.numel() * x.element_size()
    nbytes = stream_bytes(n_read * one, one, dev)
    # fastest interleaved rounds (ratios that survive a busy machine), with a streaming probe of the
    # same bytes in the same rounds as the floor
    med = interleaved_best(fns, dev, floor_bytes=nbytes)
    benchmark.pedantic(fns["fused"], rounds=10, warmup_rounds=2)
    report(f"denoise_step[{B}x{G},{'cfg' if guided else 'plain'},{dev.type}]",
           fused_ms=med["fused"] * 1e3, twin_ms=med["twin"] * 1e3, compiled_ms=med["compiled_twin"] * 1e3,
           speedup_vs_twin=med["twin"] / med["fused"], speedup_vs_compiled=med["compiled_twin"] / med["fused"],
           GBps=nbytes / med["fused"] / 1e9,
           floor_GBps=nbytes / med["floor"] / 1e9, pct_of_floor=100 * med["floor"] / med["fused"],
           pct_of_session_probe=100 * floor_fraction(nbytes, med["fused"], probe.stream_gbs))
