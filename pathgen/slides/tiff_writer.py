"""Write tiled pyramidal TIFFs that cuCIM, OpenSlide and tifffile all read.

Used by the tests and benchmarks (generated slides), and by anyone converting a plain image
(e.g. the untiled ``kidney-48-5.tif``) into something the slide pipeline can patch quickly.
Levels go into the main IFD chain (not SubIFDs) because that is what OpenSlide's generic-TIFF
and Aperio drivers and cuCIM's cuslide expect.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from pathgen.utils.io import atomic_path


def downsample_image(image: np.ndarray, factor: int) -> np.ndarray:
    """Block-mean downsample ``[H, W, 3]`` uint8 by an integer factor (edges cropped to a multiple)."""
    h, w = (image.shape[0] // factor) * factor, (image.shape[1] // factor) * factor
    img = image[:h, :w].reshape(h // factor, factor, w // factor, factor, image.shape[2])
    return img.mean(axis=(1, 3)).round().astype(np.uint8)


def aperio_description(width: int, height: int, mpp: float | None, magnification: float | None,
                       tile: int, compression: str) -> str:
    """An Aperio-style ImageDescription: OpenSlide then reports vendor ``aperio`` with MPP and AppMag."""
    parts = [f"Aperio Image Library v12.0.0 pathgen\r\n{width}x{height} ({tile}x{tile}) {compression.upper()}/RGB Q=90"]
    if magnification is not None:
        parts.append(f"AppMag = {magnification:g}")
    if mpp is not None:
        parts.append(f"MPP = {mpp:.4f}")
    parts.append("Filename = pathgen-generated")
    return "|".join(parts)


def write_pyramidal_tiff(path: str | os.PathLike, image: np.ndarray, mpp: float | None = 0.5,
                         downsamples: Sequence[int] = (1, 4, 16), tile: int = 256,
                         compression: str = "jpeg", quality: int = 90, aperio: bool = True,
                         resolution_tags: bool = True, magnification: float | None = None,
                         bigtiff: bool | None = None) -> None:
    """Write ``image`` as a tiled, compressed, multi-level TIFF (atomically).

    Args:
        path: output ``.tif``/``.tiff``/``.svs``.
        image: level 0, ``[H, W, 3]`` uint8 RGB.
        mpp: microns per pixel at level 0 (None writes no physical size at all).
        downsamples: level downsample factors, starting with 1; each must divide the previous
            ones' sizes reasonably (levels are block means of level 0).
        tile: tile side (multiple of 16).
        compression: ``"jpeg"``, ``"deflate"``, ``"lzw"`` or ``"none"``.
        quality: JPEG quality.
        aperio: write an Aperio-style ImageDescription (``|MPP = ...|AppMag = ...``).
        resolution_tags: write XResolution/YResolution in pixels per centimetre.
        magnification: objective power for the description (default ``10 / mpp``).
        bigtiff: force BigTIFF (default: when the raw size exceeds 2 GiB).
    """
    import tifffile

    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be [H, W, 3] uint8, got {image.shape} {image.dtype}")
    if list(downsamples)[:1] != [1]:
        raise ValueError(f"downsamples must start with 1, got {list(downsamples)}")
    h, w = image.shape[:2]
    if magnification is None and mpp is not None:
        magnification = round(10.0 / mpp, 2)
    comp = None if compression == "none" else compression
    kwargs = {"compressionargs": {"level": quality}} if compression == "jpeg" else {}
    if bigtiff is None:
        bigtiff = image.nbytes > 2**31
    desc = aperio_description(w, h, mpp, magnification, tile, compression) if aperio else None
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=bigtiff) as tif:
        for i, ds in enumerate(downsamples):
            level = image if ds == 1 else downsample_image(image, int(ds))
            res = {}
            if resolution_tags and mpp is not None:
                ppcm = 1e4 / (mpp * ds)
                res = {"resolution": (ppcm, ppcm), "resolutionunit": "CENTIMETER"}
            tif.write(
                level, photometric="rgb", tile=(tile, tile), compression=comp,
                subfiletype=0 if i == 0 else 1, description=desc if i == 0 else None,
                metadata=None, **res, **kwargs,
            )
