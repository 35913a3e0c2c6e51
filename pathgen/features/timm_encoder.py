"""``timm:<model>``: any timm model as a patch encoder (UNI, Phikon, GigaPath... from a local checkpoint).

timm is imported only here, when such an encoder is asked for. ``timm:<model>`` builds the
model with ``num_classes=0`` (pooled features) and loads weights from a local file; extra
``timm.create_model`` keyword arguments can be given as a JSON object, e.g. UNI:
``get_encoder("timm:vit_large_patch16_224", weights="uni.bin", model_kwargs={"init_values": 1e-5,
"dynamic_img_size": True})``.
"""
from __future__ import annotations

import math
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
    """A timm backbone returning pooled features.

    Normalisation defaults to the ImageNet constants, which UNI, Virchow, Prov-GigaPath, Phikon and
    CLAM/TRIDENT use: the model is built with ``pretrained=False``, so timm's own default config
    describes an untrained network, not the checkpoint. Pass ``mean``/``std`` for encoders trained
    otherwise (e.g. CONCH's CLIP constants).
    """

    def __init__(self, model_name: str, weights: str | os.PathLike | None, *,
                 mean: tuple[float, float, float] | None = None, std: tuple[float, float, float] | None = None,
                 **model_kwargs):
        super().__init__()
        timm = import_timm()
        if weights is None:
            raise ValueError(f"encoder 'timm:{model_name}' needs its weights from a local file; fix: pass --weights "
                             "PATH (the checkpoint made for this model), or --weights random for an untrained "
                             "smoke test")
        self.name = f"timm:{model_name}"
        self.model_kwargs = dict(model_kwargs)
        try:
            self.model = timm.create_model(model_name, pretrained=False, num_classes=0, **model_kwargs)
        except Exception as exc:  # noqa: BLE001 - unknown name or bad keyword: a usage error
            raise ValueError(f"timm cannot build {model_name!r} with {model_kwargs} ({type(exc).__name__}: {exc}); "
                             "fix: check the name (timm.list_models()) and --model-kwargs") from exc
        if str(weights) != "random":
            sd = load_state_dict_file(weights)
            fix = "fix: pass the checkpoint made for this model, and its create_model arguments (--model-kwargs)"
            try:
                missing, unexpected = self.model.load_state_dict(sd, strict=False)
            except RuntimeError as exc:  # right names, wrong shapes
                raise ValueError(f"{weights}: its tensors do not fit timm model {model_name!r} "
                                 f"({str(exc).splitlines()[-1].strip()}); {fix}") from exc
            missing = [k for k in missing if not k.startswith(("head.", "fc.", "classifier."))]
            unexpected = [k for k in unexpected if not k.startswith(("head.", "fc.", "classifier."))]
            if missing or unexpected:
                raise ValueError(f"{weights}: does not fit timm model {model_name!r} (missing {missing[:3]}, "
                                 f"unexpected {unexpected[:3]}); {fix}")
        self._record_weights(weights)
        cfg = timm.data.resolve_model_data_config(self.model)
        self.input_size = int(cfg.get("input_size", (3, 224, 224))[-1])
        for what, v in (("mean", mean), ("std", std)):
            if v is not None and (len(v) != 3 or not all(math.isfinite(float(c)) for c in v)
                                  or (what == "std" and not all(float(c) > 0 for c in v))):
                raise ValueError(f"--{what} needs three finite numbers (R,G,B){' > 0' if what == 'std' else ''}, "
                                 f"got {v}")
        self.mean = tuple(float(c) for c in mean) if mean is not None else IMAGENET_MEAN
        self.std = tuple(float(c) for c in std) if std is not None else IMAGENET_STD
        # the width the model really returns: with num_classes=0 some models (MobileNetV3, ...) end in a
        # pre-logits layer wider than num_features
        self.model.eval()
        with torch.inference_mode():
            probe = self.model(torch.zeros(1, 3, self.input_size, self.input_size))
        if probe.ndim != 2:
            raise ValueError(f"timm model {model_name!r} returns {tuple(probe.shape)} per patch, not pooled [1, D]; "
                             "fix: pick a model (or --model-kwargs, e.g. global_pool) that pools to one vector")
        self.out_dim = int(probe.shape[1])

    def forward(self, x: torch.Tensor,  # [B, 3, S, S] normalised
                ) -> torch.Tensor:  # [B, D]
        return self.model(x)

    def config(self) -> dict:
        return {**super().config(), "model_kwargs": self.model_kwargs}
