"""``pathgen evaluate``: slide-only vs slide + real vs slide + synthesized expression, with statistics.

Arms come from ``train-predictor`` runs and their per-patient predictions:

- a ``--model slide`` run gives **slide-only** (input mode ``none``);
- a ``--model multimodal`` run gives **slide+real** (its test predictions on real expression) and,
  with synthesized tables, **slide+synth**: each fold's checkpoint re-run on that fold's test
  patients with their synthesized expression, transformed with the fold's TRAINING transform
  (stored in the checkpoint), never refitted on synthesized values;
- a ``--model expression`` run gives **expression (real)** and, with synthesized tables,
  **expression (synth)**.

Every arm is scored on the same patients (the test patients present in all arms, per fold).
Per arm: per-fold C-index (and grade AUC macro when graded), mean +- sd over folds, and the
fold-averaged metric with a patient-bootstrap 95% CI. Per pair of arms (synth vs slide-only,
synth vs real, real vs slide-only): Wilcoxon signed-rank and paired t-test across folds, and the
paired patient bootstrap of the fold-averaged metric difference, with p-values. Kaplan-Meier
curves of predicted low/high risk (each fold split at the median risk of ITS TRAINING patients,
from the same model on real inputs) with the log-rank p-value, as PNG.

Outputs in ``--out``: ``evaluation.json``, ``evaluation.md``, ``km_<arm>.png``,
``predictions_<arm>.csv`` for re-computed arms.
"""
from __future__ import annotations

import argparse
import json
import re
import warnings
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from pathgen.data.bags import PatientBags
from pathgen.data.expression import read_expression
from pathgen.eval.metrics import auc_macro, c_index
from pathgen.eval.stats import holm, km_risk_groups, paired_bootstrap, paired_fold_tests
from pathgen.models.predictor.checkpoint import load_predictor_checkpoint, predictor_from_checkpoint
from pathgen.pipelines.cohort import Cohort, load_cohort
from pathgen.pipelines.synthesize import PROVENANCE_NAME
from pathgen.pipelines.predictor_metrics import (FOLD_MEAN_AUC_MACRO, FOLD_MEAN_C_INDEX, bootstrap_summary,
                                                 prob_columns, survival_arrays)
from pathgen.pipelines.train_predictor import (_clean, make_loader, prediction_frame, resolve_device, run_model)
from pathgen.utils.io import atomic_path, atomic_write_text

ARM_NAMES = {("slide", "none"): "slide-only", ("multimodal", "real"): "slide+real",
             ("multimodal", "synth"): "slide+synth", ("expression", "real"): "expression (real)",
             ("expression", "synth"): "expression (synth)"}
COMPARISONS = (("slide+synth", "slide-only"), ("slide+synth", "slide+real"), ("slide+real", "slide-only"),
               ("expression (synth)", "expression (real)"))


# --------------------------------------------------------------------------------------------
# runs and arms
# --------------------------------------------------------------------------------------------
def load_run(run_dir: str | Path) -> dict:
    """``run.json``, ``metrics.json`` and ``predictions.csv`` of a ``train-predictor`` run."""
    run_dir = Path(run_dir)
    for name in ("run.json", "metrics.json", "predictions.csv"):
        if not (run_dir / name).exists():
            raise FileNotFoundError(f"{run_dir / name} missing: is {run_dir} a finished `pathgen train-predictor` "
                                    "run folder?")
    run = json.loads((run_dir / "run.json").read_text())
    preds = pd.read_csv(run_dir / "predictions.csv", dtype={"case_id": str, "grade": str}, keep_default_na=False,
                        na_values=[""])
    return {"dir": run_dir, "run": run, "metrics": json.loads((run_dir / "metrics.json").read_text()),
            "predictions": preds, "model": run["model"], "categories": run.get("grade_categories", [])}


def cohort_from_run(run: dict, features: str | Path | None = None) -> Cohort:
    """Rebuild the cohort a run was trained on from its ``run.json`` inputs (and its splits.json)."""
    inp = dict(run["run"].get("inputs") or {})
    if not inp.get("manifest"):
        raise ValueError(f"{run['dir']}/run.json has no cohort inputs; pass the cohort to evaluate_predictors()")
    ns = argparse.Namespace(
        manifest=Path(inp["manifest"]), expression=_p(inp.get("expression")), signatures=_p(inp.get("signatures")),
        features=_p(features) or _p(inp.get("features")), grade_column=inp.get("grade_column"),
        grade_table=_p(inp.get("grade_table")), splits=run["dir"] / "splits.json",
        n_folds=inp.get("n_folds", 5), seed=inp.get("seed", 0))
    return load_cohort(ns)


