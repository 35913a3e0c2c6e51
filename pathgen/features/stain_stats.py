"""``stain-stats``: a weight-free, deterministic patch encoder for H&E.

It measures what a pathologist's eye (and the demo's synthetic gene programmes) care about:
stain amounts, cell density, nucleus size and texture scale. Per patch, 46 numbers:

* colour: RGB mean, std and skewness; mean optical density and HSV saturation; tissue fraction;
* stains: Ruifrok-Johnston colour deconvolution (scikit-image's ``rgb2hed`` vectors, optical
  density -log10((I + 1) / 256)) into hematoxylin, eosin and DAB; H and E mean, std and
  10/50/90th percentiles, DAB mean and 90th percentile, log(H/E);
* texture: gradient energy of grey level and hematoxylin; band energies of a 7-level
  Laplacian pyramid (structure at 1, 2, 4, 8, 16 and 32 px: chromatin to gland/nest scale) for
  grey level and hematoxylin; local variance in 4, 16 and 64 px windows;
* nuclei proxy: the 5x5-smoothed hematoxylin thresholded at ``NUCLEUS_H`` and opened with a 3x3
  square (drops specks) gives a nuclear mask; its area fraction, the fraction above twice the
  threshold, the number of blobs per 10^4 px
  (the mask's Euler number, which counts blobs without holes, in one pass) and the mean
  equivalent blob radius in px.

Energies and variances are log10; counts are per 10^4 px; everything else is in natural units
(intensities in [0, 1], optical densities around 0-2), so every feature is O(1) without
per-dataset statistics. ``FEATURE_NAMES`` names each column.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from pathgen.features.encoder import PatchEncoder

#: stain OD vectors (rows: hematoxylin, eosin, DAB), as in scikit-image's ``rgb_from_hed``.
RGB_FROM_HED = torch.tensor([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=torch.float64)
#: hematoxylin concentration above which a (smoothed) pixel counts as nuclear.
NUCLEUS_H = 0.15
#: mean optical density above which a pixel counts as tissue.
TISSUE_OD = 0.1
_EPS = 1e-6

FEATURE_NAMES: tuple[str, ...] = (
    "r_mean", "g_mean", "b_mean", "r_std", "g_std", "b_std", "r_skew", "g_skew", "b_skew",
    "od_mean", "saturation_mean", "tissue_fraction",
    "h_mean", "h_std", "h_p10", "h_p50", "h_p90",
    "e_mean", "e_std", "e_p10", "e_p50", "e_p90",
    "dab_mean", "dab_p90", "log_h_over_e",
    "grad_energy_gray", "grad_energy_h",
    "band1_gray", "band2_gray", "band4_gray", "band8_gray", "band16_gray", "band32_gray",
    "band1_h", "band2_h", "band4_h", "band8_h", "band16_h", "band32_h",
    "local_var4_gray", "local_var16_gray", "local_var64_gray",
    "nuclear_fraction", "dense_nuclear_fraction", "nuclei_per_1e4px", "nucleus_radius_px",
)


def hed_from_rgb_matrix() -> torch.Tensor:
    """``[3 (rgb), 3 (h, e, d)]``: optical densities times this give stain concentrations."""
    m = RGB_FROM_HED / RGB_FROM_HED.norm(dim=1, keepdim=True)
    return torch.linalg.inv(m).float()


def rgb_to_hed(x: torch.Tensor,  # [B, 3, H, W] float in [0, 1]
               ) -> torch.Tensor:  # [B, 3, H, W] concentrations (H, E, DAB) >= 0
    """Colour deconvolution of RGB into hematoxylin, eosin and DAB concentrations."""
    od = -torch.log10((x * 255.0 + 1.0) / 256.0)
    return od_to_hed(od)


def od_to_hed(od: torch.Tensor,  # [B, 3, H, W] optical densities
              ) -> torch.Tensor:  # [B, 3, H, W] concentrations (H, E, DAB) >= 0
    b, _, h, w = od.shape
    m = hed_from_rgb_matrix().to(od.device).t()  # [stain, rgb]; a matmul beats a 1x1 conv 6x on CPU
    return torch.matmul(m, od.reshape(b, 3, h * w)).reshape(b, 3, h, w).clamp_min(0)


def _quantiles(v: torch.Tensor,  # [B, K]
               qs: tuple[float, ...]) -> torch.Tensor:  # [B, len(qs)]
    s = v.sort(dim=1).values
    k = s.shape[1]
    idx = torch.tensor([min(k - 1, int(round(q * (k - 1)))) for q in qs], device=v.device)
    return s[:, idx]


def _pyramid_bands(x: torch.Tensor,  # [B, 1, H, W]
                   n: int = 6) -> torch.Tensor:  # [B, n]
    """log10 mean-square energy of Laplacian-pyramid bands at 1, 2, 4, ... 2^(n-1) px."""
    out, cur = [], x
    for _ in range(n):
        low = F.avg_pool2d(cur, 2, ceil_mode=True)
        up = F.interpolate(low, size=cur.shape[-2:], mode="nearest")
        out.append((cur - up).pow(2).mean(dim=(1, 2, 3)))
        cur = low
    return torch.log10(torch.stack(out, dim=1) + _EPS)


def _local_variance(x: torch.Tensor,  # [B, 1, H, W]
                    k: int) -> torch.Tensor:  # [B]
    k = min(k, x.shape[-1], x.shape[-2])
    m = F.avg_pool2d(x, k)
    m2 = F.avg_pool2d(x * x, k)
    return torch.log10((m2 - m * m).clamp_min(0).mean(dim=(1, 2, 3)) + _EPS)


def _box(x: torch.Tensor,  # [B, 1, H, W]
         k: int) -> torch.Tensor:  # [B, 1, H, W]
    """k x k box mean with replicated borders (k odd), as sums of shifted views (5x faster than avg_pool2d)."""
    r = k // 2
    p = F.pad(x, (r, r, r, r), mode="replicate")
    w, h = x.shape[-1], x.shape[-2]
    rows = p[..., :, 0:w].clone()
    for i in range(1, k):
        rows += p[..., :, i:i + w]
    out = rows[..., 0:h, :].clone()
    for i in range(1, k):
        out += rows[..., i:i + h, :]
    return out / (k * k)


def _shift_reduce(m: torch.Tensor,  # [B, 1, H, W] bool
                  op, pad_value: bool) -> torch.Tensor:  # [B, 1, H, W] bool
    """3x3 neighbourhood AND (erosion) or OR (dilation), separable, on shifted views."""
    w, h = m.shape[-1], m.shape[-2]
    p = F.pad(m, (1, 1, 1, 1), value=pad_value)
    rows = op(op(p[..., :, 0:w], p[..., :, 1:w + 1]), p[..., :, 2:w + 2])
    return op(op(rows[..., 0:h, :], rows[..., 1:h + 1, :]), rows[..., 2:h + 2, :])


def _open3(mask: torch.Tensor,  # [B, 1, H, W] bool
           ) -> torch.Tensor:  # [B, 1, H, W] bool
    """Morphological opening with a 3x3 square: erode (AND), then dilate (OR)."""
    return _shift_reduce(_shift_reduce(mask, torch.logical_and, True), torch.logical_or, False)


def euler_number(mask: torch.Tensor,  # [B, 1, H, W] bool
                 ) -> torch.Tensor:  # [B] float
    """Euler number (blobs minus holes) with 8-connected foreground, from 2x2 quad counts (Gray, 1971)."""
    m = F.pad(mask.float(), (1, 1, 1, 1))
    a, b = m[..., :-1, :-1], m[..., :-1, 1:]
    c, d = m[..., 1:, :-1], m[..., 1:, 1:]
    s = a + b + c + d
    q1 = (s == 1).float().sum(dim=(1, 2, 3))
    q3 = (s == 3).float().sum(dim=(1, 2, 3))
    qd = ((s == 2) & (a == d)).float().sum(dim=(1, 2, 3))
    return (q1 - q3 - 2 * qd) / 4


def stain_stats(x: torch.Tensor,  # [B, 3, H, W] float RGB in [0, 1]
                ) -> torch.Tensor:  # [B, 46]
    """The ``stain-stats`` features of a batch (see the module docstring and ``FEATURE_NAMES``)."""
    x = x.float()
    b, _, h, w = x.shape
    flat = x.flatten(2)  # [B, 3, HW]
    mean = flat.mean(2)
    centred = flat - mean[..., None]
    c2 = centred * centred
    std = c2.mean(2).sqrt()
    skew = (c2 * centred).mean(2) / (std ** 3 + 1e-4)
    skew = skew.clamp(-10, 10)
    od = -torch.log10((x * 255.0 + 1.0) / 256.0)  # [B, 3, H, W]
    od_mean = od.mean(1)  # [B, H, W]
    r, g, b_ = x[:, 0], x[:, 1], x[:, 2]
    mx, mn = torch.maximum(torch.maximum(r, g), b_), torch.minimum(torch.minimum(r, g), b_)
    sat = torch.where(mx > 0, (mx - mn) / mx.clamp_min(_EPS), torch.zeros_like(mx))
    tissue = (od_mean > TISSUE_OD).float().mean(dim=(1, 2))

    hed = od_to_hed(od)  # [B, 3, H, W]
    hh, ee, dd = hed[:, 0:1], hed[:, 1:2], hed[:, 2:3]
    sub = hed[:, :, ::4, ::4].flatten(2)  # percentiles on a 4x-strided subsample (4096 px of a 256^2 patch)
    qs = (0.1, 0.5, 0.9)
    h_q, e_q, d_q = _quantiles(sub[:, 0], qs), _quantiles(sub[:, 1], qs), _quantiles(sub[:, 2], qs)
    h_mean, e_mean = hh.mean(dim=(1, 2, 3)), ee.mean(dim=(1, 2, 3))
    stains = torch.stack([
        h_mean, hh.std(dim=(1, 2, 3)), h_q[:, 0], h_q[:, 1], h_q[:, 2],
        e_mean, ee.std(dim=(1, 2, 3)), e_q[:, 0], e_q[:, 1], e_q[:, 2],
        dd.mean(dim=(1, 2, 3)), d_q[:, 2], torch.log10((h_mean + 0.01) / (e_mean + 0.01)),
    ], dim=1)

    gray = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]  # [B, 1, H, W]

    def grad_energy(img):
        gx = img[..., :, 1:] - img[..., :, :-1]
        gy = img[..., 1:, :] - img[..., :-1, :]
        return torch.log10(gx.pow(2).mean(dim=(1, 2, 3)) + gy.pow(2).mean(dim=(1, 2, 3)) + _EPS)

    texture = torch.cat([
        torch.stack([grad_energy(gray), grad_energy(hh)], dim=1),
        _pyramid_bands(gray), _pyramid_bands(hh),
        torch.stack([_local_variance(gray, k) for k in (4, 16, 64)], dim=1),
    ], dim=1)

    h_smooth = _box(hh, 5)
    nuc = _open3(h_smooth > NUCLEUS_H)
    nuc_frac = nuc.float().mean(dim=(1, 2, 3))
    dense_frac = (h_smooth > 2 * NUCLEUS_H).float().mean(dim=(1, 2, 3))
    blobs = euler_number(nuc).clamp_min(0)
    per_px = 1e4 / (h * w)
    radius = torch.sqrt(nuc_frac * h * w / blobs.clamp_min(1) / math.pi) * (blobs > 0)
    nuclei = torch.stack([nuc_frac, dense_frac, blobs * per_px, radius], dim=1)

    colour = torch.cat([mean, std, skew, od_mean.mean(dim=(1, 2))[:, None], sat.mean(dim=(1, 2))[:, None],
                        tissue[:, None]], dim=1)
    return torch.cat([colour, stains, texture, nuclei], dim=1)


class StainStatsEncoder(PatchEncoder):
    """Weight-free H&E stain, colour, texture and nuclei statistics (46-d, deterministic)."""

    name = "stain-stats"
    input_size = 256
    mean = None
    std = None
    out_dim = len(FEATURE_NAMES)
    amp = False  # logs and percentiles want float32

    def __init__(self, input_size: int = 256):
        super().__init__()
        self.input_size = int(input_size)
        self.register_buffer("_hed", hed_from_rgb_matrix(), persistent=False)  # lets .to(device) place it

    def forward(self, x: torch.Tensor,  # [B, 3, S, S] float RGB in [0, 1]
                ) -> torch.Tensor:  # [B, 46]
        return stain_stats(x)

    def config(self) -> dict:
        return {**super().config(), "feature_names": list(FEATURE_NAMES), "nucleus_h": NUCLEUS_H,
                "tissue_od": TISSUE_OD}
