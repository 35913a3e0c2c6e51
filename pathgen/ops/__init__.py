"""Fused kernels behind typed Python faces; each has a pure-PyTorch twin in ``reference``.

If ``pathgen._C`` is missing or was built for another torch, every op falls back to its twin
(one warning at import, see ``pathgen._extension``).
"""
from pathgen._extension import HAS_OPS, has_kernel
from pathgen.ops import reference
from pathgen.ops.bags import bag_lengths, cu_seqlens_from_lengths, pad_bags, unpad_bags
from pathgen.ops.coattention import coattention
from pathgen.ops.denoise_step import denoise_step

__all__ = ["HAS_OPS", "has_kernel", "reference", "denoise_step", "coattention", "pad_bags", "unpad_bags",
           "cu_seqlens_from_lengths", "bag_lengths"]