def _p(x) -> Path | None:
    return Path(x) if x else None


def predict_fold(run_dir: str | Path, fold_k: int, cohort: Cohort, case_ids: Sequence[str],
                 expression: pd.DataFrame | None, input_mode: str, *, part: str = "test", batch_size: int = 8,
                 device: str = "auto") -> pd.DataFrame:
    """Run fold ``fold_k``'s checkpoint of a run on ``case_ids`` with the given expression table.

    Args:
        expression: samples x genes frame in INPUT units (e.g. ``read_expression(synthesized.csv)``);
            it is transformed with the fold's training transform from the checkpoint. Ignored by a
            slide-only model.
        input_mode: label stored in the ``input_mode`` column (``real``, ``synth``, ``none``).

    Returns:
        One prediction row per patient (the columns of ``predictions.csv``).
    """
    dev = resolve_device(device)
    ckpt = load_predictor_checkpoint(Path(run_dir) / f"fold_{fold_k}" / "predictor.pt")
    model, cfg, objs = predictor_from_checkpoint(ckpt, dev)
    labels = cohort.manifest.cases()
    labels.index = labels.index.astype(str)
    ids = [str(c) for c in case_ids]
    if cfg.uses_expression:
        missing = [c for c in ids if c not in expression.index]
        if missing:
            raise ValueError(f"{len(missing)} patients of fold {fold_k} have no row in the {input_mode} expression "
                             f"table (e.g. {missing[:5]}); synthesize them first (pathgen synthesize --cases test)")
    if cfg.uses_slides:
        no_feat = [c for c in ids if not cohort.features.get(c)]
        if no_feat:
            raise ValueError(f"{len(no_feat)} patients have no feature files (e.g. {no_feat[:5]}); pass --features")
    opts = ckpt.get("options", {})
    ds = PatientBags(ids, expression=expression if cfg.uses_expression else None,
                     families=objs["families"] or cohort.families, labels=labels,
                     features=cohort.features if cfg.uses_slides else None, transform=objs["transform"],
                     survival_bins=objs["bins"], max_patches=opts.get("eval_max_patches"), random_subsample=False)
    res = run_model(model, cfg, make_loader(ds, batch_size, False, 0), dev)
    return prediction_frame(res, fold_k, part, input_mode, objs["grade_categories"], labels)


def read_synthesized(path: str | Path) -> pd.DataFrame:
    """``read_expression(path)`` with the generator's training patients from the ``synthesized.json``
    beside it (``pathgen synthesize`` writes it) in ``frame.attrs["generator_train_case_ids"]``
    (absent when there is no sidecar: then leakage cannot be checked)."""
    path = Path(path)
    frame = read_expression(path)
    side = path.with_name(PROVENANCE_NAME)
    frame.attrs["source"] = str(path)
    if side.exists():
        try:
            meta = json.loads(side.read_text())
        except ValueError as e:
            raise ValueError(f"{side}: unreadable ({e}); re-run `pathgen synthesize` for {path}") from e
        if meta.get("generator_train_case_ids") is not None:
            frame.attrs["generator_train_case_ids"] = [str(c) for c in meta["generator_train_case_ids"]]
    return frame


def synthesized_for_fold(synthesized, fold_k: int) -> pd.DataFrame:
    """The synthesized table of one fold from a frame, a ``{fold: frame}`` map or a ``{fold: path}`` map."""
    if isinstance(synthesized, pd.DataFrame):
        return synthesized
    if fold_k not in synthesized:
        raise ValueError(f"no synthesized table for fold {fold_k} (have folds {sorted(synthesized)})")
    v = synthesized[fold_k]
    return v if isinstance(v, pd.DataFrame) else read_synthesized(v)


def check_held_out(table: pd.DataFrame, fold_k: int, case_ids: Sequence[str]) -> None:
    """Refuse synthesized expression of test patients who trained the generator that made it.

    Their profile is not held out (the generator saw their real expression), so a predictor tested
    on it would be scored on memorised values. Tables without provenance give a warning.
    """
    src = table.attrs.get("source", "the synthesized table")
    seen = table.attrs.get("generator_train_case_ids")
    if seen is None:
        warnings.warn(f"{src}: no {PROVENANCE_NAME} with the generator's training patients beside it, so fold "
                      f"{fold_k}'s test patients cannot be checked for leakage; synthesize with `pathgen "
                      "synthesize`, which records them", stacklevel=3)
        return
    leaked = sorted(set(map(str, case_ids)) & set(seen))
    if leaked:
        raise ValueError(f"{src}: {len(leaked)} of fold {fold_k}'s {len(case_ids)} test patients trained the generator "
                         f"that synthesized them (e.g. {leaked[:3]}), so their synthesized expression is not held out. "
                         "Synthesize each fold's test patients with that fold's generator (`pathgen synthesize "
                         "--model gen_fold<k>/generator.pt --cases test`) and pass them as "
                         "--synthesized 'gen_fold{fold}/synthesized.csv'")


