"""pathgen.ops.coattention: fused kernel against its twin, flash-attention's tolerance rule.

Rule (flash-attention tests/test_flash_attn.py): with ref64 = the twin on float64 copies of the
inputs, the fused kernel's error must be at most 2x the twin's own error in the same dtype
(3x for gradients), plus a tiny absolute floor.
"""
from __future__ import annotations

import math

import pytest
import torch

import pathgen.ops as po
from pathgen.ops.reference import coattention_ref

pytestmark = pytest.mark.skipif(not po.has_kernel("coattention", "cpu"), reason="pathgen._C not built")

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() and po.has_kernel("coattention", "cuda") else [])
FLOOR = {torch.float32: 1e-6, torch.float16: 1e-5, torch.bfloat16: 1e-5, torch.float64: 1e-12}

# (B, M, H, Hkv, D, Dv, bag lengths)
SHAPES = {
    "uneven-empty-one": (4, 6, 8, 1, 64, 64, [1, 0, 700, 13]),
    "gqa": (3, 5, 6, 2, 40, 24, [37, 300, 5]),
    "mha": (2, 6, 8, 8, 32, 32, [257, 1000]),
    "single": (1, 1, 1, 1, 16, 16, [1]),
    "odd-dims": (2, 3, 4, 4, 13, 7, [50, 21]),
    # shapes for the CUDA tensor-core path: 56 rows (two row tiles), 512 output columns per CTA,
    # 256 columns, a long bag over many 128-key tiles and splits with a ragged last tile
    "tc-wide": (3, 7, 8, 1, 128, 512, [1000, 3, 2500]),
    "tc-256": (2, 6, 4, 2, 64, 256, [300, 777]),
    "long-bag": (2, 6, 8, 1, 64, 64, [5000, 130]),
    "head-2048": (2, 6, 8, 1, 2048, 2048, [100, 37]),
}
# CPU only: 256 query rows per slide, so a key block's raw scores outgrow the forward's L2-sized
# buffer and are written to `probs` in place (both block products)
CPU_SHAPES = {**SHAPES, "many-rows": (2, 64, 4, 4, 16, 16, [700, 450])}
# the CPU kernel's ways to multiply a key block (PATHGEN_CPU_PATH; csrc/coattention/coattention_cpu.cpp)
CPU_PATHS = ["blas", "tiles"]


