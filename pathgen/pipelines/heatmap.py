"""``pathgen heatmap``: co-attention heatmaps, top-k patch montages and distributed risk / grade maps.

Inputs: per-patient attention files (``pathgen synthesize --save-attention`` -> ``<out>/attention/``),
the manifest (slide files), optionally the feature files (patch size, and the patches a predictor
reads) and a predictor checkpoint (its co-attention and the "distributed" per-patch risk and grade).
Coordinates always come from the HDF5 files.

Outputs in ``--out``, per patient folder ``<case_id>/``:

- ``<slide_id>__attn__<family>.png``: the family's map over the thumbnail (thumbnail pixels, no axes);
- ``<slide_id>__attn_grid.png``: the slide and all families in one figure with a colour bar;
- ``<slide_id>__attn_topk.png``: the top-k patches per family, read from the slide;
- with ``--predictor``: ``__pred_attn__<family>.png`` / ``__pred_attn_grid.png`` (the predictor's
  co-attention), ``__risk.png`` and ``__grade.png`` (distributed maps) and ``distributed.csv``;

and ``index.json`` listing every file (paths relative to ``--out``), the style and any notes.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from pathgen.report.attention import AttentionMaps, attention_files, read_attention_h5
from pathgen.report.heatmaps import (HeatmapStyle, SlideCanvas, family_grid, save_png, single_map_figure,
                                     slide_canvas, slug, top_k_montage)
from pathgen.slides.errors import SlideError
from pathgen.utils.io import atomic_path, atomic_write_text


class SlideLookup:
    """Where a slide's file and its feature / patch HDF5 are, from the manifest and ``--features``."""

    def __init__(self, manifest_path: Path, features_dir: Path | None = None):
        from pathgen.data.manifest import read_manifest

        self.manifest = read_manifest(manifest_path, require_survival=False)
        frame = self.manifest.frame
        self.features_dir = Path(features_dir) if features_dir is not None else None
        self.rows = {str(r["slide_id"]): r for _, r in frame.iterrows()}

    def slide_path(self, slide_id: str) -> Path | None:
        row = self.rows.get(slide_id)
        if row is None or not isinstance(row.get("slide_path"), str) or not row.get("slide_path"):
            return None
        return self.manifest.resolve(row["slide_path"])

    def features_path(self, slide_id: str) -> Path | None:
        row = self.rows.get(slide_id)
        cand = []
        if row is not None and isinstance(row.get("features_path"), str) and row.get("features_path"):
            cand.append(self.manifest.resolve(row["features_path"]))
        if self.features_dir is not None:
            cand += [self.features_dir / f"{slide_id}.h5", self.features_dir / "h5_files" / f"{slide_id}.h5"]
        return next((p for p in cand if p.is_file()), None)

    def coord_attrs(self, slide_id: str) -> dict:
        p = self.features_path(slide_id)
        if p is None:
            return {}
        from pathgen.features.h5io import read_coords_h5

        return read_coords_h5(p)[1]


def _rel(path: Path, root: Path) -> str:
    return str(Path(path).relative_to(root))


def family_maps(canvas: SlideCanvas, weights: np.ndarray, coords: np.ndarray, families: list[str],
                style: HeatmapStyle, folder: Path, prefix: str, title: str, out_root: Path) -> dict:
    """One overlay PNG per family plus the grid figure; returns their relative paths."""
    overlays, files = {}, {}
    for j, name in enumerate(families):
        img, _ = canvas.paint(weights[:, j], coords, style)
        overlays[name] = img
        files[name] = _rel(save_png(folder / f"{canvas.slide_id}__{prefix}__{slug(name)}.png", img), out_root)
    grid = family_grid(canvas, overlays, folder / f"{canvas.slide_id}__{prefix}_grid.png", style, title=title)
    return {"families": files, "grid": _rel(grid, out_root)}


