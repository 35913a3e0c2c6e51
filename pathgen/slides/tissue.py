"""CLAM-style tissue segmentation on a low-resolution image of the slide.

Steps: 3x3 RGB mean -> HSV saturation -> median blur (separable) -> threshold (Otsu, floored at ``sat_threshold`` so a
blank slide stays blank) -> drop near-black pixels -> morphological closing -> fill holes ->
drop tissue pieces smaller than ``min_tissue_mm2`` -> re-open the holes larger than
``min_hole_mm2`` (at most ``max_holes`` per piece). Areas are physical (mm²) rather than CLAM's
"512x512 level-0 patches", so the same defaults mean the same thing at 20x and 40x.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from pathgen.utils.io import atomic_path

#: MPP assumed for the area filters when the slide has none (the result records it).
FALLBACK_MPP = 0.5


@dataclass(frozen=True)
class TissueParams:
    """Segmentation parameters (defaults suit H&E at any magnification).

    Attributes:
        seg_downsample: segment at about this level-0 downsample (CLAM: the level nearest 64x)...
        seg_min_size: ...but with the long side of the image at least this many pixels...
        seg_max_size: ...and at most this many.
        median_size: median filter size on the saturation channel (odd; applied along rows, then columns).
        use_otsu: Otsu threshold on the blurred saturation (else ``sat_threshold`` alone).
        sat_threshold: saturation threshold (0-255); with Otsu, the lowest threshold allowed.
        dark_threshold: pixels whose brightest channel is below this are not tissue (pen, black borders).
        close_size: side of the square closing element, in segmentation pixels (0: no closing).
        min_tissue_mm2: tissue pieces smaller than this are dropped.
        min_hole_mm2: holes smaller than this are filled.
        max_holes: holes kept per tissue piece (largest first).
    """

    seg_downsample: float = 64.0
    seg_min_size: int = 1024
    seg_max_size: int = 4096
    median_size: int = 7
    use_otsu: bool = True
    sat_threshold: int = 8
    dark_threshold: int = 30
    close_size: int = 4
    min_tissue_mm2: float = 0.05
    min_hole_mm2: float = 0.01
    max_holes: int = 8

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class TissueMask:
    """Result of ``segment_tissue``.

    Attributes:
        mask: ``[h, w]`` bool at segmentation resolution.
        scale: level-0 pixels per mask pixel, ``(sx, sy)``.
        image: the RGB image segmented, ``[h, w, 3]`` uint8 (for overlays).
        threshold: saturation threshold used.
        contours: outer outlines of the tissue pieces, each ``[K, 2]`` level-0 ``(x, y)``.
        holes: outlines of the kept holes, each ``[K, 2]`` level-0 ``(x, y)``.
        mpp_assumed: True when the area filters used ``FALLBACK_MPP``.
    """

    mask: np.ndarray
    scale: tuple[float, float]
    image: np.ndarray
    threshold: float
    contours: list[np.ndarray] = field(default_factory=list)
    holes: list[np.ndarray] = field(default_factory=list)
    mpp_assumed: bool = False

    @property
    def tissue_fraction(self) -> float:
        """Fraction of the slide area that is tissue."""
        return float(self.mask.mean()) if self.mask.size else 0.0

    def fractions(self, coords: np.ndarray, size0: float) -> np.ndarray:
        """Tissue fraction inside each level-0 box.

        Args:
            coords: ``[N, 2]`` level-0 top-left ``(x, y)``.
            size0: box side in level-0 pixels.

        Returns:
            ``[N]`` float32 in [0, 1]; mask pixels are counted by their centres.
        """
        coords = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
        h, w = self.mask.shape
        integral = np.zeros((h + 1, w + 1), dtype=np.int64)
        integral[1:, 1:] = self.mask.astype(np.int64).cumsum(0).cumsum(1)
        sx, sy = self.scale

        # mask pixel j has its centre at (j + 0.5) * s; count centres inside [a, a + size0)
        def span(a, s, n):
            lo = np.clip(np.ceil(a / s - 0.5), 0, n).astype(np.int64)
            hi = np.clip(np.ceil((a + size0) / s - 0.5), 0, n).astype(np.int64)
            return lo, np.maximum(hi, lo)

        x0, x1 = span(coords[:, 0], sx, w)
        y0, y1 = span(coords[:, 1], sy, h)
        area = (x1 - x0) * (y1 - y0)
        total = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
        # a box smaller than one mask pixel: use the pixel under its centre
        small = area == 0
        if small.any():
            cx = np.clip(((coords[small, 0] + size0 / 2) / sx).astype(np.int64), 0, w - 1)
            cy = np.clip(((coords[small, 1] + size0 / 2) / sy).astype(np.int64), 0, h - 1)
            total, area = total.astype(np.float64), area.astype(np.float64)
            total[small], area[small] = self.mask[cy, cx], 1.0
        return (total / np.maximum(area, 1)).astype(np.float32)


def saturation(image: np.ndarray) -> np.ndarray:
    """HSV saturation of ``[h, w, 3]`` uint8 RGB, scaled to 0-255 (OpenCV's convention)."""
    img = image.astype(np.int32)
    mx, mn = img.max(axis=2), img.min(axis=2)
    return np.where(mx > 0, (255 * (mx - mn) + mx // 2) // np.maximum(mx, 1), 0).astype(np.uint8)


def otsu_threshold(values: np.ndarray) -> float:
    """Otsu's threshold of uint8 values (maximises the between-class variance)."""
    hist = np.bincount(values.ravel(), minlength=256).astype(np.float64)
    total = hist.sum()
    if total == 0:
        return 0.0
    levels = np.arange(256, dtype=np.float64)
    w0 = np.cumsum(hist)
    m0 = np.cumsum(hist * levels)
    w1 = total - w0
    mean_all = m0[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mean_all * w0 - total * m0) ** 2 / (w0 * w1)
    between[~np.isfinite(between)] = -1
    return float(np.argmax(between))  # pixels > threshold are foreground


def segmentation_size(dimensions: tuple[int, int], params: TissueParams) -> int:
    """Long side, in pixels, of the image to segment."""
    long0 = max(dimensions)
    target = long0 / params.seg_downsample
    return int(min(long0, max(params.seg_min_size, min(params.seg_max_size, target))))


def _outline(component: np.ndarray, offset: tuple[int, int], scale: tuple[float, float]) -> np.ndarray:
    """The longest iso-0.5 line of a binary crop, in level-0 ``(x, y)``."""
    import contourpy

    z = np.pad(component.astype(np.float32), 1)
    lines = contourpy.contour_generator(z=z, line_type=contourpy.LineType.Separate).lines(0.5)
    if not lines:
        return np.zeros((0, 2), dtype=np.float32)
    line = max(lines, key=len)
    x = (line[:, 0] - 1 + offset[1] + 0.5) * scale[0]
    y = (line[:, 1] - 1 + offset[0] + 0.5) * scale[1]
    return np.stack([x, y], axis=1).astype(np.float32)


def segment_image(image: np.ndarray, scale: tuple[float, float], mpp: float | None,
                  params: TissueParams = TissueParams()) -> TissueMask:
    """Segment tissue in an RGB image whose pixels are ``scale`` level-0 pixels each.

    Args:
        image: ``[h, w, 3]`` uint8 RGB.
        scale: level-0 pixels per image pixel ``(sx, sy)``.
        mpp: level-0 microns per pixel (None: ``FALLBACK_MPP`` for the area filters).
        params: segmentation parameters.
    """
    mpp_assumed = mpp is None
    mpp = FALLBACK_MPP if mpp is None else mpp
    # a 3x3 mean of RGB first: saturation is a range of channels, so per-channel noise would
    # otherwise lift the saturation of blank glass
    smooth = ndimage.uniform_filter(image.astype(np.float32), size=(3, 3, 1), mode="nearest")
    sat = saturation(np.round(smooth).astype(np.uint8))
    if params.median_size > 1:  # separable median (rows, then columns): 4x faster than the 2-D one
        k = params.median_size
        sat = ndimage.median_filter(ndimage.median_filter(sat, size=(1, k), mode="nearest"), size=(k, 1),
                                    mode="nearest")
    thr = float(params.sat_threshold)
    if params.use_otsu:
        thr = max(thr, otsu_threshold(sat))
    mask = (sat > thr) & (image.max(axis=2) >= params.dark_threshold)
    if params.close_size > 1 and mask.any():
        k = params.close_size
        mask = ndimage.binary_closing(np.pad(mask, k), structure=np.ones((k, k), bool))[k:-k, k:-k]
    filled = ndimage.binary_fill_holes(mask)
    px_area_mm2 = (scale[0] * mpp * 1e-3) * (scale[1] * mpp * 1e-3)
    eight = np.ones((3, 3), bool)
    comp, n = ndimage.label(filled, structure=eight)
    areas = np.bincount(comp.ravel(), minlength=n + 1) * px_area_mm2
    keep = areas >= params.min_tissue_mm2
    keep[0] = False
    tissue = keep[comp]
    # holes: background inside kept pieces, large enough, at most max_holes per piece
    hole_lab, nh = ndimage.label(tissue & ~mask, structure=np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], bool))
    hole_keep = np.zeros(nh + 1, bool)
    if nh:
        hole_area = np.bincount(hole_lab.ravel(), minlength=nh + 1) * px_area_mm2
        owner = ndimage.maximum(comp, hole_lab, index=np.arange(1, nh + 1)).astype(np.int64)
        for c in np.unique(owner):
            ids = np.flatnonzero(owner == c) + 1
            ids = ids[hole_area[ids] >= params.min_hole_mm2]
            ids = ids[np.argsort(-hole_area[ids])][: params.max_holes]
            hole_keep[ids] = True
    final = tissue & ~hole_keep[hole_lab]
    contours, holes = [], []
    for lab, sl in enumerate(ndimage.find_objects(comp), start=1):
        if sl is not None and keep[lab]:
            contours.append(_outline(comp[sl] == lab, (sl[0].start, sl[1].start), scale))
    for lab, sl in enumerate(ndimage.find_objects(hole_lab), start=1):
        if sl is not None and hole_keep[lab]:
            holes.append(_outline(hole_lab[sl] == lab, (sl[0].start, sl[1].start), scale))
    return TissueMask(mask=final, scale=scale, image=image, threshold=thr, contours=contours, holes=holes,
                      mpp_assumed=mpp_assumed)


def segment_tissue(reader, params: TissueParams = TissueParams()) -> TissueMask:
    """Segment a slide's tissue on a low-resolution image of the whole slide.

    Args:
        reader: an open ``SlideReader``.
        params: segmentation parameters.

    Returns:
        the ``TissueMask`` (mask, contours and holes in level-0 coordinates, the image used).
    """
    w0, h0 = reader.dimensions
    image = reader.get_thumbnail(segmentation_size((w0, h0), params))
    scale = (w0 / image.shape[1], h0 / image.shape[0])
    return segment_image(image, scale, reader.mpp, params)


def save_overlay(path: str | os.PathLike, tissue: TissueMask, coords: np.ndarray | None = None,
                 patch_size0: float | None = None, max_size: int = 2048) -> None:
    """Write a PNG of the segmented image with tissue outlines (green), holes (blue) and, if
    given, the kept patches (thin yellow boxes), so a person can check the segmentation.

    Args:
        path: output ``.png`` (written atomically).
        tissue: the segmentation.
        coords: ``[N, 2]`` level-0 top-left of patches to draw, or None.
        patch_size0: patch side in level-0 pixels (with ``coords``).
        max_size: long side of the PNG.
    """
    from PIL import Image, ImageDraw

    img = Image.fromarray(tissue.image)
    f = min(1.0, max_size / max(img.size))
    if f < 1.0:
        img = img.resize((max(1, round(img.width * f)), max(1, round(img.height * f))), Image.BILINEAR)
    sx = img.width / (tissue.image.shape[1] * tissue.scale[0])  # PNG px per level-0 px
    sy = img.height / (tissue.image.shape[0] * tissue.scale[1])
    draw = ImageDraw.Draw(img)
    width = max(1, round(max(img.size) / 400))
    if coords is not None and patch_size0:
        for x, y in np.asarray(coords).reshape(-1, 2):
            draw.rectangle([x * sx, y * sy, (x + patch_size0) * sx, (y + patch_size0) * sy], outline=(230, 200, 0))
    for lines, color in ((tissue.contours, (0, 170, 0)), (tissue.holes, (0, 60, 255))):
        for line in lines:
            if len(line) > 1:
                pts = [(float(x) * sx, float(y) * sy) for x, y in line]
                draw.line(pts + [pts[0]], fill=color, width=width)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
