"""Slide metadata helpers shared by the backends: MPP and magnification parsing, TIFF integrity.

MPP sources, in order: an Aperio ImageDescription (``|MPP = 0.499|``), then the TIFF resolution
tags (``XResolution`` with ``ResolutionUnit`` centimetre or inch). Values outside a plausible
range for microscopy are ignored: many ordinary TIFFs carry a default 72 dpi, which is 352 µm/px
and means "unknown", not "very coarse".
"""
from __future__ import annotations

import logging
import mmap
import os
from pathlib import Path

import numpy as np

from pathgen.slides.errors import UnsupportedSlideError

#: microns per pixel accepted from metadata; anything else is treated as missing.
PLAUSIBLE_MPP = (0.02, 20.0)

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")

#: first and last bytes of every tile, per TIFF compression: a JPEG stream runs from SOI (FF D8) to
#: EOI (FF D9), a JPEG 2000 codestream from SOC + SIZ (FF 4F FF 51) to EOC (FF D9). Old-style JPEG (6)
#: is left out: its tiles need not be whole JPEG streams.
_TILE_MARKERS = {7: (b"\xff\xd8", b"\xff\xd9"), 33003: (b"\xff\x4f\xff\x51", b"\xff\xd9"),
                 33005: (b"\xff\x4f\xff\x51", b"\xff\xd9")}
_TAIL_WINDOW = 8  # bytes read at a tile's end: the end marker may be followed by zero padding


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

    Checks that every page's directory parses and every tile or strip lies inside the file, and
    that every tile of a JPEG or JPEG 2000 tiled page starts and ends with its format's markers
    (reading those few bytes only; absent tiles, offset or byte count 0, are skipped). Backends
    would otherwise open such files and fail, or decode garbage (cuCIM decodes a broken tile as
    grey), in the middle of a run. Non-TIFF files pass through (their backend decides).

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
            segments = []
            for i, page in enumerate(pages):
                offsets = getattr(page, "dataoffsets", ())
                counts = getattr(page, "databytecounts", ())
                if len(offsets) and len(counts):
                    offsets, counts = np.asarray(offsets, dtype=np.int64), np.asarray(counts, dtype=np.int64)
                    end = int((offsets + counts).max())
                    if end > size:
                        raise UnsupportedSlideError(
                            path, f"truncated: page {i} needs {end} bytes but the file has {size}", fix)
                    segments.append((i, page, offsets, counts))
            for i, page, offsets, counts in segments:
                _check_tile_markers(path, i, page, offsets, counts)
    except UnsupportedSlideError:
        raise
    except Exception as exc:  # noqa: BLE001 - any parse failure means a broken TIFF structure
        msg = " ".join(str(exc).split())[:120] or type(exc).__name__
        raise UnsupportedSlideError(path, f"corrupt or truncated TIFF structure ({msg})", fix) from exc
    finally:
        logging.getLogger("tifffile").removeFilter(quiet)


def _check_tile_markers(path: Path, index: int, page, offsets: np.ndarray, counts: np.ndarray) -> None:
    """Raise when a tile of a JPEG / JPEG 2000 tiled ``page`` does not start and end with its markers."""
    markers = _TILE_MARKERS.get(int(getattr(page, "compression", 0) or 0))
    # NDPI pages are one JPEG stream that tifffile cuts into virtual tiles (jpegheader set): not checked
    if markers is None or not getattr(page, "is_tiled", False) or getattr(page, "jpegheader", None) is not None:
        return
    head, tail = (np.frombuffer(m, dtype=np.uint8) for m in markers)
    n = min(len(offsets), len(counts))
    offsets, counts = offsets[:n], counts[:n]
    present = np.flatnonzero((offsets > 0) & (counts > 0))  # tifffile fills absent tiles, as libtiff does
    if not len(present):
        return
    starts, counts = offsets[present], counts[present]
    ends = starts + counts
    first, last = _read_bytes(path, starts, len(head), np.maximum(ends - _TAIL_WINDOW, starts), _TAIL_WINDOW)
    ok = (counts >= len(head) + len(tail)) & (first == head).all(axis=1)
    # the window's last non-zero bytes must be the end marker (only zero padding may follow it)
    last = np.where(np.arange(_TAIL_WINDOW) < np.minimum(counts, _TAIL_WINDOW)[:, None], last, 0)
    stop = _TAIL_WINDOW - np.argmax(last[:, ::-1] != 0, axis=1)  # one past the last non-zero byte
    cols = np.clip(stop[:, None] - len(tail) + np.arange(len(tail)), 0, _TAIL_WINDOW - 1)
    ok &= (stop >= len(tail)) & (np.take_along_axis(last, cols, axis=1) == tail).all(axis=1)
    if ok.all():
        return
    bad = np.flatnonzero(~ok)
    j = int(bad[0])
    kind = "JPEG" if len(head) == 2 else "JPEG 2000"
    more = f" ({len(bad) - 1} more tiles too)" if len(bad) > 1 else ""
    raise UnsupportedSlideError(
        path, f"corrupt image data: page {index} ({page.imagewidth}x{page.imagelength} px) tile "
              f"{int(present[j])} of {len(offsets)} is not a complete {kind} stream (at byte {int(starts[j])}: "
              f"starts {first[j].tobytes().hex()}, ends {last[j][-len(tail):].tobytes().hex()}){more}",
        "the slide's pixel data are damaged: download or copy it again (compare its checksum), re-scan the "
        "slide, or leave it out of the batch")


def _read_bytes(path: Path, at_a: np.ndarray, len_a: int, at_b: np.ndarray, len_b: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """``[n, len_a]`` and ``[n, len_b]`` uint8: the bytes at offsets ``at_a`` and ``at_b`` (inside the file).

    Through a read-only memory map, so only the pages holding those bytes are read: about 0.1 s for
    100k tiles, where one ``pread`` per tile takes 0.5 s. Falls back to seek + read without mmap.
    """
    with open(path, "rb") as fh:
        try:
            mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError):  # a file system without mmap
            return _seek_read(fh, at_a, len_a), _seek_read(fh, at_b, len_b)
        with mm:
            buf = np.frombuffer(mm, dtype=np.uint8)
            rows_a = np.lib.stride_tricks.sliding_window_view(buf, len_a)  # row i: bytes i .. i + len - 1
            rows_b = np.lib.stride_tricks.sliding_window_view(buf, len_b)
            a = rows_a[np.minimum(at_a, len(rows_a) - 1)]  # fancy indexing copies
            b = rows_b[np.minimum(at_b, len(rows_b) - 1)]
            del buf, rows_a, rows_b  # release the exports before the map closes
    return a, b


def _seek_read(fh, at: np.ndarray, n: int) -> np.ndarray:
    out = bytearray()
    for o in at.tolist():
        fh.seek(o)
        out += fh.read(n).ljust(n, b"\0")
    return np.frombuffer(bytes(out), dtype=np.uint8).reshape(-1, n)


class _DropRecords(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return False
