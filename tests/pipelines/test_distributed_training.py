"""Data-parallel training under ``torchrun`` (gloo, 2 CPU processes): ``train-generator`` and
``train-predictor`` shard the training patients, stay in lockstep, keep identical weights on every
rank, and only rank 0 writes; the sharded loader covers every patient once per epoch."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from pathgen.pipelines.distributed import Dist, check_in_sync, sharded_loader, state_digest
from tests.models.cohort_fixture import make_tiny_cohort

REPO = Path(__file__).resolve().parents[2]
TORCHRUN = Path(sys.executable).parent / "torchrun"


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return make_tiny_cohort(tmp_path_factory.mktemp("ddp"), n_cases=16)


def _torchrun(args: list[str], nproc: int = 2) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [str(TORCHRUN), "--standalone", "--nproc-per-node", str(nproc), "-m", "pathgen", *args]
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


def _cohort_args(p: dict) -> list[str]:
    return ["--manifest", str(p["manifest"]), "--expression", str(p["expression"]), "--signatures",
            str(p["signatures"]), "--features", str(p["features"]), "--n-folds", "4"]


def test_single_process_stand_in():
    d = Dist()
    assert not d.active and d.is_main and d.world == 1
    assert d.broadcast(3) == 3 and d.gather("x") == ["x"] and d.mean(2.0, 5) == 2.0
    m = torch.nn.Linear(3, 2)
    assert check_in_sync(m, d, "test")
    loader, set_epoch = sharded_loader(list(range(10)), 4, 0, d)
    set_epoch(1)
    assert len(loader.dataset) == 10
    assert state_digest(m) == state_digest(m) and state_digest(m) != state_digest(torch.nn.Linear(3, 2))


def test_train_generator_two_processes(cohort, tmp_path):
    out = tmp_path / "gen"
    res = _torchrun(["train-generator", *_cohort_args(cohort), "--out", str(out), "--epochs", "3",
                     "--batch-size", "2", "--draws", "2", "--val-steps", "2", "--max-patches", "16",
                     "--accumulate", "2", "--quiet"])
    assert res.stdout.count('"world_size": 2') == 1  # rank 0 alone prints the summary
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["ranks_in_sync"] is True
    assert summary["global_batch_size"] == 2 * 2 * 2
    log = pd.read_csv(out / "log.csv")
    assert log["epoch"].tolist() == [0, 1, 2] and log["train_loss"].notna().all()
    assert (out / "generator.pt").exists() and (out / "last.pt").exists()
    assert not list(out.glob(".*tmp*"))  # no stray temp files from a second writer
    ckpt = torch.load(out / "last.pt", weights_only=False)
    assert ckpt["world_size"] == 2 and ckpt["epoch"] == 2
    # resume under torchrun continues from the saved epoch
    _torchrun(["train-generator", *_cohort_args(cohort), "--out", str(out), "--epochs", "4", "--batch-size", "2",
               "--val-steps", "2", "--max-patches", "16", "--resume", "--quiet"])
    assert pd.read_csv(out / "log.csv")["epoch"].tolist() == [0, 1, 2, 3]


def test_train_predictor_two_processes(cohort, tmp_path):
    # most patients ungraded, as in TCGA: batches without a grade must not stall DDP's gradient reduction
    m = pd.read_csv(cohort["manifest"])
    m.loc[m.index[:12], "grade"] = None
    manifest = tmp_path / "manifest.csv"
    m.to_csv(manifest, index=False)
    out = tmp_path / "pred"
    _torchrun(["train-predictor", *_cohort_args({**cohort, "manifest": manifest}), "--out", str(out),
               "--model", "multimodal", "--epochs", "2", "--batch-size", "2", "--folds", "0", "--n-boot", "20",
               "--width", "16", "--grade-column", "grade", "--quiet"])
    metrics = json.loads((out / "metrics.json").read_text())
    fold = metrics["folds"][0]
    assert fold["world_size"] == 2 and fold["ranks_in_sync"] is True
    assert json.loads((out / "run.json").read_text())["world_size"] == 2
    preds = pd.read_csv(out / "predictions.csv")
    assert preds.groupby("part")["case_id"].nunique()["test"] == fold["n_test"]
    assert not preds.duplicated(["case_id", "fold", "part"]).any()  # rank 0 alone predicted
    assert (out / "fold_0" / "predictor.pt").exists()
