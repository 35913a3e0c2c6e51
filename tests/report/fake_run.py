"""A small fake run folder (the layout ``pathgen demo`` writes), built with the real writer
functions wherever they exist, so the report is tested against the files the stages produce."""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from pathgen.utils.io import atomic_path, atomic_write_text

FAMILIES = ["Tumor Suppressor Genes", "Oncogenes", "Protein Kinases", "Cell Differentiation Markers",
            "Transcription Factors", "Cytokines and Growth Factors"]
GRADES = ["Low", "High"]
PARTS = ("cohort", "features", "splits", "generator", "synth", "generator_eval", "predictor", "evaluation",
         "conformal", "fairness", "heatmaps", "headline", "config")
N_PATIENTS, GENES_PER_FAMILY = 40, 5


def make_fake_run(root: Path, parts=PARTS, seed: int = 0) -> Path:
    """Write the requested parts of a run folder under ``root`` and return it."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    cases = [f"CASE-{i:02d}" for i in range(N_PATIENTS)]
    genes = [f"G{f}_{g}" for f in range(len(FAMILIES)) for g in range(GENES_PER_FAMILY)]
    expr = rng.normal(5, 1, size=(N_PATIENTS, len(genes)))
    months = rng.gamma(2.0, 20.0, N_PATIENTS).round(2)
    cens = (rng.random(N_PATIENTS) < 0.5).astype(int)
    grade = rng.integers(0, 2, N_PATIENTS)
    age = rng.integers(30, 85, N_PATIENTS)
    female = rng.integers(0, 2, N_PATIENTS)
    folds = [{"k": k, "train": cases[: 24], "val": cases[24:28], "calibration": cases[28:34], "test": cases[34:]}
             for k in range(2)]
    if "cohort" in parts:
        c = root / "cohort"
        c.mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"case_id": cases, "slide_id": [f"{x}-S0" for x in cases],
                      "slide_path": [f"slides/{x}-S0.tif" for x in cases], "survival_months": months,
                      "censorship": cens, "age": age, "is_female": female,
                      "grade": [GRADES[g] for g in grade]}).to_csv(c / "manifest.csv", index=False)
        frame = pd.DataFrame(expr, columns=[f"{g}_rnaseq" for g in genes])
        frame.insert(0, "case_id", cases)
        frame.to_csv(c / "expression.csv", index=False)
        atomic_write_text(c / "families.json", json.dumps({"families": {
            "names": FAMILIES, "genes": [genes[i * GENES_PER_FAMILY:(i + 1) * GENES_PER_FAMILY]
                                         for i in range(len(FAMILIES))]}}))
    if "features" in parts:
        f = root / "features"
        f.mkdir(parents=True, exist_ok=True)
        for x in cases[:3]:
            with h5py.File(f / f"{x}-S0.h5", "w") as h:
                h.create_dataset("features", data=rng.normal(size=(12, 16)).astype(np.float32))
                d = h.create_dataset("coords", data=np.stack(np.meshgrid(np.arange(4) * 64, np.arange(3) * 64),
                                                             -1).reshape(-1, 2).astype(np.int64))
                d.attrs["patch_size_level0"] = 64
    if "splits" in parts:
        atomic_write_text(root / "splits.json", json.dumps({"folds": folds}))
    if "generator" in parts:
        for k in range(2):
            g = root / "generator" / f"fold{k}"
            g.mkdir(parents=True, exist_ok=True)
            log = pd.DataFrame({"epoch": range(5), "train_loss": np.linspace(1, 0.4, 5) + 0.02 * k,
                                "val_spearman": np.linspace(0.05, 0.3, 5), "seconds": 1.0})
            log.to_csv(g / "log.csv", index=False)
            atomic_write_text(g / "train_summary.json", json.dumps({
                "fold": k, "best_epoch": 4, "best_val_spearman": 0.3, "epochs_run": 5, "n_train": 24, "n_val": 4,
                "seconds_per_epoch": 1.0, "config": {"d_model": 64, "n_blocks": 2}, "versions": {"pathgen": "test"}}))
    if "synth" in parts:
        s = root / "synth"
        s.mkdir(parents=True, exist_ok=True)
        frame = pd.DataFrame(expr + rng.normal(0, 1, expr.shape), columns=[f"{g}_rnaseq" for g in genes])
        frame.insert(0, "case_id", cases)
        frame.to_csv(s / "synthesized.csv", index=False)
    if "generator_eval" in parts:
        _generator_eval(root / "generator_eval", expr, rng)
    if "predictor" in parts or "evaluation" in parts or "fairness" in parts or "conformal" in parts:
        preds = _predictions(cases, months, cens, grade, rng)
    if "predictor" in parts:
        for model in ("slide", "multimodal"):
            p = root / "predictor" / model
            p.mkdir(parents=True, exist_ok=True)
            atomic_write_text(p / "metrics.json", json.dumps({
                "model": model, "n_folds": 2, "n_patients_tested": 12, "grade_categories": GRADES,
                "mean": {"c_index": 0.61, "grade_auc_macro": 0.7, "ibs": 0.2},
                "sd": {"c_index": 0.05, "grade_auc_macro": 0.04, "ibs": 0.01},
                "fold_averaged_bootstrap": {"c_index": {"estimate": 0.6, "ci_low": 0.5, "ci_high": 0.7}},
                "versions": {"pathgen": "test"}}))
    if "evaluation" in parts:
        _evaluation(root / "evaluation", preds)
    if "conformal" in parts:
        _conformal(root / "conformal", preds, rng)
    if "fairness" in parts:
        _fairness(root / "fairness", preds, age, female, cases)
    if "heatmaps" in parts:
        _heatmaps(root, rng)
    if "headline" in parts:
        atomic_write_text(root / "metrics.json", json.dumps({
            "generator": {"spearman_gene_median": 0.21, "nmae": 0.18},
            "predictor": {"slide-only": {"c_index": 0.6}, "slide+synth": {"c_index": 0.63, "p_value": 0.04}},
            "conformal": {"coverage": 0.89, "alpha": 0.1}, "fairness": {"largest_gap_c_index": 0.07}}))
    if "config" in parts:
        atomic_write_text(root / "config.json", json.dumps({
            "demo": {"quick": True, "cases": N_PATIENTS}, "generator": {"epochs": 5},
            "versions": {"pathgen": "0.1.0", "torch": "test"}}))
    return root


def _generator_eval(out: Path, expr: np.ndarray, rng) -> None:
    from pathgen.eval.metrics import fidelity_report

    test = expr[30:]
    train = expr[:30]
    rng_ = train.max(0) - train.min(0)
    slices = {name: slice(i * GENES_PER_FAMILY, (i + 1) * GENES_PER_FAMILY) for i, name in enumerate(FAMILIES)}
    synth = test + rng.normal(0, 0.8, test.shape)
    report = fidelity_report(test, synth, rng_, slices)
    baselines = {"train_mean": fidelity_report(test, np.repeat(train.mean(0, keepdims=True), len(test), 0), rng_,
                                               slices),
                 "ridge": fidelity_report(test, test + rng.normal(0, 1.5, test.shape), rng_, slices)}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "metrics.json", json.dumps({**report, "baselines": baselines, "n_train": 30,
                                                        "n_test": len(test), "versions": {"pathgen": "test"}},
                                                       indent=2))


def _predictions(cases, months, cens, grade, rng) -> dict[str, pd.DataFrame]:
    """Per-patient prediction tables (train-predictor's columns) for three arms, two folds."""
    arms = {}
    for arm, signal in (("slide-only", 0.5), ("slide+real", 1.0), ("slide+synth", 0.8)):
        risk = -signal * np.log(months + 1) + rng.normal(0, 1, len(cases))
        logit = signal * (2 * grade - 1) + rng.normal(0, 1, len(cases))
        p_high = 1 / (1 + np.exp(-logit))
        arms[arm] = pd.DataFrame({"case_id": cases, "fold": [i % 2 for i in range(len(cases))],
                                  "survival_months": months, "censorship": cens, "risk": risk,
                                  "grade_index": grade, "prob_Low": 1 - p_high, "prob_High": p_high})
    return arms


def _evaluation(out: Path, preds: dict[str, pd.DataFrame]) -> None:
    from pathgen.pipelines.evaluate_predictor import _np, arm_summary, compare

    out.mkdir(parents=True, exist_ok=True)
    test = {k: v.iloc[20:].reset_index(drop=True) for k, v in preds.items()}
    train = {k: v.iloc[:20] for k, v in preds.items()}
    arms, pfs = {}, {}
    for name, df in test.items():
        slug = name.replace("+", "_").replace("-", "_")
        arms[name] = arm_summary(df, train[name], GRADES, out / f"km_{slug}.png", name, n_boot=10, seed=0)
        pfs[name] = arms[name]["per_fold"]
    comparisons = {f"{a} vs {b}": compare(test[a], test[b], pfs[a], pfs[b], GRADES, 10, 0)
                   for a, b in (("slide+synth", "slide-only"), ("slide+synth", "slide+real"))}
    result = {"n_common_patients": 20, "folds": [0, 1], "arms": arms, "comparisons": comparisons,
              "grade_categories": GRADES}
    atomic_write_text(out / "evaluation.json", json.dumps(json.loads(json.dumps(result, default=_np)), indent=2))


def _conformal(out: Path, preds: dict[str, pd.DataFrame], rng) -> None:
    from pathgen.eval.conformal import calibrate_sets, predict_sets

    out.mkdir(parents=True, exist_ok=True)
    df = preds["slide+synth"]
    probs = df[["prob_Low", "prob_High"]].to_numpy()
    cal = calibrate_sets(probs[:20], df["grade_index"].to_numpy()[:20], input_mode="synth", alpha=0.1)
    pred = predict_sets(cal, probs[20:], input_mode="synth", labels=df["grade_index"].to_numpy()[20:])
    test = {k: v for k, v in pred.to_dict().items() if k not in ("sets", "set_size", "covered")}
    atomic_write_text(out / "metrics.json", json.dumps({"alpha": 0.1, "grade_sets": {
        "lac": {"calibration": cal.to_dict(), "test": test}}}, indent=2, default=float))
    from pathgen.report.figures import new_figure

    fig = new_figure((4, 3))
    ax = fig.add_subplot()
    ax.bar(["LAC"], [test["coverage"]])
    ax.axhline(0.9, color="k", ls="--")
    ax.set_ylabel("empirical coverage")
    with atomic_path(out / "coverage.png") as tmp:
        fig.savefig(tmp, format="png")


def _fairness(out: Path, preds: dict[str, pd.DataFrame], age, female, cases) -> None:
    from pathgen.eval.fairness import fairness_report

    out.mkdir(parents=True, exist_ok=True)
    df = preds["slide+synth"].copy()
    df["age"], df["is_female"] = age, female
    df["time"], df["event"] = df["survival_months"], 1 - df["censorship"]
    table, summary = fairness_report(df, grade_col="grade_index", prob_cols=["prob_Low", "prob_High"],
                                     min_group_n=15, n_boot=10)
    with atomic_path(out / "fairness.csv") as tmp:
        table.to_csv(tmp, index=False)
    atomic_write_text(out / "fairness.json", json.dumps(summary, indent=2, default=float))


def _heatmaps(root: Path, rng) -> None:
    from pathgen.pipelines.heatmap import run_heatmaps
    from pathgen.report.attention import AttentionMaps, write_attention_h5
    from pathgen.report.heatmaps import HeatmapStyle
    from pathgen.slides.tiff_writer import write_pyramidal_tiff

    slides = root / "cohort" / "slides"
    slides.mkdir(parents=True, exist_ok=True)
    img = np.full((192, 256, 3), (232, 160, 200), np.uint8)
    write_pyramidal_tiff(slides / "CASE-00-S0.tif", img, mpp=0.5, downsamples=(1,), tile=64, compression="jpeg")
    coords = np.stack(np.meshgrid(np.arange(8) * 32, np.arange(6) * 32), -1).reshape(-1, 2).astype(np.int64)
    att = rng.dirichlet(np.ones(len(coords)), size=len(FAMILIES)).T[None]  # [1, n, F]
    write_attention_h5(root / "synth" / "fold0" / "attention" / "CASE-00.h5",
                       AttentionMaps("CASE-00", att, coords, np.zeros(len(coords), np.int64), ["CASE-00-S0"],
                                     FAMILIES))
    with h5py.File(root / "features" / "CASE-00-S0.h5", "a") as h:  # give the slide its real patch grid
        for name in ("features", "coords"):
            del h[name]
        h.create_dataset("features", data=rng.normal(size=(len(coords), 16)).astype(np.float32))
        h.create_dataset("coords", data=coords).attrs["patch_size_level0"] = 32
    run_heatmaps(root / "heatmaps", root / "cohort" / "manifest.csv", root / "synth" / "fold0" / "attention",
                 root / "features", HeatmapStyle(thumb_size=128), top_k=3, progress=False)
