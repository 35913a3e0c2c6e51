"""The sections of the run report. Each takes the run folder and returns an HTML fragment; a
missing input becomes a note naming the file and the command that makes it.

Run folder layout read here (what ``pathgen demo`` writes; every stage also runs on its own)::

    cohort/manifest.csv, expression.csv, families.json, slides/      pathgen make-demo-cohort
    features/<slide_id>.h5                                            pathgen patch + pathgen embed
    splits.json
    generator/fold<k>/train_summary.json, log.csv                     pathgen train-generator
    synth/synthesized.csv, synth/fold<k>/...                          pathgen synthesize
    generator_eval/metrics.json, fidelity.png                         pathgen evaluate-generator
    predictor/<model>/metrics.json                                    pathgen train-predictor
    evaluation/evaluation.json (or metrics.json), km_*.png            pathgen evaluate
    conformal/metrics.json, *.png                                     conformal stage of pathgen demo
    fairness/fairness.json, fairness.csv                              fairness stage of pathgen demo
    heatmaps/index.json, <case>/*.png                                 pathgen heatmap
    metrics.json, config.json                                         pathgen demo
"""
from __future__ import annotations

import platform
from pathlib import Path
from typing import Any, Callable

from pathgen.report.html import (details, esc, figure, fmt, fmt_ci, fmt_p, flatten, image, json_html, kv_table,
                                 missing, note, pre_json, read_json, table)

FIDELITY_KEYS = ("spearman_gene_median", "spearman_gene_iqr", "pct_genes_fdr05", "spearman_pooled", "nmae")
FIDELITY_LABELS = {"spearman_gene_median": "per-gene Spearman (median)", "spearman_gene_iqr": "IQR",
                   "pct_genes_fdr05": "% genes FDR<0.05", "spearman_pooled": "pooled Spearman (published)",
                   "nmae": "nMAE"}
VERSION_PACKAGES = ("pathgen", "torch", "numpy", "pandas", "scipy", "scikit-learn", "lifelines", "matplotlib",
                    "h5py", "tifffile", "openslide-python", "cucim", "fairlearn")


def _first(run: Path, *candidates: str) -> Path | None:
    return next((run / c for c in candidates if (run / c).is_file()), None)


def _pngs(folder: Path, pattern: str = "*.png") -> list[Path]:
    return sorted(folder.glob(pattern)) if folder.is_dir() else []


# --------------------------------------------------------------------------------------------
# headline numbers
# --------------------------------------------------------------------------------------------
def headline_section(run: Path) -> str:
    path = run / "metrics.json"
    if not path.is_file():
        return missing("metrics.json", "pathgen demo --out RUN", "The headline numbers are collected at the end of "
                       "the demo; the sections below read each stage's own files.")
    data = read_json(path)
    rows = flatten(data)
    head, rest = rows[:40], rows[40:]
    out = [kv_table(head)]
    if rest:
        out.append(details(f"{len(rest)} more numbers", kv_table(rest)))
    return "\n".join(out)


# --------------------------------------------------------------------------------------------
# cohort
# --------------------------------------------------------------------------------------------
def cohort_section(run: Path) -> str:
    import pandas as pd

    from pathgen.data.manifest import read_manifest

    path = run / "cohort" / "manifest.csv"
    if not path.is_file():
        return missing("cohort/manifest.csv", "pathgen make-demo-cohort --out RUN/cohort")
    man = read_manifest(path, require_survival=False)
    cases = man.cases()
    rows: list[tuple[str, Any]] = [("patients", len(cases)), ("slides", len(man.frame))]
    if "survival_months" in cases:
        t = pd.to_numeric(cases["survival_months"], errors="coerce")
        c = pd.to_numeric(cases["censorship"], errors="coerce")
        rows += [("with survival", int(t.notna().sum())), ("deaths observed (censorship = 0)", int((c == 0).sum())),
                 ("median follow-up, months", float(t.median()) if t.notna().any() else None)]
    parts = [kv_table(rows)]
    groups = _demographics(cases)
    if groups:
        parts.append("<h3>Labels and demographics</h3>")
        parts.append(table(["attribute", "group", "patients", "%"], groups))
    parts.append(_expression_summary(run / "cohort"))
    parts.append(_splits_summary(run / "splits.json"))
    parts.append(_features_summary(run / "features"))
    if man.warnings:
        parts.append(details(f"{len(man.warnings)} manifest warnings", "<ul>" + "".join(
            f"<li>{esc(w)}</li>" for w in man.warnings) + "</ul>"))
    return "\n".join(p for p in parts if p)