def distributed_maps(canvas: SlideCanvas, pred: dict, coords: np.ndarray, style: HeatmapStyle, folder: Path,
                     categories: list[str], out_root: Path, case_id: str) -> dict:
    """Risk and grade maps (raw units, colour bars in those units) for one slide."""
    raw = HeatmapStyle(scale="none", smooth=style.smooth, cmap=style.cmap, alpha=style.alpha,
                       thumb_size=style.thumb_size)
    files = {}
    risk = pred["risk"]
    lo, hi = float(np.min(risk)), float(np.max(risk))
    img, _ = canvas.paint(risk, coords, raw, vmin=lo, vmax=hi)
    files["risk"] = _rel(single_map_figure(canvas, img, folder / f"{canvas.slide_id}__risk.png",
                                           f"{case_id} / {canvas.slide_id}: per-patch risk (-sum S_k, higher = "
                                           "earlier death)", style.cmap, lo, hi, "risk"), out_root)
    if "expected_grade" in pred:
        C = pred["grade_probs"].shape[1]
        img, _ = canvas.paint(pred["expected_grade"], coords, raw, vmin=0.0, vmax=C - 1.0)
        labels = categories if len(categories) == C else [str(c) for c in range(C)]
        files["grade"] = _rel(single_map_figure(canvas, img, folder / f"{canvas.slide_id}__grade.png",
                                                f"{case_id} / {canvas.slide_id}: per-patch expected grade",
                                                style.cmap, 0.0, C - 1.0, "expected grade", ticks=range(C),
                                                ticklabels=labels), out_root)
    return files


class PredictorMaps:
    """A loaded predictor plus the expression it reads, for co-attention and distributed maps."""

    def __init__(self, ckpt_path: Path, expression_path: Path | None, device: str = "cpu"):
        from pathgen.models.predictor.checkpoint import load_predictor_checkpoint, predictor_from_checkpoint

        self.model, self.cfg, extra = predictor_from_checkpoint(load_predictor_checkpoint(ckpt_path), device)
        self.families = extra["families"]
        self.transform = extra["transform"]
        self.categories = extra["grade_categories"]
        self.expression = None
        if self.cfg.uses_expression:
            if expression_path is None:
                raise ValueError(f"{ckpt_path}: a {self.cfg.kind} predictor reads expression; pass --expression "
                                 "(the real expression.csv or a synthesized.csv)")
            from pathgen.data.expression import read_expression

            self.expression = read_expression(expression_path)
        self.expression_path = expression_path

    def expression_of(self, case_id: str):
        import torch

        if self.expression is None:
            return None
        from pathgen.data.transforms import family_matrix

        if case_id not in self.expression.index:
            raise ValueError(f"{self.expression_path}: no expression for patient {case_id}")
        x = family_matrix(self.expression, self.families.columns, [case_id]).to_numpy(np.float64)
        if self.transform is not None:
            x = self.transform.transform(x)
        return torch.from_numpy(np.asarray(x, dtype=np.float32)[0])

    def family_names(self, n_columns: int) -> list[str]:
        if self.cfg.kind == "multimodal" and len(self.cfg.family_names) == n_columns:
            return list(self.cfg.family_names)
        return ["patch attention (ABMIL)"] if n_columns == 1 else [f"family_{i}" for i in range(n_columns)]


