"""Expression-only baseline: a self-normalising network over the concatenated gene families.

MCAT's genomics-only ``SNN`` (Chen et al., ICCV 2021): ``snn_depth`` x (Linear, ELU, AlphaDropout)
over the whole expression vector, then the shared grade + survival heads.
"""
from __future__ import annotations

from torch import Tensor, nn

from pathgen.models.predictor.config import PredictorConfig
from pathgen.models.predictor.layers import SurvivalGradeHeads, snn_encoder
from pathgen.models.predictor.output import PredictorOutput


class ExpressionSNN(nn.Module):
    """SNN over ``sum(family_sizes)`` expression values; patch features are not read."""

    def __init__(self, cfg: PredictorConfig):
        super().__init__()
        if cfg.kind != "expression":
            raise ValueError(f"ExpressionSNN needs a config of kind 'expression', got {cfg.kind!r}")
        self.cfg = cfg
        self.n_genes = sum(cfg.family_sizes)
        self.encoder = snn_encoder(self.n_genes, cfg.width, cfg.snn_depth, cfg.dropout)
        self.heads = SurvivalGradeHeads(cfg.width, cfg.n_bins, cfg.n_grades, cfg.grade_loss)

    def forward(self, *, expression: Tensor | None = None, features: Tensor | None = None,
                cu_seqlens: Tensor | None = None, max_seqlen: int | None = None) -> PredictorOutput:
        """Predict from expression.

        Args:
            expression: [B, G_total] transformed expression, families concatenated in config order.
            features, cu_seqlens, max_seqlen: ignored (accepted so every predictor takes one batch).
        """
        if expression is None or expression.dim() != 2 or expression.shape[1] != self.n_genes:
            got = None if expression is None else tuple(expression.shape)
            raise ValueError(f"ExpressionSNN: expression must be [B, {self.n_genes}] (the concatenated families), "
                             f"got {got}")
        h = self.encoder(expression)  # [B, E]
        surv, grade = self.heads(h)
        return PredictorOutput(surv, grade, {}, self.cfg.grade_loss)