def _demographics(cases) -> list[tuple]:
    from pathgen.eval.fairness import age_band, sex_from_is_female

    n = len(cases)
    out = []
    cols = {}
    if "grade" in cases:
        cols["grade"] = cases["grade"].astype(object).where(cases["grade"].notna(), "missing")
    if "is_female" in cases:
        cols["sex"] = sex_from_is_female(cases["is_female"])
    if "age" in cases:
        cols["age band"] = age_band(cases["age"])
    if "race" in cases and cases["race"].notna().any():
        cols["race"] = cases["race"].fillna("missing")
    for attr, series in cols.items():
        for g, k in series.value_counts(sort=False).sort_index().items():
            out.append((attr, str(g), int(k), 100.0 * k / max(n, 1)))
    return out


def _expression_summary(cohort: Path) -> str:
    rows = []
    expr = cohort / "expression.csv"
    if expr.is_file():
        with open(expr) as fh:
            header = fh.readline().rstrip("\n").split(",")
            n_rows = sum(1 for _ in fh)
        rows.append(("expression table", f"{n_rows} rows x {len(header) - 1} genes ({expr.name})"))
    fam = cohort / "families.json"
    if fam.is_file():
        d = read_json(fam)
        f = d.get("families", d)
        names, genes = f.get("names", []), f.get("genes", [])
        if names:
            rows.append(("gene families", "; ".join(f"{n} ({len(g)})" for n, g in zip(names, genes)) if genes
                         else ", ".join(names)))
    return ("<h3>Expression</h3>" + kv_table(rows)) if rows else missing(
        "cohort/expression.csv", "pathgen make-demo-cohort --out RUN/cohort")


def _splits_summary(path: Path) -> str:
    if not path.is_file():
        return missing("splits.json", "pathgen train-generator ... (the first training job writes the run's splits)")
    folds = read_json(path).get("folds", [])
    parts = ("train", "val", "calibration", "test")
    rows = [[f.get("k")] + [len(f.get(p, []) or []) for p in parts] for f in folds]
    return "<h3>Patient-level splits</h3>" + table(["fold"] + list(parts), rows)


def _features_summary(folder: Path) -> str:
    files = sorted(folder.glob("*.h5")) if folder.is_dir() else []
    if not files:
        return missing("features/<slide_id>.h5", "pathgen patch ... && pathgen embed ... --out RUN")
    import h5py

    n_patches, dims, ps = [], set(), set()
    for f in files:
        try:
            with h5py.File(f, "r") as h:
                n_patches.append(int(h["features"].shape[0]) if "features" in h else 0)
                if "features" in h:
                    dims.add(int(h["features"].shape[1]))
                if "coords" in h and "patch_size_level0" in h["coords"].attrs:
                    ps.add(int(h["coords"].attrs["patch_size_level0"]))
        except OSError:
            continue
    import numpy as np

    rows = [("feature files", len(files)), ("patches in all", int(sum(n_patches))),
            ("patches per slide (median, min-max)",
             f"{int(np.median(n_patches))} ({min(n_patches)}-{max(n_patches)})" if n_patches else None),
            ("feature dimension", ", ".join(map(str, sorted(dims))) or None),
            ("patch side at level 0, px", ", ".join(map(str, sorted(ps))) or None)]
    return "<h3>Patch features</h3>" + kv_table(rows)


# --------------------------------------------------------------------------------------------
# generator
# --------------------------------------------------------------------------------------------
def generator_section(run: Path) -> str:
    path = run / "generator_eval" / "metrics.json"
    parts = []
    if not path.is_file():
        parts.append(missing("generator_eval/metrics.json", "pathgen evaluate-generator --model "
                             "RUN/generator/fold0/generator.pt --synthesized RUN/synth/synthesized.csv --manifest "
                             "RUN/cohort/manifest.csv --expression RUN/cohort/expression.csv --features RUN/features "
                             "--out RUN/generator_eval"))
    else:
        m = read_json(path)
        parts.append(note(f"{m.get('n_test', m.get('n_patients', '?'))} held-out patients "
                          f"({m.get('n_train', '?')} training). Spearman per gene is computed across held-out "
                          "patients; nMAE divides each gene's MAE by its range over TRAINING patients. Baselines: "
                          "the training mean (no slide information) and ridge regression on mean-pooled patch "
                          "features."))
        parts.append(fidelity_table(m))
        per_method = {"pathgen": m, **(m.get("baselines") or {})}
        families = list((m.get("families") or {}).keys())
        if families:
            from pathgen.report.figures import fidelity_bars

            parts.append(figure(fidelity_bars(per_method, families), "Per-gene Spearman and nMAE per family"))
        if m.get("definitions"):
            parts.append(details("metric definitions", json_html(m["definitions"])))
    fig = run / "generator_eval" / "fidelity.png"
    if fig.is_file():
        parts.append(image(fig, "Real vs synthesized expression per family (held-out patients)"))
    parts.append(_generator_training(run / "generator"))
    parts.append(_synthesis_summary(run / "synth"))
    return "\n".join(p for p in parts if p)


