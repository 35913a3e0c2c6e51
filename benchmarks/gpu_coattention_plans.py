"""CUDA co-attention launch plans, timed side by side at the realistic sizes (GPU only).

    python benchmarks/gpu_coattention_plans.py [--json OUT.json] [--reps 20]

For case A (folded: 16 slides, n ~ U[2k, 40k], M = 6, H = 8 over one KV head of D = 1024) and
case B (unfolded: H = Hkv = 8, D = 128), in float32 and bfloat16, times (median
of --reps after warm-up, inputs rotated so repeats do not run out of L2):
  tc          the tensor-core kernel (default plan)
  direct      operands loaded straight from global memory (PATHGEN_COATTN_TC_STAGED=0), rows per CTA
              at its default (32); direct-rm3: 48
  staged      operands through per-warp cp.async rings in shared memory (PATHGEN_COATTN_TC_STAGED=1),
              48 rows per CTA; staged-rm2: 32; staged-ctas2/8: splits sized for 2 / 8 CTAs per SM
  *-pf1/pf2   key tiles prefetched into L2 ahead of the CTA: one / two (default none)
  generic     the CUDA-core kernel (PATHGEN_COATTN_TC=0)
Plans are timed round-robin (one launch of each per round), so clock and thermal drift hit all alike.
  sdpa        F.scaled_dot_product_attention on padded tensors with a mask (no weights)
  twin        the pure-PyTorch twin
and checks each plan's output against the twin first. Floor: bytes of X (A) or K and V (B) read
once over the device-to-device copy bandwidth measured in the same run (bytes read + written).
"""
from __future__ import annotations

import argparse
import json
import math
import os

import torch
import torch.nn.functional as F

from _harness import interleaved_medians
from pathgen.ops import coattention, cu_seqlens_from_lengths, pad_bags
from pathgen.ops.reference import coattention_ref

PLANS = {
    "tc": {},
    "direct": {"PATHGEN_COATTN_TC_STAGED": "0"},
    "direct-rm3": {"PATHGEN_COATTN_TC_STAGED": "0", "PATHGEN_COATTN_TC_MAXRM": "3"},
    "direct-pf1": {"PATHGEN_COATTN_TC_STAGED": "0", "PATHGEN_COATTN_TC_PREFETCH": "1"},
    "staged": {"PATHGEN_COATTN_TC_STAGED": "1"},
    "staged-pf1": {"PATHGEN_COATTN_TC_STAGED": "1", "PATHGEN_COATTN_TC_PREFETCH": "1"},
    "staged-pf2": {"PATHGEN_COATTN_TC_STAGED": "1", "PATHGEN_COATTN_TC_PREFETCH": "2"},
    "staged-rm2": {"PATHGEN_COATTN_TC_STAGED": "1", "PATHGEN_COATTN_TC_MAXRM": "2"},
    "staged-ctas2": {"PATHGEN_COATTN_TC_STAGED": "1", "PATHGEN_COATTN_TC_CTAS_PER_SM": "2"},
    "staged-ctas8": {"PATHGEN_COATTN_TC_STAGED": "1", "PATHGEN_COATTN_TC_CTAS_PER_SM": "8"},
    "generic": {"PATHGEN_COATTN_TC": "0"},
}
KNOBS = sorted({k for p in PLANS.values() for k in p})


def with_env(env: dict[str, str]):
    for k in KNOBS:
        os.environ.pop(k, None)
    os.environ.update(env)


def with_plan(fn, env: dict[str, str]):
    """fn run under a launch plan (the variables are read per call, so setting them costs microseconds)."""
    def run():
        with_env(env)
        return fn()
    return run


def ms(fns: dict, reps: int) -> dict[str, float]:
    """Median milliseconds per fn, timed round-robin (benchmarks/_harness.py)."""
    return {k: v * 1e3 for k, v in interleaved_medians(fns, "cuda", rounds=reps, warmup=3).items()}


def kernel_table(fn, title: str, reps: int = 5) -> None:
    """Device time per CUDA kernel of fn (default plan), averaged over reps calls."""
    from torch.profiler import ProfilerActivity, profile
    with_env({})
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    print(f"-- kernels of the default plan, {title} ({reps} calls)")
    try:
        table = prof.key_averages().table(sort_by="device_time_total", row_limit=6, max_name_column_width=60)
    except (KeyError, AttributeError, ValueError):
        table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=6, max_name_column_width=60)
    print(table)


