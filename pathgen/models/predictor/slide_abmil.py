"""Slide-only baseline: gated attention-MIL (ABMIL; Ilse et al., ICML 2018) over the patch bag.

A genuine slide-only model with the same heads as the others, NOT the published "replace the genes
with min-max-normalised noise" control. Patches: Linear(D, E) + ReLU + Dropout, gated attention
pooling per bag (packed, no padding), rho = Linear(E, E) + ReLU + Dropout, then the heads.
"""
from __future__ import annotations

from torch import Tensor, nn

from pathgen.models.predictor.config import PredictorConfig
from pathgen.models.predictor.layers import PackedAttentionPool, SurvivalGradeHeads
from pathgen.models.predictor.output import PredictorOutput


def check_bags(features: Tensor | None, cu_seqlens: Tensor | None, feature_dim: int, who: str) -> None:
    """Raise a readable error when the packed bags do not fit the model."""
    if features is None or cu_seqlens is None:
        raise ValueError(f"{who}: needs features [total_n, {feature_dim}] and cu_seqlens [B + 1] (collate_bags)")
    if features.dim() != 2 or features.shape[1] != feature_dim:
        raise ValueError(f"{who}: features must be [total_n, {feature_dim}], got {tuple(features.shape)}; the "
                         "model was built for another patch encoder")
    if cu_seqlens.dim() != 1 or cu_seqlens.dtype.is_floating_point:
        raise ValueError(f"{who}: cu_seqlens must be a 1-D integer tensor [B + 1]")


class SlideABMIL(nn.Module):
    """Gated ABMIL over packed bags; returns the patch attention (``attention["patches"]``)."""

    def __init__(self, cfg: PredictorConfig):
        super().__init__()
        if cfg.kind != "slide":
            raise ValueError(f"SlideABMIL needs a config of kind 'slide', got {cfg.kind!r}")
        self.cfg = cfg
        E = cfg.width
        self.patch_proj = nn.Sequential(nn.Linear(cfg.feature_dim, E), nn.ReLU(), nn.Dropout(cfg.dropout))
        self.pool = PackedAttentionPool(E, E, cfg.dropout)
        self.rho = nn.Sequential(nn.Linear(E, E), nn.ReLU(), nn.Dropout(cfg.dropout))
        self.heads = SurvivalGradeHeads(E, cfg.n_bins, cfg.n_grades, cfg.grade_loss)

    def forward(self, *, features: Tensor | None = None, cu_seqlens: Tensor | None = None,
                max_seqlen: int | None = None, expression: Tensor | None = None) -> PredictorOutput:
        """Predict from the patch bags.

        Args:
            features: [total_n, D] patches of all patients, packed.
            cu_seqlens: int32 [B + 1] offsets; an empty bag pools to zeros (its prediction comes
                from the biases alone).
            max_seqlen, expression: ignored.
        """
        check_bags(features, cu_seqlens, self.cfg.feature_dim, "SlideABMIL")
        h = self.patch_proj(features)  # [total_n, E]
        pooled, a = self.pool(h, cu_seqlens.to(features.device))  # [B, E], [total_n]
        surv, grade = self.heads(self.rho(pooled))
        return PredictorOutput(surv, grade, {"patches": a}, self.cfg.grade_loss)