def check_same_splits(runs: Sequence[dict]) -> None:
    """Paired comparisons need the same held-out patients per fold: in every fold both runs have, a
    patient both runs predicted must be a test patient in both or in neither. (Runs may differ in
    which folds they trained, in patients one of them lacks, e.g. no expression, and in how the rest
    of a fold was split into train / validation.)"""
    def tested(run):
        p = run["predictions"]
        keys = list(zip(p["fold"].astype(int), p["case_id"].astype(str)))
        return set(keys), {k for k, part in zip(keys, p["part"].astype(str)) if part == "test"}

    seen0, test0 = tested(runs[0])
    for run in runs[1:]:
        seen, test = tested(run)
        differ = sorted(k for k in (test0 ^ test) if k in seen0 and k in seen)
        if differ:
            k, c = differ[0]
            raise ValueError(f"{runs[0]['dir']} and {run['dir']} hold out different patients ({len(differ)} "
                             f"(fold, patient) pairs differ, e.g. patient {c} in fold {k}): their folds cannot be "
                             f"paired. Train both with the same --splits (e.g. --splits {runs[0]['dir']}/splits.json)")

def build_arms(runs: Sequence[dict], synthesized=None, cohort: Cohort | None = None, *, features=None,
               device: str = "auto", progress: bool = True) -> tuple[dict, dict, dict]:
    """Test predictions, training predictions (for KM thresholds) and grade categories per arm."""
    tests, trains, cats = {}, {}, {}
    for run in runs:
        p = run["predictions"]
        mode = "none" if run["model"] == "slide" else "real"
        name = ARM_NAMES[(run["model"], mode)]
        if name in tests:
            raise ValueError(f"two runs give the arm {name!r}; pass one run per model kind")
        tests[name] = p[p["part"] == "test"].copy()
        trains[name] = p[p["part"] == "train"].copy()
        cats[name] = run["categories"]
        if synthesized is not None and run["model"] in ("multimodal", "expression"):
            coh = cohort if cohort is not None else cohort_from_run(run, features)
            syn_name = ARM_NAMES[(run["model"], "synth")]
            frames = []
            for k, grp in tests[name].groupby("fold"):
                table = synthesized_for_fold(synthesized, int(k))
                check_held_out(table, int(k), grp["case_id"].tolist())
                frames.append(predict_fold(run["dir"], int(k), coh, grp["case_id"].tolist(), table, "synth",
                                           device=device))
            tests[syn_name] = pd.concat(frames, ignore_index=True)
            trains[syn_name] = trains[name]  # thresholds: the same model on its real training inputs
            cats[syn_name] = run["categories"]
    return tests, trains, cats


