"""Patch-level ("distributed") predictions and the predictor's co-attention, for one patient's bag.

Distributed inference (PATHGEN_SPEC.md section 4.5, the published ``test_distributed``): the bag of
n patches is split into n bags of ONE patch each, all with the patient's transcriptome, and the
predictor's heads run on every one-patch bag. In pathgen's packed layout that is a single forward
pass with ``cu_seqlens = [0, 1, ..., n]`` and the expression row repeated n times (chunked to bound
memory). Per patch: risk ``-sum_k S_k`` and grade probabilities; the slide-level summary follows
the published recipe (mean risk, round(mean argmax grade), mean probabilities).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn


def _check_patches(features: torch.Tensor, who: str) -> None:
    if features.dim() != 2:
        raise ValueError(f"{who}: features must be [n, D] (one patient's patches), got {tuple(features.shape)}")


def _expression_rows(expression: torch.Tensor | None, n: int, cfg, who: str) -> torch.Tensor | None:
    if not cfg.uses_expression:
        return None
    if expression is None:
        raise ValueError(f"{who}: the {cfg.kind} predictor needs the patient's expression [G_total] "
                         "(transformed with the checkpoint's transform)")
    return expression.reshape(1, -1).repeat(n, 1)  # the same transcriptome for every one-patch bag


@torch.no_grad()
def distributed_predictions(
    model: nn.Module,
    cfg,  # PredictorConfig of the model
    features: torch.Tensor,  # [n, D] one patient's patches
    expression: torch.Tensor | None = None,  # [G_total] transformed expression (multimodal only)
    chunk: int = 2048,
) -> dict[str, np.ndarray]:
    """Run the predictor on every patch alone.

    Returns:
        ``{"risk": [n], "grade_probs": [n, C] or absent, "grade": [n] argmax, "expected_grade": [n]
        (sum_c c * p_c)}`` as numpy arrays.

    Raises:
        ValueError: an expression-only predictor (it never sees patches) or a malformed bag.
    """
    if not cfg.uses_slides:
        raise ValueError(f"distributed maps need a predictor that reads patches; this one is {cfg.kind!r}")
    _check_patches(features, "distributed_predictions")
    model.eval()
    dev = next(model.parameters()).device
    n = features.shape[0]
    risks, probs = [], []
    for a in range(0, n, chunk):
        f = features[a:a + chunk].to(dev, torch.float32)
        m = f.shape[0]
        cu = torch.arange(m + 1, dtype=torch.int32, device=dev)  # one patch per bag
        expr = _expression_rows(expression, m, cfg, "distributed_predictions")
        kwargs = {"features": f, "cu_seqlens": cu, "max_seqlen": 1}
        if expr is not None:
            kwargs["expression"] = expr.to(dev, torch.float32)
        out = model(**kwargs)
        risks.append(out.risk.float().cpu())
        if out.grade_probs is not None:
            probs.append(out.grade_probs.float().cpu())
    res = {"risk": torch.cat(risks).numpy() if risks else np.zeros(0)}
    if probs:
        p = torch.cat(probs).numpy()  # [n, C]
        res["grade_probs"] = p
        res["grade"] = p.argmax(1)
        res["expected_grade"] = p @ np.arange(p.shape[1], dtype=np.float64)
    return res


def slide_summary(pred: dict[str, np.ndarray]) -> dict:
    """Published slide-level summary of distributed predictions: mean risk, round(mean argmax grade),
    mean probabilities."""
    out = {"risk": float(np.mean(pred["risk"])) if len(pred["risk"]) else None}
    if "grade" in pred and len(pred["grade"]):
        out["grade"] = int(np.rint(np.mean(pred["grade"])))
        out["grade_probs"] = pred["grade_probs"].mean(0).tolist()
    return out


@torch.no_grad()
def predictor_attention(
    model: nn.Module,
    cfg,  # PredictorConfig
    features: torch.Tensor,  # [n, D]
    expression: torch.Tensor | None = None,  # [G_total]
) -> np.ndarray:  # [n, F] (multimodal: per family) or [n, 1] (slide-only ABMIL)
    """The predictor's attention over one patient's whole bag: multimodal co-attention probabilities
    (mean over heads) per family, or the slide-only model's ABMIL weights as a single column."""
    if not cfg.uses_slides:
        raise ValueError(f"the {cfg.kind!r} predictor has no attention over patches")
    _check_patches(features, "predictor_attention")
    model.eval()
    dev = next(model.parameters()).device
    n = features.shape[0]
    kwargs = {"features": features.to(dev, torch.float32),
              "cu_seqlens": torch.tensor([0, n], dtype=torch.int32, device=dev), "max_seqlen": n}
    expr = _expression_rows(expression, 1, cfg, "predictor_attention")
    if expr is not None:
        kwargs["expression"] = expr.to(dev, torch.float32)
    att = model(**kwargs).attention
    if "coattn" in att:
        return att["coattn"].float().mean(dim=1).cpu().numpy()  # [n, heads, F] -> [n, F]
    if "patches" in att:
        return att["patches"].float().cpu().numpy()[:, None]
    raise ValueError(f"the predictor returned no patch attention (keys {sorted(att)})")
