"""OpenSlide backend (``openslide-python`` + the ``openslide-bin`` wheel; no system library needed).

Broadest vendor coverage (SVS, NDPI, MRXS, SCN, BIF, DICOM, generic tiled TIFF). OpenSlide
returns premultiplied RGBA; transparent pixels (outside the scanned area) become white.
"""
from __future__ import annotations

import os

import numpy as np
import openslide

from pathgen.slides.metadata import plausible_mpp
from pathgen.slides.reader import SlideReader


def rgba_to_rgb(rgba: np.ndarray) -> np.ndarray:
    """Premultiplied RGBA ``[h, w, 4]`` -> RGB on white ``[h, w, 3]`` uint8."""
    rgb, alpha = rgba[..., :3], rgba[..., 3:4]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgb)
    return np.clip(rgb.astype(np.int16) + (255 - alpha.astype(np.int16)), 0, 255).astype(np.uint8)


class OpenSlideReader(SlideReader):
    """Slide reader over ``openslide.OpenSlide``."""

    backend = "openslide"

    def __init__(self, path: str | os.PathLike, device: str = "cpu"):
        super().__init__(path, "cpu")
        self._slide = openslide.OpenSlide(str(path))
        self.level_dimensions = tuple((int(w), int(h)) for w, h in self._slide.level_dimensions)
        self.level_downsamples = tuple(float(d) for d in self._slide.level_downsamples)
        self.properties = {k: str(v) for k, v in self._slide.properties.items()}
        self.mpp = plausible_mpp(self.properties.get(openslide.PROPERTY_NAME_MPP_X))
        self.mpp_source = "metadata" if self.mpp is not None else None
        power = self.properties.get(openslide.PROPERTY_NAME_OBJECTIVE_POWER)
        try:
            self.objective_power = float(power) if power else None
        except ValueError:
            self.objective_power = None

    def _read(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        return rgba_to_rgb(np.asarray(self._slide.read_region(location, level, size)))

    @property
    def associated_images(self) -> tuple[str, ...]:
        return tuple(sorted(self._slide.associated_images.keys())) if self._slide is not None else ()

    def associated_image(self, name: str) -> np.ndarray:
        if name not in self.associated_images:
            return super().associated_image(name)
        return rgba_to_rgb(np.asarray(self._slide.associated_images[name].convert("RGBA")))

    def close(self) -> None:
        slide, self._slide = getattr(self, "_slide", None), None
        if slide is not None:
            slide.close()
