"""pathgen.nn.CoAttention against torch.nn.MultiheadAttention(query, X, X) with the same weights."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import pathgen.ops as po
from pathgen.nn import CoAttention

def pair(E, H, kdim=None, bias=True, form="auto", dtype=torch.float64, seed=0):
    """An nn.MultiheadAttention with random (non-zero) biases and a CoAttention loaded from it."""
    torch.manual_seed(seed)
    mha = torch.nn.MultiheadAttention(E, H, kdim=kdim, vdim=kdim, bias=bias, batch_first=True).to(dtype)
    if bias:
        with torch.no_grad():
            mha.in_proj_bias.normal_()
            mha.out_proj.bias.normal_()
    ca = CoAttention(E, H, kdim=kdim, vdim=kdim, bias=bias, form=form).to(dtype)
    ca.load_state_dict(mha.state_dict())
    return mha, ca


def mha_packed(mha, query, x, cu):
    """nn.MultiheadAttention slide by slide (what PathGen does): out [B, M, E], probs [n, H, M]."""
    outs, probs = [], []
    c = cu.tolist()
    for b in range(query.shape[0]):
        xb = x[c[b]:c[b + 1]][None]
        if xb.shape[1] == 0:  # MultiheadAttention has no empty bags; CoAttention gives out_proj(0)
            outs.append(mha.out_proj(torch.zeros_like(query[b])))
            continue
        o, w = mha(query[b:b + 1], xb, xb, need_weights=True, average_attn_weights=False)
        outs.append(o[0])
        probs.append(w[0].permute(2, 0, 1))  # [n, H, M]
    return torch.stack(outs), torch.cat(probs)


def loss_of(out, probs, seed=5):
    g = torch.Generator().manual_seed(seed)
    return (out * torch.randn(out.shape, generator=g, dtype=out.dtype)).sum() + \
        (probs.to(out.dtype) * torch.randn(probs.shape, generator=g, dtype=out.dtype)).sum()


def inputs(B, M, E, kdim, lens, dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    query = torch.randn(B, M, E, generator=g, dtype=dtype, requires_grad=True)  # [B, M, E]
    x = torch.randn(sum(lens), kdim, generator=g, dtype=dtype, requires_grad=True)  # [n, kdim]
    return query, x, po.cu_seqlens_from_lengths(lens)


@pytest.mark.parametrize("form", ["folded", "unfolded"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("kdim", [None, 24])
def test_matches_multihead_attention_forward_backward(form, bias, kdim):
    E, H, M, lens = 32, 4, 5, [7, 0, 30, 1]
    mha, ca = pair(E, H, kdim, bias, form)
    query, x, cu = inputs(len(lens), M, E, kdim or E, lens)
    out, probs = ca(query, x, cu, need_weights=True)
    ref_out, ref_probs = mha_packed(mha, query, x, cu)
    torch.testing.assert_close(out, ref_out, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(probs, ref_probs, atol=1e-12, rtol=1e-10)
    avg = ca(query, x, cu, need_weights=True, average_attn_weights=True)[1]
    torch.testing.assert_close(avg, ref_probs.mean(1), atol=1e-12, rtol=1e-10)

    params = [n for n, p in ca.named_parameters()]
    ours = torch.autograd.grad(loss_of(out, probs), [query, x, *ca.parameters()])
    theirs = torch.autograd.grad(loss_of(ref_out, ref_probs), [query, x, *[dict(mha.named_parameters())[n]
                                                                            for n in params]])
    for name, a, b in zip(["query", "x", *params], ours, theirs):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-9, msg=lambda m: f"grad {name}: {m}")


def test_float32_fused_close_to_multihead_attention():
    E, H, M, lens = 64, 8, 6, [300, 5, 120]
    mha64, ca = pair(E, H, form="folded", dtype=torch.float32)
    query, x, cu = inputs(3, M, E, E, lens, dtype=torch.float32)
    out, probs = ca(query, x, cu, need_weights=True)
    ref_out, ref_probs = mha_packed(mha64, query, x, cu)
    torch.testing.assert_close(out, ref_out, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(probs, ref_probs, atol=2e-6, rtol=1e-4)


def test_auto_form_and_override():
    assert CoAttention(256, 8).resolve_form(6) == "folded"  # M H = 48 << E = 256
    assert CoAttention(32, 8).resolve_form(6) == "unfolded"  # M H = 48 > E = 32
    assert CoAttention(32, 8, form="folded").resolve_form(6) == "folded"
    assert CoAttention(256, 8, form="unfolded").resolve_form(6) == "unfolded"


def test_projected_bags_cache_never_reads_x():
    """Unfolded sampling: project once, then every step reuses the projections."""
    E, H, M, lens = 32, 4, 3, [12, 40]
    _, ca = pair(E, H, form="unfolded")
    query, x, cu = inputs(2, M, E, E, lens)
    kv = ca.project_bags(x)
    assert kv.k.shape == (52, H, E // H)
    ref = ca(query, x, cu)[0]
    poisoned = torch.full_like(x, float("nan"))  # a step that touched X would give NaN
    torch.testing.assert_close(ca(query, poisoned, cu, kv=kv)[0], ref)


def test_folded_bf16_features_with_float32_module():
    E, H, M, lens = 64, 8, 6, [200, 33]
    _, ca = pair(E, H, form="folded", dtype=torch.float32)
    query, x, cu = inputs(2, M, E, E, lens, dtype=torch.float32)
    full = ca(query, x, cu)[0]
    half = ca(query, x.to(torch.bfloat16), cu)[0]
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, full, atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize("form", ["folded", "unfolded"])
def test_empty_bag_gives_output_bias(form):
    _, ca = pair(16, 2, form=form, dtype=torch.float32)
    query, x, cu = inputs(2, 3, 16, 16, [0, 4], dtype=torch.float32)
    out, probs = ca(query, x, cu, need_weights=True)
    torch.testing.assert_close(out[0], ca.out_proj.bias.expand(3, 16))
    assert probs.shape == (4, 2, 3)


def test_state_dict_keys_match_multihead_attention():
    for kdim in (None, 24):
        mha = torch.nn.MultiheadAttention(32, 4, kdim=kdim, vdim=kdim)
        ca = CoAttention(32, 4, kdim=kdim, vdim=kdim)
        assert set(ca.state_dict()) == set(mha.state_dict())
        mha.load_state_dict(ca.state_dict())  # and back


def test_errors():
    with pytest.raises(ValueError, match="kdim"):
        CoAttention(32, 4, kdim=16, vdim=24)
    with pytest.raises(ValueError, match="multiple of num_heads"):
        CoAttention(30, 4)
    with pytest.raises(ValueError, match="form"):
        CoAttention(32, 4, form="fast")
    ca = CoAttention(32, 4)
    query, x, cu = inputs(2, 3, 32, 32, [3, 4], dtype=torch.float32)
    with pytest.raises(ValueError, match="packed patch features"):
        ca(query, x[:, :16], cu)
    with pytest.raises(ValueError, match="query must be"):
        ca(query[0], x, cu)


def test_real_tcga_regions_as_bags(shared_data):
    """Three real TCGA H&E regions, cut into 16x16 RGB patches (768-d pixel features), as three bags."""
    import matplotlib.image as mpimg

    regions = sorted((shared_data / "pathomicfusion" / "CellGraph" / "example_data" / "imgs").glob("*.png"))
    if len(regions) < 3:
        pytest.skip("the three TCGA example regions are not in the shared data folder")
    feats, lens = [], []
    for path, side in zip(regions, (512, 256, 128)):
        img = np.asarray(mpimg.imread(path))[:side, :side, :3].astype(np.float32)  # [side, side, 3] in [0, 1]
        tiles = img.reshape(side // 16, 16, side // 16, 16, 3).transpose(0, 2, 1, 3, 4).reshape(-1, 768)
        feats.append(torch.from_numpy(tiles - tiles.mean(0)))
        lens.append(tiles.shape[0])
    x64 = torch.cat(feats).double()  # [1024 + 256 + 64, 768]
    cu = po.cu_seqlens_from_lengths(lens)
    for form in ("folded", "unfolded"):
        mha, ca = pair(64, 8, kdim=768, form=form)
        query = torch.randn(3, 6, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        ref_out, ref_probs = mha_packed(mha, query, x64, cu)
        out, probs = ca(query, x64, cu, need_weights=True)
        torch.testing.assert_close(out, ref_out, atol=1e-10, rtol=1e-9)
        torch.testing.assert_close(probs, ref_probs, atol=1e-12, rtol=1e-9)
        out32, probs32 = ca.float()(query.float(), x64.float(), cu, need_weights=True)
        mha_out32, mha_probs32 = mha_packed(mha.float(), query.float(), x64.float(), cu)
        e_ours = (out32.double() - ref_out).abs().max().item()
        e_mha = (mha_out32.double() - ref_out).abs().max().item()
        assert e_ours <= 2 * e_mha + 1e-6 * ref_out.abs().max().item(), (form, e_ours, e_mha)


@pytest.mark.parametrize("form", ["folded", "unfolded"])
def test_torch_compile_fullgraph_forward_backward(form):
    _, ca = pair(64, 8, form=form, dtype=torch.float32)
    query, x, cu = inputs(3, 6, 64, 64, [30, 0, 50], dtype=torch.float32)
    step = torch.compile(lambda q, x, cu: ca(q, x, cu, 50, need_weights=True), fullgraph=True, backend="aot_eager")
    got, want = step(query, x, cu), ca(query, x, cu, 50, need_weights=True)
    torch.testing.assert_close(got[0], want[0])
    torch.testing.assert_close(got[1], want[1])
    g1 = torch.autograd.grad(got[0].sum(), (query, x))
    g2 = torch.autograd.grad(want[0].sum(), (query, x))
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)


CUDA = pytest.mark.skipif(not (torch.cuda.is_available() and po.has_kernel("coattention", "cuda")),
                          reason="needs a GPU and pathgen's CUDA kernels")


@CUDA
@pytest.mark.parametrize("form", ["folded", "unfolded"])
def test_cuda_training_step_matches_multihead_attention(form):
    """The module on the GPU (fused CUDA op, float32) against nn.MultiheadAttention in float64 on the CPU:
    outputs, weights and the gradients of the query, the patches and every parameter."""
    E, H, M, lens = 64, 8, 6, [300, 0, 1, 1000]
    mha, ca64 = pair(E, H, form=form)
    ca = CoAttention(E, H, form=form).cuda()  # float32
    ca.load_state_dict(ca64.state_dict())
    query, x, cu = inputs(len(lens), M, E, E, lens)
    qc = query.detach().float().cuda().requires_grad_()
    xc = x.detach().float().cuda().requires_grad_()
    out, probs = ca(qc, xc, cu.cuda(), need_weights=True)
    assert out.is_cuda and probs.is_cuda
    ref_out, ref_probs = mha_packed(mha, query, x, cu)
    torch.testing.assert_close(out.double().cpu(), ref_out, atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(probs.double().cpu(), ref_probs, atol=1e-5, rtol=1e-3)

    params = [n for n, _ in ca.named_parameters()]
    ours = torch.autograd.grad(loss_of(out.double().cpu(), probs.double().cpu()), [qc, xc, *ca.parameters()])
    theirs = torch.autograd.grad(loss_of(ref_out, ref_probs), [query, x, *[dict(mha.named_parameters())[n]
                                                                            for n in params]])
    for name, a, b in zip(["query", "x", *params], ours, theirs):
        assert a.is_cuda
        scale = max(1.0, b.abs().max().item())
        torch.testing.assert_close(a.double().cpu(), b, atol=2e-4 * scale, rtol=1e-3,
                                   msg=lambda m: f"grad {name}: {m}")
