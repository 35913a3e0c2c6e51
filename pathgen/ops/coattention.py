"""``coattention``: a few queries per slide attend over the slide's packed bag of patch keys.

The hot path of the generator and the predictor: M gene-family tokens (6, up to 64) attend
over thousands of patch embeddings per slide, for many slides at once (flash-attention's
varlen layout: keys of all slides packed one after another, ``cu_seqlens`` marks the bags).
The fused kernels split every bag's keys across threads (CPU) or thread blocks (CUDA),
run an online softmax per split and merge the splits by their log-sum-exp, so the keys are
read once whatever the batch's raggedness, and the attention maps come out of the same pass.

Gradients flow to q, k and v (and through ``lse`` and ``probs`` when they are used) via
``torch.library.register_autograd`` and the ``_coattention_backward`` op.
"""
from __future__ import annotations

import math
import weakref

import torch

from pathgen._extension import HAS_OPS, has_kernel
from pathgen.ops.reference import coattention_ref

__all__ = ["coattention"]

_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_BACKENDS = ("auto", "fused", "reference")
# device types with a compiled kernel, decided once (a constant for torch.compile to fold)
_FUSED_DEVICES = frozenset(d for d in ("cpu", "cuda") if has_kernel("coattention", d))


# cu_seqlens tensors whose values passed the checks below: id -> (weak ref, version, N, max_seqlen). A sampler
# calls coattention with one cu_seqlens thousands of times (steps x samples); checking its values copies it to
# the host, a device sync per call. An in-place write bumps the tensor's version, so it is checked again.
_CHECKED: dict[int, tuple] = {}


def _values_checked(cu_seqlens: torch.Tensor, N: int, max_seqlen) -> bool:
    entry = _CHECKED.get(id(cu_seqlens))
    return entry is not None and entry[0]() is cu_seqlens and entry[1:] == (cu_seqlens._version, N, max_seqlen)


def _remember_checked(cu_seqlens: torch.Tensor, N: int, max_seqlen) -> None:
    key = id(cu_seqlens)
    _CHECKED[key] = (weakref.ref(cu_seqlens, lambda _, key=key: _CHECKED.pop(key, None)), cu_seqlens._version, N,
                     max_seqlen)


def _check(q, k, v, cu_seqlens, max_seqlen, scale) -> None:
    for name, t in (("q", q), ("k", k), ("v", v), ("cu_seqlens", cu_seqlens)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"coattention: {name} must be a torch.Tensor, got {type(t).__name__}")
    if q.dim() != 4:
        raise ValueError(f"coattention: q must be [B, M, H, D] (slides, queries, heads, head dim), got shape "
                         f"{tuple(q.shape)}")
    if k.dim() != 3 or v.dim() != 3:
        raise ValueError(f"coattention: k and v must be [total_n, Hkv, D] and [total_n, Hkv, Dv] (packed bags), "
                         f"got {tuple(k.shape)} and {tuple(v.shape)}")
    if q.dtype not in _DTYPES:
        raise ValueError(f"coattention: q dtype must be float32/float16/bfloat16/float64, got {q.dtype}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"coattention: q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}; "
                         f"cast them (e.g. k.to(q.dtype))")
    if cu_seqlens.dim() != 1 or cu_seqlens.dtype != torch.int32:
        raise ValueError(f"coattention: cu_seqlens must be a 1-D int32 tensor [B + 1], got dtype {cu_seqlens.dtype} "
                         f"and shape {tuple(cu_seqlens.shape)} (use pathgen.ops.cu_seqlens_from_lengths)")
    for name, t in (("k", k), ("v", v), ("cu_seqlens", cu_seqlens)):
        if t.device != q.device:
            raise ValueError(f"coattention: {name} is on {t.device}, q on {q.device}; move them to one device")
    B, M, H, D = q.shape
    N, Hkv, Dk = k.shape
    if Dk != D:
        raise ValueError(f"coattention: k head dim {Dk} != q head dim {D}")
    if v.shape[0] != N or v.shape[1] != Hkv:
        raise ValueError(f"coattention: v must be [{N}, {Hkv}, Dv] like k, got {tuple(v.shape)}")
    if D == 0 or v.shape[2] == 0:
        raise ValueError("coattention: head dims must be positive")
    if Hkv == 0 or H % Hkv != 0:
        raise ValueError(f"coattention: the number of query heads H = {H} must be a multiple of the number of "
                         f"KV heads Hkv = {Hkv}")
    if cu_seqlens.shape[0] != B + 1:
        raise ValueError(f"coattention: cu_seqlens has {cu_seqlens.shape[0]} entries, expected B + 1 = {B + 1} "
                         f"for q with B = {B} slides")
    if scale is not None and not math.isfinite(float(scale)):
        raise ValueError(f"coattention: scale must be finite, got {scale}")
    if max_seqlen is not None and int(max_seqlen) < 0:
        raise ValueError(f"coattention: max_seqlen must be >= 0, got {max_seqlen}")
    max_seqlen = None if max_seqlen is None else int(max_seqlen)
    if torch.compiler.is_compiling() or _values_checked(cu_seqlens, N, max_seqlen):
        return
    # value checks (one small device->host copy of B + 1 ints)
    cu = cu_seqlens.to("cpu", torch.int64)
    if int(cu[0]) != 0:
        raise ValueError(f"coattention: cu_seqlens[0] must be 0, got {int(cu[0])}")
    lengths = cu[1:] - cu[:-1]
    if B and bool((lengths < 0).any()):
        bad = int(torch.nonzero(lengths < 0)[0])
        raise ValueError(f"coattention: cu_seqlens must be non-decreasing (sorted offsets), but cu_seqlens[{bad + 1}]"
                         f" = {int(cu[bad + 1])} < cu_seqlens[{bad}] = {int(cu[bad])}")
    if int(cu[-1]) != N:
        raise ValueError(f"coattention: cu_seqlens[-1] = {int(cu[-1])} must equal the number of packed keys "
                         f"k.shape[0] = {N} (offsets out of range)")
    if max_seqlen is not None and B and int(max_seqlen) < int(lengths.max()):
        raise ValueError(f"coattention: max_seqlen = {int(max_seqlen)} is smaller than the longest bag "
                         f"({int(lengths.max())}); pass the true maximum or None")
    _remember_checked(cu_seqlens, N, max_seqlen)


