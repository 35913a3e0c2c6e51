"""train-predictor re-runs into the same --out: finished folds are reused (not retrained), results
cover every finished fold, other settings are refused unless --overwrite; NaN inputs stop training
with a clear error; predictor checkpoints that cannot be used say which file and what to do."""
from __future__ import annotations

import dataclasses
import json
import warnings

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from pathgen.data.splits import Fold
from pathgen.data.survival import fit_survival_bins
from pathgen.models.predictor.checkpoint import load_predictor_checkpoint, predictor_from_checkpoint, save_predictor
from pathgen.models.predictor.config import PredictorConfig
from pathgen.models.predictor.factory import build_predictor
from pathgen.pipelines import train_predictor as tp
from tests.models.cohort_fixture import make_tiny_cohort
from tests.pipelines.test_predictor_training import FAST, cli, cohort_of


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_cohort(tmp_path_factory.mktemp("tiny_resume"), n_cases=30)


def _argv(paths, out, *extra):
    return (["--model", "expression", "--cohort", str(paths["manifest"]), "--expression", str(paths["expression"]),
             "--signatures", str(paths["signatures"]), "--out", str(out), "--n-folds", "3", "--quiet"]
            + [x for k, v in FAST.items() for x in (f"--{k.replace('_', '-')}", str(v))] + list(extra))


def _read(path):
    return pd.read_csv(path, dtype={"case_id": str, "grade": str}, keep_default_na=False, na_values=[""])


def test_rerun_reuses_finished_folds_and_covers_all(tiny, tmp_path, capsys):
    cohort = cohort_of(tiny)
    opts = tp.PredictorOptions(model="expression", **FAST)
    out = tmp_path / "run"
    tp.train_predictor_cv(cohort, opts, out, folds=[0], progress=False)
    fold0 = _read(out / "fold_0" / "predictions.csv")
    assert set(fold0["fold"]) == {0} and set(fold0["part"]) >= {"train", "test"}
    stamp = (out / "fold_0" / "predictor.pt").stat().st_mtime_ns
    # a crash during fold 1 left a folder without summary.json: that fold is trained again
    (out / "fold_1").mkdir()
    (out / "fold_1" / "log.csv").write_text("epoch,train_loss\n0,1.0\n")
    capsys.readouterr()
    m = tp.train_predictor_cv(cohort, opts, out, folds=[0, 1], progress=False)
    assert "reusing finished fold(s) [0]" in capsys.readouterr().out
    assert (out / "fold_0" / "predictor.pt").stat().st_mtime_ns == stamp  # not retrained
    assert (m["folds_covered"], m["folds_trained"], m["folds_reused"]) == ([0, 1], [1], [0])
    assert m["n_folds"] == 2 and m["folds_missing"] == [2] and m["complete"] is False
    # --folds 1 on the existing run: nothing trained, and the results of BOTH folds are kept
    m2 = tp.train_predictor_cv(cohort, opts, out, folds=[1], progress=False)
    assert m2["folds_trained"] == [] and m2["n_folds"] == 2 and [f["fold"] for f in m2["folds"]] == [0, 1]
    assert json.loads((out / "metrics.json").read_text())["folds_covered"] == [0, 1]
    assert m2["mean"] == pytest.approx(m["mean"]) and m2["files"]["checkpoints"] == ["fold_0/predictor.pt",
                                                                                       "fold_1/predictor.pt"]
    pred = _read(out / "predictions.csv")
    assert sorted(pred["fold"].unique()) == [0, 1]
    pd.testing.assert_frame_equal(pred[pred["fold"] == 0].reset_index(drop=True), fold0)
    assert m2["n_patients_tested"] == pred.loc[pred["part"] == "test", "case_id"].nunique()


