"""stain-stats reads every property the demo renderer uses to encode a gene-family programme."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pathgen.features import get_encoder
from pathgen.features.stain_stats import FEATURE_NAMES
from pathgen.slides.grid import plan_patches, tissue_coords
from pathgen.slides.tissue import segment_image

render = pytest.importorskip("pathgen.data.demo_render")


def _slide_features(enc, scores, seed: int, size: int = 1024) -> np.ndarray:  # [46] mean over tissue patches
    img, _ = render.render_slide(scores, size=size, rng=np.random.default_rng(seed), artefacts=False)
    tissue = segment_image(img[::2, ::2], (2.0, 2.0), 0.5)
    plan = plan_patches((1.0,), 0.5, 0.5, 256)
    coords, _ = tissue_coords((size, size), plan, tissue, 0.5)
    assert len(coords) >= 4
    x = torch.stack([torch.from_numpy(img[y:y + 256, x:x + 256].copy()).permute(2, 0, 1) for x, y in coords])
    return enc.encode(x).mean(0).numpy()


@pytest.mark.slow
@pytest.mark.parametrize("family", range(6), ids=lambda f: render.PROPERTIES[f].replace(" ", "-"))
def test_each_demo_property_moves_some_feature(family):
    """Score -2 vs +2 on one family: some feature separates the two groups by far more than the
    spread within each (two slides per group, different random layouts)."""
    enc = get_encoder("stain-stats")
    # nests scale with the slide: at the renderer's default 2048 px they span several patches,
    # at 1024 px they shrink to about one and texture scale drowns in layout noise
    size = 2048 if render.PROPERTIES[family] == "gland/texture scale" else 1024
    groups = []
    for sign, seeds in ((-2, (0, 1)), (2, (100, 101))):
        s = np.zeros(6)
        s[family] = sign
        groups.append(np.stack([_slide_features(enc, s, seed, size) for seed in seeds]))
    lo, hi = groups
    gap = np.abs(hi.mean(0) - lo.mean(0))
    spread = np.maximum(np.ptp(lo, axis=0), np.ptp(hi, axis=0)) + 1e-6
    best = int(np.argmax(gap / spread))
    assert gap[best] / spread[best] > 3, (render.PROPERTIES[family], FEATURE_NAMES[best], gap[best], spread[best])