def fidelity_table(m: dict) -> str:
    """Rows: family x method (PathGen, then each baseline); columns: the fidelity metrics."""
    methods = [("PathGen", m)] + [(f"baseline: {k}", v) for k, v in (m.get("baselines") or {}).items()]
    names = list((m.get("families") or {}).keys()) + ["overall"]
    rows, groups = [], []
    for name in names:
        for j, (label, src) in enumerate(methods):
            blk = (src.get("overall") if name == "overall" else (src.get("families") or {}).get(name)) or {}
            if j == 0:
                groups.append(len(rows))
            extra = [k for k in blk if k not in FIDELITY_KEYS and k.startswith("n_genes")]
            rows.append([name if j == 0 else "", label] + [blk.get(k) for k in FIDELITY_KEYS]
                        + [blk.get(extra[0]) if extra else blk.get("n_genes")])
    return table(["family", "method"] + [FIDELITY_LABELS[k] for k in FIDELITY_KEYS] + ["genes"], rows,
                 group_rows=groups)


def _generator_training(folder: Path) -> str:
    import pandas as pd

    summaries = sorted(folder.glob("fold*/train_summary.json")) if folder.is_dir() else []
    if not summaries:
        return missing("generator/fold<k>/train_summary.json", "pathgen train-generator ... --out RUN/generator/fold0")
    keys = ("best_epoch", "best_val_spearman", "epochs_run", "n_train", "n_val", "seconds_per_epoch")
    rows, logs, configs = [], {}, {}
    for s in summaries:
        d = read_json(s)
        rows.append([s.parent.name] + [d.get(k) for k in keys])
        configs[s.parent.name] = d.get("config")
        log = s.parent / "log.csv"
        if log.is_file():
            logs[s.parent.name] = pd.read_csv(log)
    out = ["<h3>Generator training</h3>", table(["fold"] + list(keys), rows)]
    if logs:
        from pathgen.report.figures import training_curves

        fig = training_curves(logs)
        if fig is not None:
            out.append(figure(fig, "Generator training log per fold"))
    first = next((c for c in configs.values() if c), None)
    if first:
        out.append(details("generator configuration", json_html(first)))
    return "\n".join(out)


def _synthesis_summary(folder: Path) -> str:
    path = folder / "synthesized.csv"
    if not path.is_file():
        return missing("synth/synthesized.csv", "pathgen synthesize --model RUN/generator/fold0/generator.pt ... "
                       "--out RUN/synth/fold0 --save-attention (then gather the folds' held-out patients)")
    with open(path) as fh:
        header = fh.readline().rstrip("\n").split(",")
        n = sum(1 for _ in fh)
    folds = sorted(p.name for p in folder.glob("fold*") if p.is_dir())
    return "<h3>Synthesis</h3>" + kv_table([("synthesized patients (out-of-fold)", n),
                                             ("genes", len(header) - 1),
                                             ("per-fold outputs", ", ".join(folds) or None)])


