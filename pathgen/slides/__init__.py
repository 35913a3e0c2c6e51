"""Whole-slide images: reading (cuCIM / OpenSlide / tifffile), tissue segmentation, patch grids
by physical resolution and a prefetching patch loader.

    from pathgen.slides import open_slide, segment_tissue, plan_patches, tissue_coords, PatchLoader

    with open_slide("slide.svs") as reader:                      # auto: cuCIM, OpenSlide, tifffile
        plan = plan_patches(reader.level_downsamples, reader.mpp, target_mpp=0.5, patch_size=256)
        coords, _ = tissue_coords(reader.dimensions, plan, segment_tissue(reader))
        for xy, patches in PatchLoader.from_plan(reader, coords, plan, batch_size=64):
            ...                                                  # patches: [B, 3, 256, 256] uint8
"""
from pathgen.slides.errors import (BackendUnavailableError, MissingMPPError, NoTissueError, SlideError,
                                   UnsupportedSlideError)
from pathgen.slides.grid import PatchPlan, grid_coords, plan_patches, read_mpp_csv, tissue_coords
from pathgen.slides.reader import BACKEND_ORDER, SlideReader, available_backends, open_slide

_LAZY = {"PatchLoader": "pathgen.slides.loader", "TissueMask": "pathgen.slides.tissue",
         "TissueParams": "pathgen.slides.tissue", "save_overlay": "pathgen.slides.tissue",
         "segment_tissue": "pathgen.slides.tissue"}


def __getattr__(name: str):  # scipy.ndimage and torch load on first use, not on `import pathgen.slides`
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pathgen.slides' has no attribute {name!r}")

__all__ = [
    "BACKEND_ORDER", "BackendUnavailableError", "MissingMPPError", "NoTissueError", "PatchLoader", "PatchPlan",
    "SlideError", "SlideReader", "TissueMask", "TissueParams", "UnsupportedSlideError", "available_backends",
    "grid_coords", "open_slide", "plan_patches", "read_mpp_csv", "save_overlay", "segment_tissue", "tissue_coords",
]
