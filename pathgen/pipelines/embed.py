"""``pathgen embed``: patch features into CLAM/TRIDENT-compatible HDF5 bags.

Per slide: ``<out>/features/<slide_id>.h5`` (``features`` [N, D] float32, ``coords`` [N, 2] int64,
CLAM + TRIDENT attrs on ``coords``, encoder config on ``features``), optionally
``<out>/pt_files/<slide_id>.pt`` (MCAT/SurvPath loaders). Slides without a finished
``<out>/patches/<slide_id>.h5`` (same patch options) are patched first; with ``--coords-dir``,
existing CLAM (``<slide_id>.h5``) or TRIDENT (``<slide_id>_patches.h5``) coordinates are embedded
instead, read at the level and size their attributes name.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import zipfile
import time
from pathlib import Path

import numpy as np

from pathgen.pipelines import slide_batch as sb
from pathgen.pipelines.patch import MPPChoice, PatchOptions, mpp_overrides, patch_paths, run_patch_stage, validate
from pathgen.slides.errors import SlideError, slide_read_error


def feature_paths(out: Path, slide_id: str, save_pt: bool) -> list[Path]:
    paths = [out / "features" / f"{slide_id}.h5"]
    if save_pt:
        paths.append(out / "pt_files" / f"{slide_id}.pt")
    return paths


def coords_file(coords_dir: Path, slide_id: str) -> Path | None:
    """A slide's coordinates in a CLAM (``<id>.h5``) or TRIDENT (``<id>_patches.h5``) folder, if any."""
    for name in (f"{slide_id}.h5", f"{slide_id}_patches.h5"):
        if (coords_dir / name).is_file():
            return coords_dir / name
    return None


def embed_one(slide: sb.Slide, out: Path, encoder, opts: PatchOptions, mpp: MPPChoice,
              batch_size: int, num_workers: int, decode_device: str, save_pt: bool,
              coords_path: Path | None = None) -> dict:
    """Read one slide's patches (from its patches h5, or ``coords_path``: a pathgen, CLAM or TRIDENT
    coords file), embed them, write the bag atomically."""
    import torch
    from tqdm import tqdm

    from pathgen.features.h5io import check_coords_fit_slide, geometry_from_attrs, read_coords_h5, write_features_h5
    from pathgen.slides import open_slide
    from pathgen.slides.loader import PatchLoader
    from pathgen.utils.io import atomic_path

    coords_path = coords_path or patch_paths(out, slide.slide_id)[0]
    try:
        coords, attrs = read_coords_h5(coords_path)
    except (OSError, ValueError, KeyError) as exc:
        raise SlideError(coords_path, f"unreadable coords file ({' '.join(str(exc).split())[:120]})",
                         "re-create it with pathgen patch") from exc
    feats = np.empty((len(coords), encoder.out_dim), dtype=np.float32)
    t0 = time.perf_counter()
    with open_slide(slide.path, backend=opts.backend, device=decode_device, **mpp.open_kwargs()) as reader:
        check_coords_fit_slide(coords, attrs, reader.info(), slide.slide_id, coords_path)
        level, read_size, patch_size, attrs = geometry_from_attrs(attrs, reader.info(), slide.slide_id, coords_path)
        loader = PatchLoader(reader, coords, level, read_size, patch_size, batch_size=batch_size,
                             num_workers=num_workers, device=encoder.device)
        bar = tqdm(total=len(coords), desc=f"  {slide.slide_id[:30]}", unit="patch", leave=False, file=sys.stderr,
                   dynamic_ncols=True)
        i = 0
        it = iter(loader)
        while True:
            try:
                batch = next(it, None)
            except SlideError:
                raise
            except Exception as exc:  # noqa: BLE001 - a decode failure mid-slide is a bad-input error
                raise slide_read_error(slide.path, "reading patches", exc) from exc
            if batch is None:
                break
            _, x = batch
            f = encoder.encode(x)  # [B, D]
            feats[i:i + len(f)] = f.cpu().numpy()
            i += len(f)
            bar.update(len(f))
        bar.close()
    seconds = time.perf_counter() - t0
    if not np.isfinite(feats).all():
        raise SlideError(slide.path, "the encoder produced non-finite features",
                         "check the weights file; with AMP on a GPU try another encoder or --device cpu")
    paths = feature_paths(out, slide.slide_id, save_pt)
    write_features_h5(paths[0], feats, coords, attrs, encoder.config())
    if save_pt:
        with atomic_path(paths[1]) as tmp:
            torch.save(torch.from_numpy(feats), tmp)
    return {"n_patches": int(len(coords)), "outputs": [str(p.absolute()) for p in paths],
            "out_dim": int(encoder.out_dim),
            "patches_per_s": round(len(coords) / max(seconds, 1e-9), 1)}


def features_intact(st: dict) -> bool:
    from pathgen.features.h5io import h5_is_readable

    outs = st.get("outputs") or []
    # a .pt (torch.save's zip format) that was cut short has lost its central directory at the end
    return bool(outs) and h5_is_readable(outs[0], ("features", "coords")) and all(Path(o).is_file() for o in outs) \
        and all(zipfile.is_zipfile(o) for o in outs[1:] if str(o).endswith(".pt"))


