"""denoise_step: fused kernel vs its twin, hand-computed steps, opcheck, compile, errors."""
from __future__ import annotations

import itertools
import math
import os
import subprocess
import sys
import zlib

import pytest
import torch

from pathgen.diffusion import NoiseSchedule
from pathgen.ops import denoise_step, has_kernel
from pathgen.ops.reference import denoise_step_ref
from tests._tolerances import assert_within_policy
from tests.conftest import DEVICES

needs_kernel = pytest.mark.skipif(not has_kernel("denoise_step", "cpu"),
                                  reason="pathgen._C not built (fallback-only environment)")

MODES = ["ddpm", "ddim"]
PREDICTIONS = ["epsilon", "sample", "v_prediction"]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _inputs(B, G, dtype, device, guided=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, G, generator=g)
    m = torch.randn(B, G, generator=g)
    n = torch.randn(B, G, generator=g)
    mu = torch.randn(B, G, generator=g) if guided else None
    t = torch.randint(1, 1000, (B,), generator=g)
    t_prev = (t - torch.randint(1, 60, (B,), generator=g)).clamp(min=-1)
    t_prev[0] = -1  # always include a final step
    cast = lambda v: None if v is None else v.to(device=device, dtype=dtype)  # noqa: E731
    return cast(x), cast(m), cast(n), cast(mu), t.to(device), t_prev.to(device)


@needs_kernel
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode,prediction", list(itertools.product(MODES, PREDICTIONS)))
@pytest.mark.parametrize("clip,guided", [(None, False), ((-1.0, 1.0), False), (None, True), ((-1.5, 2.0), True)])
def test_matches_twin(device, dtype, mode, prediction, clip, guided):
    ac = NoiseSchedule().alphas_cumprod.to(device)
    x, m, n, mu, t, tp = _inputs(33, 517, dtype, device, guided, seed=zlib.crc32(f"{mode}/{prediction}".encode()))
    kw = dict(mode=mode, eta=0.7, prediction=prediction, noise=n, clip=clip,
              guidance_scale=3.0 if guided else None, model_output_uncond=mu)
    fused = denoise_step(x, m, t, tp, ac, backend="fused", **kw)
    twin = denoise_step_ref(x, m, t, tp, ac, **kw)
    d = lambda v: None if v is None else v.double()  # noqa: E731
    oracle = denoise_step_ref(d(x), d(m), t, tp, ac.double(), **{**kw, "noise": d(n), "model_output_uncond": d(mu)})
    assert fused.dtype == dtype and fused.shape == x.shape
    assert_within_policy(fused, twin, oracle, dtype, what=f"{mode}/{prediction}/{dtype}")


def test_hand_computed_ddim_and_ddpm_step():
    # alphas_cumprod = [0.9, 0.5]: one step from t = 1 (a_t = 0.5) to t_prev = 0 (a_prev = 0.9)
    ac = torch.tensor([0.9, 0.5])
    x, eps, z = 1.0, 0.2, 0.5
    a_t, a_p = 0.5, 0.9
    x0 = (x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)  # 1.2142135...
    # DDIM, eta = 0: sqrt(a_p) x0 + sqrt(1 - a_p) eps
    ddim = math.sqrt(a_p) * x0 + math.sqrt(1 - a_p) * eps
    assert ddim == pytest.approx(1.2151504, abs=1e-6)
    # DDPM: posterior mean + posterior STANDARD DEVIATION * z
    beta = 1 - a_t / a_p
    mean = math.sqrt(a_p) * beta / (1 - a_t) * x0 + math.sqrt(a_t / a_p) * (1 - a_p) / (1 - a_t) * x
    std = math.sqrt((1 - a_p) / (1 - a_t) * beta)
    ddpm = mean + std * z
    assert ddpm == pytest.approx(1.3220572, abs=1e-6)
    X = torch.full((2, 3), x)
    E = torch.full((2, 3), eps)
    Z = torch.full((2, 3), z)
    t, tp = torch.tensor([1, 1]), torch.tensor([0, 0])
    for backend in (["fused"] if has_kernel("denoise_step", "cpu") else []) + ["reference"]:
        got = denoise_step(X, E, t, tp, ac, mode="ddim", eta=0.0, backend=backend)
        torch.testing.assert_close(got, torch.full((2, 3), ddim), atol=1e-6, rtol=0)
        got = denoise_step(X, E, t, tp, ac, mode="ddpm", noise=Z, backend=backend)
        torch.testing.assert_close(got, torch.full((2, 3), ddpm), atol=1e-6, rtol=0)
        # the published PathGen sampler scaled the noise by the variance: make sure we do not
        wrong = mean + std**2 * z
        assert abs(float(got[0, 0]) - wrong) > 1e-2


@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_final_step_returns_x0(backend):
    ac = NoiseSchedule().alphas_cumprod
    x0 = torch.randn(4, 16)
    eps = torch.randn(4, 16)
    t = torch.tensor([10, 500, 999, 1])
    xt = NoiseSchedule().add_noise(x0, eps, t)
    tp = torch.full((4,), -1)
    for mode in MODES:
        got = denoise_step(xt, eps, t, tp, ac, mode=mode, eta=1.0, backend=backend)
        torch.testing.assert_close(got, x0, atol=2e-4, rtol=1e-4)