# --------------------------------------------------------------------------------------------
# predictor
# --------------------------------------------------------------------------------------------
def predictor_section(run: Path) -> str:
    parts = []
    ev_path = _first(run, "evaluation/evaluation.json", "evaluation/metrics.json")
    if ev_path is None:
        parts.append(missing("evaluation/evaluation.json", "pathgen evaluate --run RUN/predictor/slide --run "
                             "RUN/predictor/multimodal --synthesized RUN/synth/synthesized.csv --out RUN/evaluation"))
    else:
        ev = read_json(ev_path)
        if isinstance(ev.get("arms"), dict):
            parts.append(arms_table(ev))
            if ev.get("comparisons"):
                parts.append("<h3>Paired comparisons</h3>")
                parts.append(comparisons_table(ev["comparisons"]))
            from pathgen.report.figures import forest

            rows = []
            for name, a in ev["arms"].items():
                b = a.get("c_index_boot") or {}
                rows.append((name, b.get("estimate", a.get("c_index_mean")), b.get("ci_low"), b.get("ci_high")))
            fig = forest(rows, "C-index (fold-averaged, 95% patient-bootstrap CI)")
            if fig is not None:
                parts.append(figure(fig, "C-index per arm"))
            rest = {k: v for k, v in ev.items() if k not in ("arms", "comparisons")}
            parts.append(details("all evaluation numbers", json_html(rest) + details("raw JSON", pre_json(ev))))
        else:
            parts.append(json_html(ev))
    models = sorted(run.glob("predictor/*/metrics.json"))
    if models:
        parts.append("<h3>Per-model cross-validation</h3>")
        parts.append(models_table(models))
    elif ev_path is None:
        parts.append(missing("predictor/<model>/metrics.json", "pathgen train-predictor --model multimodal ... "
                             "--out RUN/predictor/multimodal (and --model slide)"))
    return "\n".join(parts)


def arms_table(ev: dict) -> str:
    arms = ev["arms"]
    graded = any(a.get("grade_auc_macro_mean") is not None for a in arms.values())
    header = ["arm", "patients", "C-index mean ± sd (folds)", "C-index fold-avg [95% CI]"]
    if graded:
        header += ["grade AUC macro mean ± sd", "AUC fold-avg [95% CI]"]
    header += ["KM log-rank p"]
    rows = []
    for name, a in arms.items():
        b = a.get("c_index_boot") or {}
        row = [esc(name), esc(fmt(a.get("n"))), esc(f"{fmt(a.get('c_index_mean'))} ± {fmt(a.get('c_index_sd'))}"),
               esc(fmt_ci(b.get("estimate"), b.get("ci_low"), b.get("ci_high")))]
        if graded:
            g = a.get("grade_auc_macro_boot") or {}
            row += [esc(f"{fmt(a.get('grade_auc_macro_mean'))} ± {fmt(a.get('grade_auc_macro_sd'))}"),
                    esc(fmt_ci(g.get("estimate"), g.get("ci_low"), g.get("ci_high")))]
        row.append(esc(fmt_p((a.get("km") or {}).get("p_value"))))
        rows.append(row)
    n_common = ev.get("n_common_patients")
    lead = note(f"Every arm is scored on the same {n_common} test patients (folds {ev.get('folds')}).") \
        if n_common is not None else ""
    return lead + table(header, rows, raw=True)


def comparisons_table(comparisons: dict) -> str:
    rows = []
    for name, metrics in comparisons.items():
        for metric, d in (metrics or {}).items():
            if not isinstance(d, dict):
                continue
            rows.append([esc(name), esc(metric), esc(fmt_ci(d.get("delta"), d.get("ci_low"), d.get("ci_high"))),
                         esc(fmt_p(d.get("p_bootstrap"))), esc(fmt_p(d.get("p_wilcoxon"))),
                         esc(fmt_p(d.get("p_ttest")))])
    return table(["comparison", "metric", "Δ fold-avg [95% CI]", "p (paired bootstrap)", "p (Wilcoxon, folds)",
                  "p (paired t, folds)"], rows, raw=True)


def models_table(paths: list[Path]) -> str:
    keys = ("c_index", "c_index_ipcw", "ibs", "grade_auc_macro", "balanced_accuracy", "kappa_quadratic")
    rows = []
    for p in paths:
        m = read_json(p)
        mean, sd = m.get("mean") or {}, m.get("sd") or {}
        boot = (m.get("fold_averaged_bootstrap") or {}).get("c_index") or {}
        row = [esc(m.get("model", p.parent.name)), esc(fmt(m.get("n_folds"))), esc(fmt(m.get("n_patients_tested")))]
        row += [esc(f"{fmt(mean.get(k))} ± {fmt(sd.get(k))}") if mean.get(k) is not None else "–" for k in keys]
        row.append(esc(fmt_ci(boot.get("estimate"), boot.get("ci_low"), boot.get("ci_high"))))
        rows.append(row)
    return table(["model", "folds", "test patients"] + [f"{k} mean ± sd" for k in keys]
                 + ["C-index fold-avg [95% CI]"], rows, raw=True)