def coattention(
    q: torch.Tensor,  # [B, M, H, D]
    k: torch.Tensor,  # [total_n, Hkv, D]
    v: torch.Tensor,  # [total_n, Hkv, Dv]
    cu_seqlens: torch.Tensor,  # int32 [B + 1]
    max_seqlen: int | None = None,
    *,
    scale: float | None = None,
    return_probs: bool = False,
    backend: str = "auto",
) -> tuple[torch.Tensor, ...]:
    """Attention of every slide's M queries over that slide's packed bag of keys.

    For slide b, query m and head h (reading KV head ``h // (H // Hkv)``)::

        s_j = scale * <q[b, m, h], k[j, h_kv]>        for j in [cu[b], cu[b+1])
        out[b, m, h] = sum_j softmax(s)_j v[j, h_kv]
        lse[b, m, h] = log sum_j exp(s_j)

    Args:
        q: [B, M, H, D] queries (float32/float16/bfloat16/float64; any strides).
        k: [total_n, Hkv, D] keys of all slides, packed slide after slide. ``k`` may be ``v``
            (the folded form: raw patch features as both keys and values), read once.
        v: [total_n, Hkv, Dv] values; same dtype as q.
        cu_seqlens: int32 [B + 1] offsets, slide b owns keys ``cu[b]:cu[b+1]``; ``cu[0] = 0``,
            non-decreasing, ``cu[B] = total_n``.
        max_seqlen: longest bag, if known (a launch hint for CUDA; computed when None).
        scale: score scale, default ``D ** -0.5``.
        return_probs: also return the attention probabilities.
        backend: "auto" (fused kernel when compiled for the device, else the twin), "fused",
            "reference" (``pathgen.ops.reference.coattention_ref``).

    Returns:
        ``(out, lse)`` or ``(out, lse, probs)``:

        - out: [B, M, H, Dv] in q.dtype (accumulated in float32, float64 for float64 inputs).
        - lse: [B, M, H] float32 (float64 for float64 inputs), the log-sum-exp of the scores.
        - probs: [total_n, H, M], same dtype as lse; each slide's probabilities sum to 1 over
          its patches for every (query, head), ready to paint on the patch grid.

        An empty bag (``cu[b] == cu[b+1]``) gives ``out[b] = 0`` and ``lse[b] = -inf``.
    """
    if backend not in _BACKENDS:
        raise ValueError(f"coattention: backend must be one of {_BACKENDS}, got {backend!r}")
    _check(q, k, v, cu_seqlens, max_seqlen, scale)
    fused = q.device.type in _FUSED_DEVICES
    if backend == "fused" and not fused:
        raise RuntimeError(f"coattention: no fused kernel for device {q.device} (pathgen._C: "
                           f"{'loaded' if HAS_OPS else 'not loaded'}); use backend='auto' or 'reference'")
    if backend == "reference" or not fused:
        return coattention_ref(q, k, v, cu_seqlens, max_seqlen, scale=scale, return_probs=return_probs)
    sc = q.shape[-1] ** -0.5 if scale is None else float(scale)
    limit = SLIDES_PER_CALL.get(q.device.type)
    if limit is not None and q.shape[0] > limit and not torch.compiler.is_compiling():
        out, lse, probs = _in_slide_chunks(q, k, v, cu_seqlens, int(max_seqlen or 0), sc, bool(return_probs), limit)
    else:
        out, lse, probs = torch.ops.pathgen.coattention(q, k, v, cu_seqlens, int(max_seqlen or 0), sc,
                                                        bool(return_probs))
    return (out, lse, probs) if return_probs else (out, lse)


