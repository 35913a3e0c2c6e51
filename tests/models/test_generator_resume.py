"""``train-generator`` run folders: --resume continues only this run's last.pt, an earlier run's
outputs are never silently replaced (--overwrite), non-finite inputs/losses stop the job, an
early-stopped run stays stopped, resume reproduces the uninterrupted run bitwise, and generator
checkpoints fail to load with errors that name the file."""
from __future__ import annotations

import argparse
import shutil

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

import pathgen
import pathgen.pipelines.train_generator as tg
from pathgen.models.generator.checkpoint import load_checkpoint, model_from_checkpoint
from pathgen.pipelines.cohort import load_cohort
from pathgen.pipelines.runtime import epoch_seed
from pathgen.pipelines.train_generator import TrainOptions, train_generator
from tests.models.cohort_fixture import make_tiny_cohort

TINY = dict(d_model=32, n_heads=4, ctx_dim=16, encoder_hidden=(32,), decoder_hidden=(32,), time_dim=16)


def _opts(**kw) -> TrainOptions:
    return TrainOptions(**{**dict(epochs=2, batch_size=4, val_steps=3, max_patches=16, seed=0, device="cpu",
                                  overrides=TINY, patience=50), **kw})


def _cohort(paths):
    ns = argparse.Namespace(manifest=paths["manifest"], expression=paths["expression"], signatures=paths["signatures"],
                            features=paths["features"], splits=None, n_folds=4, seed=0)
    return load_cohort(ns)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    paths = make_tiny_cohort(root / "cohort")
    cohort = _cohort(paths)
    run = root / "run"
    train_generator(cohort, 0, run, _opts(), progress=False)
    return paths, cohort, run


