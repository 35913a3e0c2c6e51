"""Losses of the predictor's heads: discrete-time survival NLL and grade (softmax CE or CORAL).

Survival follows MCAT (Chen et al., ICCV 2021) with 0-based bins y in {0..K-1}:
hazards h_k = sigmoid(logit_k) = P(T in bin k | T >= start of bin k), survival
S_k = prod_{j<=k} (1 - h_j) = P(T beyond bin k), and S_padded = [1, S_0, .., S_{K-1}] so that
S_padded[y] = P(T beyond bin y - 1). The likelihood of a death in bin y is S_padded[y] * h_y; of a
censoring in bin y (alive at least through bin y) it is S_padded[y + 1] = S_y.
The published PathGen code used S_y * h_y for deaths (1-based labels indexed as 0-based), which
counts bin y twice; :func:`survival_nll` uses S_padded[y], and the tests pin the difference.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _check_survival_inputs(logits: Tensor, y: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    if logits.dim() != 2:
        raise ValueError(f"logits must be [B, K], got {tuple(logits.shape)}")
    B, K = logits.shape
    y = torch.as_tensor(y, device=logits.device).reshape(-1)
    c = torch.as_tensor(c, device=logits.device).reshape(-1)
    if y.shape != (B,) or c.shape != (B,):
        raise ValueError(f"y and c must be [B] = [{B}], got {tuple(y.shape)} and {tuple(c.shape)}")
    if y.dtype.is_floating_point or y.dtype == torch.bool:
        raise ValueError("y must hold integer bin indices (0-based)")
    if B and (int(y.min()) < 0 or int(y.max()) >= K):
        raise ValueError(f"bin labels must be 0-based in [0, {K}); got range [{int(y.min())}, {int(y.max())}]")
    if B and not bool(((c == 0) | (c == 1)).all()):
        raise ValueError("c must be 0/1 (MCAT's censorship: 1 = censored, 0 = death observed)")
    return y.long(), c.to(logits.dtype)


def hazards_to_survival(hazards: Tensor) -> Tensor:  # [B, K] -> [B, K]
    """S_k = prod_{j<=k} (1 - h_j)."""
    return torch.cumprod(1.0 - hazards, dim=-1)


def risk_from_hazards(hazards: Tensor) -> Tensor:  # [B, K] -> [B]
    """MCAT's risk score ``-sum_k S_k`` (higher = earlier death); feeds the C-index."""
    return -hazards_to_survival(hazards).sum(dim=-1)


def risk_from_logits(logits: Tensor) -> Tensor:  # [B, K] -> [B]
    """:func:`risk_from_hazards` of ``sigmoid(logits)``."""
    return risk_from_hazards(torch.sigmoid(logits))


