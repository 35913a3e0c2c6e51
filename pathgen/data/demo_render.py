"""Render small H&E-like slides whose morphology encodes six gene-family programme scores.

Colour model: Beer-Lambert optical density (OD, log10 units) of two stains,
``RGB = 255 * 10^-(OD_h * h + OD_e * e + OD_bg)``, with Ruifrok-Johnston stain vectors.
Each family drives one morphological property; the local strength of that drive varies region by
region (a smooth field ``w(x)`` in [0.4, 1.6]) and local noise is added, so a slide's programme is
readable from the average of many patches, not from any single pixel:

=============================  =================================================================
family (MCAT order)            property it scales
=============================  =================================================================
Tumor Suppressor Genes         nuclear density in the epithelium (share of cell slots with a nucleus)
Oncogenes                      nucleus size (radius, about 3 to 7.5 px at 0.5 um/px)
Protein Kinases                hematoxylin intensity (nuclear OD)
Cell Differentiation Markers   gland/texture scale: size of epithelial nests and their lumens
Transcription Factors          hematoxylin hue (blue <-> purple stain vector)
Cytokines and Growth Factors   eosin intensity (stroma and cytoplasm OD)
=============================  =================================================================

With ``z_f(x) = s_f * w_f(x) + 0.3 * n_f(x)`` (``s_f`` the case's standardised score clipped to
[-3, 3], ``n_f`` smooth unit noise), the mappings are: density ``sigmoid(0.3 + 0.8 z)``, radius
``4.8 exp(0.14 z)`` px, nuclear OD ``0.85 exp(0.16 z)``, nest scale ``exp(0.3 z)``, hue mix
``sigmoid(0.9 z)``, eosin OD ``exp(0.18 z)`` times 0.24 (stroma) or 0.13 (cytoplasm).
Slides also get white background around irregular tissue, stroma nuclei, a per-slide stain
batch factor (+-6 %, unrelated to expression) and, at random, a pen mark, an out-of-focus
region or a tissue fold.
"""
from __future__ import annotations

import math

import numpy as np
from scipy.ndimage import gaussian_filter

# Ruifrok & Johnston OD vectors (R, G, B), unit length
H_BLUE = np.array([0.70, 0.68, 0.22], dtype=np.float32)
H_PURPLE = np.array([0.55, 0.78, 0.30], dtype=np.float32)
EOSIN = np.array([0.072, 0.990, 0.105], dtype=np.float32)
INKS = {"green": np.array([0.85, 0.25, 0.75], dtype=np.float32),
        "blue": np.array([0.95, 0.55, 0.10], dtype=np.float32),
        "black": np.array([0.80, 0.80, 0.80], dtype=np.float32)}
for _v in (H_BLUE, H_PURPLE, EOSIN):
    _v /= np.linalg.norm(_v)

PROPERTIES = ("nuclear density", "nucleus size", "hematoxylin intensity", "gland/texture scale",
              "hematoxylin hue", "eosin intensity")