def copy_gbs() -> float:
    x = torch.empty(512 * 2**20, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    return 2 * x.numel() / ms({"copy": lambda: y.copy_(x)}, 20)["copy"] / 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--profile", action="store_true", help="also print the default plan's CUDA kernels (torch.profiler)")
    a = ap.parse_args()
    dev = torch.device("cuda")
    bw = copy_gbs()
    print(f"{torch.cuda.get_device_name()}  copy bandwidth {bw:.0f} GB/s (read + write)")
    g = torch.Generator().manual_seed(1234)
    lens = torch.randint(2000, 40001, (16,), generator=g).tolist()
    n, n_max, B, M, H, E = sum(lens), max(lens), 16, 6, 8, 1024
    cu = cu_seqlens_from_lengths(lens, device=dev)
    rows, profiled = [], []
    for case in ("A", "B"):
        for dtype in (torch.float32, torch.bfloat16):
            torch.manual_seed(0)
            sets = []
            for _ in range(2):  # two input sets, alternated
                if case == "A":
                    D = E
                    x = torch.randn(n, 1, D, device=dev, dtype=dtype)
                    q = torch.randn(B, M, H, D, device=dev, dtype=dtype) / math.sqrt(D)
                    k = v = x
                else:
                    D = E // H
                    q = torch.randn(B, M, H, D, device=dev, dtype=dtype)
                    k = torch.randn(n, H, D, device=dev, dtype=dtype)
                    v = torch.randn(n, H, D, device=dev, dtype=dtype)
                sets.append((q, k, v))
            nbytes = (1 if case == "A" else 2) * n * k.shape[1] * D * k.element_size()
            floor_ms = nbytes / (bw * 1e9) * 1e3
            scale = D**-0.5
            q, k, v = sets[0]
            want = coattention_ref(q, k, v, cu, n_max, scale=scale, return_probs=True)
            res = {"case": case, "dtype": str(dtype).split(".")[-1], "floor_ms": floor_ms}
            it = [0]

            def nxt():
                it[0] ^= 1
                return sets[it[0]]

            fns = {}
            for plan, env in PLANS.items():
                with_env(env)
                got = coattention(q, k, v, cu, n_max, scale=scale, return_probs=True)
                tol = 1e-4 if dtype == torch.float32 else 2e-2
                ok = True
                try:
                    torch.testing.assert_close(got[0].float(), want[0].float(), atol=tol, rtol=tol)
                    torch.testing.assert_close(got[2], want[2], atol=tol * 1e-2, rtol=tol)
                except AssertionError as e:
                    ok = False
                    print(f"  {case} {res['dtype']} {plan}: MISMATCH {str(e).splitlines()[0:3]}")
                res[f"{plan}_ok"] = ok
                fns[plan] = with_plan(lambda: coattention(*nxt(), cu, n_max, scale=scale, return_probs=True), env)
            fns["tc_noprobs"] = with_plan(lambda: coattention(*nxt(), cu, n_max, scale=scale), {})
            for name, t in ms(fns, a.reps).items():
                res[f"{name}_ms"] = t
            with_env({})
            kp, mask = pad_bags(k, cu, n_max)
            vp = kp if v is k else pad_bags(v, cu, n_max)[0]
            Hkv = k.shape[1]
            kp, vp = kp.transpose(1, 2), vp.transpose(1, 2)
            qs = q.view(B, M, Hkv, H // Hkv, D).permute(0, 2, 1, 3, 4).reshape(B, Hkv, M * H // Hkv, D)
            add = torch.zeros(B, 1, 1, n_max, device=dev, dtype=dtype).masked_fill(~mask[:, None, None, :], float("-inf"))
            res["sdpa_ms"] = ms({"sdpa": lambda: F.scaled_dot_product_attention(qs, kp, vp, attn_mask=add, scale=scale)},
                                a.reps)["sdpa"]
            res["twin_ms"] = ms({"twin": lambda: coattention_ref(*nxt(), cu, n_max, scale=scale, return_probs=True)},
                                max(3, a.reps // 4))["twin"]
            del kp, vp, add
            rows.append(res)
            if a.profile:  # after the timings: the profiler's hooks would slow every later call
                profiled.append((lambda q=q, k=k, v=v: coattention(q, k, v, cu, n_max, scale=scale, return_probs=True),
                                 f"{case} {dtype}"))
            best = min(PLANS, key=lambda p: res[f"{p}_ms"])
            print(f"{case} {res['dtype']:8s} floor {floor_ms:.3f} ms | " +
                  " | ".join(f"{p} {res[f'{p}_ms']:.3f}{'' if res[f'{p}_ok'] else '!'}" for p in PLANS) +
                  f" | sdpa {res['sdpa_ms']:.3f} | twin {res['twin_ms']:.3f} | best {best}: "
                  f"{100 * floor_ms / res[f'{best}_ms']:.0f}% of floor, {res['sdpa_ms'] / res[f'{best}_ms']:.1f}x sdpa, "
                  f"{res['twin_ms'] / res[f'{best}_ms']:.1f}x twin; tc without probs {res['tc_noprobs_ms']:.3f}", flush=True)
            torch.cuda.empty_cache()
    for fn, title in profiled:
        kernel_table(fn, title)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "copy_GBps": bw, "lens": lens, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
