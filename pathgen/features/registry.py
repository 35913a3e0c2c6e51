"""Encoder registry: ``get_encoder(name, weights=None, device=...)``.

=================  =====  =====  ======================================================
name               D      size   weights
=================  =====  =====  ======================================================
``resnet50-trunc``  1024   224    torchvision ResNet-50 checkpoint (required; ``"random"``
                                  gives an untrained network for smoke tests)
``timm:<model>``    model  model  a checkpoint for that timm model (``"random"`` allowed)
``stain-stats``     46     256    none: deterministic H&E statistics
=================  =====  =====  ======================================================
"""
from __future__ import annotations

import os
from typing import Callable

import torch

from pathgen.features.encoder import PatchEncoder

EncoderFactory = Callable[..., PatchEncoder]
ENCODERS: dict[str, EncoderFactory] = {}
ALIASES = {"resnet50_trunc": "resnet50-trunc", "stain_stats": "stain-stats"}


def register_encoder(name: str) -> Callable[[EncoderFactory], EncoderFactory]:
    """Decorator adding a factory ``f(weights, **kwargs) -> PatchEncoder`` to the registry."""
    def deco(fn: EncoderFactory) -> EncoderFactory:
        ENCODERS[name] = fn
        return fn
    return deco


@register_encoder("resnet50-trunc")
def _resnet50_trunc(weights: str | os.PathLike | None = None) -> PatchEncoder:
    from pathgen.features.resnet import ResNet50Trunc

    if weights is None:
        raise ValueError("encoder 'resnet50-trunc' needs ImageNet weights from a local file; fix: pass --weights "
                         "PATH to torchvision's resnet50 checkpoint (e.g. resnet50-11ad3fa6.pth), or --weights random "
                         "for an untrained network (smoke tests only), or use --encoder stain-stats")
    enc = ResNet50Trunc()
    if str(weights) == "random":
        enc._record_weights("random")
    else:
        enc.load_weights(weights)
    return enc


@register_encoder("stain-stats")
def _stain_stats(weights: str | os.PathLike | None = None, input_size: int = 256) -> PatchEncoder:
    from pathgen.features.stain_stats import StainStatsEncoder

    if weights is not None:
        raise ValueError("encoder 'stain-stats' has no weights; fix: drop --weights")
    return StainStatsEncoder(input_size=input_size)


def list_encoders() -> list[str]:
    """Registered names (plus the ``timm:<model>`` family)."""
    return sorted(ENCODERS) + ["timm:<model>"]


def get_encoder(name: str, weights: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                **kwargs) -> PatchEncoder:
    """Build an encoder by name, load its weights from a local file, put it on ``device`` in eval mode.

    Args:
        name: ``resnet50-trunc``, ``stain-stats`` or ``timm:<model>``.
        weights: local checkpoint path (``"random"``: untrained, for smoke tests).
        device: ``"cpu"``, ``"cuda"``...
        **kwargs: passed to the factory (``timm:`` takes ``model_kwargs`` for ``timm.create_model`` and
            ``mean``/``std``, default ImageNet).

    Raises:
        ValueError: unknown name, or weights missing where required.
        ImportError: ``timm:`` without timm installed (message has the pip command).
    """
    name = ALIASES.get(name, name)
    if name.startswith("timm:"):
        from pathgen.features.timm_encoder import TimmEncoder

        model = name.split(":", 1)[1]
        if not model:
            raise ValueError("encoder 'timm:' needs a model name, e.g. timm:vit_large_patch16_224")
        enc = TimmEncoder(model, weights, mean=kwargs.get("mean"), std=kwargs.get("std"),
                          **(kwargs.get("model_kwargs") or {}))
    elif name in ENCODERS:
        given = [k for k in ("model_kwargs", "mean", "std") if kwargs.get(k) is not None]
        if given:
            raise ValueError(f"encoder {name!r} takes no {', '.join(given)} (only timm:<model> does); fix: drop them")
        enc = ENCODERS[name](weights, **{k: v for k, v in kwargs.items() if k not in ("model_kwargs", "mean", "std")})
    else:
        raise ValueError(f"unknown encoder {name!r}; choose one of {', '.join(list_encoders())}")
    return enc.to(device).eval()