LOW_RES = 8  # fields are drawn at 1/8 of level 0 and upsampled
CELL = 22  # nucleus slot size (px); two interleaved slot grids per epithelium


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def smooth_noise(shape: tuple[int, int], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean, unit-std periodic Gaussian random field of correlation length ``sigma`` (grid px).

    White noise filtered by a Gaussian in the Fourier domain (the same as ``gaussian_filter(...,
    mode="wrap")``, at a cost independent of ``sigma``).
    """
    h, w = shape
    ky = np.fft.fftfreq(h)[:, None]
    kx = np.fft.rfftfreq(w)[None, :]
    gain = np.exp(-2.0 * (math.pi * sigma) ** 2 * (ky * ky + kx * kx))
    f = np.fft.irfft2(np.fft.rfft2(rng.standard_normal(shape)) * gain, s=shape).astype(np.float32)
    f -= f.mean()
    return f / (f.std() + 1e-8)


def interp_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Linear-interpolation taps (``i0``, ``i1``, weight of ``i1``) for upsampling ``n_in`` -> ``n_out``
    samples (half-pixel centres, as ``torch.nn.functional.interpolate(align_corners=False)``)."""
    src = np.clip((np.arange(n_out, dtype=np.float32) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
    i0 = np.floor(src).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, (src - i0).astype(np.float32)


class _Upsampler:
    """Separable bilinear upsampling of ``[C, h, w]`` fields to ``size`` x ``size``, one row band at a time."""

    def __init__(self, fields: np.ndarray, size: int) -> None:
        c, h, w = fields.shape
        x0, x1, wx = interp_weights(w, size)
        self.rows = fields[:, :, x0] * (1.0 - wx) + fields[:, :, x1] * wx  # [C, h, size]
        self.y0, self.y1, self.wy = interp_weights(h, size)

    def band(self, r0: int, r1: int) -> np.ndarray:
        wy = self.wy[r0:r1, None]
        return self.rows[:, self.y0[r0:r1]] * (1.0 - wy) + self.rows[:, self.y1[r0:r1]] * wy  # [C, r1-r0, size]


def _nuclei_image(size: int, grid: dict) -> np.ndarray:
    """Nuclear stain amount ``[size, size]`` of one slot grid (0 outside nuclei), no per-nucleus loop.

    Slot ``(i, j)`` covers level-0 pixels ``[i*CELL - offset, (i+1)*CELL - offset)`` in each axis; its
    nucleus is an ellipse (semi-axes ``radius*aspect``, ``radius/aspect``, rotated by ``angle``) at the
    slot centre plus ``jitter``. Only occupied slots are computed (all at once) and scattered into
    their blocks.
    """
    off = grid["offset"]
    n = grid["present"].shape[0]
    canvas = np.zeros((n, CELL, n, CELL), np.float32)
    ii, jj = np.nonzero(grid["present"])
    if ii.size:
        local = np.arange(CELL, dtype=np.float32) - (CELL - 1) / 2.0
        ang = grid["angle"][ii, jj][:, None, None]
        cos, sin = np.cos(ang), np.sin(ang)
        jit = grid["jitter"][ii, jj]
        dx = local[None, None, :] - jit[:, 0, None, None]  # [K, 1, CELL]
        dy = local[None, :, None] - jit[:, 1, None, None]  # [K, CELL, 1]
        r, asp = grid["radius"][ii, jj][:, None, None], grid["aspect"][ii, jj][:, None, None]
        u = (dx * cos + dy * sin) / (r * asp)
        v = (dy * cos - dx * sin) / (r / asp)
        d2 = u * u + v * v  # [K, CELL, CELL]
        prof = np.clip((1.0 - d2) * 4.0, 0.0, 1.0)
        prof *= 0.75 + 0.25 * np.minimum(d2, 1.0)  # darker rim (chromatin at the membrane)
        prof *= grid["strength"][ii, jj][:, None, None]
        canvas.transpose(0, 2, 1, 3)[ii, jj] = prof  # writes through the view into the blocks
    return canvas.reshape(n * CELL, n * CELL)[off: off + size, off: off + size]


_TILE = 1024


def _texture_tiles() -> tuple[np.ndarray, np.ndarray]:
    """Periodic stromal-fibre texture and pixel-noise tiles (unit std), made once per process."""
    global _TILES
    if _TILES is None:
        g = np.random.default_rng(20240601)
        fibre = gaussian_filter(g.standard_normal((_TILE, _TILE)).astype(np.float32), (1.2, 8.0), mode="wrap")
        fibre /= fibre.std()
        _TILES = (fibre, g.standard_normal((_TILE, _TILE), dtype=np.float32))
    return _TILES


_TILES = None


def _tile_band(tile: np.ndarray, r0: int, r1: int, size: int, oy: int, ox: int) -> np.ndarray:
    """Rows ``r0:r1`` of a periodic tile laid over the slide with offset ``(oy, ox)``."""
    t = tile.shape[0]
    return tile[np.ix_((np.arange(r0, r1) + oy) % t, (np.arange(size) + ox) % t)]


def _slot_grid(size: int, offset: int, rng: np.random.Generator, *, density: np.ndarray, allowed: np.ndarray,
               radius: np.ndarray, aspect: tuple[float, float], angle: np.ndarray, strength: np.ndarray) -> dict:
    """Per-slot nucleus parameters (arrays ``[n, n]``) of one grid; inputs are already sampled per slot."""
    n = density.shape[0]
    present = ((rng.random((n, n)) < density) & allowed).astype(np.float32)
    asp = rng.uniform(*aspect, (n, n)).astype(np.float32)
    room = np.maximum(CELL / 2.0 - radius * asp - 0.5, 0.0)[..., None]
    jitter = (rng.uniform(-1, 1, (n, n, 2)) * room).astype(np.float32)
    return {"offset": offset, "present": present, "radius": radius.astype(np.float32), "aspect": asp,
            "angle": angle.astype(np.float32), "jitter": jitter, "strength": strength.astype(np.float32)}


def _slot_centres(size: int, offset: int) -> np.ndarray:
    """Level-0 centre coordinate of each slot index of a grid shifted by ``offset``."""
    n = (size + offset) // CELL + 2
    return np.arange(n) * CELL - offset + CELL / 2.0


def _sample_at(field_lr: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Nearest-neighbour sample of a low-res field at slot centres (level-0 coords) -> [n, n]."""
    h = field_lr.shape[0]
    idx = np.clip((centres / LOW_RES).astype(int), 0, h - 1)
    return field_lr[np.ix_(idx, idx)]


BAND = 128  # rows composed at a time (keeps temporaries in cache)


def render_slide(scores, size: int = 2048, rng: np.random.Generator | None = None, *,
                 artefacts: bool = True) -> tuple[np.ndarray, dict]:
    """Render one level-0 RGB image whose morphology encodes ``scores``.

    Args:
        scores: six standardised family scores in MCAT family order (``PROPERTIES`` order).
        size: level-0 width = height in pixels (0.5 um/px).
        rng: random generator (the slide is a deterministic function of scores, size and rng state).
        artefacts: allow pen marks, blur and folds.

    Returns:
        ``(rgb [size, size, 3] uint8, info)`` where ``info`` lists tissue fraction and artefacts.
    """
    rng = rng or np.random.default_rng(0)
    s = np.clip(np.asarray(scores, dtype=np.float32), -3.0, 3.0)
    if s.shape != (6,):
        raise ValueError(f"render_slide: need 6 family scores, got shape {s.shape}")
    if size < 64:
        raise ValueError(f"render_slide: size {size} too small (>= 64 px)")
    lr = size // LOW_RES
    scale = size / 2048.0  # nest sizes shrink with the slide so small slides keep several nests

    # --- tissue: irregular blobs away from the border ---------------------------------------------
    yy, xx = np.mgrid[0:lr, 0:lr].astype(np.float32) / lr - 0.5
    cy, cx = rng.uniform(-0.08, 0.08, 2)
    radial = 1.0 - ((yy - cy) ** 2 + (xx - cx) ** 2) / 0.16
    tissue_field = radial + 0.45 * smooth_noise((lr, lr), max(lr / 14, 2), rng)
    border = np.minimum.reduce([yy + 0.5, 0.5 - yy, xx + 0.5, 0.5 - xx]) * lr
    tissue_field = np.where(border < 3, -1.0, tissue_field).astype(np.float32)

    # --- regional drive: z_f = s_f * w_f + 0.3 n_f ---------------------------------------------------
    w = np.stack([np.clip(1.0 + 0.4 * smooth_noise((lr, lr), max(lr / 10, 2), rng), 0.4, 1.6) for _ in range(6)])
    nz = np.stack([smooth_noise((lr, lr), max(lr / 20, 1.5), rng) for _ in range(6)])
    z = s[:, None, None] * w + 0.3 * nz  # [6, lr, lr]

    # --- epithelial nests and lumens (scale from Cell Differentiation Markers) ------------------------
    nest_scale = float(np.exp(0.3 * s[3]))
    epi_field = smooth_noise((lr, lr), max(5.0 * scale * nest_scale, 1.0), rng) + 0.15 * nz[3]
    lumen_field = smooth_noise((lr, lr), max(1.6 * scale * nest_scale, 0.7), rng)
    lumen_thr = 1.9 - 0.35 * float(s[3])

    fields = np.stack([tissue_field, epi_field, lumen_field, _sigmoid(0.9 * z[4]), np.exp(0.18 * z[5])])
    up = _Upsampler(fields.astype(np.float32), size)
    fibre_tile, noise_tile = _texture_tiles()
    fibre_at = rng.integers(0, _TILE, 2)
    noise_at = rng.integers(0, _TILE, 2)

    # --- nuclei: two interleaved epithelial slot grids + one stromal grid ------------------------------
    grids = []
    for offset in (0, CELL // 2):
        c = _slot_centres(size, offset)
        n = c.size
        grids.append(_slot_grid(
            size, offset, rng,
            density=_sigmoid(0.3 + 0.8 * _sample_at(z[0], c)),
            allowed=(_sample_at(epi_field, c) > -0.05) & (_sample_at(tissue_field, c) > 0.0),
            radius=np.clip(4.8 * np.exp(0.14 * _sample_at(z[1], c)) * rng.uniform(0.85, 1.15, (n, n)), 2.5, 7.5),
            aspect=(1.0, 1.35), angle=rng.uniform(0, math.pi, (n, n)),
            strength=np.exp(0.16 * _sample_at(z[2], c)) * rng.uniform(0.85, 1.15, (n, n))))
    c = _slot_centres(size, 5)
    n = c.size
    stroma_grid = _slot_grid(
        size, 5, rng, density=np.full((n, n), 0.22),
        allowed=(_sample_at(epi_field, c) < -0.3) & (_sample_at(tissue_field, c) > 0.0),
        radius=rng.uniform(2.6, 3.4, (n, n)), aspect=(1.6, 2.2), angle=rng.normal(0.3, 0.3, (n, n)),
        strength=0.9 * np.exp(0.16 * _sample_at(z[2], c)))

    # --- artefact geometry (drawn now so the random stream does not depend on the band size) ----------
    art = _artefact_plan(size, rng) if artefacts else {}
    batch = float(rng.uniform(0.94, 1.06))  # staining batch, unrelated to expression
    nuc_epi = np.maximum(_nuclei_image(size, grids[0]), _nuclei_image(size, grids[1]))
    nuc_str = _nuclei_image(size, stroma_grid)

    # --- compose band by band ---------------------------------------------------------------------------
    rgb = np.empty((size, size, 3), np.uint8)
    tissue_sum = 0.0
    ln10 = np.float32(math.log(10.0))
    for r0 in range(0, size, BAND):
        r1 = min(r0 + BAND, size)
        f = up.band(r0, r1)
        tissue = np.clip(f[0] * 6.0, 0.0, 1.0)
        epi = np.clip((f[1] + 0.2) * 3.0, 0.0, 1.0)
        lumen = np.clip((f[2] - lumen_thr) * 4.0, 0.0, 1.0) * epi
        hue, eosin = f[3], f[4]
        fib = _tile_band(fibre_tile, r0, r1, size, *fibre_at)
        nuc = nuc_epi[r0:r1] * epi + nuc_str[r0:r1] * (1.0 - epi)
        keep = tissue * (1.0 - lumen)
        od_h = keep * (0.04 + 0.06 * epi + 0.85 * batch * nuc)
        od_e = keep * batch * eosin * (0.13 * epi + 0.24 * (1.0 - epi) * (1.0 + 0.15 * fib))
        od_bg = 0.025 + tissue * lumen * 0.02
        od_bg += _tile_band(noise_tile, r0, r1, size, *noise_at) * (0.008 * (0.3 + tissue))
        od = np.empty((r1 - r0, size, 3), np.float32)
        for ch in range(3):
            h_ch = H_BLUE[ch] + hue * (H_PURPLE[ch] - H_BLUE[ch])
            od[..., ch] = od_h * h_ch + od_e * EOSIN[ch] + od_bg
        if art:
            _apply_band_artefacts(od, tissue, r0, r1, size, art)
        np.clip(od, 0.0, 4.0, out=od)
        od *= -ln10
        np.exp(od, out=od)
        od *= 255.0
        od += 0.5
        rgb[r0:r1] = od.astype(np.uint8)
        tissue_sum += float(tissue.sum())
    if art.get("blur"):
        y, x, r, sigma = art["blur"]
        region = rgb[y:y + r, x:x + r].astype(np.float32)
        rgb[y:y + r, x:x + r] = np.clip(gaussian_filter(region, (sigma, sigma, 0)) + 0.5, 0, 255).astype(np.uint8)
    info = {"tissue_fraction": tissue_sum / (size * size), "artefacts": sorted(k for k, v in art.items() if v)}
    return rgb, info


def _artefact_plan(size: int, rng: np.random.Generator) -> dict:
    """Decide which artefacts a slide gets and where."""
    plan: dict = {"pen": None, "blur": None, "fold": None}
    if rng.random() < 0.35:  # pen mark: a wavy stroke near the top or bottom edge
        ink = list(INKS)[int(rng.integers(len(INKS)))]
        y0 = rng.uniform(0.08, 0.22) * size if rng.random() < 0.5 else rng.uniform(0.78, 0.92) * size
        x = np.arange(size, dtype=np.float32)
        curve = y0 + 0.04 * size * np.sin(2 * math.pi * x / (rng.uniform(0.4, 0.9) * size) + rng.uniform(0, 6))
        start = rng.uniform(0, 0.5) * size
        stop = start + rng.uniform(0.25, 0.5) * size
        on = (x >= start) & (x <= stop)
        plan["pen"] = (INKS[ink] * 0.55, curve, on, max(2.0, 0.006 * size))
    if rng.random() < 0.35:  # out-of-focus square
        r = int(size * rng.uniform(0.12, 0.2))
        y, x = (int(v) for v in rng.integers(0, size - r, 2))
        plan["blur"] = (y, x, r, max(1.5, 0.002 * size))
    if rng.random() < 0.2:  # tissue fold: a band of doubled tissue
        plan["fold"] = (rng.uniform(0, math.pi), rng.uniform(0.35, 0.65) * size, 0.015 * size)
    return plan


def _apply_band_artefacts(od: np.ndarray, tissue: np.ndarray, r0: int, r1: int, size: int, art: dict) -> None:
    """Add the pen mark and the fold to the optical density of rows ``r0:r1`` (in place)."""
    ys = np.arange(r0, r1, dtype=np.float32)[:, None]
    if art.get("pen") is not None:
        ink, curve, on, width = art["pen"]
        mask = (np.abs(ys - curve[None, :]) < width) & on[None, :]
        if mask.any():
            od += mask[..., None] * ink
    if art.get("fold") is not None:
        ang, c0, half_width = art["fold"]
        xs = np.arange(size, dtype=np.float32)[None, :]
        band = (np.abs((xs - c0) * math.cos(ang) + (ys - c0) * math.sin(ang)) < half_width) * tissue
        od *= 1.0 + 0.8 * band[..., None]


