"""Layers built on ``pathgen.ops``: ``CoAttention`` (fused multi-head co-attention over patch bags)."""
from pathgen.nn.coattention import CoAttention, ProjectedBags

__all__ = ["CoAttention", "ProjectedBags"]
