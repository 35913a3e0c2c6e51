"""CLAM/TRIDENT-compatible HDF5 bags: ``coords`` [N, 2] int64 (level-0 x, y) and ``features`` [N, D] float32.

``coords.attrs`` carries both tools' patching metadata so either loader reads our files:

* CLAM (``Whole_Slide_Bag_FP``): ``patch_size`` (side read at ``patch_level``), ``patch_level``,
  ``downsample`` ([dx, dy] of that level), ``level_dim`` and ``downsampled_level_dim`` ([w, h] of
  that level), ``name``;
* TRIDENT (``read_coords``): ``patch_size_level0``, ``level0_magnification``,
  ``target_magnification``, ``overlap``, ``level0_width``, ``level0_height``, ``name``;
* ours: ``target_patch_size`` (output side), ``embed_magnification`` (its magnification), ``mpp``,
  ``target_mpp``, ``effective_mpp``, ``backend``.

Both tools name an attribute ``patch_size`` but mean different things (CLAM: pixels read at
``patch_level``; TRIDENT: pixels at ``target_magnification``, so that it reads
``patch_size * level0_magnification / target_magnification`` level-0 pixels). We write CLAM's
meaning and, to keep TRIDENT's arithmetic right, ``target_magnification`` = the magnification of
``patch_level`` (``level0_magnification * patch_size / patch_size_level0``): both tools then re-read
exactly the region we embedded. When the pyramid has no level at the target resolution (a 40x slide
patched at 20x reads level 0 and resizes 512 -> 256), that value is the read level's (40), not
the embedding's; the embedding's own resolution is in ``target_patch_size``, ``target_mpp``,
``effective_mpp`` and ``embed_magnification``.

``features.attrs``: ``encoder``, ``out_dim``, ``name`` and ``config`` (JSON: input size,
normalisation, weights path and SHA-256, pathgen version). Every file is written atomically.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np

from pathgen.utils.io import atomic_path


def coords_attrs(slide_id: str, reader_info: dict, plan) -> dict:
    """The union of CLAM and TRIDENT ``coords`` attributes for one slide and patch plan.

    Args:
        slide_id: file name without extension.
        reader_info: ``SlideReader.info()`` (dimensions, level dimensions, MPP, objective power).
        plan: the ``PatchPlan`` used.
    """
    from pathgen import __version__
    from pathgen.slides.grid import magnification_from_mpp

    w0, h0 = reader_info["dimensions"]
    lw, lh = reader_info["level_dimensions"][plan.level]
    objective = reader_info.get("objective_power")
    level0_mag = float(objective) if objective else round(magnification_from_mpp(plan.mpp), 2)
    return {
        # CLAM
        "patch_size": np.int64(plan.read_size),
        "patch_level": np.int64(plan.level),
        "downsample": np.array([w0 / lw, h0 / lh], dtype=np.float64),
        "level_dim": np.array([lw, lh], dtype=np.int64),
        "downsampled_level_dim": np.array([lw, lh], dtype=np.int64),
        "name": slide_id,
        # TRIDENT
        "patch_size_level0": np.int64(plan.patch_size_level0),
        "level0_magnification": np.float64(level0_mag),
        "target_magnification": np.float64(round(level0_mag * plan.read_size / plan.patch_size_level0, 4)),
        "overlap": np.int64(plan.overlap),
        "level0_width": np.int64(w0),
        "level0_height": np.int64(h0),
        # pathgen
        "target_patch_size": np.int64(plan.patch_size),
        "embed_magnification": np.float64(round(level0_mag * plan.patch_size / plan.patch_size_level0, 4)),
        "mpp": np.float64(plan.mpp),
        "target_mpp": np.float64(plan.target_mpp),
        "effective_mpp": np.float64(plan.effective_mpp),
        "backend": str(reader_info.get("backend", "")),
        "pathgen_version": __version__,
    }


def geometry_from_attrs(attrs: dict, reader_info: dict, slide_id: str,
                        path: str | os.PathLike = "coords") -> tuple[int, int, int, dict]:
    """How to re-read the patches of a coords file written by pathgen, CLAM or TRIDENT.

    Args:
        attrs: the ``coords`` attributes.
        reader_info: ``SlideReader.info()`` of the slide.
        slide_id: for the ``name`` attribute.
        path: the coords file, for error messages.

    Returns:
        ``(level, read_size, patch_size, attrs)``: read ``read_size`` px squares at ``level``, resize
        to ``patch_size``; ``attrs`` completed with whatever CLAM/TRIDENT attributes were missing.

    Raises:
        SlideError: the attributes say neither level nor level-0 size, or name a level the slide lacks.
    """
    from pathgen.slides.errors import SlideError
    from pathgen.slides.grid import magnification_from_mpp

    a = dict(attrs)
    w0, h0 = reader_info["dimensions"]
    if "patch_level" in a:  # pathgen or CLAM: patch_size is read at patch_level
        level, read = int(a["patch_level"]), int(a["patch_size"])
        out = int(a.get("target_patch_size", read))
    elif "patch_size_level0" in a:  # TRIDENT: patch_size is at the target magnification
        size0, out = int(a["patch_size_level0"]), int(a["patch_size"])
        # read from the coarsest level that still has at least `out` pixels across the patch
        # (TRIDENT does the same; level 0 would decode up to 16x more pixels on a 40x slide at 10x)
        downs = [float(d) for d in reader_info.get("level_downsamples") or [1.0]]
        level = max((i for i, d in enumerate(downs) if d <= size0 / max(out, 1) * (1 + 1e-3)),
                    key=lambda i: downs[i], default=0)
        read = int(round(size0 / downs[level]))
    else:
        raise SlideError(path, "coords attributes have neither patch_level (CLAM) nor patch_size_level0 (TRIDENT)",
                         "re-create the coordinates with pathgen patch, CLAM or TRIDENT")
    if not 0 <= level < len(reader_info["level_dimensions"]):
        raise SlideError(path, f"coords use pyramid level {level} but the slide has "
                               f"{len(reader_info['level_dimensions'])}", "patch this slide again with pathgen patch")
    lw, lh = reader_info["level_dimensions"][level]
    size0 = int(a.get("patch_size_level0", round(read * reader_info["level_downsamples"][level])))
    a.update(patch_level=np.int64(level), patch_size=np.int64(read), target_patch_size=np.int64(out), name=slide_id)
    a.setdefault("downsample", np.array([w0 / lw, h0 / lh]))
    a.setdefault("level_dim", np.array([lw, lh], dtype=np.int64))
    a.setdefault("downsampled_level_dim", np.array([lw, lh], dtype=np.int64))
    a.setdefault("patch_size_level0", np.int64(size0))
    a.update(level0_width=np.int64(w0), level0_height=np.int64(h0))  # the slide read, never the coords file's
    a.setdefault("overlap", np.int64(0))
    mag0 = a.get("level0_magnification") or reader_info.get("objective_power")
    if not mag0 and reader_info.get("mpp"):
        mag0 = round(magnification_from_mpp(reader_info["mpp"]), 2)
    if mag0:
        a.setdefault("level0_magnification", np.float64(mag0))
        mag0 = float(a["level0_magnification"])
        # patch_size now has CLAM's meaning (read at patch_level): TRIDENT's arithmetic needs the read
        # level's magnification (see the module docstring)
        a["target_magnification"] = np.float64(round(mag0 * read / size0, 4))
        a["embed_magnification"] = np.float64(round(mag0 * out / size0, 4))
    return level, read, out, a


def check_coords_fit_slide(coords: np.ndarray,  # [N, 2] int64
                           attrs: dict, reader_info: dict, slide_id: str, path: str | os.PathLike = "coords") -> None:
    """Check that coordinates read from ``path`` belong to the slide ``reader_info`` describes.

    Every top-left ``(x, y)`` must lie inside the slide's level-0 bounds, and sizes the file
    records (TRIDENT's ``level0_width``/``level0_height``, CLAM's ``level_dim`` at ``patch_level``)
    must match the slide. A ``name`` attribute naming another slide only warns (files get renamed).

    Raises:
        SlideError: coordinates outside the slide or recorded sizes of another slide (names ``path``).
    """
    from pathgen.slides.errors import SlideError

    fix = (f"use the coordinates made for {slide_id} (check --coords-dir and the file names) or drop "
           "--coords-dir to patch the slide")
    w0, h0 = (int(v) for v in reader_info["dimensions"])
    recorded = []
    if "level0_width" in attrs and "level0_height" in attrs:
        recorded.append(("level-0 size", [int(attrs["level0_width"]), int(attrs["level0_height"])], [w0, h0]))
    levels = reader_info["level_dimensions"]
    if "level_dim" in attrs and "patch_level" in attrs and 0 <= int(attrs["patch_level"]) < len(levels):
        level = int(attrs["patch_level"])
        recorded.append((f"level-{level} size", [int(v) for v in np.ravel(attrs["level_dim"])],
                         [int(v) for v in levels[level]]))
    for what, theirs, ours in recorded:
        if theirs != ours:
            raise SlideError(path, f"coords were made for a slide whose {what} is {theirs[0]}x{theirs[1]}, but "
                                   f"{slide_id} is {ours[0]}x{ours[1]} (name attribute {attrs.get('name')!r})", fix)
    if len(coords):
        outside = (coords[:, 0] < 0) | (coords[:, 0] >= w0) | (coords[:, 1] < 0) | (coords[:, 1] >= h0)
        if outside.any():
            i = int(np.flatnonzero(outside)[0])
            raise SlideError(path, f"{int(outside.sum())} of {len(coords)} patch corners lie outside {slide_id} "
                                   f"({w0}x{h0} at level 0), e.g. row {i}: {coords[i].tolist()}", fix)
    name = str(attrs.get("name", "") or "")
    if name and slide_id not in (Path(name).name, os.path.splitext(Path(name).name)[0]):
        warnings.warn(f"{path}: name attribute {name!r} is not {slide_id!r}; the coordinates fit the slide, so "
                      "they are used (check --coords-dir if that is unexpected)", UserWarning, stacklevel=2)


def _write_coords(f, coords: np.ndarray, attrs: dict) -> None:
    coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
    ds = f.create_dataset("coords", data=coords)
    for k, v in attrs.items():
        ds.attrs[k] = v


def write_patches_h5(path: str | os.PathLike, coords: np.ndarray,  # [N, 2] int64
                     attrs: dict, tissue_fraction: np.ndarray | None = None) -> None:  # [N] float32
    """Write ``patches/<slide_id>.h5`` (CLAM layout: ``coords`` + attrs; plus ``tissue_fraction``)."""
    import h5py

    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            _write_coords(f, coords, attrs)
            if tissue_fraction is not None:
                f.create_dataset("tissue_fraction", data=np.asarray(tissue_fraction, dtype=np.float32))


def write_features_h5(path: str | os.PathLike, features: np.ndarray,  # [N, D] float32
                      coords: np.ndarray,  # [N, 2] int64
                      attrs: dict, encoder_config: dict) -> None:
    """Write ``features/<slide_id>.h5`` with ``features``, ``coords`` and both tools' attributes."""
    import h5py

    from pathgen import __version__

    features = np.asarray(features, dtype=np.float32)
    if features.ndim != 2 or len(features) != len(coords):
        raise ValueError(f"{path}: features {features.shape} do not match coords {np.shape(coords)}")
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            ds = f.create_dataset("features", data=features)
            ds.attrs["encoder"] = str(encoder_config.get("encoder", ""))
            ds.attrs["out_dim"] = np.int64(features.shape[1])
            ds.attrs["name"] = str(attrs.get("name", ""))
            ds.attrs["config"] = json.dumps({**encoder_config, "pathgen_version": __version__}, sort_keys=True)
            _write_coords(f, coords, attrs)


