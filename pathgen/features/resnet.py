"""``resnet50-trunc``: ResNet-50 up to layer3 + global average pool (1024-d), CLAM's default encoder.

Pure torch (torchvision is not required): the module names match torchvision's ``resnet50``
(and timm's ``resnet50.tv_in1k``), so their checkpoints load directly; ``layer4.*`` and
``fc.*`` keys are ignored. Weights come from a local file: nothing is downloaded.
"""
from __future__ import annotations

import os
import pickle

import torch
import torch.nn as nn

from pathgen.features.encoder import PatchEncoder


class Bottleneck(nn.Module):
    """torchvision's ResNet v1.5 bottleneck (stride on the 3x3 conv)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _layer(inplanes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    downsample = None
    if stride != 1 or inplanes != planes * Bottleneck.expansion:
        downsample = nn.Sequential(nn.Conv2d(inplanes, planes * Bottleneck.expansion, 1, stride=stride, bias=False),
                                   nn.BatchNorm2d(planes * Bottleneck.expansion))
    layers = [Bottleneck(inplanes, planes, stride, downsample)]
    layers += [Bottleneck(planes * Bottleneck.expansion, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from a ``.pth``/``.pt``/``.bin`` (plain, or under ``state_dict``/``model``; ``module.`` stripped)
    or ``.safetensors`` file, loaded safely (``weights_only=True``)."""
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: weights file not found; fix: pass --weights with an existing checkpoint path")
    if path.endswith(".safetensors"):
        try:
            from safetensors.torch import load_file
        except ImportError as exc:
            raise ImportError(f"{path}: reading .safetensors needs safetensors: pip install safetensors") from exc
        try:
            sd = load_file(path)
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
            raise ValueError(f"{path}: not a readable .safetensors file ({exc}); fix: download or copy it again") from exc
    else:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:  # a whole pickled model (or other objects), refused by weights_only
            raise ValueError(f"{path}: holds pickled Python objects (e.g. a whole nn.Module), not a plain state dict; "
                             "fix: re-save it with torch.save(model.state_dict(), path) and pass that file") from exc
        except Exception as exc:  # noqa: BLE001 - truncated, not a torch file, ...: all mean "not a checkpoint"
            raise ValueError(f"{path}: not a readable torch checkpoint ({type(exc).__name__}: {exc}); fix: pass a "
                             "state dict saved with torch.save (.pth/.pt/.bin) or a .safetensors file") from exc
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise ValueError(f"{path}: not a state dict (got {type(sd).__name__})")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}


class ResNet50Trunc(PatchEncoder):
    """ResNet-50 conv1..layer3 + adaptive average pool: ``[B, 3, 224, 224]`` -> ``[B, 1024]``."""

    name = "resnet50-trunc"
    input_size = 224
    out_dim = 1024

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = _layer(64, 64, 3, 1)
        self.layer2 = _layer(256, 128, 4, 2)
        self.layer3 = _layer(512, 256, 6, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor,  # [B, 3, S, S] normalised
                ) -> torch.Tensor:  # [B, 1024]
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.pool(x).flatten(1)

    def load_weights(self, path: str | os.PathLike) -> None:
        """Load a torchvision/timm ResNet-50 checkpoint (``layer4``/``fc`` ignored; anything else must match)."""
        sd = load_state_dict_file(path)
        sd = {k: v for k, v in sd.items() if not k.startswith(("layer4.", "fc."))}
        try:
            missing, unexpected = self.load_state_dict(sd, strict=False)
        except RuntimeError as exc:  # right names, wrong shapes
            raise ValueError(f"{path}: its tensors do not fit ResNet-50 ({str(exc).splitlines()[-1].strip()}); fix: "
                             "pass torchvision's resnet50 weights (e.g. resnet50-11ad3fa6.pth)") from exc
        if missing or unexpected:
            raise ValueError(f"{path}: not a torchvision-style ResNet-50 checkpoint (missing {len(missing)} keys, e.g. "
                             f"{missing[:3]}; unexpected {len(unexpected)}, e.g. {unexpected[:3]}); fix: pass "
                             "torchvision's resnet50 weights (e.g. resnet50-11ad3fa6.pth)")
        self._record_weights(path)
