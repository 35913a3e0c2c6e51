"""What every predictor returns, and the weighted grade + survival objective."""
from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from pathgen.models.losses import grade_loss, grade_probs, hazards_to_survival, risk_from_hazards, survival_nll
from pathgen.models.predictor.config import PredictorConfig


@dataclasses.dataclass
class PredictorOutput:
    """Head outputs of one batch of patients.

    Attributes:
        survival_logits: [B, K]; hazards = sigmoid(logits) (MCAT's discrete-time head).
        grade_logits: [B, C] (``ce``) or [B, C-1] (``coral``), or None without a grade head.
        attention: maps kept for interpretation: multimodal ``coattn`` [total_n, H, F] (co-attention
            probabilities of every patch for every family token), ``path`` and ``omic`` [B, F]
            (token pooling weights); slide-only ``patches`` [total_n]; expression-only: empty.
        grade_kind: ``"ce"`` or ``"coral"`` (how to turn grade logits into probabilities).
    """

    survival_logits: Tensor
    grade_logits: Tensor | None = None
    attention: dict[str, Tensor] = dataclasses.field(default_factory=dict)
    grade_kind: str = "ce"

    @property
    def hazards(self) -> Tensor:  # [B, K]
        return torch.sigmoid(self.survival_logits)

    @property
    def survival(self) -> Tensor:  # [B, K] S_k = P(T beyond bin k)
        return hazards_to_survival(self.hazards)

    @property
    def risk(self) -> Tensor:  # [B] -sum_k S_k, higher = earlier death
        return risk_from_hazards(self.hazards)

    @property
    def grade_probs(self) -> Tensor | None:  # [B, C]
        return None if self.grade_logits is None else grade_probs(self.grade_logits, self.grade_kind)


def predictor_loss(
    out: PredictorOutput,
    survival_bin: Tensor,  # [B] int64 0-based bin, -1 = unknown
    censorship: Tensor,  # [B] 1 = censored, NaN = unknown
    grade: Tensor,  # [B] int64 grade index, -1 = unknown
    config: PredictorConfig,
) -> tuple[Tensor, dict[str, float]]:
    """``lambda * NLL_surv + (1 - lambda) * L_grade`` over the patients that have each label.

    MCAT's NLL with 0-based bins and ``config.alpha``; softmax CE or CORAL for grade (never BCE on
    one-hot labels). Patients without a survival label (or grade) are left out of that term; a
    batch without any grade label contributes only the survival term (weighted by lambda), so
    the two heads keep their relative weights across batches. Without a grade head the loss is
    the NLL alone.

    Returns:
        ``(loss [], {"survival": float | nan, "grade": float | nan})``.
    """
    dev = out.survival_logits.device
    survival_bin = survival_bin.to(dev)
    censorship = censorship.to(dev)
    grade = grade.to(dev)
    zero = out.survival_logits.sum() * 0.0  # keeps the graph when a term is empty
    has_s = (survival_bin >= 0) & torch.isfinite(censorship)
    l_s = survival_nll(out.survival_logits[has_s], survival_bin[has_s], censorship[has_s], alpha=config.alpha) \
        if bool(has_s.any()) else zero
    parts = {"survival": float(l_s.detach()) if bool(has_s.any()) else float("nan"), "grade": float("nan")}
    if out.grade_logits is None or not config.has_grade:
        return l_s, parts
    has_g = grade >= 0
    # an empty term still touches its head's outputs: under DDP every parameter must take part in
    # every step, or a rank whose batch has no graded patient stalls the gradient reduction
    l_g = grade_loss(out.grade_logits[has_g], grade[has_g], kind=config.grade_loss) if bool(has_g.any()) \
        else out.grade_logits.sum() * 0.0
    if bool(has_g.any()):
        parts["grade"] = float(l_g.detach())
    w = config.survival_weight
    return w * l_s + (1.0 - w) * l_g, parts
