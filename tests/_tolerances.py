"""Tolerance policy for fused ops against their twins (flash-attention's rule).

A fused result is compared with a float64 evaluation of the twin (the oracle); its error may be
at most ``factor`` times the error of the twin itself run in the same storage dtype, plus a
small absolute floor for cases where the twin happens to be exact.
"""
from __future__ import annotations

import torch

# relative to max|oracle|: ~32 fp32 ulp, for steps whose coefficients (1/sqrt(a_t) ~ 150 near t = T)
# amplify the rounding of x_t and the model output in both the fused kernel and the twin
ABS_FLOOR = {torch.float64: 1e-12, torch.float32: 4e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}

# fallback table for simple elementwise comparisons
ATOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}
RTOL = {torch.float64: 1e-8, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    finite = torch.isfinite(b)
    if not bool(torch.equal(torch.isfinite(a), finite)):
        return float("inf")
    return float((a[finite] - b[finite]).abs().max()) if finite.any() else 0.0


def assert_within_policy(fused: torch.Tensor, twin_same_dtype: torch.Tensor, oracle_fp64: torch.Tensor,
                         dtype: torch.dtype, factor: float = 2.0, what: str = "") -> None:
    fused_err = max_err(fused, oracle_fp64)
    twin_err = max_err(twin_same_dtype, oracle_fp64)
    bound = factor * twin_err + ABS_FLOOR[dtype] * max(1.0, float(oracle_fp64.abs().max()))
    assert fused_err <= bound, (
        f"{what}: fused error {fused_err:.3g} > {factor} x twin error {twin_err:.3g} (+floor) = {bound:.3g}")
