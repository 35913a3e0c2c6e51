"""Small synthetic H&E-like images and slides for tests (no real data is copied)."""
from __future__ import annotations

import numpy as np

#: RGB of unstained glass, eosin-stained stroma and hematoxylin-stained nuclei.
BACKGROUND = (242, 240, 244)
STROMA = (232, 160, 200)
NUCLEUS = (85, 60, 140)


def he_image(height: int, width: int, seed: int = 0, tissue: str = "ellipse", nuclei_per_1e4px: float = 6.0,
             radius: float = 5.0, noise: float = 4.0) -> np.ndarray:
    """An H&E-like RGB image: white glass, a pink tissue region with purple round nuclei.

    Args:
        tissue: ``"ellipse"`` (central ellipse of tissue), ``"full"`` (all tissue) or ``"none"`` (blank glass).
        nuclei_per_1e4px: nucleus centres per 10^4 tissue pixels.
        radius: nucleus radius in pixels.
        noise: std of the Gaussian pixel noise.

    Returns:
        ``[height, width, 3]`` uint8.
    """
    rng = np.random.default_rng(seed)
    img = np.empty((height, width, 3), np.float32)
    img[:] = BACKGROUND
    yy, xx = np.mgrid[0:height, 0:width]
    if tissue == "ellipse":
        mask = ((xx - width / 2) / (0.38 * width)) ** 2 + ((yy - height / 2) / (0.36 * height)) ** 2 <= 1
    elif tissue == "full":
        mask = np.ones((height, width), bool)
    else:
        mask = np.zeros((height, width), bool)
    img[mask] = STROMA
    n = int(mask.sum() * nuclei_per_1e4px / 1e4)
    if n:
        ys, xs = np.nonzero(mask)
        pick = rng.integers(0, len(ys), n)
        r = int(np.ceil(radius))
        dy, dx = np.mgrid[-r:r + 1, -r:r + 1]
        disk = dy ** 2 + dx ** 2 <= radius ** 2
        for cy, cx in zip(ys[pick], xs[pick]):
            y0, x0 = cy - r, cx - r
            sl_y = slice(max(y0, 0), min(y0 + 2 * r + 1, height))
            sl_x = slice(max(x0, 0), min(x0 + 2 * r + 1, width))
            d = disk[sl_y.start - y0:sl_y.stop - y0, sl_x.start - x0:sl_x.stop - x0]
            img[sl_y, sl_x][d] = NUCLEUS
    img += rng.normal(0, noise, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)
