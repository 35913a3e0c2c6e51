"""cuCIM backend (``cucim.CuImage``, default cuslide plugin).

On a CPU-only machine cuCIM decodes on the CPU (fast, threaded); ``device="cuda"`` asks it to
decode into GPU memory (needs a working CUDA driver; see ``../shared/PERFORMANCE.md`` §4).
cuCIM's own conventions, pinned by a test: ``size("XY")`` and ``resolutions["level_dimensions"]``
are ``(width, height)``, ``shape`` is ``[height, width, C]``, ``read_region(location=(x, y),
size=(w, h), level)`` returns ``[h, w, C]``.
"""
from __future__ import annotations

import os

import numpy as np
from cucim import CuImage  # noqa: F401 - imported here so a missing cuCIM fails at backend selection

from pathgen.slides.errors import SlideError
from pathgen.slides.metadata import (mpp_from_resolution, objective_from_description, plausible_mpp)
from pathgen.slides.reader import SlideReader


def _flatten(d: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = str(v)
    return out


class CuCIMReader(SlideReader):
    """Slide reader over ``cucim.CuImage``."""

    backend = "cucim"

    def __init__(self, path: str | os.PathLike, device: str = "cpu"):
        super().__init__(path, device)
        if device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                raise SlideError(path, "device='cuda' asked but no CUDA GPU is visible", "use device='cpu'")
        self._img = CuImage(str(path))
        res = self._img.resolutions
        tiles = res.get("level_tile_sizes") or ()
        if tiles and tuple(tiles[0]) == (0, 0):
            # cuCIM reads untiled TIFFs through a slow whole-image path that returns RGBA
            self._img = None
            raise SlideError(path, "not a tiled image (cuCIM decodes untiled TIFFs through a slow RGBA path)",
                             "use backend='tifffile', or convert it to a tiled pyramidal TIFF")
        self.level_dimensions = tuple((int(w), int(h)) for w, h in res["level_dimensions"])
        w0, h0 = self.level_dimensions[0]
        # OpenSlide's definition (mean of both axes), so every backend reports the same downsamples
        self.level_downsamples = tuple((w0 / w + h0 / h) / 2 for w, h in self.level_dimensions)
        md = self._img.metadata
        aperio, tiff = md.get("aperio", {}) or {}, md.get("tiff", {}) or {}
        self.properties = _flatten({"aperio": aperio, "tiff": tiff})
        self.mpp = plausible_mpp(aperio.get("MPP"))
        if self.mpp is None:
            self.mpp = mpp_from_resolution(tiff.get("x_resolution"), tiff.get("resolution_unit"))
        self.mpp_source = "metadata" if self.mpp is not None else None
        app_mag = aperio.get("AppMag")
        self.objective_power = objective_from_description(f"Aperio|AppMag = {app_mag}") if app_mag else None

    def _read(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        region = self._img.read_region(location=list(location), size=list(size), level=level)
        arr = np.asarray(region)
        return np.ascontiguousarray(arr[..., :3])

    def read_regions(self, locations, level: int, size) -> np.ndarray:
        """Batched read through cuCIM's threaded reader when every region lies inside the slide."""
        locs = [tuple(int(v) for v in loc) for loc in locations]
        if not locs:
            return np.empty((0, int(size[1]), int(size[0]), 3), dtype=np.uint8)
        if not self._all_inside(locs, level, size) or len(locs) == 1:
            return super().read_regions(locs, level, size)
        workers = min(len(locs), os.cpu_count() or 1)
        batch = self._img.read_region(locs, list(map(int, size)), level, num_workers=workers, batch_size=len(locs))
        arr = np.asarray(next(iter(batch)))
        return np.ascontiguousarray(arr.reshape(len(locs), int(size[1]), int(size[0]), -1)[..., :3])

    def read_regions_tensor(self, locations, level: int, size):
        """Like ``read_regions`` as a torch uint8 tensor; on ``device='cuda'`` decoded into GPU memory."""
        import torch

        if not self.device.startswith("cuda"):
            return super().read_regions_tensor(locations, level, size)
        locs = [tuple(int(v) for v in loc) for loc in locations]
        if not self._all_inside(locs, level, size):
            return super().read_regions_tensor(locs, level, size).to(self.device)
        batch = self._img.read_region(locs, list(map(int, size)), level, batch_size=len(locs),
                                      num_workers=min(len(locs), os.cpu_count() or 1), device="cuda")
        out = torch.as_tensor(next(iter(batch)), device=self.device)  # __cuda_array_interface__, no copy
        return out.reshape(len(locs), int(size[1]), int(size[0]), -1)[..., :3]

    def _all_inside(self, locs, level: int, size) -> bool:
        self._check_request(level, size)
        lw, lh = self.level_dimensions[level]
        ds = self.level_downsamples[level]
        w, h = int(size[0]), int(size[1])
        return all(0 <= x and 0 <= y and int(x / ds) + w <= lw and int(y / ds) + h <= lh for x, y in locs)

    @property
    def associated_images(self) -> tuple[str, ...]:
        return tuple(sorted(self._img.associated_images)) if self._img is not None else ()

    def associated_image(self, name: str) -> np.ndarray:
        if name not in self.associated_images:
            return super().associated_image(name)
        return np.ascontiguousarray(np.asarray(self._img.associated_image(name))[..., :3])

    def close(self) -> None:
        img, self._img = getattr(self, "_img", None), None
        if img is not None and hasattr(img, "close"):
            img.close()