def common_patients(tests: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """(fold, case_id) pairs tested in every arm."""
    keys = None
    for df in tests.values():
        k = set(zip(df["fold"].astype(int), df["case_id"].astype(str)))
        keys = k if keys is None else keys & k
    return pd.DataFrame(sorted(keys or []), columns=["fold", "case_id"])


def align(tests: Mapping[str, pd.DataFrame], common: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Every arm restricted to the common patients, rows in one order."""
    out = {}
    for name, df in tests.items():
        d = df.assign(fold=df["fold"].astype(int), case_id=df["case_id"].astype(str))
        out[name] = common.merge(d, on=["fold", "case_id"], how="left", validate="one_to_one")
    return out


# --------------------------------------------------------------------------------------------
# statistics
# --------------------------------------------------------------------------------------------
def per_fold(df: pd.DataFrame, categories: Sequence[str]) -> dict[str, list]:
    """Per-fold C-index (and grade AUC macro) of one arm."""
    out = {"fold": [], "c_index": [], "grade_auc_macro": []}
    pcols = prob_columns(df, categories)
    for k, g in df.groupby("fold"):
        out["fold"].append(int(k))
        t, e, r = survival_arrays(g)
        try:
            out["c_index"].append(c_index(t, e, r))
        except ValueError:
            out["c_index"].append(None)
        gg = g[g["grade_index"] >= 0] if pcols else g.iloc[:0]
        try:
            out["grade_auc_macro"].append(auc_macro(gg["grade_index"].to_numpy(int), gg[pcols].to_numpy(float))
                                          if len(gg) else None)
        except ValueError:
            out["grade_auc_macro"].append(None)
    return out


def _mean_sd(vals):
    v = [x for x in vals if x is not None]
    return (float(np.mean(v)) if v else None, float(np.std(v, ddof=1)) if len(v) > 1 else None)


def arm_summary(df: pd.DataFrame, train: pd.DataFrame, categories: Sequence[str], png: Path | None, title: str,
                n_boot: int, seed: int) -> dict:
    """Per-fold metrics, mean +- sd, fold-averaged bootstrap CI and KM risk groups of one arm."""
    pf = per_fold(df, categories)
    out = {"n": int(len(df)), "per_fold": pf}
    for m in ("c_index", "grade_auc_macro"):
        out[f"{m}_mean"], out[f"{m}_sd"] = _mean_sd(pf[m])
    fold = df["fold"].to_numpy(int)
    t, e, r = survival_arrays(df)
    out["c_index_boot"] = bootstrap_summary(FOLD_MEAN_C_INDEX, [fold, t, e, r], n_boot, seed)
    pcols = prob_columns(df, categories)
    if pcols:
        g = df[df["grade_index"] >= 0]
        if len(g) and g["grade_index"].nunique() >= 2:
            arrays = [g["fold"].to_numpy(int), g["grade_index"].to_numpy(int), g[pcols].to_numpy(float)]
            out["grade_auc_macro_boot"] = bootstrap_summary(FOLD_MEAN_AUC_MACRO, arrays, n_boot, seed)
    # KM: each fold split at the median risk of its own training patients
    thr = train.groupby("fold")["risk"].median()
    missing = sorted(set(df["fold"].astype(int)) - set(thr.index.astype(int)))
    if missing:
        raise ValueError(f"no training predictions for folds {missing}: cannot set the median-risk threshold")
    centered = r - thr.reindex(df["fold"].astype(int)).to_numpy(float)
    km = km_risk_groups(np.zeros(1), centered, t, e, png=png, title=title)
    km["thresholds_per_fold"] = {int(k): float(v) for k, v in thr.items()}
    km["threshold_note"] = "risk centred per fold at the median risk of that fold's training patients (threshold 0)"
    out["km"] = km
    return out


def test_train_ratio(predictions: pd.DataFrame) -> float | None:
    """Mean over folds of n_test / n_train (the Nadeau-Bengio correction's ratio) from a run's predictions."""
    counts = predictions.groupby(["fold", "part"]).size().unstack(fill_value=0)
    if "test" not in counts or "train" not in counts:
        return None
    ok = counts[counts["train"] > 0]
    return float((ok["test"] / ok["train"]).mean()) if len(ok) else None


def compare(a: pd.DataFrame, b: pd.DataFrame, pf_a: dict, pf_b: dict, categories: Sequence[str], n_boot: int,
            seed: int, ratio: float | None = None) -> dict:
    """Paired tests of arm a vs arm b (same patients, same row order)."""
    if not (a["case_id"].tolist() == b["case_id"].tolist() and a["fold"].tolist() == b["fold"].tolist()):
        raise ValueError("compare: arms must be aligned on the same patients (align())")
    out = {}
    fold = a["fold"].to_numpy(int)
    t, e, ra = survival_arrays(a)
    rb = b["risk"].to_numpy(float)
    out["c_index"] = _paired(pf_a["c_index"], pf_b["c_index"], FOLD_MEAN_C_INDEX, [fold, t, e], ra, rb, n_boot, seed,
                             ratio)
    pa, pb = prob_columns(a, categories), prob_columns(b, categories)
    if pa and pa == pb:
        m = (a["grade_index"] >= 0).to_numpy()
        if m.any() and a.loc[m, "grade_index"].nunique() >= 2:
            out["grade_auc_macro"] = _paired(pf_a["grade_auc_macro"], pf_b["grade_auc_macro"], FOLD_MEAN_AUC_MACRO,
                                             [fold[m], a.loc[m, "grade_index"].to_numpy(int)],
                                             a.loc[m, pa].to_numpy(float), b.loc[m, pb].to_numpy(float), n_boot, seed,
                                             ratio)
    return out


def _paired(fa, fb, metric, shared, pred_a, pred_b, n_boot, seed, ratio=None) -> dict:
    ok = [(x, y) for x, y in zip(fa, fb) if x is not None and y is not None]
    folds = paired_fold_tests([x for x, _ in ok], [y for _, y in ok], test_train_ratio=ratio)
    try:
        boot = paired_bootstrap(metric, shared, pred_a, pred_b, n_boot=max(1, n_boot), seed=seed)
    except ValueError as exc:
        boot = {"delta": None, "ci_low": None, "ci_high": None, "p_value": None, "note": str(exc)}
    return {"delta": boot["delta"], "ci_low": boot["ci_low"], "ci_high": boot["ci_high"],
            "p_bootstrap": boot["p_value"], "p_wilcoxon": folds["wilcoxon"]["p_value"],
            "p_ttest": folds["ttest"]["p_value"], "p_ttest_corrected": folds["ttest_corrected"]["p_value"],
            "fold_tests": folds, "bootstrap": boot}


# --------------------------------------------------------------------------------------------
# the job
# --------------------------------------------------------------------------------------------
def evaluate_predictors(runs: Sequence[str | Path | dict], out: str | Path, *, synthesized=None,
                        cohort: Cohort | None = None, features=None, n_boot: int = 1000, seed: int = 0,
                        device: str = "auto", progress: bool = True) -> dict:
    """Compare the arms of one or more ``train-predictor`` runs on the same patients.

    Args:
        runs: run folders (or ``load_run`` dicts): at most one per model kind.
        out: output folder.
        synthesized: synthesized expression for the multimodal / expression runs: one samples x genes
            frame (input units, ``read_expression(synthesized.csv)``) covering every fold's test
            patients, or ``{fold: frame or path}`` (each fold's generator synthesizes its own test
            patients).
        cohort: the cohort the runs were trained on (default: rebuilt from the run's ``run.json``);
            needed only for synthesized arms (feature files).
        features: feature folder overriding the one stored in ``run.json``.
        n_boot, seed: bootstrap settings.

    Returns:
        The ``evaluation.json`` content: ``arms`` (per arm: ``n``, ``per_fold``, ``c_index_mean``,
        ``c_index_sd``, ``c_index_boot``, grade counterparts, ``km``) and ``comparisons``
        (``"<a> vs <b>"`` -> metric -> ``delta``, ``ci_low``, ``ci_high``, ``p_bootstrap``,
        ``p_wilcoxon``, ``p_ttest``).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    loaded = [r if isinstance(r, dict) else load_run(r) for r in runs]
    if not loaded:
        raise ValueError("evaluate: give at least one train-predictor run")
    check_same_splits(loaded)
    tests, trains, cats = build_arms(loaded, synthesized, cohort, features=features, device=device, progress=progress)
    for name, df in tests.items():
        if name.endswith("synth)") or name == "slide+synth":
            with atomic_path(out / f"predictions_{_slug(name)}.csv") as tmp:
                df.to_csv(tmp, index=False)
    common = common_patients(tests)
    if common.empty:
        raise ValueError("evaluate: no test patient is present in every arm")
    aligned = align(tests, common)
    categories = next((c for c in cats.values() if c), [])
    arms, pfs = {}, {}
    for name, df in aligned.items():
        arms[name] = arm_summary(df, trains[name], cats[name], out / f"km_{_slug(name)}.png", name, n_boot, seed)
        arms[name]["n_tested_in_arm"] = int(len(tests[name]))
        pfs[name] = arms[name]["per_fold"]
    comparisons = {}
    ratio = test_train_ratio(loaded[0]["predictions"])  # n_test / n_train per fold, for the corrected t-test
    for a, b in COMPARISONS:
        if a in aligned and b in aligned:
            comparisons[f"{a} vs {b}"] = compare(aligned[a], aligned[b], pfs[a], pfs[b], categories, n_boot, seed,
                                                 ratio)
    # several comparisons x metrics are tested at once: Holm-adjusted bootstrap p-values beside the raw ones
    cells = [d for c in comparisons.values() for d in c.values()]
    for d, adj in zip(cells, holm([d["p_bootstrap"] for d in cells])):
        d["p_bootstrap_holm"] = adj
    result = _clean({"n_common_patients": int(len(common)), "folds": sorted(common["fold"].unique().tolist()),
                     "arms": arms, "comparisons": comparisons, "grade_categories": categories,
                     "runs": [str(r["dir"]) for r in loaded], "n_boot": n_boot, "seed": seed})
    result = json.loads(json.dumps(result, default=_np))
    atomic_write_text(out / "evaluation.json", json.dumps(result, indent=2))
    atomic_write_text(out / "evaluation.md", format_markdown(result))
    return result


def _np(o):
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(type(o).__name__)


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def _f(x, nd=3) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def _p_fmt(x) -> str:
    return "-" if x is None else (f"{x:.2g}" if x < 0.001 else f"{x:.3f}")


def format_markdown(res: dict) -> str:
    """The arms table and the comparisons table."""
    graded = any(a.get("grade_auc_macro_mean") is not None for a in res["arms"].values())
    head = "| arm | n | C-index mean ± sd | C-index (fold-avg) [95% CI] |"
    sep = "|---|---|---|---|"
    if graded:
        head += " grade AUC macro mean ± sd | AUC (fold-avg) [95% CI] |"
        sep += "---|---|"
    head += " KM log-rank p |"
    sep += "---|"
    lines = [f"Patients tested in every arm: {res['n_common_patients']} (folds {res['folds']})", "", head, sep]
    for name, a in res["arms"].items():
        b = a.get("c_index_boot") or {}
        row = (f"| {name} | {a['n']} | {_f(a['c_index_mean'])} ± {_f(a['c_index_sd'])} | "
               f"{_f(b.get('estimate'))} [{_f(b.get('ci_low'))}, {_f(b.get('ci_high'))}] |")
        if graded:
            g = a.get("grade_auc_macro_boot") or {}
            row += (f" {_f(a.get('grade_auc_macro_mean'))} ± {_f(a.get('grade_auc_macro_sd'))} | "
                    f"{_f(g.get('estimate'))} [{_f(g.get('ci_low'))}, {_f(g.get('ci_high'))}] |")
        row += f" {_p_fmt(a['km'].get('p_value'))} |"
        lines.append(row)
    if res["comparisons"]:
        lines += ["", "| comparison | metric | Δ (fold-avg) [95% CI] | p bootstrap | p bootstrap (Holm) | "
                      "p Wilcoxon (folds) | p paired t (folds) | p corrected t (Nadeau-Bengio) |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, c in res["comparisons"].items():
            for metric, d in c.items():
                lines.append(f"| {name} | {metric} | {_f(d['delta'])} [{_f(d['ci_low'])}, {_f(d['ci_high'])}] | "
                             f"{_p_fmt(d['p_bootstrap'])} | {_p_fmt(d.get('p_bootstrap_holm'))} | "
                             f"{_p_fmt(d['p_wilcoxon'])} | {_p_fmt(d['p_ttest'])} | "
                             f"{_p_fmt(d.get('p_ttest_corrected'))} |")
        lines += ["", "Fold tests treat folds as paired samples although their training sets overlap; the "
                      "corrected t-test (Nadeau & Bengio 2003) accounts for that. Holm adjusts the bootstrap "
                      "p-values over every comparison and metric above."]
    return "\n".join(lines) + "\n"


def parse_synthesized(spec: str | None, folds: Sequence[int]):
    """``PATH`` (one table for all folds) or a template with ``{fold}`` -> frame or ``{fold: path}``."""
    if spec is None:
        return None
    if "{fold}" in spec:
        paths = {k: Path(spec.format(fold=k)) for k in folds}
        missing = [str(p) for p in paths.values() if not p.exists()]
        if missing:
            raise FileNotFoundError(f"synthesized tables missing: {missing}")
        return paths
    return read_synthesized(spec)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", type=Path, action="append", required=True,
                   help="a train-predictor run folder; repeat for the slide-only and multimodal runs")
    p.add_argument("--synthesized", default=None,
                   help="synthesized.csv of the test patients (pathgen synthesize), or a template with {fold}, "
                        "e.g. runs/gen_fold{fold}/synthesized.csv")
    p.add_argument("--features", type=Path, default=None, help="feature folder (default: the one in run.json)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true")


def main(args: argparse.Namespace) -> int:
    runs = [load_run(r) for r in args.run]
    folds = sorted({int(k) for r in runs for k in r["predictions"]["fold"].unique()})
    synth = parse_synthesized(args.synthesized, folds)
    res = evaluate_predictors(runs, args.out, synthesized=synth, features=args.features, n_boot=args.n_boot,
                              seed=args.seed, device=args.device, progress=not args.quiet)
    print(format_markdown(res))
    print(f"wrote {args.out / 'evaluation.json'}, evaluation.md and KM plots")
    return 0
