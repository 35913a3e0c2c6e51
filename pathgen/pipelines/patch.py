"""``pathgen patch``: segment tissue and write patch coordinates at a physical resolution.

Per slide: ``<out>/patches/<slide_id>.h5`` (CLAM layout: ``coords`` [N, 2] int64 level-0 x, y
with CLAM + TRIDENT attrs, plus ``tissue_fraction``) and ``<out>/masks/<slide_id>.png`` (tissue
outlines and kept patches on the thumbnail). Status, idempotency, errors and exit codes:
``pathgen.pipelines.slide_batch``.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

from pathgen.pipelines import slide_batch as sb
from pathgen.slides.errors import NoTissueError, SlideError, slide_read_error


@dataclass(frozen=True)
class PatchOptions:
    """Everything that determines a slide's patch coordinates."""

    target_mpp: float = 0.5
    patch_size: int = 256
    overlap: int = 0
    min_tissue_fraction: float = 0.25
    backend: str = "auto"
    sat_threshold: int = 8
    min_tissue_mm2: float = 0.05
    min_hole_mm2: float = 0.01

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "PatchOptions":
        return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})

    def tissue_params(self):
        from pathgen.slides.tissue import TissueParams

        return TissueParams(sat_threshold=self.sat_threshold, min_tissue_mm2=self.min_tissue_mm2,
                            min_hole_mm2=self.min_hole_mm2)

    def config(self, mpp: "MPPChoice") -> dict:
        """The hashed config of one slide. Its --mpp-csv value is in (it beats the metadata); --mpp is
        not, because it applies only to slides without an MPP of their own: a done slide's status says
        whether it used it (``default_mpp_unchanged``), so changing --mpp redoes only those slides."""
        return {**dataclasses.asdict(self), "tissue": self.tissue_params().to_dict(), "mpp_override": mpp.override}


@dataclass(frozen=True)
class MPPChoice:
    """MPP overrides of one slide: ``override`` (from --mpp-csv) beats the metadata; ``default``
    (from --mpp) is used only when the metadata has none."""

    override: float | None = None
    default: float | None = None

    def open_kwargs(self) -> dict:
        return {"mpp": self.override, "default_mpp": self.default}


def patch_paths(out: Path, slide_id: str) -> tuple[Path, Path]:
    """``(patches h5, mask png)`` of a slide."""
    return out / "patches" / f"{slide_id}.h5", out / "masks" / f"{slide_id}.png"


def patch_one(path: Path, slide_id: str, out: Path, opts: PatchOptions, mpp: MPPChoice) -> dict:
    """Segment one slide and write its coordinates and overlay (atomically).

    Raises:
        SlideError: unreadable file, missing MPP, no tissue (one line naming the file and the fix).
    """
    from pathgen.features.h5io import coords_attrs, write_patches_h5
    from pathgen.slides import open_slide
    from pathgen.slides.grid import plan_patches, tissue_coords
    from pathgen.slides.tissue import save_overlay, segment_tissue

    h5_path, png_path = patch_paths(out, slide_id)
    with open_slide(path, backend=opts.backend, **mpp.open_kwargs()) as reader:
        plan = plan_patches(reader.level_downsamples, reader.mpp, opts.target_mpp, opts.patch_size, opts.overlap,
                            path=path)
        try:
            tissue = segment_tissue(reader, opts.tissue_params())
        except SlideError:
            raise
        except Exception as exc:  # noqa: BLE001 - a decode failure (OpenSlideError, Jpeg8Error...) is a bad input
            raise slide_read_error(path, "reading the slide", exc) from exc
        coords, frac = tissue_coords(reader.dimensions, plan, tissue, opts.min_tissue_fraction)
        info = reader.info()
    # the overlay is written even without patches, so a person can see why
    save_overlay(png_path, tissue, coords, plan.patch_size_level0)
    if len(coords) == 0:
        what = "no tissue found" if tissue.tissue_fraction == 0 else \
            (f"no patch reaches {opts.min_tissue_fraction:.0%} tissue "
             f"(tissue covers {tissue.tissue_fraction:.1%} of the slide)")
        raise NoTissueError(path, f"{what} at {plan.target_mpp} µm/px, {plan.patch_size} px (see {png_path})",
                            "check the overlay; lower --min-tissue-fraction, --sat-threshold or --min-tissue-mm2 "
                            "for faint or small tissue, or leave the slide out")
    attrs = coords_attrs(slide_id, info, plan)
    write_patches_h5(h5_path, coords, attrs, frac)
    return {"n_patches": int(len(coords)), "outputs": [str(h5_path.absolute()), str(png_path.absolute())],
            "plan": plan.to_dict(),
            "slide": {k: info[k] for k in ("backend", "dimensions", "level_count", "mpp", "mpp_source",
                                           "objective_power")},
            "tissue_fraction": round(tissue.tissue_fraction, 4)}