def heatmaps_for_case(maps: AttentionMaps | None, case_id: str, slides: list[str], lookup: SlideLookup,
                      out: Path, style: HeatmapStyle, top_k: int, block: str, predictor: PredictorMaps | None,
                      tile_px: int = 96) -> dict:
    """Every map of one patient; returns its ``index.json`` entry."""
    import torch

    folder = out / case_id
    folder.mkdir(parents=True, exist_ok=True)
    entry: dict = {"slides": {}, "notes": []}
    weights = maps.combined(block) if maps is not None else None  # [n, F]
    dist_rows = []
    for s, slide_id in enumerate(slides):
        sl: dict = {}
        slide_path = lookup.slide_path(slide_id)
        rows = maps.slide_rows(s) if maps is not None else None
        feats = None
        if predictor is not None:
            fp = lookup.features_path(slide_id)
            if fp is None:
                entry["notes"].append(f"{slide_id}: no feature file (pass --features) - no predictor maps")
            else:
                from pathgen.features.h5io import read_features_h5

                feats, fcoords, _ = read_features_h5(fp)
        coords_for_canvas = maps.coords[rows] if rows is not None and len(rows) else \
            (fcoords if feats is not None else None)
        if coords_for_canvas is None or len(coords_for_canvas) == 0:
            entry["notes"].append(f"{slide_id}: no patches")
            continue
        canvas = slide_canvas(slide_path, slide_id, coords_for_canvas, lookup.coord_attrs(slide_id), style.thumb_size)
        if canvas.note:
            sl["note"] = canvas.note
        if rows is not None and len(rows):
            w, c = weights[rows], maps.coords[rows]
            sl["generator"] = family_maps(canvas, w, c, maps.families, style, folder, "attn",
                                          f"{case_id} / {slide_id}: generator co-attention ({style.scale} scaled)",
                                          out)
            if top_k > 0 and slide_path is not None and slide_path.is_file():
                named = {name: w[:, j] for j, name in enumerate(maps.families)}
                sl["generator"]["topk"] = _rel(top_k_montage(
                    slide_path, c, canvas.patch_size, named, top_k, folder / f"{slide_id}__attn_topk.png",
                    title=f"{case_id} / {slide_id}: top-{top_k} patches per family (generator co-attention)",
                    tile_px=tile_px), out)
            elif top_k > 0:
                sl.setdefault("note", "slide file not available: no top-k montage")
        if feats is not None:
            from pathgen.report.distributed import distributed_predictions, predictor_attention, slide_summary

            ft = torch.from_numpy(feats)
            expr = predictor.expression_of(case_id)
            att = predictor_attention(predictor.model, predictor.cfg, ft, expr)  # [n, F]
            pm = family_maps(canvas, att, fcoords, predictor.family_names(att.shape[1]), style, folder, "pred_attn",
                             f"{case_id} / {slide_id}: predictor co-attention ({style.scale} scaled)", out)
            pred = distributed_predictions(predictor.model, predictor.cfg, ft, expr)
            pm.update(distributed_maps(canvas, pred, fcoords, style, folder, predictor.categories, out, case_id))
            pm["summary"] = slide_summary(pred)
            sl["predictor"] = pm
            table = pd.DataFrame({"slide_id": slide_id, "x": fcoords[:, 0], "y": fcoords[:, 1], "risk": pred["risk"]})
            if "grade_probs" in pred:
                cats = predictor.categories if len(predictor.categories) == pred["grade_probs"].shape[1] else \
                    [str(i) for i in range(pred["grade_probs"].shape[1])]
                table["grade"] = [cats[i] for i in pred["grade"]]
                for j, cat in enumerate(cats):
                    table[f"prob_{cat}"] = pred["grade_probs"][:, j]
            dist_rows.append(table)
        entry["slides"][slide_id] = sl
    if dist_rows:
        with atomic_path(folder / "distributed.csv") as tmp:
            pd.concat(dist_rows).to_csv(tmp, index=False)
        entry["distributed_csv"] = _rel(folder / "distributed.csv", out)
    return entry


def _wanted_cases(spec: str | None) -> set[str] | None:
    if not spec:
        return None
    p = Path(spec)
    if p.is_file():
        return {ln.strip() for ln in p.read_text().splitlines() if ln.strip()}
    return {c.strip() for c in spec.split(",") if c.strip()}


def run_heatmaps(out: Path, manifest: Path, attention: Path | None = None, features: Path | None = None,
                 style: HeatmapStyle = HeatmapStyle(), top_k: int = 8, block: str = "mean",
                 predictor: Path | None = None, expression: Path | None = None, cases: str | None = None,
                 max_cases: int | None = None, device: str = "cpu", progress: bool = True,
                 overwrite: bool = False) -> dict:
    """Write every map (module docstring) and ``index.json``; returns the index.

    Resumable: a patient whose maps are complete has ``<case_id>/entry.json`` (written last,
    atomically) recording the settings and inputs it was drawn with; a re-run with the same ones
    skips that patient (``overwrite`` redraws everything). A patient whose maps fail is logged,
    listed under ``failed`` in the index, and the others go on.
    """
    if attention is None and predictor is None:
        raise ValueError("pathgen heatmap: give --attention (generator maps) and/or --predictor")
    out = Path(out)
    lookup = SlideLookup(manifest, features)
    pm = PredictorMaps(predictor, expression, device) if predictor is not None else None
    wanted = _wanted_cases(cases)
    jobs: list[tuple[str, Path | None, list[str]]] = []
    if attention is not None:
        for f in attention_files(attention):
            if wanted is None or f.stem in wanted:
                jobs.append((f.stem, f, []))
    else:
        for case in lookup.manifest.case_ids:
            if wanted is None or case in wanted:
                sids = [str(s) for s in lookup.manifest.slides_of(case)["slide_id"]]
                if any(lookup.features_path(s) for s in sids):
                    jobs.append((case, None, sids))
    if max_cases is not None:
        jobs = jobs[:max_cases]
    if not jobs:
        raise ValueError("pathgen heatmap: no patients to draw (check --cases, --attention and --features)")
    index = {"style": {"scale": style.scale, "smooth": style.smooth, "cmap": style.cmap, "alpha": style.alpha,
                       "thumb_size": style.thumb_size, "block": block, "top_k": top_k},
             "attention": str(attention) if attention else None, "predictor": str(predictor) if predictor else None,
             "expression": str(expression) if expression else None, "cases": {}}
    index["failed"], index["skipped_done"] = {}, 0
    for case, path, sids in tqdm(jobs, desc="heatmaps", unit="patient", disable=not progress):
        key = {"style": index["style"], "inputs": [_stamp(path), _stamp(predictor), _stamp(expression)],
               "slides": sids}
        done = out / case / "entry.json"
        if not overwrite and done.is_file():
            prev = json.loads(done.read_text())
            if prev.get("key") == key:
                index["cases"][case] = prev["entry"]
                index["skipped_done"] += 1
                continue
        try:
            try:
                maps = read_attention_h5(path) if path is not None else None
            except (OSError, KeyError) as e:
                raise ValueError(f"{path}: unreadable attention file ({e}); write it again with "
                                 "`pathgen synthesize --save-attention`") from e
            slides = maps.slide_ids if maps is not None else sids
            entry = heatmaps_for_case(maps, case, slides, lookup, out, style, top_k, block, pm)
        except (OSError, ValueError, KeyError, SlideError) as e:  # one bad slide or file skips its patient
            index["failed"][case] = f"{type(e).__name__}: {e}"
            print(f"heatmap: {case}: skipped ({e})", file=sys.stderr)
            continue
        atomic_write_text(done, json.dumps({"key": key, "entry": entry}, indent=1))
        index["cases"][case] = entry
    atomic_write_text(out / "index.json", json.dumps(index, indent=2))
    return index