def survival_nll(
    logits: Tensor,  # [B, K] survival-head logits, hazards = sigmoid(logits)
    y: Tensor,  # [B] 0-based time bin of the death or censoring
    c: Tensor,  # [B] MCAT censorship: 1 = censored (alive), 0 = death observed
    alpha: float = 0.0,
    eps: float = 1e-7,
) -> Tensor:  # [] mean over the batch
    """Discrete-time survival negative log-likelihood (MCAT; Zadeh & Schmid, TPAMI 2021).

    With S_padded = [1, cumprod(1 - h)]:
      uncensored = -(1 - c) * (log S_padded[y] + log h[y])
      censored   = -c * log S_padded[y + 1]
      loss = mean( (1 - alpha) * (censored + uncensored) + alpha * uncensored )
    The logs are taken in log space (log h = logsigmoid(l), log(1 - h) = logsigmoid(-l), log S a
    cumulative sum), so saturated logits keep their gradient: MCAT's form, log(clamp(p, eps)), gives a
    confidently wrong prediction (|logit| > ~16 in float32) a large loss and a zero gradient.
    ``alpha`` up-weights deaths (PathGen used 0; MCAT's function default was 0.4).

    Args:
        logits: unnormalised hazards; the sigmoid is applied here.
        y: 0-based bin labels (convert 1-based labels first: the published code's off-by-one).
        c: censorship indicator.
        alpha: extra weight of the uncensored term, in [0, 1].
        eps: unused (the log-space form needs no clamp); kept so MCAT-style calls still work.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    y, c = _check_survival_inputs(logits, y, c)
    log_h = F.logsigmoid(logits)  # [B, K] log h_k
    log_S = torch.cumsum(F.logsigmoid(-logits), dim=1)  # [B, K] log prod_{j <= k} (1 - h_j)
    log_S_padded = torch.cat([torch.zeros_like(log_S[:, :1]), log_S], dim=1)  # [B, K+1]
    yy = y[:, None]
    log_s_before = log_S_padded.gather(1, yy).squeeze(1)  # alive at the start of bin y
    log_s_after = log_S_padded.gather(1, yy + 1).squeeze(1)  # alive past bin y
    log_h_y = log_h.gather(1, yy).squeeze(1)
    uncensored = -(1.0 - c) * (log_s_before + log_h_y)
    censored = -c * log_s_after
    return ((1.0 - alpha) * (censored + uncensored) + alpha * uncensored).mean()


class SurvivalNLLLoss(nn.Module):
    """Module form of :func:`survival_nll` (``alpha`` and ``eps`` fixed at construction)."""

    def __init__(self, alpha: float = 0.0, eps: float = 1e-7):
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.alpha = alpha
        self.eps = eps

    def forward(self, logits: Tensor, y: Tensor, c: Tensor) -> Tensor:
        return survival_nll(logits, y, c, alpha=self.alpha, eps=self.eps)


# --------------------------------------------------------------------------------------------
# grade
# --------------------------------------------------------------------------------------------
def _check_grade_labels(y: Tensor, B: int, n_classes: int, device) -> Tensor:
    y = torch.as_tensor(y, device=device).reshape(-1)
    if y.shape != (B,):
        raise ValueError(f"y must be [B] = [{B}], got {tuple(y.shape)}")
    if y.dtype.is_floating_point or y.dtype == torch.bool:
        raise ValueError("grade labels must be integer class indices (0-based)")
    if B and (int(y.min()) < 0 or int(y.max()) >= n_classes):
        raise ValueError(f"grade labels must be in [0, {n_classes}), got [{int(y.min())}, {int(y.max())}]")
    return y.long()


def grade_cross_entropy(
    logits: Tensor,  # [B, C]
    y: Tensor,  # [B] 0-based grade index
    weight: Tensor | None = None,  # [C] optional class weights
    label_smoothing: float = 0.0,
) -> Tensor:  # []
    """Softmax cross-entropy for grade (replaces the published BCE on one-hot labels)."""
    if logits.dim() != 2:
        raise ValueError(f"logits must be [B, C], got {tuple(logits.shape)}")
    y = _check_grade_labels(y, logits.shape[0], logits.shape[1], logits.device)
    return F.cross_entropy(logits, y, weight=weight, label_smoothing=label_smoothing)


def coral_levels(y: Tensor, n_classes: int) -> Tensor:  # [B] -> [B, C-1]
    """Extended binary targets of CORAL: level_k = 1[y > k], k = 0..C-2."""
    thresholds = torch.arange(n_classes - 1, device=y.device)
    return (y[:, None] > thresholds[None, :]).float()


def coral_loss(
    logits: Tensor,  # [B, C-1] cumulative logits, logit_k models P(y > k)
    y: Tensor,  # [B] 0-based ordinal grade
) -> Tensor:  # []
    """CORAL ordinal loss (Cao, Mirjalili & Raschka, Pattern Recognit Lett 2020).

    Sum over the C-1 binary tasks "y > k" of the logistic loss, mean over the batch. Rank
    consistency (P(y > k) non-increasing in k) needs the CORAL parameterisation, one shared
    weight vector and C-1 biases: see :class:`CoralHead`.
    """
    if logits.dim() != 2 or logits.shape[1] < 1:
        raise ValueError(f"CORAL logits must be [B, C-1] with C >= 2, got {tuple(logits.shape)}")
    n_classes = logits.shape[1] + 1
    y = _check_grade_labels(y, logits.shape[0], n_classes, logits.device)
    levels = coral_levels(y, n_classes).to(logits.dtype)
    per_task = F.binary_cross_entropy_with_logits(logits, levels, reduction="none")
    return per_task.sum(dim=1).mean()


def coral_probs(logits: Tensor) -> Tensor:  # [B, C-1] -> [B, C]
    """Class probabilities from CORAL cumulative logits.

    P(y > k) = sigmoid(logit_k), made non-increasing by a running minimum (a no-op for a rank-
    consistent head); p_0 = 1 - P(y > 0), p_k = P(y > k-1) - P(y > k), p_{C-1} = P(y > C-2).
    """
    gt = torch.cummin(torch.sigmoid(logits), dim=1).values
    ones = torch.ones_like(gt[:, :1])
    zeros = torch.zeros_like(gt[:, :1])
    upper = torch.cat([ones, gt], dim=1)
    lower = torch.cat([gt, zeros], dim=1)
    return upper - lower


def coral_predict(logits: Tensor) -> Tensor:  # [B, C-1] -> [B]
    """CORAL's label: the number of tasks with P(y > k) > 0.5."""
    return (torch.sigmoid(logits) > 0.5).sum(dim=1)


class CoralHead(nn.Module):
    """CORAL output layer: ``x @ w`` (one shared weight, no bias) + C-1 ordered-task biases."""

    def __init__(self, in_features: int, n_classes: int):
        super().__init__()
        if n_classes < 2:
            raise ValueError("CORAL needs at least 2 classes")
        self.fc = nn.Linear(in_features, 1, bias=False)
        self.bias = nn.Parameter(torch.arange(n_classes - 1, 0, -1).float() / (n_classes - 1))

    def forward(self, x: Tensor) -> Tensor:  # [B, D] -> [B, C-1]
        return self.fc(x) + self.bias


def grade_loss(logits: Tensor, y: Tensor, kind: str = "ce") -> Tensor:
    """Grade loss by name: ``"ce"`` (logits [B, C]) or ``"coral"`` (logits [B, C-1])."""
    if kind == "ce":
        return grade_cross_entropy(logits, y)
    if kind == "coral":
        return coral_loss(logits, y)
    raise ValueError(f"unknown grade loss {kind!r}; use 'ce' or 'coral'")


def grade_probs(logits: Tensor, kind: str = "ce") -> Tensor:
    """Class probabilities [B, C] matching :func:`grade_loss`'s ``kind``."""
    if kind == "ce":
        return torch.softmax(logits, dim=-1)
    if kind == "coral":
        return coral_probs(logits)
    raise ValueError(f"unknown grade loss {kind!r}; use 'ce' or 'coral'")