def test_other_settings_are_refused_and_overwrite_starts_over(tiny, tmp_path):
    out = tmp_path / "run"
    assert cli(_argv(tiny, out, "--folds", "0")) == 0
    before = (out / "metrics.json").read_text()
    with pytest.raises(ValueError, match=r"fold_0: fold 0 finished with other settings.*--width 16 then, 8 now"
                                         r".*new --out, or --overwrite"):
        cli(_argv(tiny, out, "--folds", "1", "--width", "8"))
    # an edited cohort input of the fold's patients is refused as well
    frame = pd.read_csv(tiny["manifest"])
    frame.loc[frame["case_id"] == json.loads((out / "splits.json").read_text())["folds"][0]["test"][0],
              "survival_months"] += 1.0
    edited = dict(tiny, manifest=tmp_path / "edited.csv")
    frame.to_csv(edited["manifest"], index=False)
    with pytest.raises(ValueError, match=r"fold_0.*cohort inputs of its patients.*--overwrite"):
        cli(_argv(edited, out, "--folds", "1"))
    assert (out / "metrics.json").read_text() == before  # the refused calls changed nothing
    assert cli(_argv(tiny, out, "--folds", "1", "--width", "8", "--overwrite")) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["folds_covered"] == [1] and m["options"]["width"] == 8 and not (out / "fold_0").exists()


def _poison(cohort, case):
    with h5py.File(cohort.features[case][0], "r+") as f:
        x = f["features"][()]
        x[0, 0] = np.nan
        f["features"][...] = x


def test_nan_inputs_stop_with_a_clear_error(tmp_path):
    paths = make_tiny_cohort(tmp_path / "c", n_cases=16)
    ids = sorted(pd.read_csv(paths["manifest"])["case_id"])
    fold = Fold(0, train=ids[:10], val=ids[10:13], test=ids[13:])
    cohort = dataclasses.replace(cohort_of(paths, n_folds=2), folds=[fold])
    opts = tp.PredictorOptions(model="slide", **dict(FAST, epochs=2), n_bins=2)
    _poison(cohort, ids[10])  # a validation patient: every validation score is NaN
    with pytest.raises(ValueError, match=r"fold 0: no epoch of 2 gave a finite validation score.*NaN/inf"):
        tp.train_fold(cohort, fold, opts, tmp_path / "val_nan", progress=False)
    _poison(cohort, ids[0])  # a training patient: stop at the first NaN loss
    with pytest.raises(ValueError, match=r"fold 0: training loss is nan at epoch 0, batch \d.*NaN/inf"):
        tp.train_fold(cohort, fold, opts, tmp_path / "train_nan", progress=False)


def test_checkpoint_load_errors_name_the_file_and_fix(tmp_path):
    cfg = PredictorConfig(kind="slide", feature_dim=4, width=16, transformer_heads=2)
    bins = fit_survival_bins(np.arange(1.0, 21.0), np.arange(20) % 2, n_bins=4)
    good = tmp_path / "predictor.pt"
    save_predictor(good, model_state=build_predictor(cfg).state_dict(), config=cfg, families=None, transform=None,
                   bins=bins, grade_categories=[])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # same version: no warning
        model, cfg2, _ = predictor_from_checkpoint(load_predictor_checkpoint(good))
    assert cfg2 == cfg
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    text = tmp_path / "text.pt"
    text.write_text("not a checkpoint\n")
    for bad in (trunc, text):
        with pytest.raises(ValueError, match=rf"{bad.name}: cannot be read as a predictor checkpoint.*truncated.*"
                                             r"retrain"):
            load_predictor_checkpoint(bad)
    with pytest.raises(ValueError, match=r"is a folder.*predictor\.pt"):
        load_predictor_checkpoint(tmp_path)
    ck = torch.load(good, weights_only=False)
    ck["versions"]["pathgen"] = "9.9.0"
    torch.save(ck, tmp_path / "future.pt")
    with pytest.warns(UserWarning, match=r"future\.pt: written by pathgen 9\.9\.0, running pathgen"):
        load_predictor_checkpoint(tmp_path / "future.pt")
    ck = torch.load(good, weights_only=False)
    ck["config"]["new_field"] = 1
    torch.save(ck, tmp_path / "extra.pt")
    with pytest.raises(ValueError, match=r"extra\.pt: unknown predictor config keys \['new_field'\].*retrain"):
        predictor_from_checkpoint(load_predictor_checkpoint(tmp_path / "extra.pt"))
