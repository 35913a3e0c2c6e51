"""Throughput and peak memory of ``pathgen synthesize-cohort`` vs cohort size, 1 and N processes.

    OMP_NUM_THREADS=1 python benchmarks/bench_synthesize_cohort.py [--sizes 10 100 1000] [--procs 1 2]
        [--model generator.pt] [--work DIR] [--device cpu|cuda] [--steps 4] [--samples 2]

Writes tiny synthetic CLAM-layout bags (16-48 patches, dim 12: the generator trained on
``tests.models.cohort_fixture``; one is trained in seconds when ``--model`` is not given), runs the
command once per (size, processes) -- ``torchrun --nproc-per-node N`` for N > 1 (gloo) -- and reports
wall seconds (process start to exit), slides/s from the job's own summary, and each rank's peak RSS
(getrusage ru_maxrss). Linear cost shows as constant slides/s; flat memory as constant RSS.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]


def make_bags(root: Path, n: int, dim: int = 12, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    feats_dir = root / "features"
    feats_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        sid = f"BENCH-{i:05d}"
        k = int(rng.integers(16, 48))
        with h5py.File(feats_dir / f"{sid}.h5", "w") as f:
            f.create_dataset("features", data=rng.normal(size=(k, dim)).astype(np.float32))
            f.create_dataset("coords", data=rng.integers(0, 10000, (k, 2)).astype(np.int64))
        rows.append({"slide_id": sid, "case_id": sid[:-2], "features_path": str(feats_dir / f"{sid}.h5")})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root / "manifest.csv"


def train_tiny(root: Path) -> Path:
    sys.path.insert(0, str(REPO))
    from pathgen.pipelines.cohort import load_cohort
    from pathgen.pipelines.train_generator import TrainOptions, train_generator
    from tests.models.cohort_fixture import make_tiny_cohort

    paths = make_tiny_cohort(root / "train_cohort", n_cases=12)
    ns = argparse.Namespace(manifest=paths["manifest"], expression=paths["expression"],
                            signatures=paths["signatures"], features=paths["features"], splits=None,
                            n_folds=4, seed=0)
    run = root / "train_run"
    cohort = load_cohort(ns, write_splits=run / "splits.json")
    opts = TrainOptions(epochs=2, batch_size=4, val_steps=2, max_patches=16, seed=0,
                        overrides=dict(d_model=32, n_heads=4, ctx_dim=16, encoder_hidden=(32,),
                                       decoder_hidden=(32,), time_dim=16))
    train_generator(cohort, 0, run, opts, progress=False)
    return run / "generator.pt"


def run_once(manifest: Path, model: Path, out: Path, procs: int, a: argparse.Namespace) -> dict:
    job = ["synthesize-cohort", str(manifest), "--model", str(model), "--out", str(out), "--steps", str(a.steps),
           "--samples", str(a.samples), "--chunk", "64", "--threads", "1", "--device", a.device, "--no-progress"]
    if procs == 1:
        cmd = [sys.executable, "-m", "pathgen", *job]
    else:
        cmd = [str(Path(sys.executable).parent / "torchrun"), "--nproc-per-node", str(procs), "-m", "pathgen", *job]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    t0 = time.perf_counter()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise RuntimeError(res.stderr[-3000:])
    s = json.loads((out / "summary.json").read_text())
    return {"slides": s["done_total"], "procs": procs, "process_wall_s": round(wall, 2), "job_wall_s": s["wall_s"],
            "slides_per_s": s["slides_per_s"], "patches_per_s": s["patches_per_s"], "seconds": s["seconds"],
            "peak_rss_mb_per_rank": s["peak_rss_mb_per_rank"], "failed": s["failed_total"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000])
    p.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    p.add_argument("--model", type=Path, default=None)
    p.add_argument("--work", type=Path, default=Path("/tmp/bench_synthesize_cohort"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--samples", type=int, default=2)
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    a = p.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    model = a.model or train_tiny(a.work)
    results = []
    for n in a.sizes:
        manifest = make_bags(a.work / f"bags{n}", n)
        for procs in a.procs:
            out = a.work / f"out{n}-p{procs}"
            if out.exists():
                import shutil

                shutil.rmtree(out)
            r = run_once(manifest, model, out, procs, a)
            results.append(r)
            print(f"slides={n:5d} procs={procs}  process wall {r['process_wall_s']:7.2f}s  job wall "
                  f"{r['job_wall_s']:7.2f}s  {r['slides_per_s']:7.2f} slides/s  {r['patches_per_s']:8.1f} patches/s"
                  f"  peak RSS/rank {r['peak_rss_mb_per_rank']} MB  split {r['seconds']}", flush=True)
    if a.json:
        a.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
