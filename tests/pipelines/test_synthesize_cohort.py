"""``pathgen synthesize-cohort``: 2-process torchrun == 1 process, crash + resume without duplicates
or gaps, corrupt bags recorded as failed, LPT sharding."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from pathgen.cli import main as cli_main
from pathgen.pipelines.synthesize_cohort import read_ledger, shard_lpt, stable_seed
from tests.models.cohort_fixture import make_tiny_cohort

REPO = Path(__file__).resolve().parents[2]
COMMON = ["--steps", "4", "--samples", "2", "--chunk", "2", "--threads", "1", "--no-progress"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from pathgen.pipelines.cohort import load_cohort
    from pathgen.pipelines.train_generator import TrainOptions, train_generator

    root = tmp_path_factory.mktemp("sc")
    paths = make_tiny_cohort(root, n_cases=10)
    ns = argparse.Namespace(manifest=paths["manifest"], expression=paths["expression"],
                            signatures=paths["signatures"], features=paths["features"], splits=None,
                            n_folds=4, seed=0)
    run = root / "run"
    cohort = load_cohort(ns, write_splits=run / "splits.json")
    opts = TrainOptions(epochs=1, batch_size=4, val_steps=1, max_patches=16, seed=0,
                        overrides=dict(d_model=32, n_heads=4, ctx_dim=16, encoder_hidden=(32,),
                                       decoder_hidden=(32,), time_dim=16))
    train_generator(cohort, 0, run, opts, progress=False)
    ckpt = run / "generator.pt"
    ref = root / "ref"
    assert _run_inproc(paths, ckpt, ref) == 0
    return root, paths, ckpt, ref


def _args(paths, ckpt, out, features=None):
    return ["synthesize-cohort", str(paths["manifest"]), "--features", str(features or paths["features"]),
            "--model", str(ckpt), "--out", str(out), *COMMON]


def _run_inproc(paths, ckpt, out, *extra, features=None):
    return cli_main([*_args(paths, ckpt, out, features), *extra])


def _env(**kw):
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), **kw)
    return env


def test_lpt_sharding_and_seeds():
    costs = {"a": 10, "b": 9, "c": 5, "d": 4, "e": 1}
    shards = shard_lpt(costs, 2)
    loads = [sum(costs[s] for s in sh) for sh in shards]
    assert sorted(s for sh in shards for s in sh) == sorted(costs)
    assert abs(loads[0] - loads[1]) <= 1  # 15 / 14, not 3 vs 2 files
    assert stable_seed(0, "x") == stable_seed(0, "x") != stable_seed(1, "x")


def test_reference_run_outputs(setup):
    root, paths, ckpt, ref = setup
    table = pd.read_csv(ref / "synthesized.csv")
    ids = pd.read_csv(paths["manifest"])["slide_id"].tolist()
    assert table["slide_id"].tolist() == ids  # manifest order, each once
    assert table.filter(like="_rnaseq").notna().all().all()
    with h5py.File(ref / "samples.h5") as f:
        assert f["samples"].shape[:2] == (10, 2)
        assert list(f["slide_ids"].asstr()[()]) == ids
    summary = json.loads((ref / "summary.json").read_text())
    assert summary["done_total"] == 10 and summary["failed_total"] == 0
    assert set(summary["seconds"]) >= {"read_s", "encode_s", "sample_s", "write_s"}
    assert summary["slides_per_s"] > 0
    # a re-run has nothing to do and changes nothing
    assert _run_inproc(paths, ckpt, ref) == 0
    assert json.loads((ref / "summary.json").read_text())["processed_this_run"] == 0
    pd.testing.assert_frame_equal(pd.read_csv(ref / "synthesized.csv"), table)


def test_torchrun_two_processes_identical(setup):
    root, paths, ckpt, ref = setup
    out = root / "ddp"
    torchrun = Path(sys.executable).parent / "torchrun"
    cmd = [str(torchrun), "--nproc-per-node", "2", "-m", "pathgen", *_args(paths, ckpt, out)]
    res = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert all(r["slides"] > 0 for r in summary["ranks"])  # both ranks did work
    assert {p.name.split("-")[0] for p in (out / "parts").glob("*.h5")} == {"rank0", "rank1"}
    a, b = pd.read_csv(ref / "synthesized.csv"), pd.read_csv(out / "synthesized.csv")
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    with h5py.File(ref / "samples.h5") as f, h5py.File(out / "samples.h5") as g:
        np.testing.assert_array_equal(f["samples"][()], g["samples"][()])


def test_crash_then_resume_no_duplicates_no_gaps(setup):
    root, paths, ckpt, ref = setup
    out = root / "crash"
    cmd = [sys.executable, "-m", "pathgen", *_args(paths, ckpt, out)]
    res = subprocess.run(cmd, cwd=REPO, env=_env(PATHGEN_SYNTH_CRASH_AFTER="5"), capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 17, res.stderr[-2000:]
    assert not (out / "synthesized.csv").exists()
    done = [s for s, st in read_ledger(out).items() if st["state"] == "done"]
    assert len(done) == 4  # two committed chunks of 2; the 5th slide died unflushed
    assert _run_inproc(paths, ckpt, out) == 0
    assert json.loads((out / "summary.json").read_text())["processed_this_run"] == 6
    pd.testing.assert_frame_equal(pd.read_csv(ref / "synthesized.csv"), pd.read_csv(out / "synthesized.csv"),
                                  check_exact=True)
    # a part written but never committed to the ledger (crash between the two) is ignored: forget one
    # slide, re-run, and it is redone into a new part while the old part still holds it -> no duplicate
    victim = done[0]
    (out / "ledger" / f"{victim}.json").unlink()
    assert _run_inproc(paths, ckpt, out) == 0
    table = pd.read_csv(out / "synthesized.csv")
    assert table["slide_id"].is_unique and len(table) == 10
    pd.testing.assert_frame_equal(pd.read_csv(ref / "synthesized.csv"), table, check_exact=True)


def test_corrupt_bag_failed_rest_complete_and_retry(setup):
    root, paths, ckpt, ref = setup
    feats = root / "feats_bad"
    shutil.copytree(paths["features"], feats)
    ids = pd.read_csv(paths["manifest"])["slide_id"].tolist()
    bad, gone = ids[3], ids[7]
    (feats / f"{bad}.h5").write_bytes(b"not an hdf5 file")
    (feats / f"{gone}.h5").unlink()
    out = root / "bad"
    assert _run_inproc(paths, ckpt, out, features=feats) == 2  # some slides failed: exit 2, the rest written
    led = read_ledger(out)
    assert led[bad]["state"] == "failed" and f"{bad}.h5" in led[bad]["reason"] and "fix" in led[bad]["reason"]
    assert led[gone]["state"] == "failed"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["done_total"] == 8 and set(summary["failures"]) == {bad, gone}
    table = pd.read_csv(out / "synthesized.csv")
    ref_t = pd.read_csv(ref / "synthesized.csv")
    pd.testing.assert_frame_equal(ref_t[~ref_t["slide_id"].isin([bad, gone])].reset_index(drop=True), table,
                                  check_exact=True)
    # fixed files: a plain re-run keeps them failed, --retry-failed redoes them
    shutil.copy(paths["features"] / f"{bad}.h5", feats / f"{bad}.h5")
    shutil.copy(paths["features"] / f"{gone}.h5", feats / f"{gone}.h5")
    assert _run_inproc(paths, ckpt, out, features=feats) == 2  # still failed in the ledger
    assert len(pd.read_csv(out / "synthesized.csv")) == 8
    assert _run_inproc(paths, ckpt, out, "--retry-failed", features=feats) == 0
    pd.testing.assert_frame_equal(ref_t, pd.read_csv(out / "synthesized.csv"), check_exact=True)


def test_resume_with_other_settings_refused(setup, capsys):
    """A re-run into the same --out with another seed / sample count / checkpoint would merge old samples
    under the new settings: it stops with a message naming what differs, and changes nothing."""
    root, paths, ckpt, ref = setup
    before = (ref / "synthesized.csv").read_bytes()
    assert _run_inproc(paths, ckpt, ref, "--seed", "7") == 1
    err = capsys.readouterr().err
    assert "other settings" in err and "seed" in err and "fix: pass a new --out" in err
    other = root / "other.pt"
    other.write_bytes(ckpt.read_bytes() + b"\0")
    assert _run_inproc(paths, other, ref) == 1
    assert "checkpoint_sha256" in capsys.readouterr().err
    assert (ref / "synthesized.csv").read_bytes() == before


def test_a_failed_first_run_does_not_lock_the_folder(setup, tmp_path, capsys):
    """A first run stopped by a bad checkpoint made nothing: the fixed command must run in the same --out."""
    root, paths, ckpt, ref = setup
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    out = tmp_path / "fresh"
    assert _run_inproc(paths, bad, out) == 1
    assert "bad.pt" in capsys.readouterr().err
    assert _run_inproc(paths, ckpt, out) == 0
    pd.testing.assert_frame_equal(pd.read_csv(ref / "synthesized.csv"), pd.read_csv(out / "synthesized.csv"),
                                  check_exact=True)


def test_mpp_overrides_are_checked_per_done_slide():
    from pathgen.pipelines.synthesize_cohort import mpp_conflicts

    led = {"a": {"state": "done", "mpp_override": None, "mpp_default": None, "mpp_source": "metadata"},
           "b": {"state": "done", "mpp_override": 0.25, "mpp_default": None, "mpp_source": "override"},
           "c": {"state": "done", "mpp_override": None, "mpp_default": 0.5, "mpp_source": "default"},
           "f": {"state": "done", "mpp_override": None, "mpp_default": 0.5, "mpp_source": "metadata"},
           "d": {"state": "failed", "reason": "no MPP"},
           "e": {"state": "done"}}  # a feature bag: MPP plays no part
    kinds = {"a": "slide", "b": "slide", "c": "slide", "d": "slide", "e": "bag", "f": "slide"}
    # the failed slide's fix (--mpp for slides without one) leaves slides with their own MPP alone
    assert mpp_conflicts(led, kinds, {"b": 0.25}, 0.5) == []
    assert mpp_conflicts(led, kinds, {"b": 0.25}, 0.4) == ["c"]  # c was patched at --mpp 0.5; f had its own
    assert mpp_conflicts(led, kinds, {"b": 0.3}, 0.5) == ["b"]
    assert mpp_conflicts(led, kinds, {"a": 0.3, "b": 0.25}, 0.5) == ["a"]  # a CSV row overrides the metadata


def test_slide_ids_with_extension_and_duplicates(setup, tmp_path, capsys):
    """MCAT-style tables name slides ``<id>.svs``; ``embed`` writes ``<id>.h5``: the extension is dropped
    (as read_manifest does). A slide listed twice is an error, not a silent choice."""
    root, paths, ckpt, ref = setup
    m = pd.read_csv(paths["manifest"])
    m["slide_id"] = m["slide_id"] + ".svs"
    man = tmp_path / "mcat.csv"
    m.to_csv(man, index=False)
    out = tmp_path / "ext"
    assert cli_main(["synthesize-cohort", str(man), "--features", str(paths["features"]), "--model", str(ckpt),
                     "--out", str(out), *COMMON]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(ref / "synthesized.csv"), pd.read_csv(out / "synthesized.csv"),
                                  check_exact=True)
    # the provenance sidecar `pathgen evaluate` reads: who trained the generator
    side = json.loads((out / "synthesized.json").read_text())
    assert side["generator_train_case_ids"] == sorted(set(torch.load(ckpt, weights_only=False)["train_case_ids"]))
    pd.concat([m, m.iloc[:1]]).to_csv(man, index=False)
    assert cli_main(["synthesize-cohort", str(man), "--features", str(paths["features"]), "--model", str(ckpt),
                     "--out", str(tmp_path / "dup"), *COMMON]) == 1
    assert "listed more than once" in capsys.readouterr().err


def test_unmatched_mpp_ids_one_per_row_and_dotted_ids_match():
    from pathgen.pipelines.synthesize_cohort import unmatched_mpp_ids
    from pathgen.slides.grid import read_mpp_csv

    def table(tmp_rows):
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / "mpp.csv"
            p.write_text("slide_id,mpp\n" + "".join(f"{r},0.5\n" for r in tmp_rows))
            return read_mpp_csv(p)

    t = table(["a.svs", "TCGA-XX-DX1.AB12-CD", "zz.svs", "q"])
    assert unmatched_mpp_ids(t, ["a", "TCGA-XX-DX1.AB12-CD", "b"]) == ["q", "zz.svs"]


def test_slide_inputs_check_the_encoder_once_up_front(setup, tmp_path, capsys):
    """A slide_path row needs an encoder; a bad one is one usage error, not a failure per slide."""
    root, paths, ckpt, ref = setup
    man = tmp_path / "slides.csv"
    man.write_text("slide_id,slide_path\ns1,/nonexistent/s1.svs\ns2,/nonexistent/s2.svs\n")
    out = tmp_path / "o"
    assert cli_main(["synthesize-cohort", str(man), "--model", str(ckpt), "--out", str(out),
                     "--encoder", "resnet50-trunc", *COMMON]) == 1
    err = capsys.readouterr().err
    assert "--encoder resnet50-trunc" in err and "--weights" in err
    assert not (out / "ledger").exists() or not any((out / "ledger").iterdir())
    assert cli_main(["synthesize-cohort", str(man), "--model", str(ckpt), "--out", str(out),
                     "--encoder", "stain-stats", "--model-kwargs", "{bad json", *COMMON]) == 1
    assert "--model-kwargs" in capsys.readouterr().err