def _stamp(path: Path | None) -> list | None:
    """Path, size and mtime of an input: a changed input redraws its patient's maps."""
    if path is None:
        return None
    st = Path(path).stat()
    return [str(Path(path).resolve()), st.st_size, st.st_mtime_ns]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--attention", type=Path, default=None,
                   help="a folder of <case_id>.h5 attention files (pathgen synthesize --save-attention) or one file")
    p.add_argument("--manifest", "--cohort", dest="manifest", type=Path, required=True,
                   help="cohort manifest CSV (slide_id, slide_path; relative paths resolve against its folder)")
    p.add_argument("--features", type=Path, default=None,
                   help="folder of <slide_id>.h5 feature files (patch size; the patches a --predictor reads)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--scale", choices=["rank", "percentile"], default="rank",
                   help="rank: rank within the slide; percentile: 1st-99th percentile min-max (default rank)")
    p.add_argument("--smooth", type=float, default=0.0, help="Gaussian sigma in patch sides (default 0: none)")
    p.add_argument("--cmap", default="coolwarm", help="matplotlib colormap (default coolwarm)")
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity in [0, 1] (default 0.5)")
    p.add_argument("--top-k", type=int, default=8, help="patches per family in the montage (0: no montage)")
    p.add_argument("--thumb-size", type=int, default=1024, help="thumbnail longest side in px (default 1024)")
    p.add_argument("--block", default="mean", help="generator block: mean | last | INDEX (default mean)")
    p.add_argument("--predictor", type=Path, default=None,
                   help="predictor checkpoint: adds its co-attention and distributed risk / grade maps")
    p.add_argument("--expression", type=Path, default=None,
                   help="expression the predictor reads (real expression.csv or synthesized.csv)")
    p.add_argument("--cases", default=None, help="comma-separated case ids or a file of them (default: all)")
    p.add_argument("--max-cases", type=int, default=None, help="draw at most this many patients")
    p.add_argument("--device", default="cpu")
    p.add_argument("--overwrite", action="store_true", help="redraw patients whose maps are already complete")


def main(args: argparse.Namespace) -> int:
    style = HeatmapStyle(scale=args.scale, smooth=args.smooth, cmap=args.cmap, alpha=args.alpha,
                         thumb_size=args.thumb_size)
    index = run_heatmaps(args.out, args.manifest, args.attention, args.features, style, args.top_k, args.block,
                         args.predictor, args.expression, args.cases, args.max_cases, args.device,
                         overwrite=args.overwrite)
    n_png = sum(1 for _ in Path(args.out).rglob("*.png"))
    print(f"{n_png} PNGs for {len(index['cases'])} patients in {args.out} ({index['skipped_done']} already complete, "
          f"{len(index['failed'])} failed; index: {args.out}/index.json)")
    for case, why in sorted(index["failed"].items()):
        print(f"  failed {case}: {why}", file=sys.stderr)
    return 2 if index["failed"] else 0