def read_coords_h5(path: str | os.PathLike) -> tuple[np.ndarray, dict]:
    """``coords`` [N, 2] int64 and their attrs from a CLAM, TRIDENT or pathgen h5.

    Raises:
        ValueError: no ``coords`` dataset.
        SlideError: ``coords`` is not ``[N, 2]`` finite whole numbers (names the file and the fix).
    """
    import h5py

    from pathgen.slides.errors import SlideError

    with h5py.File(path, "r") as f:
        if "coords" not in f:
            raise ValueError(f"{path}: no 'coords' dataset; fix: point to a patches h5 written by pathgen patch, "
                             "CLAM or TRIDENT")
        ds = f["coords"]
        raw, attrs = np.asarray(ds[:]), {k: _plain(v) for k, v in ds.attrs.items()}
    fix = "re-create the coordinates with pathgen patch, CLAM or TRIDENT"
    if raw.ndim != 2 or raw.shape[1] != 2:
        raise SlideError(path, f"coords must be [N, 2] level-0 (x, y), got shape {list(raw.shape)}", fix)
    if raw.dtype.kind not in "iuf":
        raise SlideError(path, f"coords must be numbers, got dtype {raw.dtype}", fix)
    if raw.dtype.kind == "f":
        bad = ~(np.isfinite(raw) & (raw == np.round(raw))).all(axis=1)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise SlideError(path, f"coords must be finite whole pixel positions; row {i} is {raw[i].tolist()} "
                                   f"({int(bad.sum())} bad rows)", fix)
    return raw.astype(np.int64), attrs


def read_features_h5(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, dict]:
    """``features`` [N, D] float32, ``coords`` [N, 2] int64 and the ``features`` attrs (``config`` parsed)."""
    import h5py

    with h5py.File(path, "r") as f:
        feats = np.asarray(f["features"][:], dtype=np.float32)
        coords = np.asarray(f["coords"][:], dtype=np.int64)
        attrs = {k: _plain(v) for k, v in f["features"].attrs.items()}
    if "config" in attrs:
        attrs["config"] = json.loads(attrs["config"])
    return feats, coords, attrs


def h5_is_readable(path: str | os.PathLike, datasets: tuple[str, ...]) -> bool:
    """True when ``path`` opens and holds ``datasets`` with matching first dimensions."""
    import h5py

    if not Path(path).is_file():
        return False
    try:
        with h5py.File(path, "r") as f:
            lens = {len(f[d]) for d in datasets}
            return len(lens) == 1
    except Exception:  # noqa: BLE001 - any failure to read means "not finished"
        return False


def _plain(v):
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    return v
