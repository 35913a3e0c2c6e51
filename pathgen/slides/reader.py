"""The slide-reader interface and ``open_slide``: one API over cuCIM, OpenSlide and tifffile.

Conventions, identical for every backend:

* sizes and dimensions are ``(width, height)``; arrays are ``[height, width, 3]`` uint8 RGB;
* ``location`` is the level-0 ``(x, y)`` of the top-left corner, whatever the level read
  (OpenSlide's convention; CLAM and TRIDENT coordinates are level-0 too);
* pixels outside the slide are white (255), so border patches read the same everywhere.
"""
from __future__ import annotations

import abc
import math
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from pathgen.slides.errors import BackendUnavailableError, SlideError, UnsupportedSlideError
from pathgen.slides.metadata import check_tiff_integrity, is_tiff

#: ``auto`` tries these in order, per file.
BACKEND_ORDER = ("cucim", "openslide", "tifffile")

#: pip commands printed when a backend is missing.
INSTALL_HINTS = {
    "cucim": "pip install cucim-cu13  (or cucim-cu12 for CUDA 12; Linux x86_64/aarch64 only)",
    "openslide": "pip install openslide-python openslide-bin",
    "tifffile": "pip install tifffile imagecodecs",
}

_CHUNK = 4096  # level pixels per side read at once when downsampling a whole level