def patches_intact(st: dict) -> bool:
    from pathgen.features.h5io import h5_is_readable

    outs = st.get("outputs") or []
    return bool(outs) and h5_is_readable(outs[0], ("coords",)) and all(Path(o).is_file() for o in outs)


def mpp_overrides(args: argparse.Namespace) -> tuple[float | None, dict[str, float]]:
    """``(--mpp, {slide_id: mpp} from --mpp-csv)``; raises UsageError on a bad value or CSV.

    Use ``MPPChoice(table.get(slide_id), mpp)`` per slide: the CSV overrides the metadata,
    ``--mpp`` only fills in a missing MPP.
    """
    from pathgen.slides.grid import read_mpp_csv

    if args.mpp is not None and not (math.isfinite(args.mpp) and args.mpp > 0):
        raise sb.UsageError(f"--mpp must be a finite positive number, got {args.mpp}")
    table = {}
    if args.mpp_csv is not None:
        if not args.mpp_csv.is_file():
            raise sb.UsageError(f"{args.mpp_csv}: MPP CSV not found")
        try:
            table = read_mpp_csv(args.mpp_csv)
        except ValueError as exc:
            raise sb.UsageError(str(exc)) from exc
    return args.mpp, table


def default_mpp_unchanged(st: dict, mpp: MPPChoice) -> bool:
    """A done slide patched at the --mpp fallback is current only under the same --mpp."""
    used_default = (st.get("slide") or {}).get("mpp_source") == "default"
    return not used_default or st.get("mpp_default") == mpp.default


def run_patch_stage(out: Path, slide: sb.Slide, opts: PatchOptions, mpp: MPPChoice,
                    force: bool = False) -> sb.SlideResult:
    """Patch one slide unless already done with the same options."""
    return sb.process_slide(out, "patch", slide, opts.config(mpp), list(patch_paths(out, slide.slide_id)),
                            lambda: {**patch_one(slide.path, slide.slide_id, out, opts, mpp),
                                     "mpp_default": mpp.default},
                            lambda st: patches_intact(st) and default_mpp_unchanged(st, mpp), force=force)


def add_arguments(p: argparse.ArgumentParser) -> None:
    sb.add_common_arguments(p)


def validate(args: argparse.Namespace) -> None:
    if not (math.isfinite(args.target_mpp) and args.target_mpp > 0) or args.patch_size < 8 \
            or not 0 <= args.overlap < args.patch_size:
        raise sb.UsageError("need a finite --target-mpp > 0, --patch-size >= 8 and 0 <= --overlap < --patch-size")
    if not 0 <= args.min_tissue_fraction <= 1:
        raise sb.UsageError("--min-tissue-fraction must be within [0, 1]")
    for flag in ("min_tissue_mm2", "min_hole_mm2"):
        value = getattr(args, flag, 0.0)
        if not (math.isfinite(value) and value >= 0):
            raise sb.UsageError(f"--{flag.replace('_', '-')} must be a finite number >= 0, got {value}")


def main(args: argparse.Namespace) -> int:
    import sys

    try:
        validate(args)
        slides = sb.resolve_inputs(args.input)
        mpp, table = mpp_overrides(args)
        sb.writable_out(args.out)
    except sb.UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return sb.EXIT_USAGE
    opts = PatchOptions.from_args(args)

    def run_one(slide: sb.Slide) -> sb.SlideResult:
        return run_patch_stage(args.out, slide, opts, MPPChoice(table.get(slide.slide_id), mpp), force=args.force)

    return sb.run_batch(args.out, "patch", slides, run_one, args.skip_errors,
                        {"options": dataclasses.asdict(opts)})
