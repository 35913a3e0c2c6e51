"""train-predictor on a tiny on-disk cohort: the metrics.json contract, model selection on the
validation part only, patient-level predictions with several slides per case, MCAT split folders."""
from __future__ import annotations

import argparse
import dataclasses
import json

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from pathgen.data.splits import Fold
from pathgen.models.predictor.checkpoint import load_predictor_checkpoint, predictor_from_checkpoint
from pathgen.pipelines import train_predictor as tp
from pathgen.pipelines.cohort import load_cohort
from tests.models.cohort_fixture import make_tiny_cohort

FAST = dict(epochs=3, patience=3, batch_size=8, width=16, n_boot=20, transformer_heads=2)


def cli(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    tp.add_arguments(p)
    return tp.main(p.parse_args(argv))


def cohort_of(paths, **kw):
    ns = argparse.Namespace(manifest=paths["manifest"], expression=paths["expression"],
                            signatures=paths["signatures"], features=paths["features"], splits=None, n_folds=3,
                            seed=0, grade_column=None, grade_table=None)
    for k, v in kw.items():
        setattr(ns, k, v)
    return load_cohort(ns)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_cohort(tmp_path_factory.mktemp("tiny"), n_cases=30)


def test_metrics_json_contract(tiny, tmp_path):
    out = tmp_path / "run"
    argv = ["--model", "expression", "--cohort", str(tiny["manifest"]), "--expression", str(tiny["expression"]),
            "--signatures", str(tiny["signatures"]), "--grade-column", "grade", "--out", str(out), "--n-folds", "3",
            "--quiet"] + [x for k, v in FAST.items() for x in (f"--{k.replace('_', '-')}", str(v))]
    assert cli(argv) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["model"] == "expression" and m["n_folds"] == 3 and m["grade_categories"] == ["G1", "G2", "G3"]
    assert len(m["folds"]) == 3
    for f in m["folds"]:
        for k in ("c_index", "c_index_ci", "c_index_ipcw", "ibs", "grade_auc_macro", "grade_auc_macro_ci",
                  "grade_auc_micro", "balanced_accuracy", "kappa_quadratic", "best_epoch", "n_test"):
            assert k in f, k
        assert 0.0 <= f["c_index"] <= 1.0 and 0.0 <= f["grade_auc_macro"] <= 1.0
        assert f["c_index_ci"][0] <= f["c_index_ci"][1]
    for k in ("c_index", "grade_auc_macro", "c_index_ipcw", "ibs", "balanced_accuracy", "kappa_quadratic"):
        assert m["mean"][k] == pytest.approx(np.mean([f[k] for f in m["folds"]]))
        assert m["sd"][k] == pytest.approx(np.std([f[k] for f in m["folds"]], ddof=1))
    assert m["fold_averaged_bootstrap"]["c_index"]["estimate"] == pytest.approx(m["mean"]["c_index"])
    _check_metrics_recomputed_from_predictions(out, tiny["manifest"])
    # per-patient predictions: every patient tested exactly once, curves and probabilities saved
    pred = pd.read_csv(out / "predictions.csv")
    test = pred[pred["part"] == "test"]
    assert sorted(test["case_id"]) == sorted(pd.read_csv(tiny["manifest"])["case_id"])
    surv = pred[[f"surv_{k}" for k in range(4)]].to_numpy()
    np.testing.assert_allclose(pred["risk"], -surv.sum(1), rtol=1e-5)
    np.testing.assert_allclose(pred[["prob_G1", "prob_G2", "prob_G3"]].sum(1), 1.0, rtol=1e-5)
    splits = json.loads((out / "splits.json").read_text())["folds"]
    for f in splits:
        assert not set(f["test"]) & (set(f["train"]) | set(f["val"]) | set(f["calibration"]))
        assert (out / f"fold_{f['k']}" / "predictor.pt").exists()
    run = json.loads((out / "run.json").read_text())
    assert run["inputs"]["grade_column"] == "grade"


def _corrupt(paths, tmp_path, cases, name):
    """A copy of the manifest whose labels for ``cases`` are scrambled."""
    frame = pd.read_csv(paths["manifest"])
    m = frame["case_id"].isin(cases)
    rng = np.random.default_rng(1)
    frame.loc[m, "survival_months"] = rng.uniform(1, 200, m.sum())
    frame.loc[m, "censorship"] = 1 - frame.loc[m, "censorship"]
    frame.loc[m, "grade"] = frame.loc[m, "grade"].map({"G1": "G3", "G2": "G1", "G3": "G2"})
    path = tmp_path / f"{name}.csv"
    frame.to_csv(path, index=False)
    return dict(paths, manifest=path)


def test_selection_uses_validation_not_test(tiny, tmp_path):
    ids = sorted(pd.read_csv(tiny["manifest"])["case_id"])
    fold = Fold(0, train=ids[:16], val=ids[16:22], test=ids[22:])
    opts = tp.PredictorOptions(model="expression", **dict(FAST, epochs=6, patience=6), selection="c_index")

    def run(paths, name):
        cohort = dataclasses.replace(cohort_of(paths), folds=[fold])
        return tp.train_fold(cohort, fold, opts, tmp_path / name, progress=False)

    s_ref, p_ref = run(tiny, "ref")
    s_test, p_test = run(_corrupt(tiny, tmp_path, fold.test, "bad_test"), "bad_test")
    s_val, _ = run(_corrupt(tiny, tmp_path, fold.val, "bad_val"), "bad_val")
    # scrambled TEST labels: identical training, validation curve and chosen epoch ...
    assert s_test["best_epoch"] == s_ref["best_epoch"]
    for a, b in zip(s_ref["log"], s_test["log"]):
        assert {k: v for k, v in a.items() if k != "seconds"} == pytest.approx(
            {k: v for k, v in b.items() if k != "seconds"}, nan_ok=True)
    np.testing.assert_array_equal(p_ref["risk"].to_numpy(), p_test["risk"].to_numpy())
    # ... while the test metrics see the scrambled labels
    assert s_test["c_index"] != s_ref["c_index"]
    # scrambled VALIDATION labels do change what selection sees (the check above can fail)
    assert [r["val_c_index"] for r in s_val["log"]] != [r["val_c_index"] for r in s_ref["log"]]


def test_several_slides_per_case_give_one_patient_prediction(tmp_path):
    paths = make_tiny_cohort(tmp_path / "c", n_cases=18)
    frame = pd.read_csv(paths["manifest"])
    case = frame.loc[0, "case_id"]
    rng = np.random.default_rng(3)
    with h5py.File(paths["features"] / f"{case}-02Z.h5", "w") as f:
        f.create_dataset("features", data=rng.normal(size=(7, 12)).astype(np.float32))
        f.create_dataset("coords", data=np.zeros((7, 2), dtype=np.int64))
    extra = frame.iloc[[0]].assign(slide_id=f"{case}-02Z")
    pd.concat([frame, extra], ignore_index=True).to_csv(paths["manifest"], index=False)
    cohort = cohort_of(paths, n_folds=2)
    assert len(cohort.features[case]) == 2
    out = tmp_path / "run"
    opts = tp.PredictorOptions(model="slide", **dict(FAST, epochs=2), max_patches=None, eval_max_patches=None)
    tp.train_predictor_cv(cohort, opts, out, progress=False)
    pred = pd.read_csv(out / "predictions.csv")
    assert not pred.duplicated(["case_id", "fold", "part"]).any()
    assert (pred["part"] == "test").sum() == 18  # one test row per patient, not per slide
    n_each = [h5py.File(p, "r")["features"].shape[0] for p in cohort.features[case]]
    row = pred[(pred["case_id"] == case) & (pred["part"] == "test")].iloc[0]
    assert row["n_patches"] == sum(n_each)
    # the patient's prediction is the model on the concatenation of both slides' patches
    model, cfg, _ = predictor_from_checkpoint(load_predictor_checkpoint(out / f"fold_{row['fold']}" / "predictor.pt"))
    feats = torch.cat([torch.from_numpy(h5py.File(p, "r")["features"][()]) for p in cohort.features[case]])
    with torch.no_grad():
        o = model(features=feats, cu_seqlens=torch.tensor([0, len(feats)], dtype=torch.int32), max_seqlen=len(feats))
    assert float(o.risk[0]) == pytest.approx(row["risk"], rel=1e-5, abs=1e-6)


def test_training_patients_are_scored_like_test_patients(tiny, tmp_path):
    """predictions.csv's train rows (they set each fold's KM risk threshold) use the evaluation patch
    selection, not training's random draw of max_patches."""
    cohort = cohort_of(tiny, n_folds=3)
    out = tmp_path / "run"
    opts = tp.PredictorOptions(model="slide", **dict(FAST, epochs=1), max_patches=4, eval_max_patches=None)
    tp.train_predictor_cv(cohort, opts, out, folds=[0], progress=False)
    pred = pd.read_csv(out / "predictions.csv")
    train = pred[pred["part"] == "train"]
    full = {c: sum(h5py.File(p, "r")["features"].shape[0] for p in cohort.features[c]) for c in train["case_id"]}
    assert (train["n_patches"].to_numpy() == train["case_id"].map(full).to_numpy()).all()
    assert max(full.values()) > 4  # the training cap would have shown


def test_mcat_split_folder_holds_out_val(tiny, tmp_path):
    """MCAT's ``val`` column is the reported fold: it becomes ``test`` when the cohort is loaded (so the
    generator's checkpoint selection cannot see it either) and validation is carved from ``train``."""
    ids = sorted(pd.read_csv(tiny["manifest"])["case_id"])
    sdir = tmp_path / "splits"
    sdir.mkdir()
    orig = {}
    for k in range(2):
        held = ids[k::2][:8]
        train = [c for c in ids if c not in held]
        orig[k] = (train, held)
        pd.DataFrame({"train": pd.Series(train), "val": pd.Series(held)}).to_csv(sdir / f"splits_{k}.csv")
    cohort = cohort_of(tiny, splits=sdir)
    assert [f.k for f in cohort.folds] == [0, 1]
    for f in cohort.folds:
        train, held = orig[f.k]
        assert f.test == held  # MCAT's val column is the held-out fold
        assert f.val and set(f.val) < set(train) and not set(f.val) & set(f.train)
        assert set(f.train) | set(f.val) == set(train)
    out = tmp_path / "run"
    tp.train_predictor_cv(cohort, tp.PredictorOptions(model="expression", **FAST), out, progress=False)
    resolved = json.loads((out / "splits.json").read_text())["folds"]
    assert resolved == [f.to_dict() for f in cohort.folds]  # the predictor uses the parts every job sees
    m = json.loads((out / "metrics.json").read_text())
    assert [f["n_test"] for f in m["folds"]] == [8, 8]


def test_cohort_refuses_missing_splits_and_disjoint_ids(tiny, tmp_path):
    """A mistyped --splits is an error (not silently fresh folds); expression ids that match no slide's
    patient are listed, and with none in common loading stops, naming both files."""
    with pytest.raises(FileNotFoundError, match=r"--splits .*typo.*no such file.*fix"):
        cohort_of(tiny, splits=tmp_path / "typo" / "splits.json")
    # a mistyped --features is named as such (it read as "N patients have no feature files")
    with pytest.raises(FileNotFoundError, match=r"--features .*typo_feats: no such folder"):
        cohort_of(tiny, features=tmp_path / "typo_feats")
    # a table whose genes match no family names the table
    wrong = tmp_path / "wrong_genes.csv"
    pd.DataFrame({"case_id": ["A"], "FOO_rnaseq": [1.0]}).to_csv(wrong, index=False)
    with pytest.raises(ValueError, match=r"wrong_genes\.csv"):
        cohort_of(tiny, expression=wrong)
    expr = pd.read_csv(tiny["expression"]).set_index("case_id")
    suffixed = expr.set_axis([f"{c}-01" if i % 3 == 0 else c for i, c in enumerate(expr.index)])
    part = tmp_path / "expr_part.csv"
    suffixed.rename_axis("case_id").to_csv(part)
    with pytest.warns(UserWarning, match=r"expression but no slide.*-01"):
        cohort = cohort_of(tiny, expression=part)
    in_folds = {c for f in cohort.folds for ids in f.parts().values() for c in ids}
    assert in_folds == set(suffixed.index) & set(expr.index)
    none = tmp_path / "expr_none.csv"
    expr.set_axis([f"{c}-01" for c in expr.index]).rename_axis("case_id").to_csv(none)
    with pytest.raises(ValueError, match=r"expr_none\.csv: no patient has both"):
        cohort_of(tiny, expression=none)


def _check_metrics_recomputed_from_predictions(out, manifest):
    """Every fold's headline test metrics in metrics.json, recomputed from predictions.csv with
    independent implementations (lifelines, scikit-learn) and labels taken from the manifest.

    Conventions: ``risk`` is higher for earlier death, so lifelines (which expects a score that is
    higher for LONGER survival) gets ``-risk``; event = 1 - censorship; ``prob_<g>`` is the
    probability of grade ``g`` and class index i is ``grade_categories[i]``.
    """
    from lifelines.utils import concordance_index
    from sklearn.metrics import balanced_accuracy_score, cohen_kappa_score, roc_auc_score

    m = json.loads((out / "metrics.json").read_text())
    cats = m["grade_categories"]
    pred = pd.read_csv(out / "predictions.csv")
    labels = pd.read_csv(manifest).drop_duplicates("case_id").set_index("case_id")
    c_all, auc_all = [], []
    for f in m["folds"]:
        t = pred[(pred["part"] == "test") & (pred["fold"] == f["fold"])]
        assert len(t) == f["n_test"] and t["case_id"].is_unique
        lab = labels.loc[t["case_id"]]
        time = lab["survival_months"].to_numpy(float)
        event = 1 - lab["censorship"].to_numpy(int)
        np.testing.assert_allclose(t["survival_months"], time)
        c = concordance_index(time, -t["risk"].to_numpy(float), event)
        assert f["c_index"] == pytest.approx(c, abs=1e-9), (f["fold"], f["c_index"], c)
        c_all.append(c)
        # grade: class index from the manifest's label, probabilities column by category name
        y = np.array([cats.index(g) for g in lab["grade"]])
        np.testing.assert_array_equal(t["grade_index"].to_numpy(), y)
        P = np.column_stack([t[f"prob_{g}"].to_numpy(float) for g in cats])
        present = np.unique(y)
        assert len(present) >= 2
        if len(present) == len(cats):
            auc = roc_auc_score(y, P, multi_class="ovr", average="macro")
        else:  # macro over the classes present in the fold
            auc = float(np.mean([roc_auc_score(y == k, P[:, k]) for k in present]))
        assert f["grade_auc_macro"] == pytest.approx(auc, abs=1e-9), (f["fold"], f["grade_auc_macro"], auc)
        auc_all.append(auc)
        onehot = (y[:, None] == np.arange(len(cats))[None]).astype(int)
        assert f["grade_auc_micro"] == pytest.approx(roc_auc_score(onehot.ravel(), P.ravel()), abs=1e-9)
        hard = P.argmax(1)
        assert f["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, hard), abs=1e-9)
        assert f["grade_accuracy"] == pytest.approx(np.mean(hard == y), abs=1e-12)
        kappa = cohen_kappa_score(y, hard, weights="quadratic", labels=list(range(len(cats))))
        if np.isfinite(kappa):
            assert f["kappa_quadratic"] == pytest.approx(kappa, abs=1e-9)
    # the fold-averaged point estimates are the means of the recomputed per-fold values
    boot = m["fold_averaged_bootstrap"]
    assert boot["c_index"]["estimate"] == pytest.approx(np.mean(c_all), abs=1e-9)
    assert boot["grade_auc_macro"]["estimate"] == pytest.approx(np.mean(auc_all), abs=1e-9)
