"""Small pieces every training/inference job shares: device choice, seeding, bag loaders, CSV logs."""
from __future__ import annotations

import csv
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


def write_csv_log(path: Path, rows: list[dict]) -> None:
    """Rewrite the whole per-epoch log atomically (a crash never leaves half a row)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())