# --------------------------------------------------------------------------------------------
# KM, calibration / coverage, fairness
# --------------------------------------------------------------------------------------------
def km_section(run: Path) -> str:
    pngs = _pngs(run / "evaluation", "km*.png") + [p for p in _pngs(run / "predictor", "*/km*.png")]
    if not pngs:
        return missing("evaluation/km_<arm>.png", "pathgen evaluate ... --out RUN/evaluation")
    ev_path = _first(run, "evaluation/evaluation.json", "evaluation/metrics.json")
    captions = {}
    if ev_path is not None:
        import re

        for name, a in (read_json(ev_path).get("arms") or {}).items():
            km = a.get("km") or {}
            slug = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
            captions[f"km_{slug}.png"] = (f"{name}: low vs high predicted risk (each fold split at its training "
                                          f"median), log-rank p = {fmt_p(km.get('p_value'))}, n = "
                                          f"{km.get('n_low')} / {km.get('n_high')}")
    return "\n".join(image(p, captions.get(p.name, str(p.relative_to(run))), max_width=760) for p in pngs)


def calibration_section(run: Path) -> str:
    folder = run / "conformal"
    path = _first(run, "conformal/metrics.json", "conformal/conformal.json")
    parts = []
    if path is None:
        parts.append(missing("conformal/metrics.json", "pathgen demo --out RUN",
                             "Split-conformal grade sets and survival bounds are fitted on the calibration patients "
                             "(pathgen.eval.conformal)."))
    else:
        data = read_json(path)
        cov = [(k, v) for k, v in flatten(data) if any(w in k.lower() for w in ("coverage", "set_size", "width",
                                                                                   "alpha", "target"))]
        if cov:
            parts.append("<h3>Coverage at a glance</h3>" + kv_table(cov[:60]))
        parts.append(details("all conformal numbers", json_html(data), open_=not cov))
    pngs = _pngs(folder) + _pngs(run / "evaluation", "*calib*.png") + _pngs(run / "predictor", "*/*calib*.png")
    parts += [image(p, str(p.relative_to(run)), max_width=900) for p in pngs]
    if path is not None and not pngs:
        parts.append(note("No coverage or calibration plots (PNG) in conformal/."))
    return "\n".join(parts)


def fairness_section(run: Path) -> str:
    path = _first(run, "fairness/fairness.json")
    csv = _first(run, "fairness/fairness.csv")
    if path is None and csv is None:
        return missing("fairness/fairness.json", "pathgen demo --out RUN",
                       "The per-group audit comes from pathgen.eval.fairness.fairness_report.")
    if path is None:
        import pandas as pd

        df = pd.read_csv(csv)
        return table(list(df.columns), df.itertuples(index=False))
    data = read_json(path)
    if not isinstance(data.get("attributes"), dict):
        return json_html(data)
    parts = [note(f"{data.get('n_patients', '?')} test patients; groups under min_group_n = "
                  f"{data.get('min_group_n')} are flagged, not hidden, and left out of the headline gap; conformal "
                  f"alpha = {data.get('alpha')}.")]
    for attr, a in data["attributes"].items():
        groups = a.get("groups") or {}
        metrics = list(dict.fromkeys(m for g in groups.values() for m in (g.get("metrics") or {})))
        rows = []
        for gname, g in groups.items():
            flag = g.get("flag")
            row = [esc(gname), esc(fmt(g.get("n"))),
                   f'<span class="flag">{esc(flag)}</span>' if flag else ""]
            for m in metrics:
                v = (g.get("metrics") or {}).get(m) or {}
                row.append(esc(fmt_ci(v.get("value"), v.get("ci_low"), v.get("ci_high"))))
            rows.append(row)
        parts.append(f"<h3>{esc(attr)}</h3>" + table(["group", "n", "flag"] + metrics, rows, raw=True))
        gaps = a.get("gaps") or {}
        if gaps:
            parts.append(table(["metric", "largest gap", "max group", "min group", "gap incl. small groups", "note"],
                               ([m, d.get("gap"), d.get("max_group"), d.get("min_group"), d.get("gap_all_groups"),
                                 d.get("note")] for m, d in gaps.items())))
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------
# heatmaps, config
# --------------------------------------------------------------------------------------------
HEATMAP_KINDS = (("generator", "grid", "generator co-attention per family"),
                 ("generator", "topk", "top patches per family (generator co-attention)"),
                 ("predictor", "grid", "predictor co-attention"),
                 ("predictor", "risk", "distributed risk (per-patch predictor)"),
                 ("predictor", "grade", "distributed grade (per-patch predictor)"))


