"""Small pieces every training/inference job shares: device choice, seeding, bag loaders, CSV logs."""
from __future__ import annotations

import csv
import hashlib
import io
import random
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from pathgen.data.bags import collate_bags
from pathgen.utils.io import atomic_write_text


def resolve_device(name: str) -> torch.device:
    """"auto" -> CUDA when a GPU is visible, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_loader(ds: Dataset, batch_size: int, shuffle: bool, seed: int, num_workers: int = 0) -> DataLoader:
    """A seeded loader packing patient bags with ``collate_bags`` (cu_seqlens layout)."""
    g = torch.Generator().manual_seed(seed)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, collate_fn=collate_bags, generator=g,
                      num_workers=num_workers, drop_last=False)


def epoch_seed(seed: int, epoch: int) -> int:
    """A stable 63-bit seed for ``(seed, epoch)`` (SHA-256: the same on every platform and run)."""
    digest = hashlib.sha256(f"pathgen-loader:{int(seed)}:{int(epoch)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def reseed_loader(loader: DataLoader, seed: int, epoch: int) -> None:
    """Make a ``make_loader`` loader's shuffle order (and worker seeds) for ``epoch`` a function of
    ``(seed, epoch)`` alone, so a resumed run replays the epochs an uninterrupted one would.
    Loaders without a generator (``DistributedSampler``, which has ``set_epoch``) are left alone."""
    if loader.generator is not None:
        loader.generator.manual_seed(epoch_seed(seed, epoch))


def write_csv_log(path: Path, rows: list[dict]) -> None:
    """Rewrite the whole per-epoch log atomically (a crash never leaves half a row)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())
