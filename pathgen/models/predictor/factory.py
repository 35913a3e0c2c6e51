"""Build a predictor from its config, and move a collated batch onto the model's inputs."""
from __future__ import annotations

import torch
from torch import nn

from pathgen.models.predictor.config import PredictorConfig


def build_predictor(cfg: PredictorConfig) -> nn.Module:
    """``ExpressionSNN`` / ``SlideABMIL`` / ``MultimodalPredictor`` for ``cfg.kind``."""
    if cfg.kind == "expression":
        from pathgen.models.predictor.expression_snn import ExpressionSNN
        return ExpressionSNN(cfg)
    if cfg.kind == "slide":
        from pathgen.models.predictor.slide_abmil import SlideABMIL
        return SlideABMIL(cfg)
    from pathgen.models.predictor.multimodal import MultimodalPredictor  # imports pathgen.nn
    return MultimodalPredictor(cfg)


def model_inputs(batch: dict, cfg: PredictorConfig, device: torch.device | str) -> dict:
    """The keyword arguments of ``model(**inputs)`` from a ``collate_bags`` batch, on ``device``."""
    out: dict = {}
    if cfg.uses_expression:
        out["expression"] = batch["expression"].to(device)
    if cfg.uses_slides:
        out["features"] = batch["features"].to(device)
        out["cu_seqlens"] = batch["cu_seqlens"].to(device)
        out["max_seqlen"] = int(batch["max_seqlen"])
    return out