def heatmaps_section(run: Path, max_heatmap_cases: int = 4) -> str:
    folder = run / "heatmaps"
    index = folder / "index.json"
    cmd = ("pathgen heatmap --attention RUN/synth/fold0/attention --manifest RUN/cohort/manifest.csv "
           "--features RUN/features --out RUN/heatmaps")
    if not index.is_file():
        pngs = _pngs(folder, "**/*grid*.png")
        if not pngs:
            return missing("heatmaps/index.json", cmd)
        return "\n".join(image(p, str(p.relative_to(run))) for p in pngs[:max_heatmap_cases])
    data = read_json(index)
    cases = data.get("cases") or {}
    style = data.get("style") or {}
    parts = [note(f"{len(cases)} patients mapped; showing {min(len(cases), max_heatmap_cases)}. Scale: "
                  f"{style.get('scale')}, smoothing {style.get('smooth')} patch sides, colormap {style.get('cmap')}, "
                  f"generator blocks: {style.get('block')}. Every patch is painted at its HDF5 coordinates. All "
                  f"files: heatmaps/index.json.")]
    for case, entry in list(cases.items())[:max_heatmap_cases]:
        parts.append(f"<h3>{esc(case)}</h3>")
        for slide, sl in (entry.get("slides") or {}).items():
            if sl.get("note"):
                parts.append(note(f"{slide}: {sl['note']}"))
            for source, key, label in HEATMAP_KINDS:
                rel = (sl.get(source) or {}).get(key)
                if rel and (folder / rel).is_file():
                    parts.append(image(folder / rel, f"{slide}: {label}", max_width=1100))
            summ = (sl.get("predictor") or {}).get("summary")
            if summ:
                parts.append(note(f"{slide}: slide-level summary of the per-patch predictions (mean risk, rounded "
                                  f"mean grade): {summ}"))
        for n in entry.get("notes") or []:
            parts.append(note(n))
    return "\n".join(parts)


def config_section(run: Path) -> str:
    parts = []
    path = run / "config.json"
    if path.is_file():
        cfg = read_json(path)
        parts.append(kv_table(flatten(cfg, max_items=2000)))
        parts.append(details("config.json as written", pre_json(cfg)))
    else:
        parts.append(missing("config.json", "pathgen demo --out RUN", "It records the exact settings of every stage."))
    found = {}
    for p in sorted(run.glob("**/*.json"))[:400]:
        if p.name == "index.json" or p.stat().st_size > 5_000_000:
            continue
        try:
            d = read_json(p)
        except (ValueError, OSError):
            continue
        if isinstance(d, dict) and isinstance(d.get("versions"), dict):
            found[str(p.relative_to(run))] = d["versions"]
    if found:
        parts.append("<h3>Versions recorded by each stage</h3>" + json_html(found))
    parts.append("<h3>Environment of this report</h3>" + kv_table(_environment()))
    return "\n".join(parts)


def _environment() -> list[tuple[str, Any]]:
    from importlib import metadata

    rows: list[tuple[str, Any]] = [("python", platform.python_version()), ("platform", platform.platform())]
    for pkg in VERSION_PACKAGES:
        names = (pkg, f"{pkg}-cu13", f"{pkg}-cu12", f"{pkg}-cu11") if pkg == "cucim" else (pkg,)
        version = "not installed"
        for name in names:
            try:
                version = metadata.version(name)
                break
            except metadata.PackageNotFoundError:
                continue
        rows.append((pkg, version))
    return rows


SECTIONS: tuple[tuple[str, str, Callable[..., str]], ...] = (
    ("headline", "Headline numbers", headline_section),
    ("cohort", "Cohort summary", cohort_section),
    ("generator", "Generator fidelity per family, with baselines", generator_section),
    ("predictor", "Predictor: slide-only vs +real vs +synthesized expression", predictor_section),
    ("km", "Kaplan-Meier curves", km_section),
    ("calibration", "Calibration and conformal coverage", calibration_section),
    ("fairness", "Fairness by demographic group", fairness_section),
    ("heatmaps", "Heatmap gallery", heatmaps_section),
    ("config", "Exact configuration and versions", config_section),
)
