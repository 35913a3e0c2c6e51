"""Building blocks shared by the predictors: SNN encoders, gated attention pooling (over a few
dense tokens, or over packed patch bags) and the grade + survival heads.

Gated attention (Ilse, Tomczak & Welling, ICML 2018; CLAM/MCAT ``Attn_Net_Gated``):
``w_i = W (tanh(V h_i) * sigmoid(U h_i))``, ``a = softmax(w)`` over the instances of one bag,
pooled ``sum_i a_i h_i``. The packed version takes bags as ``[total_n, E]`` rows + ``cu_seqlens``
(pathgen's varlen layout) and never pads; an empty bag pools to the zero vector.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from pathgen.models.losses import CoralHead
from pathgen.ops.bags import bag_lengths


def discrete_hazards(bins, censorship, n_bins: int) -> Tensor:  # [N], [N] -> [K]
    """Maximum-likelihood per-bin hazards of MCAT's discrete-time model from labelled patients.

    Under the NLL a death in bin y contributes S_padded[y] h_y and a censoring in bin y contributes
    S_y (alive through bin y), so h_k = deaths in bin k / patients whose bin is >= k.
    """
    y = torch.as_tensor(bins, dtype=torch.int64)
    c = torch.as_tensor(censorship, dtype=torch.float64)
    deaths = torch.zeros(n_bins, dtype=torch.float64).index_add(0, y, 1.0 - c)
    at_risk = torch.flip(torch.cumsum(torch.flip(torch.bincount(y, minlength=n_bins).double(), [0]), 0), [0])
    return (deaths / at_risk.clamp(min=1.0)).float()


def init_snn_weights(module: nn.Module) -> None:
    """MCAT's ``init_max_weights``: Linear weights ~ N(0, 1/fan_in), biases 0 (self-normalising nets)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 1.0 / math.sqrt(m.weight.shape[1]))
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def snn_encoder(in_features: int, width: int, depth: int, dropout: float) -> nn.Sequential:
    """Self-normalising network (Klambauer et al. 2017; MCAT's SNN): ``depth`` x (Linear, ELU, AlphaDropout)."""
    if depth < 1:
        raise ValueError(f"snn_encoder: depth must be >= 1, got {depth}")
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(in_features if i == 0 else width, width), nn.ELU(), nn.AlphaDropout(dropout)]
    net = nn.Sequential(*layers)
    init_snn_weights(net)
    return net


class GatedAttentionScore(nn.Module):
    """Gated attention logit per instance: ``W (tanh(V h) * sigmoid(U h))`` -> one score."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.V = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Dropout(dropout))
        self.U = nn.Sequential(nn.Linear(dim, hidden), nn.Sigmoid(), nn.Dropout(dropout))
        self.W = nn.Linear(hidden, 1)

    def forward(self, h: Tensor) -> Tensor:  # [..., dim] -> [...]
        return self.W(self.V(h) * self.U(h)).squeeze(-1)


class TokenAttentionPool(nn.Module):
    """Gated attention pooling over a few dense tokens per patient (MCAT's pooling of the 6 family tokens)."""

    def __init__(self, dim: int, dropout: float = 0.0):
        super().__init__()
        self.score = GatedAttentionScore(dim, dim, dropout)

    def forward(self, tokens: Tensor) -> tuple[Tensor, Tensor]:  # [B, M, E]
        """Returns ``(pooled [B, E], weights [B, M])``."""
        w = torch.softmax(self.score(tokens), dim=1)  # [B, M]
        return torch.einsum("bm,bme->be", w, tokens), w


def segment_ids(cu_seqlens: Tensor, total: int) -> Tensor:  # int32 [B + 1] -> int64 [total_n]
    """Bag index of every packed row."""
    lengths = bag_lengths(cu_seqlens).to(torch.int64)
    ids = torch.repeat_interleave(torch.arange(lengths.numel(), device=lengths.device), lengths)
    if ids.numel() != total:
        raise ValueError(f"cu_seqlens covers {ids.numel()} rows but the packed tensor has {total}")
    return ids


def segment_softmax(scores: Tensor, seg: Tensor, n_bags: int) -> Tensor:  # [total_n], [total_n] -> [total_n]
    """Softmax of ``scores`` within each bag (rows sharing ``seg``), max-shifted for stability."""
    if scores.numel() == 0:
        return scores
    m = torch.full((n_bags,), -math.inf, dtype=scores.dtype, device=scores.device)
    m = m.scatter_reduce(0, seg, scores.detach(), reduce="amax", include_self=True)
    e = torch.exp(scores - m[seg])
    s = torch.zeros(n_bags, dtype=scores.dtype, device=scores.device).index_add(0, seg, e)
    return e / s[seg]


class PackedAttentionPool(nn.Module):
    """Gated attention-MIL pooling over packed bags (ABMIL, Ilse et al. 2018) without padding."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.score = GatedAttentionScore(dim, hidden, dropout)

    def forward(self, h: Tensor, cu_seqlens: Tensor) -> tuple[Tensor, Tensor]:
        """Pool each bag.

        Args:
            h: [total_n, E] packed instance embeddings.
            cu_seqlens: int32 [B + 1] bag offsets.

        Returns:
            ``(pooled [B, E], attention [total_n])``; attention sums to 1 within each non-empty bag;
            an empty bag pools to zeros.
        """
        B = cu_seqlens.numel() - 1
        seg = segment_ids(cu_seqlens, h.shape[0])
        a = segment_softmax(self.score(h), seg, B)  # [total_n]
        pooled = h.new_zeros(B, h.shape[1]).index_add(0, seg, a[:, None] * h)  # [B, E]
        return pooled, a


class SurvivalGradeHeads(nn.Module):
    """Discrete-time survival logits (hazards = sigmoid) and optional grade logits from one vector."""

    def __init__(self, width: int, n_bins: int, n_grades: int = 0, grade_loss: str = "ce"):
        super().__init__()
        self.survival = nn.Linear(width, n_bins)
        if n_grades >= 2:
            self.grade = CoralHead(width, n_grades) if grade_loss == "coral" else nn.Linear(width, n_grades)
        else:
            self.grade = None

    @torch.no_grad()
    def set_hazard_prior(self, hazards: Tensor) -> None:  # [K]
        """Start the survival head at given per-bin hazards (bias = logit(h)), e.g. the training
        patients' discrete-time hazards, so an early-stopped model is not stuck at h = 0.5."""
        h = torch.as_tensor(hazards, dtype=self.survival.bias.dtype).clamp(1e-3, 1 - 1e-3)
        if h.shape != self.survival.bias.shape:
            raise ValueError(f"set_hazard_prior: {tuple(h.shape)} hazards for {self.survival.bias.numel()} bins")
        self.survival.bias.copy_(torch.logit(h))

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor | None]:  # [B, E]
        """Returns ``(survival_logits [B, K], grade_logits [B, C] / [B, C-1] (coral) or None)``."""
        return self.survival(h), (self.grade(h) if self.grade is not None else None)