def _copy(run, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(run, dst)
    return dst


def test_resume_refuses_another_runs_last_pt(setup, tmp_path):
    _, cohort, run = setup
    run = _copy(run, tmp_path)
    with pytest.raises(ValueError, match=r"last\.pt: cannot --resume.*fold 0 in last\.pt, 1 now.*training patients"
                                         r".*--overwrite") as e:
        train_generator(cohort, 1, run, _opts(epochs=3), resume=True, progress=False)
    assert "a new --out" in str(e.value)
    with pytest.raises(ValueError, match=r"model config d_model: 32 in last\.pt, 64 now"):
        train_generator(cohort, 0, run, _opts(epochs=3, overrides={**TINY, "d_model": 64}), resume=True,
                        progress=False)
    with pytest.raises(ValueError, match=r"option lr: 0\.0003 in last\.pt, 0\.01 now"):
        train_generator(cohort, 0, run, _opts(epochs=3, lr=1e-2), resume=True, progress=False)
    assert torch.load(run / "last.pt", weights_only=False)["epoch"] == 1  # untouched by the refusals
    # budget knobs may change: more epochs, other patience
    more = train_generator(cohort, 0, run, _opts(epochs=3, patience=40), resume=True, progress=False)
    assert more["epochs_run"] == 3


def test_existing_outputs_refused_unless_resume_or_overwrite(setup, tmp_path):
    _, cohort, run = setup
    run = _copy(run, tmp_path)
    with pytest.raises(FileExistsError, match=r"generator\.pt, last\.pt.*--resume.*--overwrite.*new --out"):
        train_generator(cohort, 0, run, _opts(), progress=False)
    with pytest.raises(ValueError, match="pass one"):
        train_generator(cohort, 0, run, _opts(), resume=True, overwrite=True, progress=False)
    (run / "log.csv").write_text("epoch\n0\n1\n2\n3\n4\n5\n")  # an old, longer log must not survive
    summary = train_generator(cohort, 0, run, _opts(epochs=1), overwrite=True, progress=False)
    assert summary["epochs_run"] == 1 and pd.read_csv(run / "log.csv")["epoch"].tolist() == [0]
    p = argparse.ArgumentParser()
    tg.add_arguments(p)
    assert p.parse_args(["--manifest", "m.csv", "--out", "x", "--overwrite"]).overwrite is True


def test_nan_feature_file_named_before_training(setup, tmp_path):
    paths, cohort, _ = setup
    feats = tmp_path / "features"
    shutil.copytree(paths["features"], feats)
    case = cohort.fold(0).train[0]
    bad = feats / cohort.features[case][0].name
    with h5py.File(bad, "r+") as f:
        x = f["features"][()]
        x[1, 0] = np.nan
        f["features"][...] = x
    poisoned = _cohort({**paths, "features": feats})
    with pytest.raises(ValueError, match=rf"{bad.name}: 1 non-finite .*training patient {case}"):
        train_generator(poisoned, 0, tmp_path / "run", _opts(overrides={**TINY, "patch_norm": "layernorm"}),
                        progress=False)
    assert not (tmp_path / "run" / "train_summary.json").exists()


def test_nonfinite_loss_stops_with_error_and_no_summary(setup, tmp_path, monkeypatch):
    _, cohort, _ = setup
    real, calls = tg.training_loss, []

    def nan_in_epoch_1(*a, **kw):  # 2 steps per epoch (batch 4): the 4th call is in epoch 1
        calls.append(1)
        loss = real(*a, **kw)
        return loss * float("nan") if len(calls) == 4 else loss

    monkeypatch.setattr(tg, "training_loss", nan_in_epoch_1)
    run = tmp_path / "run"
    with pytest.raises(FloatingPointError, match=r"non-finite training loss \(nan\) at epoch 1, step \d.*NaN/inf"):
        train_generator(cohort, 0, run, _opts(epochs=3), progress=False)
    assert not (run / "train_summary.json").exists()
    assert load_checkpoint(run / "last.pt")["epoch"] == 0  # nothing written for the failed epoch
    # a run that chose no checkpoint never reports success
    with pytest.raises(RuntimeError, match="chose no checkpoint"):
        train_generator(cohort, 0, tmp_path / "zero", _opts(epochs=0), progress=False)


def test_early_stopped_run_stays_stopped_on_resume(setup, tmp_path):
    _, cohort, _ = setup
    run = tmp_path / "run"
    first = train_generator(cohort, 0, run, _opts(epochs=5, patience=0), progress=False)
    assert first["epochs_run"] == 1  # patience 0: stops after its first epoch
    again = train_generator(cohort, 0, run, _opts(epochs=5, patience=0), resume=True, progress=False)
    assert again["epochs_run"] == 1 and pd.read_csv(run / "log.csv")["epoch"].tolist() == [0]
    assert again["best_epoch"] == first["best_epoch"] == 0


def test_resume_reproduces_uninterrupted_run(setup, tmp_path):
    """Epoch 1 after a resume shuffles as epoch 1 of a straight run (it used to replay epoch 0's order)."""
    _, cohort, run_a = setup  # a straight 2-epoch run
    train_generator(cohort, 0, tmp_path / "b", _opts(), progress=False)
    train_generator(cohort, 0, tmp_path / "r", _opts(epochs=1), progress=False)  # "crash" after epoch 0
    train_generator(cohort, 0, tmp_path / "r", _opts(), resume=True, progress=False)
    a, b, r = (torch.load(d / "last.pt", weights_only=False) for d in (run_a, tmp_path / "b", tmp_path / "r"))
    for other in (b, r):
        for key in ("model", "ema"):
            for name, t in a[key].items():
                assert torch.equal(t, other[key][name]), (key, name)
        assert [row["train_loss"] for row in a["log"]] == [row["train_loss"] for row in other["log"]]
    assert epoch_seed(0, 1) == epoch_seed(0, 1) != epoch_seed(0, 2) != epoch_seed(1, 1)


def test_generator_checkpoint_load_errors(setup, tmp_path):
    _, _, run = setup
    good = run / "generator.pt"
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    text = tmp_path / "text.pt"
    text.write_text("not a checkpoint\n")
    for path in (trunc, text):
        with pytest.raises(ValueError, match=rf"{path.name}: cannot read .*copy it again.*re-train"):
            load_checkpoint(path)
    with pytest.raises(IsADirectoryError, match="generator.pt inside"):
        load_checkpoint(run)
    ck = torch.load(good, weights_only=False)
    ck["config"]["new_field"] = 1
    ck["config"]["schedule"]["new_knob"] = 2
    torch.save(ck, tmp_path / "newer.pt")
    with pytest.raises(ValueError, match=r"newer\.pt: .*\['new_field', 'schedule\.new_knob'\].*newer pathgen"):
        load_checkpoint(tmp_path / "newer.pt")
    ck = torch.load(good, weights_only=False)
    ck["versions"]["pathgen"] = "99.7.0"
    torch.save(ck, tmp_path / "other.pt")
    with pytest.warns(UserWarning, match=rf"other\.pt: written by pathgen 99\.7\.0, running pathgen "
                                         rf"{pathgen.__version__}"):
        model_from_checkpoint(load_checkpoint(tmp_path / "other.pt"))
