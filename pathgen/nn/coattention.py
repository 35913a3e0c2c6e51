"""``CoAttention``: multi-head attention of a few query tokens per slide over the slide's patches.

A drop-in for ``torch.nn.MultiheadAttention(embed_dim, num_heads, kdim, vdim, bias)`` called as
``mha(query, X, X)`` (same parameters, same ``state_dict`` keys, same numbers), for packed
bags of patch features, built on the fused ``pathgen.ops.coattention``.

Two forms behind one interface:

* **unfolded** (what ``nn.MultiheadAttention`` does): project every patch to keys and values
  (``2 n kdim E`` multiply-adds per call), then attend with H heads of size E / H.
* **folded**: fold the key projection into the queries and apply the value projection after
  pooling. For head h with ``q_h = W_q,h query + b_q,h``::

      score_hj = <q_h, W_k,h x_j + b_k,h> / sqrt(hd) = <W_k,h^T q_h, x_j> / sqrt(hd) + <q_h, b_k,h> / sqrt(hd)

  The last term is the same for every patch of the row, and softmax ignores a constant
  shift, so the key bias drops out exactly. Then ``o_h = W_v,h (sum_j p_hj x_j) + b_v,h``
  (the probabilities sum to one). The op runs with one KV head, ``k = v = X`` (the raw
  features, read once), queries ``W_k,h^T q_h`` of width kdim: ``2 n M H kdim`` multiply-adds
  and no projected patch ever exists. It is cheaper when ``M H`` is smaller than ``E``.

Diffusion sampling (the generator calls this in every denoising step): the patch features X
are constant across steps, so nothing about X may be recomputed per step.

* folded form (the default when ``M H < E``): pass the raw features every step; the only
  per-patch work is the op itself (one read of X). There is nothing to cache.
* unfolded form: call ``project_bags(x)`` once per slide batch (weights frozen, i.e. at
  inference) and pass the result as ``kv=`` to every step's ``forward``.

Empty bags give ``out_proj(0)`` (the output bias) in both forms, and no probabilities.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pathgen.ops.coattention import coattention

__all__ = ["CoAttention", "ProjectedBags"]

_FORMS = ("auto", "folded", "unfolded")


class ProjectedBags(NamedTuple):
    """Keys and values of every patch for the unfolded form (``CoAttention.project_bags``)."""

    k: Tensor  # [total_n, H, E / H]
    v: Tensor  # [total_n, H, E / H]


class CoAttention(nn.Module):
    """Multi-head co-attention of M query tokens per slide over the slide's packed patch bag.

    Args:
        embed_dim: E, width of the queries and of the output.
        num_heads: H; E must be divisible by H.
        kdim, vdim: width of the patch features (default E). One tensor X is both the key and
            the value input, so kdim must equal vdim.
        bias: learn the input and output projection biases (as ``nn.MultiheadAttention``).
        form: "auto" (folded when it needs fewer multiply-adds per patch), "folded" or "unfolded".
        device, dtype: factory arguments of the parameters.

    Parameters and ``state_dict`` keys are those of ``nn.MultiheadAttention`` with the same
    arguments (``in_proj_weight`` or ``q/k/v_proj_weight``, ``in_proj_bias``, ``out_proj``), so
    ``CoAttention(...).load_state_dict(mha.state_dict())`` works both ways.
    """

    def __init__(self, embed_dim: int, num_heads: int, kdim: int | None = None, vdim: int | None = None,
                 bias: bool = True, *, form: str = "auto", device=None, dtype=None) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        kdim = embed_dim if kdim is None else kdim
        vdim = embed_dim if vdim is None else vdim
        if embed_dim <= 0 or num_heads <= 0 or embed_dim % num_heads != 0:
            raise ValueError(f"CoAttention: embed_dim ({embed_dim}) must be a positive multiple of num_heads "
                             f"({num_heads})")
        if kdim != vdim:
            raise ValueError(f"CoAttention: kdim ({kdim}) must equal vdim ({vdim}): one feature tensor X serves as "
                             f"both key and value input (as in MultiheadAttention(query, X, X))")
        if form not in _FORMS:
            raise ValueError(f"CoAttention: form must be one of {_FORMS}, got {form!r}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.kdim = kdim
        self.vdim = vdim
        self.form = form
        self._qkv_same_embed_dim = kdim == embed_dim
        if self._qkv_same_embed_dim:
            self.in_proj_weight = nn.Parameter(torch.empty((3 * embed_dim, embed_dim), **factory))
            self.register_parameter("q_proj_weight", None)
            self.register_parameter("k_proj_weight", None)
            self.register_parameter("v_proj_weight", None)
        else:
            self.q_proj_weight = nn.Parameter(torch.empty((embed_dim, embed_dim), **factory))
            self.k_proj_weight = nn.Parameter(torch.empty((embed_dim, kdim), **factory))
            self.v_proj_weight = nn.Parameter(torch.empty((embed_dim, vdim), **factory))
            self.register_parameter("in_proj_weight", None)
        if bias:
            self.in_proj_bias = nn.Parameter(torch.empty(3 * embed_dim, **factory))
        else:
            self.register_parameter("in_proj_bias", None)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **factory)
        self._reset_parameters()

    def _reset_parameters(self) -> None:  # nn.MultiheadAttention's initialisation
        if self._qkv_same_embed_dim:
            nn.init.xavier_uniform_(self.in_proj_weight)
        else:
            nn.init.xavier_uniform_(self.q_proj_weight)
            nn.init.xavier_uniform_(self.k_proj_weight)
            nn.init.xavier_uniform_(self.v_proj_weight)
        if self.in_proj_bias is not None:
            nn.init.constant_(self.in_proj_bias, 0.0)
            nn.init.constant_(self.out_proj.bias, 0.0)

    # ---- weights ---------------------------------------------------------------------------

    def projection_weights(self) -> tuple[Tensor, Tensor, Tensor]:
        """(W_q [E, E], W_k [E, kdim], W_v [E, vdim]), views of the parameters."""
        if self._qkv_same_embed_dim:
            E = self.embed_dim
            w = self.in_proj_weight
            return w[:E], w[E:2 * E], w[2 * E:]
        return self.q_proj_weight, self.k_proj_weight, self.v_proj_weight

    def projection_biases(self) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        """(b_q, b_k, b_v), each [E], or Nones without bias."""
        if self.in_proj_bias is None:
            return None, None, None
        E = self.embed_dim
        b = self.in_proj_bias
        return b[:E], b[E:2 * E], b[2 * E:]

    # ---- forms -----------------------------------------------------------------------------

    def resolve_form(self, num_queries: int) -> str:
        """The form ``forward`` uses for M = num_queries queries per slide.

        "auto" compares multiply-adds per patch: folded ``2 M H kdim`` (scores and pooling on
        raw features) against unfolded ``2 kdim E + 2 M E`` (projecting the patch, then
        attending), i.e. folded when M H is below about E.
        """
        if self.form != "auto":
            return self.form
        folded = num_queries * self.num_heads * self.kdim
        unfolded = self.kdim * self.embed_dim + num_queries * self.embed_dim
        return "folded" if folded <= unfolded else "unfolded"

    def project_bags(self, x: Tensor,  # [total_n, kdim]
                     ) -> ProjectedBags:
        """Keys and values of every patch for the unfolded form, to compute once and pass as ``kv=``.

        Use when the weights are frozen (sampling): the projections of the constant features
        are then constant across diffusion steps.
        """
        self._check_features(x)
        _, w_k, w_v = self.projection_weights()
        _, b_k, b_v = self.projection_biases()
        xw = x.to(w_k.dtype)
        n, H, hd = x.shape[0], self.num_heads, self.head_dim
        return ProjectedBags(F.linear(xw, w_k, b_k).view(n, H, hd), F.linear(xw, w_v, b_v).view(n, H, hd))

    # ---- forward ---------------------------------------------------------------------------

    def _check_features(self, x: Tensor) -> None:
        if x.dim() != 2 or x.shape[1] != self.kdim:
            raise ValueError(f"CoAttention: x must be packed patch features [total_n, kdim={self.kdim}], got shape "
                             f"{tuple(x.shape)}")

    def forward(
        self,
        query: Tensor,  # [B, M, E]
        x: Tensor,  # [total_n, kdim] packed patch features
        cu_seqlens: Tensor,  # int32 [B + 1]
        max_seqlen: int | None = None,
        need_weights: bool = False,
        *,
        average_attn_weights: bool = False,
        kv: ProjectedBags | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """Attend from each slide's M queries over its patches.

        Args:
            query: [B, M, E] query tokens per slide.
            x: [total_n, kdim] patch features of all slides, packed (``pathgen.ops.pad_bags`` /
                ``unpad_bags`` convert from and to padding). In the folded form the op runs in
                x's dtype (e.g. bfloat16 features with a float32 model halve the bytes read).
            cu_seqlens: int32 [B + 1] bag offsets.
            max_seqlen: longest bag if known (launch hint).
            need_weights: also return the attention probabilities.
            average_attn_weights: average the probabilities over heads ([total_n, M]).
            kv: projected keys and values from ``project_bags(x)``; forces the unfolded form.

        Returns:
            ``(out, probs)``: out [B, M, E] in the parameters' dtype; probs [total_n, H, M]
            float32 (per head, summing to one over each slide's patches), [total_n, M] when
            averaged, or None without ``need_weights``.
        """
        if query.dim() != 3 or query.shape[2] != self.embed_dim:
            raise ValueError(f"CoAttention: query must be [B, M, E={self.embed_dim}], got shape {tuple(query.shape)}")
        self._check_features(x)
        B, M, E = query.shape
        H, hd = self.num_heads, self.head_dim
        w_q, w_k, w_v = self.projection_weights()
        b_q, _, b_v = self.projection_biases()
        # the per-step products below are small (no per-patch work); on CPU they run in float32,
        # where bfloat16/float16 GEMMs lack native kernels (~5x slower than float32 on AVX2)
        dt = torch.float32 if query.device.type == "cpu" and w_q.dtype in (torch.float16, torch.bfloat16) \
            else w_q.dtype

        def lin(t, w, b):
            return F.linear(t.to(dt), w.to(dt), None if b is None else b.to(dt))

        scale = 1.0 / math.sqrt(hd)
        q = lin(query, w_q, b_q).view(B, M, H, hd)  # [B, M, H, hd]
        form = "unfolded" if kv is not None else self.resolve_form(M)
        if form == "folded":
            # q'_h = W_k,h^T q_h: scores on raw features; the key bias shifts each row by a constant
            qf = torch.einsum("bmhd,hdk->bmhk", q, w_k.to(dt).view(H, hd, self.kdim)).to(x.dtype)  # [B, M, H, kdim]
            xk = x.unsqueeze(1)  # [total_n, 1, kdim]: k = v = X, one KV head, read once
            res = coattention(qf, xk, xk, cu_seqlens, max_seqlen, scale=scale, return_probs=need_weights)
            pooled = res[0].to(dt)  # [B, M, H, kdim] = sum_j p_hj x_j
            o = torch.einsum("bmhk,hdk->bmhd", pooled, w_v.to(dt).view(H, hd, self.vdim))  # [B, M, H, hd]
            if b_v is not None:  # sum_j p_hj = 1, except in an empty bag
                nonempty = (cu_seqlens[1:] > cu_seqlens[:-1]).to(dt)  # [B]
                o = o + nonempty.view(B, 1, 1, 1) * b_v.to(dt).view(H, hd)
        else:
            if kv is None:
                kv = self.project_bags(x)
            res = coattention(q.to(kv.k.dtype), kv.k, kv.v, cu_seqlens, max_seqlen, scale=scale,
                              return_probs=need_weights)
            o = res[0]  # [B, M, H, hd]
        out = lin(o.reshape(B, M, E), self.out_proj.weight, self.out_proj.bias).to(w_q.dtype)
        if not need_weights:
            return out, None
        probs = res[2]  # [total_n, H, M]
        return out, probs.mean(dim=1) if average_attn_weights else probs

    def extra_repr(self) -> str:
        return (f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, kdim={self.kdim}, "
                f"bias={self.in_proj_bias is not None}, form={self.form!r}")