@needs_kernel
def test_out_and_inplace_and_noncontiguous():
    ac = NoiseSchedule().alphas_cumprod
    x, m, n, _, t, tp = _inputs(8, 40, torch.float32, "cpu")
    want = denoise_step_ref(x, m, t, tp, ac, mode="ddpm", noise=n)
    out = torch.empty_like(x)
    r = denoise_step(x, m, t, tp, ac, mode="ddpm", noise=n, out=out)
    assert r is out
    torch.testing.assert_close(out, want)
    xi = x.clone()
    denoise_step(xi, m, t, tp, ac, mode="ddpm", noise=n, out=xi)
    torch.testing.assert_close(xi, want)
    # non-contiguous inputs and output
    xt, mt, nt = (v.t().contiguous().t() for v in (x, m, n))
    out_nc = torch.empty(40, 8).t()
    denoise_step(xt, mt, t, tp, ac, mode="ddpm", noise=nt, out=out_nc)
    torch.testing.assert_close(out_nc, want)


def test_noise_drawn_from_generator_is_reproducible():
    ac = NoiseSchedule().alphas_cumprod
    x, m, _, _, t, tp = _inputs(4, 12, torch.float32, "cpu")
    a = denoise_step(x, m, t, tp, ac, mode="ddpm", generator=torch.Generator().manual_seed(5))
    b = denoise_step(x, m, t, tp, ac, mode="ddpm", generator=torch.Generator().manual_seed(5))
    c = denoise_step(x, m, t, tp, ac, mode="ddpm", generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


@needs_kernel
def test_opcheck():
    ac = NoiseSchedule().alphas_cumprod
    x, m, n, mu, t, tp = _inputs(5, 33, torch.float32, "cpu", guided=True)
    args = (x, m, t, tp, ac, "ddim", 0.5, "epsilon", n, -1.0, 1.0, 2.0, mu)
    torch.library.opcheck(torch.ops.pathgen.denoise_step.default, args)
    torch.library.opcheck(torch.ops.pathgen.denoise_step_out.default, args + (torch.empty_like(x),))
    args2 = (x, m, t, tp, ac, "ddpm", 0.0, "v_prediction", None, None, None, None, None)
    torch.library.opcheck(torch.ops.pathgen.denoise_step.default, args2)


@needs_kernel
def test_torch_compile_fullgraph():
    ac = NoiseSchedule().alphas_cumprod
    x, m, n, _, t, tp = _inputs(6, 20, torch.float32, "cpu")

    def f(x, m, n):
        return denoise_step(x * 1.0, m, t, tp, ac, mode="ddpm", noise=n) + 1.0

    compiled = torch.compile(f, fullgraph=True)
    torch.testing.assert_close(compiled(x, m, n), f(x, m, n))


@pytest.mark.parametrize("bad,match", [
    (dict(mode="euler"), "mode"),
    (dict(prediction="x0"), "prediction"),
    (dict(eta=1.5), "eta"),
    (dict(model_output=torch.zeros(3, 7)), "shape"),
    (dict(model_output=torch.zeros(4, 8, dtype=torch.float64)), "dtype"),
    (dict(t=torch.tensor([0, 1, 2, 1000])), r"t must lie in \[0, 1000\)"),
    (dict(t=torch.tensor([1.0, 2.0, 3.0, 4.0])), "integer"),
    (dict(t_prev=torch.tensor([5, -1, -1, -1])), "t_prev"),
    (dict(t=torch.tensor([1, 2, 3])), r"\[B\]"),
    (dict(guidance_scale=2.0), "guidance"),
    (dict(clip=(1.0, -1.0)), "clip"),
    (dict(x_t=torch.zeros(4, 8, dtype=torch.int32)), "dtype"),
])
def test_bad_arguments_raise_value_error(bad, match):
    ac = NoiseSchedule().alphas_cumprod
    kw = dict(x_t=torch.zeros(4, 8), model_output=torch.zeros(4, 8), t=torch.tensor([3, 4, 5, 6]),
              t_prev=torch.tensor([2, 3, 4, -1]), alphas_cumprod=ac)
    kw.update(bad)
    extra = {k: kw.pop(k) for k in list(kw) if k not in ("x_t", "model_output", "t", "t_prev", "alphas_cumprod")}
    with pytest.raises(ValueError, match=match):
        denoise_step(kw["x_t"], kw["model_output"], kw["t"], kw["t_prev"], kw["alphas_cumprod"], **extra)


def test_import_without_extension_falls_back_with_one_warning():
    code = (
        "import warnings, torch\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    import pathgen.ops as ops\n"
        "    import pathgen.ops.denoise_step\n"
        "msgs = [str(x.message) for x in w if 'pathgen' in str(x.message)]\n"
        "assert len(msgs) == 1 and 'pip install --no-build-isolation' in msgs[0], msgs\n"
        "assert not ops.HAS_OPS\n"
        "ac = torch.linspace(0.99, 0.01, 100)\n"
        "y = ops.denoise_step(torch.ones(2, 3), torch.zeros(2, 3), torch.tensor([5, 5]), torch.tensor([-1, -1]), ac)\n"
        "assert y.shape == (2, 3)\n"
        "print('ok')\n"
    )
    env = {**os.environ, "PATHGEN_DISABLE_EXTENSION": "1"}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr
