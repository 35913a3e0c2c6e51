"""The demo cohort: real TCGA expression and survival, synthetic slides that encode the expression.

``make_demo_cohort`` picks ``n_cases`` patients of an MCAT-style table (default TCGA-BLCA from the
shared data), computes six gene-family programme scores per patient, and renders one small tiled
pyramidal TIFF per patient whose morphology is driven by those scores region by region
(``pathgen.data.demo_render``). The cohort therefore has real expression, real survival and real
grade, and a slide-to-expression signal that exists by construction, so the whole pipeline can be
exercised and its recovery measured.

Programme score of a family (documented in the cohort's README): over the chosen patients, each
of the family's genes is clipped to its 1st-99th percentile and z-scored (genes constant over the
chosen patients are left out); the score is the first principal component of that matrix, its
sign chosen so that it correlates positively with the family's mean z-score, standardised to mean 0
and standard deviation 1.

Outputs in ``DIR``: ``manifest.csv``, ``expression.csv``, ``family_scores.csv``, ``families.json``,
``slides/<slide_id>.tif``, ``README.md``, ``demo_config.json``. Re-running skips finished slides;
every file is written atomically.
"""
from __future__ import annotations

import functools
import json
import os
import time
import warnings
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from pathgen.data.demo_render import PROPERTIES, render_slide
from pathgen.data.expression import read_expression, read_table
from pathgen.data.families import GeneFamilies, load_gene_families
from pathgen.data.manifest import parse_grade
from pathgen.data.paths import BLCA_CLINICAL_RELPATH, BLCA_TABLE_RELPATH, shared_data_path
from pathgen.utils.io import atomic_path, atomic_write_text

MPP = 0.5
APP_MAG = 20
TILE = 256
CONFIG_VERSION = 1


@dataclass(frozen=True)
class DemoCohortConfig:
    """What defines a demo cohort; stored in ``demo_config.json`` (a re-run must match it)."""

    cases: int = 60
    seed: int = 0
    size: int = 2048
    table: str = ""
    clinical: str = ""
    signatures: str = ""
    min_low_grade_fraction: float = 0.2
    jpeg_quality: int = 90
    version: int = CONFIG_VERSION


def family_programme_scores(expression: pd.DataFrame, families: GeneFamilies) -> tuple[pd.DataFrame, dict]:
    """Per-patient programme score of each family (first principal component, standardised).

    Args:
        expression: samples x genes frame (the chosen patients only).
        families: matched gene families.

    Returns:
        ``(scores, info)``: scores [n_cases, n_families] indexed like ``expression`` with family-name
        columns; info per family: genes used and the share of variance the component explains.
    """
    scores, info = {}, {}
    for name, genes in zip(families.names, families.genes):
        x = expression.loc[:, list(genes)].to_numpy(np.float64)
        lo, hi = np.percentile(x, [1, 99], axis=0)
        x = np.clip(x, lo, hi)
        sd = x.std(axis=0)
        keep = sd > 1e-12
        if keep.sum() == 0:
            raise ValueError(f"family {name!r}: every gene is constant over the chosen patients")
        z = (x[:, keep] - x[:, keep].mean(axis=0)) / sd[keep]
        u, sv, _ = np.linalg.svd(z, full_matrices=False)
        pc = u[:, 0] * sv[0]
        if np.corrcoef(pc, z.mean(axis=1))[0, 1] < 0:
            pc = -pc
        scores[name] = (pc - pc.mean()) / pc.std()
        info[name] = {"genes_used": int(keep.sum()), "explained_variance": float(sv[0] ** 2 / (sv ** 2).sum())}
    return pd.DataFrame(scores, index=expression.index), info


@functools.lru_cache(maxsize=2)
def _load_source(table: str, mtime_ns: int, signatures: str):
    """Read the source table and match the families once per process (re-runs and tests reuse it).

    ``mtime_ns`` is part of the cache key so an edited table is read again. Callers must not mutate
    the returned frames.
    """
    raw = read_table(table)
    raw = raw.loc[:, [c for c in raw.columns if not str(c).startswith("Unnamed:")]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # repeated signature symbols: reported in families.json
        expr = read_expression(raw, on_nan="drop_genes")
        families, report = load_gene_families(expr.columns, signatures or None, source=Path(table).name)
    return raw, expr, families, report


def _clinical_grades(clinical_path: Path | None, required: bool = False) -> pd.Series | None:
    """Grades by case from a ``case_id, grade`` table. ``required`` (the user named the file): a
    missing file or missing columns are errors instead of "no grade"."""
    if clinical_path is None or not Path(clinical_path).exists():
        if required:
            raise FileNotFoundError(f"{clinical_path}: clinical table not found; fix: pass an existing case_id, "
                                    "grade table to --clinical, or drop --clinical")
        return None
    cl = read_table(clinical_path)
    if "grade" not in cl.columns or "case_id" not in cl.columns:
        if required:
            raise ValueError(f"{clinical_path}: needs columns case_id and grade, has {list(cl.columns)[:10]}; fix: "
                             "rename its columns or pass another --clinical")
        return None
    cl = cl.drop_duplicates("case_id").set_index("case_id")
    return pd.Series(parse_grade(cl["grade"].tolist(), source=str(clinical_path)), index=cl.index)


def select_cases(cases: pd.DataFrame, n: int, seed: int, min_low_grade_fraction: float = 0.2) -> list[str]:
    """Pick ``n`` patients reproducibly; the lowest grade is enriched to at least the given share.

    Args:
        cases: one row per eligible patient, indexed by case_id, with an optional ``grade`` column.
        n: number of patients.
        seed: random seed.
        min_low_grade_fraction: minimum share of the lowest grade category (when that many exist).
    """
    if n > len(cases):
        raise ValueError(f"asked for {n} demo cases but only {len(cases)} patients have complete expression, "
                         "survival and grade; lower --cases")
    rng = np.random.default_rng(seed)
    ids = np.array(sorted(cases.index))
    if "grade" in cases.columns and cases["grade"].notna().any():
        g = cases.loc[ids, "grade"]
        low = g.cat.categories[0] if hasattr(g, "cat") else sorted(g.dropna().unique())[0]
        low_ids = ids[(g == low).to_numpy()]
        n_low = min(len(low_ids), max(int(round(n * min_low_grade_fraction)),
                                      int(round(n * len(low_ids) / len(ids)))))
        chosen = list(rng.choice(low_ids, n_low, replace=False)) if n_low else []
        rest = np.array([c for c in ids if c not in set(chosen)])
        chosen += list(rng.choice(rest, n - n_low, replace=False))
    else:
        chosen = list(rng.choice(ids, n, replace=False))
    return sorted(chosen)


def write_pyramid_tiff(path: str | os.PathLike, rgb: np.ndarray, *, mpp: float = MPP, app_mag: int = APP_MAG,
                       tile: int = TILE, quality: int = 90, name: str = "") -> list[tuple[int, int]]:
    """Write an Aperio-style tiled pyramidal TIFF (JPEG tiles) with MPP in the description and tags.

    Page layout follows Aperio SVS: page 0 the full-resolution tiled image, page 1 a small stripped
    thumbnail, then tiled levels downsampled by 4. The ImageDescription holds ``MPP = <mpp>`` and
    ``AppMag = <mag>`` (read by OpenSlide, tifffile and cuCIM); X/YResolution (pixels per centimetre)
    carry the same MPP.

    Returns:
        ``[(width, height)]`` of the tiled levels.
    """
    import tifffile

    h, w = rgb.shape[:2]
    levels = [rgb]
    while len(levels) < 3 and min(levels[-1].shape[:2]) // 4 >= 128:
        prev = levels[-1]
        hh, ww = prev.shape[0] // 4 * 4, prev.shape[1] // 4 * 4
        levels.append(prev[:hh, :ww].reshape(hh // 4, 4, ww // 4, 4, 3).mean(axis=(1, 3)).round().astype(np.uint8))
    thumb_step = max(1, int(np.ceil(max(h, w) / 256)))
    thumb = np.ascontiguousarray(rgb[::thumb_step, ::thumb_step])
    head = f"Aperio Image Library pathgen-demo \r\n{w}x{h} [0,0 {w}x{h}] ({tile}x{tile}) JPEG/RGB Q={quality}"
    meta = f"|AppMag = {app_mag}|MPP = {mpp:g}" + (f"|Filename = {name}" if name else "")
    px_per_cm = 1e4 / mpp
    opts = dict(photometric="rgb", compression="jpeg", compressionargs={"level": quality}, tile=(tile, tile),
                resolutionunit="CENTIMETER", metadata=None)
    with atomic_path(path) as tmp:
        with tifffile.TiffWriter(tmp, bigtiff=False) as tw:
            tw.write(levels[0], description=head + meta, resolution=(px_per_cm, px_per_cm), **opts)
            tw.write(thumb, photometric="rgb", compression="jpeg", compressionargs={"level": quality},
                     description=f"Aperio Image Library pathgen-demo \r\n{w}x{h} -> {thumb.shape[1]}x{thumb.shape[0]}"
                                 f" - ", metadata=None, subfiletype=0)
            for lev in levels[1:]:
                ds = w / lev.shape[1]
                tw.write(lev, description=f"Aperio Image Library pathgen-demo \r\n{w}x{h} [0,0 {w}x{h}] "
                                          f"({tile}x{tile}) -> {lev.shape[1]}x{lev.shape[0]} JPEG/RGB Q={quality}"
                                          + meta, resolution=(px_per_cm / ds, px_per_cm / ds),
                         **opts)
    return [(lev.shape[1], lev.shape[0]) for lev in levels]


def _case_seed(seed: int, case_id: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(case_id.encode())])


def _render_one(job: tuple) -> tuple[str, dict]:
    """Worker: render and write one slide (skipped when it exists)."""
    slide_path, case_id, scores, size, seed, quality = job
    path = Path(slide_path)
    if path.exists():
        return case_id, {"skipped": True}
    t0 = time.perf_counter()
    rgb, info = render_slide(scores, size, _case_seed(seed, case_id))
    levels = write_pyramid_tiff(path, rgb, quality=quality, name=path.name)
    info.update(seconds=round(time.perf_counter() - t0, 3), levels=levels)
    return case_id, info


def _readme(cfg: DemoCohortConfig, families: GeneFamilies, score_info: dict, n_cases: int, grade_note: str,
            has_grade: bool, has_race: bool) -> str:
    race_note = ("from the table" if has_race else
                 "not in this table (nor elsewhere in the shared data for it), so the column is absent")
    sel_note = (f" and grade; the lowest grade is enriched to at least {cfg.min_low_grade_fraction:.0%} of the "
                "cases where enough exist (labels are unchanged, only the sampling is stratified)."
                if has_grade else ".")
    rows = "\n".join(f"| {n} | {p} | {score_info[n]['genes_used']} | {score_info[n]['explained_variance']:.2f} |"
                     for n, p in zip(families.names, PROPERTIES))
    return f"""# pathgen demo cohort

{n_cases} TCGA patients from `{Path(cfg.table).name}` with their **real** expression (`expression.csv`,
MCAT-style `<GENE>_rnaseq` columns, the table's values unchanged), **real** survival
(`survival_months`, `censorship` with 1 = censored) and demographics (`manifest.csv`), and one
**synthetic** slide each (`slides/<slide_id>.tif`). The slides are made so that their morphology
encodes the patient's expression: slide-to-expression signal exists by construction, so a pipeline
that reads slides and predicts expression can be checked for recovering it.

## How a slide encodes expression
1. Six gene-family programme scores per patient (`family_scores.csv`, families in `families.json`):
   over these {n_cases} patients each of the family's genes is clipped to its 1st-99th percentile and
   z-scored; the score is the first principal component of the family's genes (sign: positively
   correlated with the family's mean z-score), standardised to mean 0, sd 1.
2. Each family drives one property of the H&E-like rendering, region by region: local strength
   `z(x) = score * w(x) + 0.3 * n(x)`, with `w(x)` a smooth field in [0.4, 1.6] (some regions express
   the programme more than others) and `n(x)` smooth noise.

| family | property it scales | genes used | variance explained by the score |
|---|---|---|---|
{rows}

Colours follow a Beer-Lambert two-stain model (hematoxylin, eosin optical densities). Slides also have
white background around irregular tissue, stromal nuclei, a per-slide staining factor (+-6 %,
unrelated to expression) and, at random, a pen mark, an out-of-focus square or a tissue fold.
The signal is readable from mean-pooled per-patch colour and texture statistics (e.g. stain
optical densities, dark-pixel fraction, edge density); single patches are noisy by design.

## Slides
Tiled pyramidal TIFF in Aperio layout: JPEG tiles {TILE}x{TILE}, level 0 {cfg.size}x{cfg.size} px at
{MPP} um/px ({APP_MAG}x), a thumbnail page and levels downsampled by 4. MPP is stored in the
ImageDescription (`|AppMag = {APP_MAG}|MPP = {MPP}`) and as X/YResolution tags (pixels per centimetre).

## Labels
- `grade`: {grade_note}
- `race`: {race_note}
- Cases were drawn with seed {cfg.seed} among patients with complete family expression and survival{sel_note}

Made by `pathgen make-demo-cohort` (settings in `demo_config.json`). Licence of the underlying
tables: TCGA open access via mahmoodlab's GPL-3.0 research tables; research use only.
"""


def make_demo_cohort(out: str | os.PathLike, *, cases: int = 60, seed: int = 0, size: int = 2048,
                     table: str | os.PathLike | None = None, clinical: str | os.PathLike | None = None,
                     signatures: str | os.PathLike | None = None, workers: int | None = None,
                     min_low_grade_fraction: float = 0.2, jpeg_quality: int = 90, progress: bool = True) -> dict:
    """Build (or finish) a demo cohort in ``out``; see the module docstring.

    Args:
        out: output folder.
        cases: number of patients (one slide each).
        seed: selection and rendering seed.
        size: level-0 slide width = height in pixels.
        table: MCAT-style expression + survival table (default: TCGA-BLCA in the shared data).
        clinical: ``case_id, grade`` table (default: SurvPath's BLCA clinical file when ``table`` is
            the default; ``None`` otherwise, then the grade comes from a ``grade`` column of the table
            if any).
        signatures: gene-family signatures CSV (default MCAT's six).
        workers: rendering processes (default: up to 2).
        min_low_grade_fraction: see ``select_cases``.
        jpeg_quality: JPEG tile quality.
        progress: show a tqdm bar.

    Returns:
        A summary dict (paths, counts, timings).

    Raises:
        ValueError: ``out`` holds a cohort made with other settings, or too few eligible patients.
    """
    t_start = time.perf_counter()
    out = Path(out)
    default_table = table is None
    table = Path(table) if table is not None else shared_data_path(BLCA_TABLE_RELPATH)
    clinical_required = clinical is not None
    if clinical is None and default_table:
        clinical = shared_data_path(BLCA_CLINICAL_RELPATH, required=False)
    if size < 256:
        raise ValueError(f"--size {size} is too small: slides need at least one 256 px patch (size >= 256)")
    cfg = DemoCohortConfig(cases=cases, seed=seed, size=size, table=str(table),
                           clinical=str(clinical) if clinical else "", signatures=str(signatures or ""),
                           min_low_grade_fraction=min_low_grade_fraction, jpeg_quality=jpeg_quality)
    cfg_path = out / "demo_config.json"
    if cfg_path.exists():
        old = json.loads(cfg_path.read_text())
        diff = {k: (old.get(k), v) for k, v in asdict(cfg).items() if old.get(k) != v}
        # refused only once something was made: a first run that failed on its inputs made nothing
        if diff and any(out.glob("slides/*")) | (out / "manifest.csv").exists():
            raise ValueError(f"{out} holds a demo cohort made with other settings {diff}; use a new --out "
                             "folder or delete it")
    if cases < 1:
        raise ValueError(f"--cases must be >= 1, got {cases}")
    out.mkdir(parents=True, exist_ok=True)
    from pathgen import __version__

    raw, expr, families, report = _load_source(str(table), table.stat().st_mtime_ns, str(signatures or ""))
    if len(families) != 6:
        raise ValueError(f"the demo renderer maps exactly 6 families to morphology; {signatures or 'signatures'} "
                         f"gave {len(families)}")
    per_case = raw.drop_duplicates("case_id").set_index("case_id")
    need = ["survival_months", "censorship"]
    missing_cols = [c for c in need if c not in per_case.columns]
    if missing_cols:
        raise ValueError(f"{table}: no {missing_cols} columns; the demo cohort needs MCAT survival columns")
    eligible = per_case[per_case[need].notna().all(axis=1) & per_case.index.isin(expr.index)].copy()
    grades = _clinical_grades(Path(clinical), required=clinical_required) if clinical else None
    if grades is not None:
        grade_note = (f"the real clinical grade from `{Path(clinical).name}` (categories "
                      f"{list(grades.cat.categories) if hasattr(grades, 'cat') else sorted(grades.dropna().unique())}"
                      ", as coded there)")
        eligible["grade"] = grades.reindex(eligible.index)
        eligible = eligible[eligible["grade"].notna()]
        eligible["grade"] = pd.Categorical(eligible["grade"], categories=grades.cat.categories, ordered=True)
    elif "grade" in per_case.columns:
        eligible["grade"] = parse_grade(eligible["grade"].tolist(), source=str(table))
        eligible = eligible[eligible["grade"].notna()]
        grade_note = f"the `grade` column of `{table.name}`"
    else:
        grade_note = "not available (no clinical grade table); the column is absent"
    chosen = select_cases(eligible, cases, seed, min_low_grade_fraction)
    # the inputs are read and the patients chosen: from here on this folder holds this configuration
    atomic_write_text(cfg_path, json.dumps({**asdict(cfg), "pathgen": __version__}, indent=2))

    scores, score_info = family_programme_scores(expr.loc[chosen], families)
    slide_ids = {c: f"{c}-DEMO-{seed}" for c in chosen}
    manifest = pd.DataFrame({
        "case_id": chosen,
        "slide_id": [slide_ids[c] for c in chosen],
        "slide_path": [f"slides/{slide_ids[c]}.tif" for c in chosen],
        "survival_months": per_case.loc[chosen, "survival_months"].astype(float).to_numpy(),
        "censorship": per_case.loc[chosen, "censorship"].astype(int).to_numpy(),
    })
    for col in ("age", "is_female", "oncotree_code", "site"):
        if col in per_case.columns:
            manifest[col] = per_case.loc[chosen, col].to_numpy()
    if "grade" in eligible.columns:
        manifest["grade"] = eligible.loc[chosen, "grade"].astype(str).to_numpy()
    if "race" in per_case.columns:
        manifest["race"] = per_case.loc[chosen, "race"].to_numpy()

    rna_cols = [c for c in raw.columns if str(c).endswith("_rnaseq")]
    expression_out = per_case.loc[chosen, rna_cols].reset_index()
    with atomic_path(out / "expression.csv") as tmp:
        expression_out.to_csv(tmp, index=False)
    with atomic_path(out / "family_scores.csv") as tmp:
        scores.rename_axis("case_id").to_csv(tmp)
    atomic_write_text(out / "families.json", json.dumps({
        "families": families.to_dict(), "match_report": report.to_dict(),
        "properties": dict(zip(families.names, PROPERTIES)), "score": score_info,
        "score_method": "PC1 of the family's clipped (1st-99th pct) z-scored genes over the chosen cases, "
                        "sign aligned with the family mean, standardised"}, indent=2))

    jobs = [(str(out / "slides" / f"{slide_ids[c]}.tif"), c, scores.loc[c].to_numpy(np.float32), size, seed,
             jpeg_quality) for c in chosen]
    todo = [j for j in jobs if not Path(j[0]).exists()]
    n_workers = max(1, min(workers or min(2, os.cpu_count() or 1), len(todo) or 1))
    infos: dict[str, dict] = {}
    t_render = time.perf_counter()
    bar = tqdm(total=len(todo), desc="demo slides", unit="slide", disable=not progress or not todo)
    if n_workers == 1 or len(todo) <= 1:
        for j in todo:
            cid, info = _render_one(j)
            infos[cid] = info
            bar.update()
    else:
        import multiprocessing as mp

        # the workers only use numpy/scipy/tifffile, so forking is safe and skips re-importing
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        with ProcessPoolExecutor(n_workers, mp_context=ctx) as pool:
            for cid, info in pool.map(_render_one, todo, chunksize=1):
                infos[cid] = info
                bar.update()
    bar.close()
    render_seconds = time.perf_counter() - t_render

    artefacts = {c: ",".join(infos[c].get("artefacts", [])) for c in infos}
    with atomic_path(out / "manifest.csv") as tmp:
        manifest.to_csv(tmp, index=False)
    atomic_write_text(out / "README.md", _readme(cfg, families, score_info, len(chosen), grade_note,
                                                      "grade" in manifest.columns, "race" in manifest.columns))
    summary = {
        "out": str(out), "cases": len(chosen), "slides_rendered": len(todo), "slides_skipped": len(jobs) - len(todo),
        "render_seconds": round(render_seconds, 2), "total_seconds": round(time.perf_counter() - t_start, 2),
        "workers": n_workers, "size": size, "family_sizes": dict(zip(families.names, families.sizes)),
        "artefacts": artefacts,
    }
    return summary
