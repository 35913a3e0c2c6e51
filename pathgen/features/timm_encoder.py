"""``timm:<model>``: any timm model as a patch encoder (UNI, Phikon, GigaPath... from a local checkpoint).

timm is imported only here, when such an encoder is asked for. ``timm:<model>`` builds the
model with ``num_classes=0`` (pooled features) and loads weights from a local file; extra
``timm.create_model`` keyword arguments can be given as a JSON object, e.g. UNI:
``get_encoder("timm:vit_large_patch16_224", weights="uni.bin", model_kwargs={"init_values": 1e-5,
"dynamic_img_size": True})``.
"""
from __future__ import annotations

import os

import torch

from pathgen.features.encoder import IMAGENET_MEAN, IMAGENET_STD, PatchEncoder
from pathgen.features.resnet import load_state_dict_file

TIMM_HINT = ("pip install timm  (timm imports torchvision: install the torchvision build that matches "
             "your torch, e.g. from the same index as torch)")


def import_timm():
    """Import timm or raise ImportError with the install command."""
    try:
        import timm
    except ImportError as exc:
        raise ImportError(f"encoder 'timm:<model>' needs the timm package ({exc}); "
                          f"install it with: {TIMM_HINT}") from exc
    return timm


class TimmEncoder(PatchEncoder):
    """A timm backbone returning pooled features."""

    def __init__(self, model_name: str, weights: str | os.PathLike | None, **model_kwargs):
        super().__init__()
        timm = import_timm()
        self.name = f"timm:{model_name}"
        self.model_kwargs = dict(model_kwargs)
        self.model = timm.create_model(model_name, pretrained=False, num_classes=0, **model_kwargs)
        if weights is not None and str(weights) != "random":
            sd = load_state_dict_file(weights)
            missing, unexpected = self.model.load_state_dict(sd, strict=False)
            missing = [k for k in missing if not k.startswith(("head.", "fc.", "classifier."))]
            unexpected = [k for k in unexpected if not k.startswith(("head.", "fc.", "classifier."))]
            if missing or unexpected:
                raise ValueError(f"{weights}: does not fit timm model {model_name!r} (missing {missing[:3]}, "
                                 f"unexpected {unexpected[:3]}); fix: pass the checkpoint made for this model, and "
                                 "its create_model arguments")
        self._record_weights(weights)
        cfg = timm.data.resolve_model_data_config(self.model)
        self.input_size = int(cfg.get("input_size", (3, 224, 224))[-1])
        self.mean = tuple(cfg.get("mean", IMAGENET_MEAN))
        self.std = tuple(cfg.get("std", IMAGENET_STD))
        self.out_dim = int(self.model.num_features)

    def forward(self, x: torch.Tensor,  # [B, 3, S, S] normalised
                ) -> torch.Tensor:  # [B, D]
        return self.model(x)

    def config(self) -> dict:
        return {**super().config(), "model_kwargs": self.model_kwargs}
