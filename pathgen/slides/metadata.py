"""Slide metadata helpers shared by the backends: MPP and magnification parsing, TIFF integrity.

MPP sources, in order: an Aperio ImageDescription (``|MPP = 0.499|``), then the TIFF resolution
tags (``XResolution`` with ``ResolutionUnit`` centimetre or inch). Values outside a plausible
range for microscopy are ignored: many ordinary TIFFs carry a default 72 dpi, which is 352 µm/px
and means "unknown", not "very coarse".
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from pathgen.slides.errors import UnsupportedSlideError

#: microns per pixel accepted from metadata; anything else is treated as missing.
PLAUSIBLE_MPP = (0.02, 20.0)

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def parse_aperio_description(description: str | None) -> dict[str, str]:
    """``key = value`` pairs of an Aperio ImageDescription (empty if it is not one).

    Example: ``"Aperio Image Library v11\\r\\n... |AppMag = 20|MPP = 0.4990"`` ->
    ``{"AppMag": "20", "MPP": "0.4990"}``.
    """
    if not description or "Aperio" not in description.split("|", 1)[0]:
        return {}
    out = {}
    for part in description.split("|")[1:]:
        key, sep, value = part.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


def plausible_mpp(value) -> float | None:
    """``value`` as a float when it is a plausible level-0 MPP, else None."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if PLAUSIBLE_MPP[0] <= v <= PLAUSIBLE_MPP[1] else None


def mpp_from_resolution(x_resolution, unit) -> float | None:
    """MPP from a TIFF ``XResolution`` (pixels per unit; a float or a ``(num, den)`` pair).

    Args:
        x_resolution: pixels per ``unit``.
        unit: TIFF ResolutionUnit: 2 / "inch" or 3 / "centimeter"; anything else -> None.
    """
    if isinstance(x_resolution, (tuple, list)):
        num, den = x_resolution
        x_resolution = num / den if den else 0.0
    try:
        res = float(x_resolution)
    except (TypeError, ValueError):
        return None
    if res <= 0:
        return None
    unit = str(getattr(unit, "name", unit)).lower()
    if unit in ("2", "inch"):
        return plausible_mpp(25400.0 / res)
    if unit in ("3", "centimeter", "cm"):
        return plausible_mpp(10000.0 / res)
    return None


def mpp_from_description_or_tags(description: str | None, x_resolution=None, unit=None) -> float | None:
    """The level-0 MPP from Aperio metadata, else from resolution tags, else None."""
    mpp = plausible_mpp(parse_aperio_description(description).get("MPP"))
    if mpp is None and x_resolution is not None:
        mpp = mpp_from_resolution(x_resolution, unit)
    return mpp


def objective_from_description(description: str | None) -> float | None:
    """Aperio ``AppMag`` as a float, or None."""
    value = parse_aperio_description(description).get("AppMag")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def is_tiff(path: str | os.PathLike) -> bool:
    """True when the file starts with a TIFF or BigTIFF header."""
    with open(path, "rb") as fh:
        return fh.read(4) in _TIFF_MAGIC


def check_tiff_integrity(path: str | os.PathLike) -> None:
    """Fail fast on a truncated or structurally broken TIFF (SVS, NDPI and friends are TIFFs).

    Checks that every page's directory parses and every tile or strip lies inside the file.
    Backends would otherwise open such files and fail, or decode garbage, in the middle of a
    run. Non-TIFF files pass through (their backend decides).

    Raises:
        UnsupportedSlideError: one line naming the file and what is broken.
    """
    path = Path(path)
    if not is_tiff(path):
        return
    try:
        import tifffile
    except ImportError:  # no way to check: let the backends try
        return
    size = path.stat().st_size
    fix = "the file is incomplete or damaged: copy or download it again and compare its size or checksum"
    quiet = _DropRecords()  # tifffile logs its own warning for broken IFD chains; we raise one line instead
    logging.getLogger("tifffile").addFilter(quiet)
    try:
        with tifffile.TiffFile(path) as tif:
            pages = list(tif.pages)
            if not pages:
                raise UnsupportedSlideError(path, f"TIFF has no readable image directory ({size} bytes)", fix)
            for i, page in enumerate(pages):
                offsets = getattr(page, "dataoffsets", ())
                counts = getattr(page, "databytecounts", ())
                if len(offsets) and len(counts):
                    end = int((np.asarray(offsets, dtype=np.int64) + np.asarray(counts, dtype=np.int64)).max())
                    if end > size:
                        raise UnsupportedSlideError(
                            path, f"truncated: page {i} needs {end} bytes but the file has {size}", fix)
    except UnsupportedSlideError:
        raise
    except Exception as exc:  # noqa: BLE001 - any parse failure means a broken TIFF structure
        msg = " ".join(str(exc).split())[:120] or type(exc).__name__
        raise UnsupportedSlideError(path, f"corrupt or truncated TIFF structure ({msg})", fix) from exc
    finally:
        logging.getLogger("tifffile").removeFilter(quiet)


class _DropRecords(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return False
