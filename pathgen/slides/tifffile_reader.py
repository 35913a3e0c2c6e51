"""tifffile backend: pure-Python fallback for Aperio SVS and generic tiled TIFF (imagecodecs decodes).

Reads only the tiles a region touches (with a small LRU cache of decoded tiles, since unaligned
patches share tiles). Pyramid levels are the tiled pages of the main IFD chain (OpenSlide's
rule; tifffile's Aperio heuristic would call the second one a thumbnail), else page 0's SubIFDs.

An untiled (stripped) TIFF, like ``kidney-48-5.tif``, is handled as a single-level slide when it
fits in memory (``MAX_UNTILED_PIXELS``), decoded once and cached; a larger one gets a one-line
error asking for a tiled pyramidal conversion. cuCIM and OpenSlide refuse such files, so
``open_slide(backend="auto")`` lands here for them.
"""
from __future__ import annotations

import math
import os
import threading
from collections import OrderedDict

import numpy as np
import tifffile

from pathgen.slides.errors import SlideError
from pathgen.slides.metadata import mpp_from_description_or_tags, objective_from_description
from pathgen.slides.reader import SlideReader

#: untiled images larger than this (pixels) are refused rather than decoded whole.
MAX_UNTILED_PIXELS = 2**26  # 67 Mpx, about 200 MB of RGB

CONVERT_HINT = ("convert it to a tiled pyramidal TIFF, e.g. `vips tiffsave in.tif out.tif --tile --pyramid "
                "--compression jpeg` or pathgen.slides.tiff_writer.write_pyramidal_tiff")


def _tag(page, name):
    tag = page.tags.get(name)
    return None if tag is None else tag.value


