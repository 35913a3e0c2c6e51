"""Batched patch reading with background prefetch, so decoding overlaps the encoder's compute.

Worker threads read and decode (cuCIM, OpenSlide and imagecodecs release the GIL while
decoding), resize to the output size, and queue ready batches; the consumer gets NCHW tensors
in grid order. With a cuCIM reader opened on ``device="cuda"`` the regions are decoded straight
into GPU memory; otherwise batches are pinned and copied asynchronously when ``device`` is a GPU.
"""
from __future__ import annotations

import collections
import concurrent.futures as cf
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F


def resize_patches(x: torch.Tensor,  # [B, 3, h, w] uint8
                   size: int) -> torch.Tensor:  # [B, 3, size, size] uint8
    """Antialiased bilinear resize of uint8 patches (the residual resize after level choice)."""
    if x.shape[-2:] == (size, size):
        return x
    y = F.interpolate(x.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return y.round_().clamp_(0, 255).to(torch.uint8)


class PatchLoader:
    """Iterate over a slide's patches in batches, reading ahead in background threads.

    Args:
        reader: an open ``SlideReader``.
        coords: ``[N, 2]`` level-0 top-left ``(x, y)`` of the patches.
        level: pyramid level to read.
        read_size: side read at ``level``.
        patch_size: output side (regions are resized from ``read_size`` when they differ).
        batch_size: patches per batch.
        num_workers: reader threads (0 reads in the calling thread).
        prefetch: batches kept ready per worker.
        device: where the yielded tensors live.
        dtype: ``torch.uint8`` (0-255) or a float dtype (scaled to 0-1).

    Yields:
        ``(coords, patches)``: ``[B, 2]`` int64 level-0 coordinates and ``[B, 3, P, P]`` patches.
    """

    def __init__(self, reader, coords: np.ndarray, level: int, read_size: int, patch_size: int,
                 batch_size: int = 64, num_workers: int = 2, prefetch: int = 2, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.uint8):
        self.reader = reader
        self.coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
        self.level, self.read_size, self.patch_size = int(level), int(read_size), int(patch_size)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size, self.num_workers, self.prefetch = int(batch_size), int(num_workers), max(1, int(prefetch))
        self.device, self.dtype = torch.device(device), dtype

    @classmethod
    def from_plan(cls, reader, coords: np.ndarray, plan, **kwargs) -> "PatchLoader":
        """A loader reading ``plan.read_size`` at ``plan.level`` and resizing to ``plan.patch_size``."""
        return cls(reader, coords, plan.level, plan.read_size, plan.patch_size, **kwargs)

    def __len__(self) -> int:
        return (len(self.coords) + self.batch_size - 1) // self.batch_size

    def _load(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.coords[i * self.batch_size:(i + 1) * self.batch_size]
        x = self.reader.read_regions_tensor(c, self.level, (self.read_size, self.read_size))  # [B, h, w, 3]
        x = x.permute(0, 3, 1, 2)  # [B, 3, h, w]
        x = resize_patches(x, self.patch_size).contiguous()
        if x.device.type == "cpu" and self.device.type == "cuda":
            x = x.pin_memory()
        return torch.from_numpy(c.copy()), x

    def _finish(self, c: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.to(self.device, non_blocking=True)
        if self.dtype != torch.uint8:
            x = x.to(self.dtype).div_(255)
        return c, x

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self)
        if self.num_workers <= 0:
            for i in range(n):
                yield self._finish(*self._load(i))
            return
        pool = cf.ThreadPoolExecutor(max_workers=self.num_workers, thread_name_prefix="patch-loader")
        pending: collections.deque = collections.deque()
        nxt = 0
        try:
            while nxt < n and len(pending) < self.num_workers * self.prefetch:
                pending.append(pool.submit(self._load, nxt))
                nxt += 1
            while pending:
                batch = pending.popleft().result()
                if nxt < n:
                    pending.append(pool.submit(self._load, nxt))
                    nxt += 1
                yield self._finish(*batch)
        finally:
            for f in pending:
                f.cancel()
            pool.shutdown(wait=True, cancel_futures=True)
