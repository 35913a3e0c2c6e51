"""pathgen evaluate: arms on the same patients, synthesized inputs through the TRAINING transform,
paired statistics wired so identical inputs show no difference, KM risk groups, the full
slide-only vs slide+real vs slide+synth table."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pandas as pd
import pytest

from pathgen.data.expression import read_expression, to_mcat_columns
from pathgen.pipelines import evaluate_predictor as ev
from pathgen.pipelines import train_predictor as tp
from pathgen.pipelines.cohort import load_cohort
from tests.models.cohort_fixture import make_tiny_cohort

FAST = dict(epochs=3, patience=3, batch_size=8, width=16, n_boot=20, transformer_heads=2)


def _cohort(paths):
    ns = argparse.Namespace(manifest=paths["manifest"], expression=paths["expression"],
                            signatures=paths["signatures"], features=paths["features"], splits=None, n_folds=3,
                            seed=0, grade_column="grade", grade_table=None)
    return load_cohort(ns), ns


def _inputs(ns):
    return {"manifest": str(ns.manifest), "expression": str(ns.expression), "signatures": str(ns.signatures),
            "features": str(ns.features), "grade_column": "grade", "n_folds": 3, "seed": 0}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    paths = make_tiny_cohort(root / "c", n_cases=24)
    cohort, ns = _cohort(paths)
    out = {"paths": paths, "cohort": cohort}
    for model in ("expression", "slide"):
        out[model] = root / model
        tp.train_predictor_cv(cohort, tp.PredictorOptions(model=model, **FAST), out[model], inputs=_inputs(ns),
                              progress=False)
    return out


def test_identical_synthesized_input_shows_no_difference(runs, tmp_path):
    real = read_expression(runs["paths"]["expression"])
    res = ev.evaluate_predictors([runs["expression"]], tmp_path, synthesized=real, n_boot=30)
    assert set(res["arms"]) == {"expression (real)", "expression (synth)"}
    # the checkpoint's TRAINING transform is applied to the "synthesized" table: same predictions
    syn = pd.read_csv(tmp_path / "predictions_expression_synth.csv")
    ref = pd.read_csv(runs["expression"] / "predictions.csv").query("part == 'test'")
    merged = syn.merge(ref, on=["fold", "case_id"], suffixes=("_s", "_r"))
    assert len(merged) == 24
    np.testing.assert_allclose(merged["risk_s"], merged["risk_r"], rtol=1e-6)
    cmp = res["comparisons"]["expression (synth) vs expression (real)"]
    for metric in ("c_index", "grade_auc_macro"):
        d = cmp[metric]
        assert d["delta"] == 0.0 and d["ci_low"] == 0.0 and d["ci_high"] == 0.0
        assert d["p_bootstrap"] == 1.0 and d["p_wilcoxon"] == 1.0 and d["p_ttest"] == 1.0
    assert (tmp_path / "km_expression_synth.png").stat().st_size > 1000
    assert "expression (synth) vs expression (real)" in (tmp_path / "evaluation.md").read_text()


def test_different_synthesized_input_is_scored(runs, tmp_path):
    real = read_expression(runs["paths"]["expression"])
    noise = real + np.random.default_rng(0).normal(0, 3.0, real.shape)
    folds = {k: noise for k in range(3)}  # one table per fold, as per-fold generators write them
    res = ev.evaluate_predictors([runs["expression"]], tmp_path, synthesized=folds, n_boot=30)
    d = res["comparisons"]["expression (synth) vs expression (real)"]["c_index"]
    real_pf = res["arms"]["expression (real)"]["per_fold"]["c_index"]
    syn_pf = res["arms"]["expression (synth)"]["per_fold"]["c_index"]
    assert d["delta"] == pytest.approx(np.mean(syn_pf) - np.mean(real_pf))
    assert d["delta"] != 0.0 and d["p_bootstrap"] <= 1.0
    assert d["fold_tests"]["mean_diff"] == pytest.approx(np.mean(syn_pf) - np.mean(real_pf))


def test_km_groups_split_at_the_training_median(runs, tmp_path):
    res = ev.evaluate_predictors([runs["slide"]], tmp_path, n_boot=20)
    arm = res["arms"]["slide-only"]
    pred = pd.read_csv(runs["slide"] / "predictions.csv")
    thr = pred[pred["part"] == "train"].groupby("fold")["risk"].median()
    assert arm["km"]["thresholds_per_fold"] == {str(k): pytest.approx(v) for k, v in thr.items()}
    test = pred[pred["part"] == "test"]
    n_high = int((test["risk"].to_numpy() > thr.reindex(test["fold"]).to_numpy()).sum())
    assert arm["km"]["n_high"] == n_high and arm["km"]["n_low"] == len(test) - n_high
    assert (tmp_path / "km_slide_only.png").exists()


def test_missing_synthesized_patients_are_named(runs, tmp_path):
    real = read_expression(runs["paths"]["expression"]).iloc[:5]
    with pytest.raises(ValueError, match="no row in the synth expression table"):
        ev.evaluate_predictors([runs["expression"]], tmp_path, synthesized=real, n_boot=10)


def test_synthesized_expression_of_generator_training_patients_is_refused(runs, tmp_path):
    """A generator that trained on a fold's test patients did not hold them out: evaluate refuses its
    table (read with the synthesized.json that `pathgen synthesize` writes beside it)."""
    real = read_expression(runs["paths"]["expression"])
    table = tmp_path / "gen" / "synthesized.csv"
    table.parent.mkdir()
    to_mcat_columns(real).to_csv(table, index=False)
    preds = pd.read_csv(runs["expression"] / "predictions.csv")
    fold0_test = sorted(preds.query("part == 'test' and fold == 0")["case_id"].astype(str))
    (table.parent / "synthesized.json").write_text(json.dumps({"generator_train_case_ids": fold0_test[:2]}))
    with pytest.raises(ValueError, match="not held out") as e:
        ev.evaluate_predictors([runs["expression"]], tmp_path / "o", synthesized=ev.parse_synthesized(str(table), [0]),
                               n_boot=10)
    assert str(table) in str(e.value) and "fold 0" in str(e.value)
    # the same table, when its generator trained on none of the test patients, is accepted
    (table.parent / "synthesized.json").write_text(json.dumps({"generator_train_case_ids": ["nobody"]}))
    res = ev.evaluate_predictors([runs["expression"]], tmp_path / "o", synthesized=ev.parse_synthesized(str(table), [0]),
                                 n_boot=10)
    assert "expression (synth)" in res["arms"]


def _fake_run(model, fold_of, seed):
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(3):
        for i, f in enumerate(fold_of):
            rows.append({"case_id": f"c{i}", "fold": k, "part": "test" if f == k else "train",
                         "survival_months": 1.0 + i, "censorship": i % 2, "risk": rng.normal(), "grade_index": -1})
    return {"dir": f"/runs/{model}", "run": {}, "metrics": {}, "predictions": pd.DataFrame(rows), "model": model,
            "categories": []}


def test_runs_on_different_splits_are_not_paired(tmp_path):
    fold_a = np.arange(30) % 3
    with pytest.raises(ValueError, match="hold out different patients"):
        ev.evaluate_predictors([_fake_run("slide", fold_a, 0), _fake_run("multimodal", np.roll(fold_a, 1), 1)],
                               tmp_path, n_boot=10, progress=False)
    # same split, and one run without some patients (e.g. no expression): still paired
    sub = _fake_run("multimodal", fold_a, 1)
    sub["predictions"] = sub["predictions"][sub["predictions"]["case_id"] != "c0"]
    res = ev.evaluate_predictors([_fake_run("slide", fold_a, 0), sub], tmp_path, n_boot=10, progress=False)
    assert res["n_common_patients"] == 29
    # a run trained on two of the three folds, and one whose validation was carved differently: paired
    two = _fake_run("multimodal", fold_a, 1)
    p = two["predictions"]
    two["predictions"] = p[p["fold"] < 2]
    res = ev.evaluate_predictors([_fake_run("slide", fold_a, 0), two], tmp_path, n_boot=10, progress=False)
    assert res["folds"] == [0, 1]
    val = _fake_run("multimodal", fold_a, 1)
    p = val["predictions"]
    val["predictions"] = p.assign(part=np.where((p["part"] == "train") & (p["case_id"] == "c5"), "val", p["part"]))
    ev.evaluate_predictors([_fake_run("slide", fold_a, 0), val], tmp_path, n_boot=10, progress=False)


def test_corrected_t_uses_the_runs_test_to_train_ratio(tmp_path):
    """Nadeau-Bengio's ratio is n_test / n_train of the folds, read from the predictions (not 1/(K-1):
    validation and calibration parts make train smaller)."""
    fold_a = np.arange(30) % 3
    run = _fake_run("slide", fold_a, 0)
    p = run["predictions"]
    run["predictions"] = p.assign(part=np.where((p["part"] == "train") & (p["case_id"].isin(["c1", "c2"])), "val",
                                                p["part"]))
    assert ev.test_train_ratio(run["predictions"]) == pytest.approx(np.mean([10 / 18, 10 / 18, 10 / 18]), rel=0.2)
    res = ev.evaluate_predictors([run, _fake_run("multimodal", fold_a, 1)], tmp_path, n_boot=10, progress=False)
    d = res["comparisons"]["slide+real vs slide-only"]["c_index"]
    a = res["arms"]["slide+real"]["per_fold"]["c_index"]
    b = res["arms"]["slide-only"]["per_fold"]["c_index"]
    diff = np.array(a) - np.array(b)
    r = ev.test_train_ratio(run["predictions"])
    t = diff.mean() / np.sqrt((1 / 3 + r) * diff.var(ddof=1))
    assert d["fold_tests"]["ttest_corrected"]["statistic"] == pytest.approx(t)
    assert d["p_bootstrap_holm"] >= d["p_bootstrap"]


@pytest.mark.slow
def test_slide_only_vs_real_vs_synth_table(runs, tmp_path):
    pytest.importorskip("pathgen.nn", reason="pathgen.nn.CoAttention not available")
    cohort, ns = _cohort(runs["paths"])
    mm = tmp_path / "multimodal"
    tp.train_predictor_cv(cohort, tp.PredictorOptions(model="multimodal", **FAST), mm, inputs=_inputs(ns),
                          progress=False)
    real = read_expression(runs["paths"]["expression"])
    synth = real + np.random.default_rng(0).normal(0, 0.5, real.shape)
    p = argparse.ArgumentParser()
    ev.add_arguments(p)
    synth_csv = tmp_path / "synthesized.csv"
    synth.rename(columns=lambda g: f"{g}_rnaseq").reset_index().to_csv(synth_csv, index=False)
    args = p.parse_args(["--run", str(runs["slide"]), "--run", str(mm), "--synthesized", str(synth_csv),
                         "--out", str(tmp_path / "ev"), "--n-boot", "30"])
    assert ev.main(args) == 0
    res = json.loads((tmp_path / "ev" / "evaluation.json").read_text())
    assert set(res["arms"]) == {"slide-only", "slide+real", "slide+synth"}
    assert set(res["comparisons"]) == {"slide+synth vs slide-only", "slide+synth vs slide+real",
                                       "slide+real vs slide-only"}
    for c in res["comparisons"].values():
        for k in ("delta", "ci_low", "ci_high", "p_bootstrap", "p_wilcoxon", "p_ttest"):
            assert c["c_index"][k] is not None
    assert res["n_common_patients"] == 24
