"""MCAT-style multimodal predictor (Chen et al., ICCV 2021), corrected as PATHGEN_SPEC.md section 11 asks.

Forward for a batch of B patients with F gene families:

1. Per family f, an SNN encodes the (transformed) expression x^(f) [B, G_f] to a token: H [B, F, E].
2. Patches are projected, Linear(D, E) + ReLU + Dropout: W [total_n, E] (packed bags).
3. Genomic-guided co-attention: the F family tokens of a patient attend over that patient's
   patches through ``pathgen.nn.CoAttention`` (equal to ``nn.MultiheadAttention(H, W, W)`` per
   patient, packed, no padding); the attention probabilities are kept, ``coattn`` [total_n, h, F].
4. Path branch: transformer over the co-attended tokens, gated attention pooling over the F
   tokens, rho -> h_path [B, E]. Omic branch: the same over H -> h_omic [B, E].
5. Concat fusion, Linear(2E, E) + ReLU + Linear(E, E) + ReLU -> h [B, E], then the survival head
   (discrete hazards) and the grade head (softmax or CORAL).

Unlike the published MCAT_GR, the grade head reads the fused vector h (not a second pooling of the
path tokens only), trained with CE/CORAL, not BCE on one-hot labels; any batch size works.
A patient without patches has zero co-attended tokens; its prediction then rests on the omic branch.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from pathgen.models.predictor.config import PredictorConfig
from pathgen.models.predictor.layers import SurvivalGradeHeads, TokenAttentionPool, snn_encoder
from pathgen.models.predictor.output import PredictorOutput
from pathgen.models.predictor.slide_abmil import check_bags
from pathgen.nn import CoAttention


def token_transformer(cfg: PredictorConfig) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(cfg.width, cfg.transformer_heads, dim_feedforward=2 * cfg.width,
                                       dropout=cfg.dropout, activation="relu", batch_first=True)
    return nn.TransformerEncoder(layer, cfg.transformer_layers, enable_nested_tensor=False)


class TokenBranch(nn.Module):
    """Transformer over the family tokens, gated attention pooling, rho."""

    def __init__(self, cfg: PredictorConfig):
        super().__init__()
        self.transformer = token_transformer(cfg)
        self.pool = TokenAttentionPool(cfg.width, cfg.dropout)
        self.rho = nn.Sequential(nn.Linear(cfg.width, cfg.width), nn.ReLU(), nn.Dropout(cfg.dropout))

    def forward(self, tokens: Tensor) -> tuple[Tensor, Tensor]:  # [B, F, E]
        """Returns ``(h [B, E], pooling weights [B, F])``."""
        pooled, w = self.pool(self.transformer(tokens))
        return self.rho(pooled), w


class MultimodalPredictor(nn.Module):
    """Slide + expression predictor with genomic-guided co-attention (see module docstring)."""

    def __init__(self, cfg: PredictorConfig):
        super().__init__()
        if cfg.kind != "multimodal":
            raise ValueError(f"MultimodalPredictor needs a config of kind 'multimodal', got {cfg.kind!r}")
        self.cfg = cfg
        E = cfg.width
        self.family_sizes = list(cfg.family_sizes)
        self.family_encoders = nn.ModuleList(
            [snn_encoder(g, E, cfg.snn_depth, cfg.dropout) for g in self.family_sizes])
        self.patch_proj = nn.Sequential(nn.Linear(cfg.feature_dim, E), nn.ReLU(), nn.Dropout(cfg.dropout))
        self.coattn = CoAttention(E, cfg.coattn_heads)
        self.path_branch = TokenBranch(cfg)
        self.omic_branch = TokenBranch(cfg)
        self.fusion = nn.Sequential(nn.Linear(2 * E, E), nn.ReLU(), nn.Linear(E, E), nn.ReLU())
        self.heads = SurvivalGradeHeads(E, cfg.n_bins, cfg.n_grades, cfg.grade_loss)

    def family_tokens(self, expression: Tensor) -> Tensor:  # [B, G_total] -> [B, F, E]
        if expression is None or expression.dim() != 2 or expression.shape[1] != sum(self.family_sizes):
            got = None if expression is None else tuple(expression.shape)
            raise ValueError(f"MultimodalPredictor: expression must be [B, {sum(self.family_sizes)}] (families "
                             f"{self.family_sizes} concatenated), got {got}")
        chunks = torch.split(expression, self.family_sizes, dim=1)
        return torch.stack([enc(x) for enc, x in zip(self.family_encoders, chunks)], dim=1)

    def forward(self, *, expression: Tensor | None = None, features: Tensor | None = None,
                cu_seqlens: Tensor | None = None, max_seqlen: int | None = None) -> PredictorOutput:
        """Predict from expression and the patch bags.

        Args:
            expression: [B, G_total] transformed expression (real or synthesized), families concatenated.
            features: [total_n, D] packed patches; cu_seqlens: int32 [B + 1]; max_seqlen: longest bag.

        Returns:
            ``PredictorOutput`` with attention ``coattn`` [total_n, heads, F], ``path`` and ``omic`` [B, F].
        """
        check_bags(features, cu_seqlens, self.cfg.feature_dim, "MultimodalPredictor")
        H = self.family_tokens(expression)  # [B, F, E]
        if cu_seqlens.numel() - 1 != H.shape[0]:
            raise ValueError(f"MultimodalPredictor: {H.shape[0]} expression rows but {cu_seqlens.numel() - 1} bags")
        W = self.patch_proj(features)  # [total_n, E]
        cu = cu_seqlens.to(device=features.device, dtype=torch.int32)
        coattended, probs = self.coattn(H, W, cu, max_seqlen, need_weights=True)  # [B, F, E], [total_n, h, F]
        h_path, w_path = self.path_branch(coattended)
        h_omic, w_omic = self.omic_branch(H)
        h = self.fusion(torch.cat([h_path, h_omic], dim=1))  # [B, E]
        surv, grade = self.heads(h)
        return PredictorOutput(surv, grade, {"coattn": probs, "path": w_path, "omic": w_omic}, self.cfg.grade_loss)
