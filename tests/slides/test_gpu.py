"""GPU paths (run only where CUDA is visible): cuCIM decoding into GPU memory, loader and AMP encoders."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pathgen.features import get_encoder
from pathgen.slides import available_backends, open_slide
from pathgen.slides.loader import PatchLoader

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_cucim_decodes_into_gpu_memory(cmu_svs):
    if "cucim" not in available_backends():
        pytest.skip("cucim not installed")
    locs = [(0, 0), (600, 900), (1500, 2000)]
    with open_slide(cmu_svs, backend="cucim") as r:
        cpu = r.read_regions(locs, 0, (256, 256))
    with open_slide(cmu_svs, backend="cucim", device="cuda") as r:
        gpu = r.read_regions_tensor(locs, 0, (256, 256))
        assert gpu.is_cuda and tuple(gpu.shape) == (3, 256, 256, 3) and gpu.dtype == torch.uint8
        # nvJPEG vs libjpeg-turbo: a few levels apart at most
        assert np.abs(gpu.cpu().numpy().astype(int) - cpu.astype(int)).max() <= 10
        batches = list(PatchLoader(r, np.array(locs), 0, 256, 224, batch_size=2, device="cuda"))
        assert all(x.is_cuda and x.shape[1:] == (3, 224, 224) for _, x in batches)


def test_encoders_on_gpu_match_cpu(cmu_svs):
    with open_slide(cmu_svs) as r:
        x = torch.from_numpy(r.read_regions([(600, 900), (1200, 1500)], 0, (256, 256))).permute(0, 3, 1, 2)
    for name, weights, tol in (("stain-stats", None, 1e-3), ("resnet50-trunc", "random", 0.1)):
        enc = get_encoder(name, weights=weights, device="cpu")
        gpu_enc = get_encoder(name, weights=weights, device="cuda")
        gpu_enc.load_state_dict(enc.state_dict())  # same random weights on both devices
        want = enc.encode(x)
        got = gpu_enc.encode(x).cpu()  # AMP (bf16/fp16) for resnet, float32 for stain-stats
        assert got.shape == want.shape and torch.isfinite(got).all()
        assert (got - want).abs().max() <= tol * (1 + want.abs().max()), name
