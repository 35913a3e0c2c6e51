"""The patch-encoder interface: declared input size, normalisation, output dimension, precision."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file (recorded with the features so a bag names the exact weights)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


class PatchEncoder(nn.Module):
    """Maps uint8 RGB patches to feature vectors.

    Subclasses set the class attributes and implement ``forward`` on preprocessed input.

    Attributes:
        name: registry name (recorded in the HDF5).
        input_size: side the patches are resized to before ``forward``.
        mean, std: per-channel normalisation applied after scaling to [0, 1] (None: none).
        out_dim: feature dimension D.
        amp: run under autocast on a GPU.
        weights: path of the loaded weights, or None / "random".
    """

    name: str = "?"
    input_size: int = 224
    mean: tuple[float, float, float] | None = IMAGENET_MEAN
    std: tuple[float, float, float] | None = IMAGENET_STD
    out_dim: int = 0
    amp: bool = True

    def __init__(self) -> None:
        super().__init__()
        self.weights: str | None = None
        self.weights_sha256: str | None = None

    def preprocess(self, x: torch.Tensor,  # [B, 3, H, W] uint8
                   ) -> torch.Tensor:  # [B, 3, input_size, input_size] float32
        """Resize (antialiased bilinear) to ``input_size``, scale to [0, 1] and normalise."""
        x = x.float()
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False,
                              antialias=True).clamp_(0, 255)
        x = x / 255.0
        if self.mean is not None and self.std is not None:
            mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
            std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
            x = (x - mean) / std
        return x

    @property
    def device(self) -> torch.device:
        p = next(self.parameters(), None)
        if p is None:
            p = next(self.buffers(), None)
        return p.device if p is not None else torch.device("cpu")

    @torch.inference_mode()
    def encode(self, x: torch.Tensor,  # [B, 3, H, W] uint8
               ) -> torch.Tensor:  # [B, D] float32
        """Preprocess and embed a batch of uint8 patches; autocast (bf16/fp16) on a GPU when ``amp``.

        Always in eval mode (BatchNorm running statistics, no dropout): a feature must not depend on
        the other patches of its batch.
        """
        if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"encode takes uint8 RGB patches [B, 3, H, W] in 0..255, got {x.dtype} "
                             f"{tuple(x.shape)}; fix: pass the reader's uint8 pixels (preprocess scales them)")
        if self.training:
            self.eval()
        x = self.preprocess(x.to(self.device, non_blocking=True))
        if self.amp and x.device.type == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            with torch.autocast("cuda", dtype=dtype):
                out = self(x)
        else:
            out = self(x)
        return out.float()

    def config(self) -> dict:
        """What made these features: recorded in ``features.attrs``."""
        return {
            "encoder": self.name, "input_size": int(self.input_size),
            "mean": list(self.mean) if self.mean is not None else None,
            "std": list(self.std) if self.std is not None else None,
            "out_dim": int(self.out_dim), "amp": bool(self.amp),
            "weights": self.weights, "weights_sha256": self.weights_sha256,
        }

    def _record_weights(self, weights: str | os.PathLike | None) -> None:
        if weights is None or str(weights) == "random":
            self.weights = None if weights is None else "random"
            return
        self.weights = str(Path(weights).resolve())
        self.weights_sha256 = file_sha256(weights)