class TiffFileReader(SlideReader):
    """Slide reader over ``tifffile.TiffFile``."""

    backend = "tifffile"
    tile_cache_size = 128

    def __init__(self, path: str | os.PathLike, device: str = "cpu"):
        super().__init__(path, "cpu")
        self._tif = tifffile.TiffFile(str(path))
        try:
            self._setup()
        except Exception:
            self.close()
            raise

    def _setup(self) -> None:
        pages = list(self._tif.pages)
        base = pages[0]
        self._check_layout(base)
        levels = [base]
        for page in pages[1:]:  # OpenSlide's rule: further tiled pages of the same layout are levels
            if (page.is_tiled and base.is_tiled and page.samplesperpixel == base.samplesperpixel
                    and page.imagewidth < levels[-1].imagewidth and page.imagelength < levels[-1].imagelength):
                levels.append(page)
        if len(levels) == 1 and getattr(base, "pages", None):  # SubIFD pyramids
            levels += [p for p in base.pages if p.is_tiled and p.samplesperpixel == base.samplesperpixel]
        for page in levels:
            self._check_layout(page)
        if not base.is_tiled and base.imagewidth * base.imagelength > MAX_UNTILED_PIXELS:
            raise SlideError(self.path, f"untiled (stripped) TIFF of {base.imagewidth}x{base.imagelength} px is "
                                        "too large to decode whole", CONVERT_HINT)
        self._levels = levels
        self.level_dimensions = tuple((int(p.imagewidth), int(p.imagelength)) for p in levels)
        w0, h0 = self.level_dimensions[0]
        self.level_downsamples = tuple((w0 / w + h0 / h) / 2 for w, h in self.level_dimensions)
        desc = base.description or ""
        self.mpp = mpp_from_description_or_tags(desc, _tag(base, "XResolution"), _tag(base, "ResolutionUnit"))
        self.mpp_source = "metadata" if self.mpp is not None else None
        self.objective_power = objective_from_description(desc)
        self.properties = {"tiff.ImageDescription": desc[:2000], "tiff.Compression": str(base.compression),
                           "tiff.is_tiled": str(base.is_tiled)}
        self._assoc = {}
        level_ids = {id(p) for p in levels}
        for i, series in enumerate(self._tif.series[1:], start=1):
            page = series.pages[0] if series.pages else None
            if page is not None and id(page) not in level_ids and page.index not in {p.index for p in levels}:
                self._assoc[(series.name or f"series{i}").lower()] = series
        self._lock = threading.Lock()
        self._cache: OrderedDict = OrderedDict()
        self._full: dict[int, np.ndarray] = {}

    def _check_layout(self, page) -> None:
        spp, bits = page.samplesperpixel, page.bitspersample
        ok_photo = page.photometric in (tifffile.PHOTOMETRIC.RGB, tifffile.PHOTOMETRIC.YCBCR,
                                        tifffile.PHOTOMETRIC.MINISBLACK)
        if bits != 8 or spp not in (1, 3, 4) or not ok_photo or (spp > 1 and page.planarconfig != 1):
            raise SlideError(self.path, f"unsupported pixel layout ({page.photometric.name}, {spp} samples of "
                                        f"{bits} bits, planar config {page.planarconfig})",
                             "convert it to an 8-bit RGB tiled pyramidal TIFF")

    # ------------------------------------------------------------------ pixels
    def _rgb(self, arr: np.ndarray) -> np.ndarray:
        if arr.shape[-1] == 1:
            return np.repeat(arr, 3, axis=-1)
        return arr[..., :3]

    def _full_level(self, level: int) -> np.ndarray:
        with self._lock:
            if level not in self._full:
                arr = self._levels[level].asarray()
                arr = arr[..., None] if arr.ndim == 2 else arr
                self._full[level] = self._rgb(arr)
            return self._full[level]

    def _tile(self, level: int, index: int) -> np.ndarray | None:
        key = (level, index)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
            page = self._levels[level]
            offset, count = int(page.dataoffsets[index]), int(page.databytecounts[index])
            if count == 0:
                return None  # sparse tile: stays white
            fh = self._tif.filehandle
            fh.seek(offset)
            data = fh.read(count)
        seg, _, shape = page.decode(data, index, jpegtables=page.jpegtables)  # decoding releases the GIL
        tile = self._rgb(np.asarray(seg).reshape(shape[-3:]))
        with self._lock:
            self._cache[key] = tile
            while len(self._cache) > self.tile_cache_size:
                self._cache.popitem(last=False)
        return tile

    def _read(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        ds = self.level_downsamples[level]
        xl, yl = math.floor(location[0] / ds), math.floor(location[1] / ds)
        w, h = size
        page = self._levels[level]
        if not page.is_tiled:
            return np.ascontiguousarray(self._full_level(level)[yl:yl + h, xl:xl + w])
        tw, th = page.tilewidth, page.tilelength
        ntx = math.ceil(page.imagewidth / tw)
        out = np.full((h, w, 3), 255, dtype=np.uint8)
        for ty in range(yl // th, (yl + h - 1) // th + 1):
            for tx in range(xl // tw, (xl + w - 1) // tw + 1):
                tile = self._tile(level, ty * ntx + tx)
                if tile is None:
                    continue
                # overlap of the tile with the request, in level coordinates
                x0, y0 = max(xl, tx * tw), max(yl, ty * th)
                x1, y1 = min(xl + w, (tx + 1) * tw), min(yl + h, (ty + 1) * th)
                out[y0 - yl:y1 - yl, x0 - xl:x1 - xl] = tile[y0 - ty * th:y1 - ty * th, x0 - tx * tw:x1 - tx * tw]
        return out

    # ------------------------------------------------------------------ associated images
    @property
    def associated_images(self) -> tuple[str, ...]:
        return tuple(sorted(getattr(self, "_assoc", {})))

    def associated_image(self, name: str) -> np.ndarray:
        if name not in self.associated_images:
            return super().associated_image(name)
        arr = self._assoc[name].asarray()
        arr = arr[..., None] if arr.ndim == 2 else arr
        return np.ascontiguousarray(self._rgb(arr))

    def close(self) -> None:
        tif, self._tif = getattr(self, "_tif", None), None
        if tif is not None:
            tif.close()
