"""Ragged bags of patches: packed ``[total_n, ...]`` + ``cu_seqlens`` <-> padded ``[B, n_max, ...]`` + mask.

pathgen keeps bags packed (flash-attention's varlen convention): the patches of all slides
one after another and int32 offsets ``cu_seqlens`` [B + 1], slide b owning rows
``cu_seqlens[b]:cu_seqlens[b + 1]``. These helpers convert for code that wants padding
(``nn.MultiheadAttention``, ``F.scaled_dot_product_attention``). An empty bag is a row of
padding with an all-False mask.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["cu_seqlens_from_lengths", "bag_lengths", "pad_bags", "unpad_bags"]


def cu_seqlens_from_lengths(lengths: Sequence[int] | torch.Tensor,  # [B]
                            device: torch.device | str | None = None) -> torch.Tensor:
    """Offsets ``cu_seqlens`` (int32 [B + 1], starting at 0) from the bag sizes."""
    n = torch.as_tensor(lengths, dtype=torch.int64, device=device)
    if n.dim() != 1:
        raise ValueError(f"cu_seqlens_from_lengths: lengths must be 1-D [B], got shape {tuple(n.shape)}")
    if n.numel() and bool((n < 0).any()):
        raise ValueError("cu_seqlens_from_lengths: bag lengths must be >= 0")
    cu = torch.zeros(n.numel() + 1, dtype=torch.int64, device=n.device)
    torch.cumsum(n, 0, out=cu[1:])
    if n.numel() and int(cu[-1]) > torch.iinfo(torch.int32).max:
        raise ValueError("cu_seqlens_from_lengths: more than 2^31 - 1 patches in one batch")
    return cu.to(torch.int32)


def bag_lengths(cu_seqlens: torch.Tensor) -> torch.Tensor:  # [B] int64
    """Bag sizes ``n_b`` from the offsets."""
    return (cu_seqlens[1:] - cu_seqlens[:-1]).long()


def pad_bags(
    x: torch.Tensor,  # [total_n, *F]
    cu_seqlens: torch.Tensor,  # int32 [B + 1]
    max_seqlen: int | None = None,
    *,
    padding_value: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed bags -> padded batch.

    Args:
        x: [total_n, *F] packed rows.
        cu_seqlens: int32 [B + 1] offsets (``cu[-1] == total_n``).
        max_seqlen: padded length; the longest bag when None.
        padding_value: fill for the padding rows.

    Returns:
        ``(padded, mask)``: padded [B, n_max, *F] and mask [B, n_max] bool, True on real rows
        (``key_padding_mask`` of ``nn.MultiheadAttention`` is ``~mask``).
    """
    lengths = bag_lengths(cu_seqlens).to(x.device)
    if int(cu_seqlens[-1]) != x.shape[0]:
        raise ValueError(f"pad_bags: cu_seqlens[-1] = {int(cu_seqlens[-1])} != x.shape[0] = {x.shape[0]}")
    B = lengths.numel()
    n_max = int(lengths.max()) if B else 0
    if max_seqlen is not None:
        if int(max_seqlen) < n_max:
            raise ValueError(f"pad_bags: max_seqlen = {max_seqlen} < longest bag {n_max}")
        n_max = int(max_seqlen)
    mask = torch.arange(n_max, device=x.device)[None, :] < lengths[:, None]  # [B, n_max]
    padded = x.new_full((B, n_max, *x.shape[1:]), padding_value)
    padded[mask] = x
    return padded, mask


def unpad_bags(padded: torch.Tensor,  # [B, n_max, *F]
               mask: torch.Tensor,  # [B, n_max] bool
               ) -> torch.Tensor:  # [total_n, *F]
    """Padded batch -> packed rows (slide after slide), the inverse of ``pad_bags``."""
    if mask.shape != padded.shape[:2]:
        raise ValueError(f"unpad_bags: mask shape {tuple(mask.shape)} != padded.shape[:2] {tuple(padded.shape[:2])}")
    return padded[mask]