def make(B, M, H, Hkv, D, Dv, lens, dtype, device="cpu", seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    cu = po.cu_seqlens_from_lengths(lens).to(device)
    n = int(sum(lens))
    q = torch.randn(B, M, H, D, generator=g).to(device, dtype)  # [B, M, H, D]
    k = torch.randn(n, Hkv, D, generator=g).to(device, dtype)  # [n, Hkv, D]
    v = torch.randn(n, Hkv, Dv, generator=g).to(device, dtype)  # [n, Hkv, Dv]
    for t in (q, k, v):
        t.requires_grad_(requires_grad)
    return q, k, v, cu


def floor(dtype, ref):
    finite = ref[torch.isfinite(ref)]
    return FLOOR[dtype] * max(1.0, finite.abs().max().item() if finite.numel() else 0.0)


def err(x, ref):
    """max |x - ref| over finite entries; -inf must match -inf exactly."""
    x, ref = x.double(), ref.double().to(x.device)
    inf = torch.isinf(ref)
    assert torch.equal(torch.isinf(x), inf) and torch.equal(x[inf], ref[inf])
    return (x[~inf] - ref[~inf]).abs().max().item() if (~inf).any() else 0.0


def assert_rule(fused, twin, ref64, dtype, mult=2.0):
    for name, f, t, r in zip(("out", "lse", "probs"), fused, twin, ref64):
        e_fused, e_twin = err(f, r), err(t, r)
        assert e_fused <= mult * e_twin + floor(dtype, r), f"{name}: fused error {e_fused:.3g} > {mult} x twin {e_twin:.3g}"


def run_all(q, k, v, cu, **kw):
    fused = po.coattention(q, k, v, cu, return_probs=True, backend="fused", **kw)
    twin = coattention_ref(q, k, v, cu, return_probs=True, **kw)
    ref64 = coattention_ref(q.double(), k.double(), v.double(), cu, return_probs=True, **kw)
    return fused, twin, ref64


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_forward_matches_twin(shape, dtype, device):
    q, k, v, cu = make(*SHAPES[shape], dtype, device)
    fused, twin, ref64 = run_all(q, k, v, cu)
    out, lse, probs = fused
    B, M, H, _ = q.shape
    assert out.shape == (B, M, H, v.shape[2]) and out.dtype == dtype
    assert lse.shape == (B, M, H) and lse.dtype == torch.float32
    assert probs.shape == (k.shape[0], H, M) and probs.dtype == torch.float32
    assert_rule(fused, twin, ref64, dtype)


@pytest.mark.parametrize("device", DEVICES)
def test_probs_sum_to_one_and_empty_bag(device):
    q, k, v, cu = make(*SHAPES["uneven-empty-one"], torch.float32, device)
    out, lse, probs = po.coattention(q, k, v, cu, return_probs=True)
    c = cu.tolist()
    for b in range(len(c) - 1):
        if c[b + 1] == c[b]:  # empty bag: zeros and -inf
            assert torch.equal(out[b], torch.zeros_like(out[b]))
            assert bool(torch.isneginf(lse[b]).all())
            continue
        sums = probs[c[b]:c[b + 1]].sum(0)  # [H, M]
        torch.testing.assert_close(sums, torch.ones_like(sums), atol=1e-5, rtol=0)
    # a bag of one patch: probability one, output = that patch's value for every query and head
    b1 = [b for b in range(len(c) - 1) if c[b + 1] - c[b] == 1][0]
    torch.testing.assert_close(probs[c[b1]], torch.ones_like(probs[c[b1]]))
    torch.testing.assert_close(out[b1], v[c[b1], 0].expand_as(out[b1]))


def test_probs_normalised_with_lse():
    q, k, v, cu = make(*SHAPES["gqa"], torch.float32)
    _, lse, probs = po.coattention(q, k, v, cu, return_probs=True)
    # probs = exp(scale <q, k> - lse) for slide 0, query 2, head 5 (KV head 5 // 3 = 1)
    s = (k[: int(cu[1]), 1] @ q[0, 2, 5]) / math.sqrt(q.shape[-1])
    torch.testing.assert_close(probs[: int(cu[1]), 5, 2], torch.exp(s - lse[0, 2, 5]), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_k_is_v_folded(dtype, device):
    B, M, H, D, lens = 3, 6, 8, 96, [120, 0, 333]
    q, x, _, cu = make(B, M, H, 1, D, D, lens, dtype, device)
    fused, twin, ref64 = run_all(q, x, x, cu)
    assert_rule(fused, twin, ref64, dtype)
    copy = po.coattention(q, x, x.clone(), cu, return_probs=True)  # the two-tensor path
    for a, b in zip(fused, copy):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("D", [24, 32])  # 32: whole 16-byte chunks, the tensor-core path on CUDA
@pytest.mark.parametrize("cpu_path", CPU_PATHS)  # CPU: BLAS reads strided float32 rows in place
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])  # CPU tiles: 16-bit rows in place
def test_non_contiguous_inputs(D, dtype, device, cpu_path, monkeypatch):
    monkeypatch.setenv("PATHGEN_CPU_PATH", cpu_path)
    B, M, H, Hkv, lens = 3, 4, 6, 3, [40, 0, 77]
    g = torch.Generator().manual_seed(1)
    n = sum(lens)
    cu = po.cu_seqlens_from_lengths(lens).to(device)
    q = torch.randn(B, H, M, D, generator=g).to(device, dtype).transpose(1, 2)  # [B, M, H, D], permuted strides
    kv = torch.randn(n, Hkv, 2 * D + 8, generator=g).to(device, dtype)
    k, v = kv[..., :D], kv[..., D + 8:]  # sliced out of one packed tensor
    kt = torch.randn(n, Hkv, D, generator=g).to(device, dtype).transpose(0, 2).contiguous().transpose(0, 2)  # last dim strided
    assert not q.is_contiguous() and not k.is_contiguous() and kt.stride(-1) != 1
    for kk in (k, kt):
        fused, twin, ref64 = run_all(q, kk, v, cu)
        assert_rule(fused, twin, ref64, dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_head_dim_2048(dtype, device):
    q, k, v, cu = make(2, 6, 8, 1, 2048, 2048, [100, 37], dtype, device)
    fused, twin, ref64 = run_all(q, k, k, cu)
    assert_rule(fused, twin, ref64, dtype)


@pytest.mark.skipif("cuda" not in DEVICES, reason="needs a GPU and pathgen's CUDA kernels")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", ["tc-wide", "tc-256", "long-bag", "mha"])
@pytest.mark.parametrize("knobs", [{"PATHGEN_COATTN_TC": "0"}, {"PATHGEN_COATTN_TC_MAXNCT": "2"},
                                   {"PATHGEN_COATTN_TC_MAXNCT": "4"}, {"PATHGEN_COATTN_TC_MAXRM": "1"},
                                   {"PATHGEN_COATTN_TC_MAXRM": "2"}, {"PATHGEN_COATTN_TC_MAXRM": "3"},
                                   {"PATHGEN_COATTN_TC_CTAS_PER_SM": "1"}, {"PATHGEN_COATTN_TC_STAGED": "0"},
                                   {"PATHGEN_COATTN_TC_STAGED": "1"},
                                   {"PATHGEN_COATTN_TC_STAGED": "1", "PATHGEN_COATTN_TC_MAXRM": "2"}],
                         ids=["generic", "nct2", "nct4", "rm1", "rm2", "rm3", "ctas1", "direct", "staged", "staged-rm2"])
def test_cuda_kernel_variants_match_twin(shape, dtype, knobs, monkeypatch):
    """The CUDA kernel's other launch plans (generic CUDA-core kernel, narrower column or row tiles)."""
    for name, value in knobs.items():
        monkeypatch.setenv(name, value)
    q, k, v, cu = make(*SHAPES[shape], dtype, "cuda")
    fused, twin, ref64 = run_all(q, k, v, cu)
    assert_rule(fused, twin, ref64, dtype)


@pytest.mark.skipif("cuda" not in DEVICES, reason="needs a GPU and pathgen's CUDA kernels")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("D", [256, 1024])
@pytest.mark.parametrize("knobs", [{"PATHGEN_COATTN_TC_STAGED": "1"}, {"PATHGEN_COATTN_TC_STAGED": "0"},
                                   {"PATHGEN_COATTN_TC_STAGED": "1", "PATHGEN_COATTN_TC_MAXRM": "2"},
                                   {"PATHGEN_COATTN_TC_STAGED": "1", "PATHGEN_COATTN_TC_MIN_SPLIT": "1000000"}],
                         ids=["staged", "direct", "staged-rm2", "staged-one-split"])
def test_cuda_folded_plans(D, dtype, knobs, monkeypatch):
    """The folded form (k = v = X, one KV head, 48 rows) on the staged and direct tensor-core plans:
    bags of 1, 0, a ragged 130 and thousands of patches (many splits and 128-key tiles)."""
    for name, value in knobs.items():
        monkeypatch.setenv(name, value)
    q, x, _, cu = make(4, 6, 8, 1, D, 8, [1, 0, 130, 3001], dtype, "cuda", seed=D)
    fused, twin, ref64 = run_all(q, x, x, cu)
    assert_rule(fused, twin, ref64, dtype)


@pytest.mark.skipif("cuda" not in DEVICES, reason="needs a GPU and pathgen's CUDA kernels")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("prefetch", ["0", "1"])
def test_cuda_staged_strided_rows_and_partial_column_tile(dtype, prefetch, monkeypatch):
    """Staged operands with K and V sliced out of one packed tensor (row strides != D, V not K), two
    KV heads, and Dv = 576 (the second column tile has one warp with columns, seven without)."""
    monkeypatch.setenv("PATHGEN_COATTN_TC_STAGED", "1")
    monkeypatch.setenv("PATHGEN_COATTN_TC_PREFETCH", prefetch)
    B, M, H, Hkv, D, Dv, lens = 3, 6, 8, 2, 128, 576, [700, 0, 1290]
    g = torch.Generator().manual_seed(7)
    n = sum(lens)
    cu = po.cu_seqlens_from_lengths(lens).to("cuda")
    q = torch.randn(B, M, H, D, generator=g).to("cuda", dtype)
    kv = torch.randn(n, Hkv, D + Dv + 64, generator=g).to("cuda", dtype)
    k, v = kv[..., :D], kv[..., D + 64:]  # 16-byte aligned slices, row stride D + Dv + 64
    fused, twin, ref64 = run_all(q, k, v, cu)
    assert_rule(fused, twin, ref64, dtype)


@pytest.mark.skipif("cuda" not in DEVICES, reason="needs a GPU and pathgen's CUDA kernels")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("D", [512, 2048])
def test_cuda_one_long_split(D, dtype, monkeypatch):
    """One split over a 20k-patch bag (157 key tiles accumulated in one CTA) and a long head dim:
    the tensor cores' round-toward-zero sums must not drift (float32 sums in fresh fragments)."""
    monkeypatch.setenv("PATHGEN_COATTN_TC_MIN_SPLIT", "1000000")
    q, k, v, cu = make(1, 6, 8, 1, D, D, [20000], dtype, "cuda")
    fused, twin, ref64 = run_all(q, k, k, cu)
    assert_rule(fused, twin, ref64, dtype)


@pytest.mark.parametrize("cpu_path", CPU_PATHS)
@pytest.mark.parametrize("shape", ["uneven-empty-one", "gqa", "odd-dims", "tc-wide", "head-2048", "many-rows"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_cpu_block_products(shape, dtype, cpu_path, monkeypatch):
    """The CPU kernel's two ways to multiply a key block, each on every shape (whatever the default picks);
    the tiles read 16-bit rows in place, widened in registers, BLAS packs them."""
    monkeypatch.setenv("PATHGEN_CPU_PATH", cpu_path)
    q, k, v, cu = make(*CPU_SHAPES[shape], dtype)
    fused, twin, ref64 = run_all(q, k, v, cu)
    assert_rule(fused, twin, ref64, dtype)


def test_thread_counts_agree():
    q, k, v, cu = make(3, 6, 8, 2, 32, 32, [3000, 10, 1500], torch.float32)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = po.coattention(q, k, v, cu, return_probs=True)  # one split per slide
        torch.set_num_threads(2)
        two = po.coattention(q, k, v, cu, return_probs=True)  # several splits, merged by lse
    finally:
        torch.set_num_threads(before)
    for a, b in zip(one, two):
        torch.testing.assert_close(a, b, atol=2e-6, rtol=1e-5)


def test_empty_batch_and_no_keys():
    q, k, v, cu = make(2, 3, 2, 1, 8, 8, [0, 0], torch.float32)
    out, lse, probs = po.coattention(q, k, v, cu, return_probs=True)
    assert out.abs().sum() == 0 and bool(torch.isneginf(lse).all()) and probs.shape == (0, 2, 3)


def test_scale_and_backend_switch():
    q, k, v, cu = make(*SHAPES["gqa"], torch.float32)
    a = po.coattention(q, k, v, cu, scale=0.3, backend="fused")
    b = po.coattention(q, k, v, cu, scale=0.3, backend="reference")
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, atol=2e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="backend"):
        po.coattention(q, k, v, cu, backend="triton")


# ---- gradients ------------------------------------------------------------------------------

def _loss(res, seed=3):
    """sum <g_i, output_i> with fixed random g; -inf lse entries (empty bags) are dropped."""
    g = torch.Generator().manual_seed(seed)
    total = 0.0
    for t in res:
        t = torch.where(torch.isinf(t), torch.zeros_like(t), t)
        total = total + (t.double() * torch.randn(t.shape, generator=g, dtype=torch.float64).to(t.device)).sum()
    return total


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", ["uneven-empty-one", "gqa", "mha"])
def test_backward_matches_twin(shape, dtype, device):
    _backward_matches_twin(shape, dtype, device)


@pytest.mark.parametrize("cpu_path", CPU_PATHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", ["uneven-empty-one", "gqa", "odd-dims", "tc-wide"])
def test_cpu_backward_paths_match_twin(shape, dtype, cpu_path, monkeypatch):
    """The backward's key-major BLAS products and its tiles, each on every shape."""
    monkeypatch.setenv("PATHGEN_CPU_PATH", cpu_path)
    _backward_matches_twin(shape, dtype, "cpu")


def _backward_matches_twin(shape, dtype, device):
    q, k, v, cu = make(*SHAPES[shape], dtype, device, requires_grad=True)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    grads = {}
    for name, fn, ins in (("fused", lambda *a: po.coattention(*a, cu, return_probs=True), (q, k, v)),
                          ("twin", lambda *a: coattention_ref(*a, cu, return_probs=True), (q, k, v)),
                          ("ref64", lambda *a: coattention_ref(*a, cu, return_probs=True), (q64, k64, v64))):
        grads[name] = torch.autograd.grad(_loss(fn(*ins)), ins)
    for i, name in enumerate("qkv"):
        e_fused = err(grads["fused"][i], grads["ref64"][i])
        e_twin = err(grads["twin"][i], grads["ref64"][i])
        assert e_fused <= 3 * e_twin + floor(dtype, grads["ref64"][i]), f"grad {name}: {e_fused:.3g} > 3 x {e_twin:.3g}"


@pytest.mark.parametrize("cpu_path", CPU_PATHS)
def test_backward_k_is_v_and_partial_requires_grad(cpu_path, monkeypatch):
    monkeypatch.setenv("PATHGEN_CPU_PATH", cpu_path)
    q, x, _, cu = make(2, 6, 8, 1, 48, 48, [90, 31], torch.float64, requires_grad=True)
    out, lse = po.coattention(q, x, x, cu)
    gq, gx = torch.autograd.grad(_loss((out, lse)), (q, x))
    out2, lse2 = coattention_ref(q, x, x, cu)
    rq, rx = torch.autograd.grad(_loss((out2, lse2)), (q, x))
    torch.testing.assert_close(gq, rq, atol=1e-10, rtol=1e-9)
    torch.testing.assert_close(gx, rx, atol=1e-10, rtol=1e-9)  # grad_k + grad_v
    k = x.detach()  # only q needs a gradient
    out3, _ = po.coattention(q, k, k, cu)
    out3.sum().backward()
    assert q.grad is not None and k.grad is None


@pytest.mark.parametrize("cpu_path", CPU_PATHS)
def test_gradcheck_float64(cpu_path, monkeypatch):
    monkeypatch.setenv("PATHGEN_CPU_PATH", cpu_path)
    q, k, v, cu = make(3, 2, 4, 2, 5, 3, [4, 0, 6], torch.float64, requires_grad=True)

    def f(q, k, v):
        out, lse, probs = po.coattention(q, k, v, cu, return_probs=True)
        return out, torch.where(torch.isinf(lse), torch.zeros_like(lse), lse), probs

    assert torch.autograd.gradcheck(f, (q, k, v), eps=1e-6, atol=1e-7, rtol=1e-5)
    qx, x, _, cu1 = make(2, 3, 2, 1, 4, 4, [5, 2], torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda q, x: po.coattention(q, x, x, cu1)[0], (qx, x))


# ---- registration: opcheck, compile ---------------------------------------------------------

def test_opcheck():
    q, k, v, cu = make(*SHAPES["gqa"], torch.float32, requires_grad=True)
    torch.library.opcheck(torch.ops.pathgen.coattention.default, (q, k, v, cu, 0, 0.25, True))  # all utils
    quick = ("test_schema", "test_autograd_registration", "test_faketensor")
    torch.library.opcheck(torch.ops.pathgen.coattention.default, (q, k, v, cu, 0, 0.25, False), test_utils=quick)
    x = k.detach()[:, :1].requires_grad_()
    torch.library.opcheck(torch.ops.pathgen.coattention.default, (q[..., :1, :].detach(), x, x, cu, 0, 0.5, True),
                          test_utils=quick)
    out, lse, probs = torch.ops.pathgen.coattention(q, k, v, cu, 0, 0.25, True)
    go, gl, gp = torch.randn_like(out), torch.randn_like(lse), torch.randn_like(probs)
    torch.library.opcheck(torch.ops.pathgen._coattention_backward.default,
                          (go, gl, gp, q.detach(), k.detach(), v.detach(), cu, out.detach(), lse.detach(),
                           probs.detach(), 0, 0.25, [True, False, True]),
                          test_utils=("test_schema", "test_faketensor"))
    # 16-bit: the kernel writes dk and dv in the inputs' dtype, as the fake op says
    q, k, v = (t.detach().bfloat16() for t in (q, k, v))
    out, lse, probs = torch.ops.pathgen.coattention(q, k, v, cu, 0, 0.25, True)
    grads = torch.ops.pathgen._coattention_backward(out, lse, probs, q, k, v, cu, out, lse, probs, 0, 0.25,
                                                    [True, True, True])
    assert [g.dtype for g in grads] == [torch.bfloat16] * 3
    torch.library.opcheck(torch.ops.pathgen._coattention_backward.default,
                          (out, lse, probs, q, k, v, cu, out, lse, probs, 0, 0.25, [True, True, True]),
                          test_utils=("test_schema", "test_faketensor"))


def test_torch_compile_fullgraph():
    q, k, v, cu = make(*SHAPES["gqa"], torch.float32)

    def f(q, k, v, cu):
        out, lse, probs = po.coattention(q, k, v, cu, 300, return_probs=True)
        return out * 2, probs.sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    a, b = compiled(q, k, v, cu), f(q, k, v, cu)
    torch.testing.assert_close(a[0], b[0])
    torch.testing.assert_close(a[1], b[1])


# ---- errors ---------------------------------------------------------------------------------

@pytest.mark.parametrize("case,match", [
    ("q3d", "q must be"),
    ("dtype", "share one dtype"),
    ("cu_int64", "int32"),
    ("cu_len", "B \\+ 1"),
    ("unsorted", "non-decreasing"),
    ("out_of_range", "must equal the number of packed keys"),
    ("cu0", "cu_seqlens\\[0\\]"),
    ("heads", "multiple of"),
    ("kdim", "head dim"),
    ("vrows", "v must be"),
    ("max_seqlen", "smaller than the longest bag"),
])
def test_errors(case, match):
    q, k, v, cu = make(2, 3, 4, 2, 8, 8, [5, 7], torch.float32)
    args = dict(q=q, k=k, v=v, cu_seqlens=cu)
    kw = {}
    if case == "q3d":
        args["q"] = q[0]
    elif case == "dtype":
        args["k"] = k.double()
    elif case == "cu_int64":
        args["cu_seqlens"] = cu.long()
    elif case == "cu_len":
        args["cu_seqlens"] = cu[:2]
    elif case == "unsorted":
        args["cu_seqlens"] = torch.tensor([0, 9, 7], dtype=torch.int32)
        args["k"], args["v"] = k[:7], v[:7]
    elif case == "out_of_range":
        args["cu_seqlens"] = torch.tensor([0, 5, 13], dtype=torch.int32)
    elif case == "cu0":
        args["cu_seqlens"] = torch.tensor([1, 5, 12], dtype=torch.int32)
    elif case == "heads":
        args["k"], args["v"] = torch.randn(12, 3, 8), torch.randn(12, 3, 8)
    elif case == "kdim":
        args["k"] = torch.randn(12, 2, 9)
    elif case == "vrows":
        args["v"] = torch.randn(11, 2, 8)
    elif case == "max_seqlen":
        kw["max_seqlen"] = 6
    with pytest.raises(ValueError, match=match):
        po.coattention(**args, **kw)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("M,H,Hkv", [(0, 4, 2), (3, 0, 2)])
def test_no_queries_or_no_heads(M, H, Hkv, device):
    """M = 0 or H = 0: empty outputs and zero gradients, on every device (the CUDA launch plan divides by
    the rows per KV head, which are zero here)."""
    q, k, v, cu = make(2, M, H, Hkv, 8, 8, [5, 7], torch.float32, device, requires_grad=True)
    out, lse, probs = po.coattention(q, k, v, cu, return_probs=True)
    assert out.shape == (2, M, H, 8) and lse.shape == (2, M, H) and probs.shape == (12, H, M)
    (out.sum() + lse.sum() + probs.sum()).backward()
    assert not k.grad.any() and not v.grad.any() and q.grad.shape == q.shape


def test_offsets_checked_once_and_again_after_an_inplace_write():
    """A sampler reuses one cu_seqlens for every step: its values are checked (a host copy) once, and again
    whenever it is written in place."""
    from pathgen.ops.coattention import _values_checked
    q, k, v, cu = make(2, 3, 4, 2, 8, 8, [5, 7], torch.float32)
    assert not _values_checked(cu, 12, None)
    po.coattention(q, k, v, cu)
    assert _values_checked(cu, 12, None) and not _values_checked(cu, 12, 7) and not _values_checked(cu.clone(), 12, None)
    cu[1] = 13  # [0, 13, 12]: unsorted now
    assert not _values_checked(cu, 12, None)
    with pytest.raises(ValueError, match="non-decreasing"):
        po.coattention(q, k, v, cu)


def test_cpp_guard_rejects_bad_offsets():
    """The kernel's own TORCH_CHECK (second guard) catches offsets the Python face would refuse."""
    q, k, v, _ = make(2, 3, 4, 2, 8, 8, [5, 7], torch.float32)
    bad = torch.tensor([0, 9, 7], dtype=torch.int32)  # unsorted: would read out of bounds
    with pytest.raises(RuntimeError, match="non-decreasing"):
        torch.ops.pathgen.coattention(q, k[:7], v[:7], bad, 0, 1.0, False)


def test_bags_roundtrip():
    lens = [3, 0, 5]
    cu = po.cu_seqlens_from_lengths(lens)
    x = torch.arange(8 * 2, dtype=torch.float32).view(8, 2)
    padded, mask = po.pad_bags(x, cu)
    assert padded.shape == (3, 5, 2) and mask.sum().item() == 8 and not mask[1].any()
    assert torch.equal(padded[2, :5], x[3:8]) and torch.equal(po.unpad_bags(padded, mask), x)
    assert torch.equal(po.bag_lengths(cu), torch.tensor(lens))
    with pytest.raises(ValueError):
        po.pad_bags(x, cu, max_seqlen=4)


def test_cpu_path_knob_rejects_unknown_values(monkeypatch):
    monkeypatch.setenv("PATHGEN_CPU_PATH", "fast")
    q, k, v, cu = make(*SHAPES["gqa"], torch.float32)
    with pytest.raises(RuntimeError, match="PATHGEN_CPU_PATH must be blas or tiles"):
        po.coattention(q, k, v, cu)


@pytest.mark.parametrize("device", DEVICES)
def test_more_slides_than_one_launch_takes(device, monkeypatch):
    """CUDA launches at most 65,535 slides (gridDim.z): larger batches run in chunks of slides. The
    limit is lowered here (and applied to the CPU too) so the chunked path runs on every machine."""
    import importlib

    co = importlib.import_module("pathgen.ops.coattention")
    lens = [5, 0, 17, 1, 9, 0, 33, 4]  # empty bags at chunk edges and inside
    q, k, v, cu = make(8, 3, 4, 2, 16, 8, lens, torch.float64, device, requires_grad=True)
    whole = po.coattention(q, k, v, cu, return_probs=True)
    g_whole = torch.autograd.grad(_loss(whole), (q, k, v))
    monkeypatch.setattr(co, "SLIDES_PER_CALL", {device: 3})
    calls = []
    real_op = torch.ops.pathgen.coattention
    monkeypatch.setattr(co.torch.ops.pathgen, "coattention", lambda *a: calls.append(a[0].shape[0]) or real_op(*a))
    parts = po.coattention(q, k, v, cu, return_probs=True)
    assert calls == [3, 3, 2]
    for a, b in zip(parts, whole):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)
    for a, b in zip(torch.autograd.grad(_loss(parts), (q, k, v)), g_whole):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)
    x = k.detach()  # k is v stays one tensor inside every chunk
    torch.testing.assert_close(po.coattention(q, x, x, cu)[0], co.coattention(q, x, x, cu, backend="reference")[0])