class SlideReader(abc.ABC):
    """A whole-slide image opened by one backend.

    Subclasses fill ``level_dimensions``, ``level_downsamples``, ``mpp``, ``objective_power``,
    ``properties`` and implement ``_read`` (one in-bounds region) and the associated images.

    Attributes:
        path: the slide file.
        backend: ``"cucim"``, ``"openslide"`` or ``"tifffile"``.
        device: where ``read_region`` decodes (``"cpu"``; ``"cuda"`` for cuCIM on a GPU).
        level_dimensions: ``(width, height)`` per level, level 0 first.
        level_downsamples: level-0 pixels per level pixel, per level.
        mpp: microns per pixel at level 0, or None when the file does not say.
        mpp_source: where ``mpp`` came from (``"metadata"``, ``"override"``) or None.
        objective_power: scanner objective magnification (e.g. 20.0), or None.
        properties: raw backend metadata, flattened to strings.
    """

    backend: str = "?"

    def __init__(self, path: str | os.PathLike, device: str = "cpu"):
        self.path = Path(path)
        self.device = device
        self.level_dimensions: tuple[tuple[int, int], ...] = ()
        self.level_downsamples: tuple[float, ...] = ()
        self.mpp: float | None = None
        self.mpp_source: str | None = None
        self.objective_power: float | None = None
        self.properties: dict[str, str] = {}

    # ------------------------------------------------------------------ geometry
    @property
    def dimensions(self) -> tuple[int, int]:
        """Level-0 ``(width, height)``."""
        return self.level_dimensions[0]

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    @property
    def slide_id(self) -> str:
        """File name without its extension (``os.path.splitext``, not ``rstrip``)."""
        return os.path.splitext(self.path.name)[0]

    def level_mpp(self, level: int) -> float | None:
        """Microns per pixel at ``level`` (None without MPP)."""
        return None if self.mpp is None else self.mpp * self.level_downsamples[level]

    def best_level_for_downsample(self, downsample: float, tolerance: float = 0.01) -> int:
        """The coarsest level whose downsample does not exceed ``downsample`` (within ``tolerance``)."""
        best = 0
        for i, ds in enumerate(self.level_downsamples):
            if ds <= downsample * (1 + tolerance) and ds >= self.level_downsamples[best]:
                best = i
        return best

    # ------------------------------------------------------------------ pixels
    @abc.abstractmethod
    def _read(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """Read one region lying fully inside ``level``; returns ``[h, w, 3]`` uint8."""

    def _check_request(self, level: int, size: Sequence[int]) -> None:
        if not 0 <= level < self.level_count:
            raise ValueError(f"{self.path}: level {level} out of range (slide has {self.level_count} levels)")
        if int(size[0]) <= 0 or int(size[1]) <= 0:
            raise ValueError(f"{self.path}: region size must be positive, got {tuple(size)}")

    def read_region(self, location: Sequence[int], level: int, size: Sequence[int]) -> np.ndarray:
        """Read one region.

        Args:
            location: level-0 ``(x, y)`` of the top-left corner.
            level: pyramid level to read from.
            size: ``(width, height)`` in pixels of ``level``.

        Returns:
            ``[height, width, 3]`` uint8 RGB; parts outside the slide are white.
        """
        x0, y0 = int(location[0]), int(location[1])
        w, h = int(size[0]), int(size[1])
        self._check_request(level, (w, h))
        lw, lh = self.level_dimensions[level]
        ds = self.level_downsamples[level]
        xl, yl = math.floor(x0 / ds), math.floor(y0 / ds)
        if xl >= 0 and yl >= 0 and xl + w <= lw and yl + h <= lh:
            return self._read((x0, y0), level, (w, h))
        # partly or wholly outside: read the inside part and paste it onto white
        out = np.full((h, w, 3), 255, dtype=np.uint8)
        cx0, cy0 = max(xl, 0), max(yl, 0)
        cx1, cy1 = min(xl + w, lw), min(yl + h, lh)
        if cx1 > cx0 and cy1 > cy0:
            loc0 = (x0 if xl >= 0 else 0, y0 if yl >= 0 else 0)
            part = self._read(loc0, level, (cx1 - cx0, cy1 - cy0))
            out[cy0 - yl:cy1 - yl, cx0 - xl:cx1 - xl] = part
        return out

    def read_regions(self, locations: Iterable[Sequence[int]], level: int, size: Sequence[int]) -> np.ndarray:
        """Read many same-size regions (batched by backends that can).

        Returns:
            ``[N, height, width, 3]`` uint8.
        """
        locs = [tuple(int(v) for v in loc) for loc in locations]
        out = np.empty((len(locs), int(size[1]), int(size[0]), 3), dtype=np.uint8)
        for i, loc in enumerate(locs):
            out[i] = self.read_region(loc, level, size)
        return out

    def read_regions_tensor(self, locations: Iterable[Sequence[int]], level: int, size: Sequence[int]):
        """``read_regions`` as a torch uint8 tensor ``[N, height, width, 3]``.

        CPU memory for every backend except cuCIM opened with ``device="cuda"``, which decodes
        straight into GPU memory.
        """
        import torch

        return torch.from_numpy(self.read_regions(locations, level, size))

    def get_thumbnail(self, max_size: int | Sequence[int]) -> np.ndarray:
        """The whole slide downsampled so it fits in ``max_size`` (keeps the aspect ratio).

        Reads the smallest sufficient level chunk by chunk, so memory stays bounded even when
        the file has no low-resolution level.

        Args:
            max_size: longest side, or ``(max_width, max_height)``.

        Returns:
            ``[h, w, 3]`` uint8.
        """
        from PIL import Image

        mw, mh = (max_size, max_size) if isinstance(max_size, (int, np.integer)) else map(int, max_size)
        w0, h0 = self.dimensions
        scale = min(mw / w0, mh / h0, 1.0)  # output px per level-0 px
        tw, th = max(1, round(w0 * scale)), max(1, round(h0 * scale))
        level = self.best_level_for_downsample(1.0 / scale)
        lw, lh = self.level_dimensions[level]
        sx, sy = tw / lw, th / lh  # output px per level px
        ds = self.level_downsamples[level]
        out = np.empty((th, tw, 3), dtype=np.uint8)
        for ly in range(0, lh, _CHUNK):
            for lx in range(0, lw, _CHUNK):
                cw, ch = min(_CHUNK, lw - lx), min(_CHUNK, lh - ly)
                ox0, oy0 = round(lx * sx), round(ly * sy)
                ox1, oy1 = round((lx + cw) * sx), round((ly + ch) * sy)
                if ox1 <= ox0 or oy1 <= oy0:
                    continue
                tile = self.read_region((math.ceil(lx * ds), math.ceil(ly * ds)), level, (cw, ch))
                if (ox1 - ox0, oy1 - oy0) != (cw, ch):
                    tile = np.asarray(Image.fromarray(tile).resize((ox1 - ox0, oy1 - oy0), Image.BILINEAR,
                                                                   reducing_gap=3.0))
                out[oy0:oy1, ox0:ox1] = tile
        return out

    # ------------------------------------------------------------------ associated images
    @property
    def associated_images(self) -> tuple[str, ...]:
        """Names of the associated images (``label``, ``macro``, ``thumbnail``, ...)."""
        return ()

    def associated_image(self, name: str) -> np.ndarray:
        """One associated image as ``[h, w, 3]`` uint8."""
        raise KeyError(f"{self.path}: no associated image {name!r} (has {list(self.associated_images)})")

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Release the file handle (idempotent)."""

    def __enter__(self) -> "SlideReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def info(self) -> dict:
        """A JSON-able summary (backend, sizes, levels, MPP, magnification)."""
        return {
            "path": str(self.path), "backend": self.backend, "device": self.device,
            "dimensions": list(self.dimensions), "level_count": self.level_count,
            "level_dimensions": [list(d) for d in self.level_dimensions],
            "level_downsamples": [float(d) for d in self.level_downsamples],
            "mpp": self.mpp, "mpp_source": self.mpp_source, "objective_power": self.objective_power,
            "associated_images": list(self.associated_images),
        }

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({str(self.path)!r}, dimensions={self.dimensions}, "
                f"levels={self.level_count}, mpp={self.mpp})")


def _reader_class(backend: str) -> type[SlideReader]:
    """Import one backend lazily; a missing package raises with the pip command."""
    try:
        if backend == "cucim":
            from pathgen.slides.cucim_reader import CuCIMReader as cls
        elif backend == "openslide":
            from pathgen.slides.openslide_reader import OpenSlideReader as cls
        elif backend == "tifffile":
            from pathgen.slides.tifffile_reader import TiffFileReader as cls
        else:
            raise ValueError(f"unknown slide backend {backend!r}; choose auto or one of {', '.join(BACKEND_ORDER)}")
    except ImportError as exc:
        raise BackendUnavailableError(
            f"slide backend {backend!r} is not installed ({exc}); install it with: {INSTALL_HINTS[backend]}") from exc
    return cls


def available_backends() -> list[str]:
    """Backends whose packages import on this machine, in ``auto`` order."""
    out = []
    for name in BACKEND_ORDER:
        try:
            _reader_class(name)
            out.append(name)
        except BackendUnavailableError:
            pass
    return out


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:160]


def open_slide(path: str | os.PathLike, backend: str = "auto", device: str = "cpu",
               mpp: float | None = None, default_mpp: float | None = None) -> SlideReader:
    """Open a whole-slide image.

    Args:
        path: slide file (Aperio SVS, generic tiled / pyramidal TIFF; more formats via OpenSlide).
        backend: ``"auto"`` (cuCIM, then OpenSlide, then tifffile, first that opens the file),
            or one backend by name.
        device: ``"cpu"``, or ``"cuda"`` to have cuCIM decode into GPU memory.
        mpp: microns per pixel at level 0, overriding the metadata (``mpp_source="override"``).
        default_mpp: microns per pixel at level 0 used only when the metadata has none
            (``mpp_source="default"``).

    Returns:
        a ``SlideReader``; use it as a context manager or call ``close()``.

    Raises:
        SlideError: missing, truncated or corrupt file, or a format no backend reads; the
            message is one line naming the file and the fix.
        BackendUnavailableError: a named backend is not installed (message has the pip command).
    """
    path = Path(path)
    if not path.is_file():
        raise SlideError(path, "file not found", "check the path (relative paths in a manifest CSV are "
                                                 "resolved against the CSV's folder)")
    check_tiff_integrity(path)
    if backend == "auto":
        # cuCIM and tifffile read TIFF-based files only; other formats (MRXS, DICOM...) go to OpenSlide
        names = BACKEND_ORDER if is_tiff(path) else ("openslide",)
    else:
        names = (backend,)
    reasons: list[str] = []
    for name in names:
        try:
            cls = _reader_class(name)
        except BackendUnavailableError as exc:
            if backend != "auto":
                raise
            reasons.append(f"{name}: not installed")
            continue
        if device != "cpu" and name != "cucim":
            if backend != "auto":
                raise ValueError(f"{path}: backend {name!r} decodes on the CPU only; "
                                 "use device='cpu' or backend='cucim'")
        try:
            reader = cls(path, device=device if name == "cucim" else "cpu")
        except SlideError as exc:  # a backend's own one-line diagnosis (e.g. untiled TIFF too large)
            if backend != "auto":
                raise
            reasons.append(f"{name}: {exc.problem}")
            continue
        except Exception as exc:  # noqa: BLE001 - each backend fails in its own way; report them all
            reasons.append(f"{name}: {_one_line(exc)}")
            continue
        for value, source in ((mpp, "override"), (default_mpp, "default")):
            if value is not None and not value > 0:
                reader.close()
                raise ValueError(f"{path}: MPP must be positive, got {value}")
        if mpp is not None:
            reader.mpp, reader.mpp_source = float(mpp), "override"
        elif reader.mpp is None and default_mpp is not None:
            reader.mpp, reader.mpp_source = float(default_mpp), "default"
        return reader
    raise UnsupportedSlideError(
        path, "no slide backend could open it (" + "; ".join(reasons) + ")",
        "check that the file is complete and not corrupt (copy it again, compare its size or checksum) and "
        "that it is a whole-slide format (SVS, tiled pyramidal TIFF; NDPI/MRXS/SCN need OpenSlide); "
        "convert other images to a tiled pyramidal TIFF")