def encoder_options(args: argparse.Namespace) -> dict:
    """``--model-kwargs`` / ``--mean`` / ``--std`` as ``get_encoder`` keyword arguments (unset ones left out)."""
    opts = {}
    if getattr(args, "model_kwargs", None):
        try:
            kw = json.loads(args.model_kwargs)
        except ValueError as exc:
            raise sb.UsageError(f"--model-kwargs is not JSON ({exc}); e.g. '{{\"init_values\": 1e-5}}'") from exc
        if not isinstance(kw, dict):
            raise sb.UsageError("--model-kwargs must be a JSON object, e.g. '{\"init_values\": 1e-5}'")
        opts["model_kwargs"] = kw
    for name in ("mean", "std"):
        v = getattr(args, name, None)
        if v:
            try:  # the encoder checks the values (three, finite, std > 0)
                opts[name] = tuple(float(c) for c in v.split(","))
            except ValueError as exc:
                raise sb.UsageError(f"--{name} needs three numbers R,G,B, got {v!r}") from exc
    return opts


def add_arguments(p: argparse.ArgumentParser) -> None:
    sb.add_common_arguments(p)
    p.add_argument("--encoder", required=True,
                   help="resnet50-trunc, stain-stats (weight-free) or timm:<model>")
    p.add_argument("--weights", default=None, help="local checkpoint for the encoder ('random': untrained)")
    p.add_argument("--model-kwargs", default=None, metavar="JSON",
                   help="timm:<model> only: timm.create_model arguments, e.g. UNI: "
                        "'{\"init_values\": 1e-5, \"dynamic_img_size\": true}'")
    p.add_argument("--mean", default=None, metavar="R,G,B",
                   help="timm:<model> only: normalisation mean (default ImageNet 0.485,0.456,0.406)")
    p.add_argument("--std", default=None, metavar="R,G,B",
                   help="timm:<model> only: normalisation std (default ImageNet 0.229,0.224,0.225)")
    p.add_argument("--batch-size", type=int, default=64, help="patches per batch (default 64)")
    p.add_argument("--num-workers", type=int, default=2, help="patch-reading threads (default 2)")
    p.add_argument("--device", default="auto", help="encoder device: auto (cuda if available), cpu, cuda, cuda:1...")
    p.add_argument("--decode-device", default="cpu", choices=("cpu", "cuda"),
                   help="where cuCIM decodes patches (cuda: straight into GPU memory; default cpu)")
    p.add_argument("--save-pt", action="store_true", help="also write pt_files/<slide_id>.pt (features only)")
    p.add_argument("--coords-dir", type=Path, default=None,
                   help="reuse existing coordinates instead of patching: a folder of CLAM (<slide_id>.h5) or "
                        "TRIDENT (<slide_id>_patches.h5) patch files")


def main(args: argparse.Namespace) -> int:
    import torch

    from pathgen.features import get_encoder
    from pathgen.features.encoder import file_sha256

    try:
        validate(args)
        if args.batch_size < 1 or args.num_workers < 0:
            raise sb.UsageError("need --batch-size >= 1 and --num-workers >= 0")
        slides = sb.resolve_inputs(args.input)
        mpp, table = mpp_overrides(args)
        device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise sb.UsageError("--device cuda asked but no CUDA GPU is visible; use --device cpu")
        if args.decode_device == "cuda" and not device.startswith("cuda"):
            raise sb.UsageError("--decode-device cuda needs the encoder on a GPU (--device cuda)")
        try:
            encoder = get_encoder(args.encoder, weights=args.weights, device=device, **encoder_options(args))
        except (ValueError, ImportError, FileNotFoundError) as exc:
            raise sb.UsageError(str(exc)) from exc
        sb.writable_out(args.out)
    except sb.UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return sb.EXIT_USAGE
    opts = PatchOptions.from_args(args)
    enc_cfg = encoder.config()
    decode_device = "cuda" if args.decode_device == "cuda" else "cpu"

    def run_one(slide: sb.Slide) -> sb.SlideResult:
        override = MPPChoice(table.get(slide.slide_id), mpp)
        config = {"patch": opts.config(override), "encoder": enc_cfg, "save_pt": args.save_pt}
        coords_path = None
        if args.coords_dir is not None:  # reuse CLAM/TRIDENT coordinates: no patching
            coords_path = coords_file(args.coords_dir, slide.slide_id)
            if coords_path is None:
                pres = sb.SlideResult(slide.slide_id, "failed", error=str(SlideError(
                    slide.path, f"no coords file {slide.slide_id}.h5 or {slide.slide_id}_patches.h5 in "
                                f"{args.coords_dir}", "patch it (drop --coords-dir) or fix --coords-dir")))
            else:
                st = coords_path.stat()
                config = {**config, "patch": {"coords_file": str(coords_path.resolve()), "size": st.st_size,
                                              "mtime_ns": st.st_mtime_ns, "backend": opts.backend}}
                pres = None
        else:
            pres = run_patch_stage(args.out, slide, opts, override, force=args.force)
            if pres.state != "failed":  # embed again exactly when the coordinates changed
                config = {**config, "patches_sha256": file_sha256(patch_paths(args.out, slide.slide_id)[0])}
            pres = pres if pres.state == "failed" else None
        if pres is not None:
            sb.write_status(args.out, "embed", slide.slide_id, {
                "slide_id": slide.slide_id, "path": str(slide.path), "stage": "embed", "state": "failed",
                "error": pres.error})
            return pres
        return sb.process_slide(
            args.out, "embed", slide, config, feature_paths(args.out, slide.slide_id, args.save_pt),
            lambda: embed_one(slide, args.out, encoder, opts, override, args.batch_size, args.num_workers,
                              decode_device, args.save_pt, coords_path),
            features_intact, force=args.force)

    return sb.run_batch(args.out, "embed", slides, run_one, args.skip_errors,
                        {"options": dataclasses.asdict(opts), "encoder": enc_cfg, "device": device})