# The CUDA forward puts slides on gridDim.z, at most 65,535: a larger batch runs as several calls
# of consecutive slides (each its own autograd node), concatenated. No limit on the CPU.
SLIDES_PER_CALL: dict[str, int] = {"cuda": 65535}


def _in_slide_chunks(q, k, v, cu_seqlens, max_seqlen, scale, return_probs, limit):
    cu = cu_seqlens.to("cpu", torch.int64)  # one host copy; the offsets were checked already
    outs, lses, probs = [], [], []
    for b0 in range(0, q.shape[0], limit):
        b1 = min(q.shape[0], b0 + limit)
        j0, j1 = int(cu[b0]), int(cu[b1])
        sub_cu = (cu_seqlens[b0:b1 + 1] - cu_seqlens[b0]).to(torch.int32)
        # k[j0:j1] and v[j0:j1] of one tensor stay one view pair, so k-is-v is still read once
        o, lse, p = torch.ops.pathgen.coattention(q[b0:b1], k[j0:j1], v[j0:j1], sub_cu, max_seqlen, scale,
                                                  return_probs)
        outs.append(o)
        lses.append(lse)
        probs.append(p)
    return torch.cat(outs), torch.cat(lses), torch.cat(probs) if return_probs else probs[0]


if HAS_OPS:

    def _stats_dtype(dtype: torch.dtype) -> torch.dtype:
        return torch.float64 if dtype == torch.float64 else torch.float32

    @torch.library.register_fake("pathgen::coattention")
    def _coattention_fake(q, k, v, cu_seqlens, max_seqlen, scale, return_probs):
        B, M, H, _ = q.shape
        st = _stats_dtype(q.dtype)
        out = q.new_empty((B, M, H, v.shape[2]))
        lse = q.new_empty((B, M, H), dtype=st)
        probs = q.new_empty((k.shape[0] if return_probs else 0, H, M), dtype=st)
        return out, lse, probs

    @torch.library.register_fake("pathgen::_coattention_backward")
    def _coattention_backward_fake(grad_out, grad_lse, grad_probs, q, k, v, cu_seqlens, out, lse, probs,
                                   max_seqlen, scale, output_mask):
        def grad(x, need):
            return torch.empty_like(x, memory_format=torch.contiguous_format) if need else x.new_empty((0,))

        return grad(q, output_mask[0]), grad(k, output_mask[1]), grad(v, output_mask[2])

    def _setup_context(ctx, inputs, output):
        q, k, v, cu_seqlens, max_seqlen, scale, return_probs = inputs
        out, lse, probs = output
        ctx.save_for_backward(q, k, v, cu_seqlens, out, lse, probs)
        ctx.max_seqlen = max_seqlen
        ctx.scale = scale
        ctx.return_probs = return_probs

    def _backward(ctx, grad_out, grad_lse, grad_probs):
        q, k, v, cu_seqlens, out, lse, probs = ctx.saved_tensors
        mask = [bool(ctx.needs_input_grad[0]), bool(ctx.needs_input_grad[1]), bool(ctx.needs_input_grad[2])]
        if not any(mask):
            return None, None, None, None, None, None, None
        if not ctx.return_probs:
            grad_probs, probs = None, None
        grad_q, grad_k, grad_v = torch.ops.pathgen._coattention_backward(
            grad_out, grad_lse, grad_probs, q, k, v, cu_seqlens, out, lse, probs, ctx.max_seqlen, ctx.scale, mask)
        return (grad_q if mask[0] else None, grad_k if mask[1] else None, grad_v if mask[2] else None,
                None, None, None, None)

    torch.library.register_autograd("pathgen::coattention", _backward, setup_context=_setup_context)
