"""``pathgen synthesize-cohort``: streaming bag/slide -> expression synthesis for whole archives.

One code path for one process and for ``torchrun --nproc-per-node N [--nnodes ...] -m pathgen
synthesize-cohort ...`` (torch.distributed, gloo control plane):

* **Sharding by patch count**: rank 0 sizes every pending slide (HDF5 rows; slide files: bytes) and
  assigns them greedily, longest first, to the least-loaded rank (LPT); the plan is broadcast.
* **Determinism independent of sharding**: each slide is sampled with its own ``torch.Generator``
  seeded from a stable hash of ``(seed, slide_id)`` (noise drawn on the CPU), so 1 process and N
  processes give bit-identical numbers (same thread count; ``--batch-slides 1``).
* **Streaming with bounded memory**: a reader thread prefetches bags into a ``queue.Queue`` of
  ``--prefetch`` items; results are flushed every ``--chunk`` slides.
* **Resumable**: each flush writes ``parts/rank<r>-<n>.parquet`` + ``.h5`` atomically, *then* the
  ledger entries ``ledger/<slide_id>.json`` (state done / failed with reason, rank, part, timings).
  A re-run skips done slides (``--retry-failed`` also redoes failed ones) after checking that its
  settings (checkpoint bytes, sampling, patching) equal those in ``settings.json``, so one output never
  mixes samples of two configurations. A crash between a part
  and its ledger entries leaves an orphan part; the merge reads each slide only from the part its
  ledger names, so there are never duplicates.
* **Merge**: after a barrier, rank 0 writes ``synthesized.csv`` / ``.parquet`` (slide_id, case_id,
  MCAT-style ``<GENE>_rnaseq``, mean of K samples), ``samples.h5`` (all samples) and
  ``summary.json`` (slides/s, patches/s, read / encode / sample / write seconds, failures).

Inputs: a CSV with ``slide_id`` and ``features_path`` (HDF5 bag) or ``slide_path`` (a slide file:
patched and embedded on the fly with ``--encoder``; the features are kept under
``<out>/work/features`` with ``--keep-features``, else discarded), or ``--features DIR`` holding
``<slide_id>.h5``. Testing hook: ``PATHGEN_SYNTH_CRASH_AFTER=N`` makes each rank die (``os._exit``)
after N slides, as a crash would.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import queue
import resource
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

from pathgen.pipelines import slide_batch as sb
from pathgen.pipelines.distributed import Dist
from pathgen.pipelines.embed import encoder_options
from pathgen.pipelines.synthesize import PROVENANCE_NAME
from pathgen.utils.io import atomic_path, atomic_write_text

LEDGER = "ledger"
PARTS = "parts"
_STOP = object()


# ----------------------------------------------------------------------------- inputs, plan, ledger
def read_inputs(manifest: Path, features: Path | None) -> pd.DataFrame:
    """Rows ``slide_id, case_id, kind (bag|slide), path`` in manifest order.

    Slide ids lose a slide file extension (``<id>.svs`` -> ``<id>``, as ``read_manifest`` and ``pathgen
    embed`` name ``<id>.h5``); a slide id listed twice is an error, since which row wins would be a guess.
    """
    from pathgen.data.manifest import strip_slide_extension

    m = pd.read_csv(manifest, dtype=str)
    if "slide_id" not in m.columns:
        raise ValueError(f"{manifest}: needs a slide_id column, found {list(m.columns)}")
    ids = m["slide_id"].map(strip_slide_extension)
    dup = ids[ids.duplicated()].unique().tolist()
    if dup:
        raise ValueError(f"{manifest}: slide ids listed more than once (e.g. {dup[:3]}); fix: keep one row per slide")
    rows = []
    for sid, (_, r) in zip(ids, m.iterrows()):
        fp = r.get("features_path")
        sp = r.get("slide_path")
        if isinstance(fp, str) and fp:
            kind, path = "bag", Path(fp)
        elif isinstance(sp, str) and sp:
            kind, path = "slide", Path(sp)
        elif features is not None:
            kind, path = "bag", Path(features) / f"{sid}.h5"
        else:
            raise ValueError(f"{manifest}: slide {sid} has no features_path/slide_path and no --features DIR")
        if not path.is_absolute():
            cand = manifest.parent / path
            path = cand if cand.exists() or not path.exists() else path
        case = r.get("case_id")
        rows.append({"slide_id": sid, "case_id": case if isinstance(case, str) else sid, "kind": kind,
                     "path": str(path)})
    return pd.DataFrame(rows, columns=["slide_id", "case_id", "kind", "path"])


def slide_cost(kind: str, path: str) -> int:
    """Work estimate: patch count of a bag, bytes/1e6 of a slide file (1 when unreadable: it fails fast)."""
    try:
        if kind == "bag":
            from pathgen.data.bags import h5_bag_shape

            return max(1, h5_bag_shape(path)[0])
        return max(1, os.path.getsize(path) // 1_000_000)
    except Exception:  # noqa: BLE001 - the reader records the real error
        return 1


def shard_lpt(costs: dict[str, int], world: int) -> list[list[str]]:
    """Greedy longest-processing-time: biggest slides first onto the least-loaded rank (ties: lowest rank)."""
    loads = [0] * world
    shards: list[list[str]] = [[] for _ in range(world)]
    for sid, c in sorted(costs.items(), key=lambda kv: (-kv[1], kv[0])):
        r = min(range(world), key=lambda i: (loads[i], i))
        shards[r].append(sid)
        loads[r] += c
    return shards


def ledger_path(out: Path, slide_id: str) -> Path:
    return out / LEDGER / f"{slide_id}.json"


def read_ledger(out: Path) -> dict[str, dict]:
    led = {}
    d = out / LEDGER
    if d.is_dir():
        for p in d.glob("*.json"):
            try:
                st = json.loads(p.read_text())
                led[st["slide_id"]] = st
            except (OSError, ValueError, KeyError):
                continue  # unreadable -> pending
    return led


SETTINGS = "settings.json"
_RESULT_SETTINGS = ("samples", "steps", "mode", "eta", "guidance_scale", "seed",
                    "encoder", "encoder_weights", "model_kwargs", "mean", "std", "target_mpp", "patch_size")
# --mpp / --mpp-csv are not run settings: they change only the slides they apply to, so they are kept
# per slide in its ledger entry and checked per slide (mpp_conflicts): after a slide failed for want
# of an MPP, passing --mpp as the error says must not be refused because other slides are done.


def run_settings(args: argparse.Namespace) -> dict:
    """What the numbers of a run depend on: the checkpoint's bytes and the sampling (and, for slide
    inputs, the patching and embedding) settings. ``--batch-slides``, ``--chunk`` and threads change
    only float rounding or speed, so they are left out."""
    from pathgen.features.encoder import file_sha256

    d = {k: getattr(args, k, None) for k in _RESULT_SETTINGS}
    return {"checkpoint_sha256": file_sha256(args.model), **d}


def check_settings(out: Path, settings: dict, led: dict[str, dict], legacy_mpp: dict | None = None) -> str | None:
    """``None`` when ``out`` may take results made with ``settings``, else the error message.

    Settings that differ from ``<out>/settings.json`` are refused only when a slide is done: with
    nothing done (a first run that failed, e.g. on a bad checkpoint) the new settings replace them.
    ``record_settings`` writes the file once the inputs and the checkpoint have been read.
    """
    path = out / SETTINGS
    done = any(st.get("state") == "done" for st in led.values())
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except ValueError:
            old = None
        if isinstance(old, dict):
            legacy = {k: old[k] for k in ("mpp", "mpp_csv") if k in old}
            if legacy and done and legacy != legacy_mpp:  # an older pathgen checked these for the whole folder
                return (f"{out} was made by an older pathgen with --mpp / --mpp-csv {legacy}, not {legacy_mpp}, and "
                        "its ledger does not record which slides used them; fix: pass the earlier values, a new "
                        f"--out, or delete {out} to start over")
            old = {k: v for k, v in old.items() if k in settings}
        if old != settings and done:
            diff = sorted(k for k in settings.keys() | (old or {}).keys()
                          if (old or {}).get(k) != settings.get(k)) if isinstance(old, dict) else ["(unreadable)"]
            return (f"{out} already holds a synthesis made with other settings (differ: {', '.join(diff)}; see "
                    f"{path}); fix: pass a new --out, or delete {out} to start over with these settings")
        return None
    if done:
        return (f"{out} holds a ledger but no {SETTINGS} (written by an older pathgen), so a resume cannot be checked "
                f"against its settings; fix: pass a new --out, or delete {out} to start over")
    return None


def record_settings(out: Path, settings: dict) -> None:
    atomic_write_text(out / SETTINGS, json.dumps(settings, indent=1, default=str))


def mpp_conflicts(led: dict[str, dict], kinds: dict[str, str], mpp_table: dict[str, float],
                  default: float | None) -> list[str]:
    """Done slide files whose level-0 MPP the new --mpp-csv / --mpp could change.

    A done slide keeps its samples; merging them with samples of slides patched at another MPP
    would mix settings. ``--mpp-csv`` overrides the metadata, so any change of a done slide's row
    conflicts; ``--mpp`` applies only to slides without an MPP in their metadata, so it conflicts
    only for slides patched at it (``mpp_source`` in the ledger, from the patch status).
    """
    bad = []
    for sid, st in led.items():
        if st.get("state") != "done" or kinds.get(sid) != "slide":
            continue
        if "mpp_override" not in st:  # an older ledger: checked against settings.json (check_settings)
            continue
        if st["mpp_override"] != mpp_table.get(sid):
            bad.append(sid)
        elif st.get("mpp_source", "default") == "default" and st["mpp_default"] != default:
            bad.append(sid)  # patched at the --mpp fallback (or not known to have had its own MPP)
    return sorted(bad)


def unmatched_mpp_ids(table: dict[str, float], slide_ids: list[str]) -> list[str]:
    """``--mpp-csv`` ids that name no slide. ``read_mpp_csv`` keys each row by its id and by the id
    without its last extension (``a.svs`` -> ``a``; ``TCGA-..-DX1.<uuid>`` -> ``TCGA-..-DX1``), so a row
    counts as matched when either key is a slide id; one id is reported per unmatched row."""
    ids = set(slide_ids)
    stem = {k: os.path.splitext(k)[0] for k in table}
    matched = {k for k in table if k in ids or stem[k] in ids}
    matched |= {stem[k] for k in matched}  # the extension-less key of a matched row
    unmatched = [k for k in table if k not in matched]
    return sorted(k for k in unmatched if not any(j != k and stem[j] == k for j in unmatched))


def stable_seed(seed: int, slide_id: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{slide_id}".encode()).digest()[:8], "little") & (2**63 - 1)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


# ----------------------------------------------------------------------------- sampling
def sample_streams(model, schedule, ctx, gens, *, samples: int, steps: int, mode: str = "ddim", eta: float = 0.0,
                   guidance_scale: float | None = None):
    """``pathgen.models.generator.sample`` with one noise stream per bag: bag i's initial and per-step
    noise come from ``gens[i]`` (drawn on the CPU), so a bag's samples do not depend on its batch-mates
    or on the device's RNG. Returns [n_bags, K, G]."""
    import torch

    from pathgen.diffusion import ddim_timesteps
    from pathgen.ops import denoise_step

    cfg = model.cfg
    K, G, dev = samples, cfg.n_genes, ctx.x.device

    def noise():
        return torch.cat([torch.randn(K, G, generator=g) for g in gens]).to(dev)

    ac = schedule.alphas_cumprod.to(dev)
    T = schedule.num_train_timesteps
    ts = ddim_timesteps(T, steps) if mode == "ddim" else list(range(T))[::-1]
    x = noise()
    B = x.shape[0]
    stochastic = mode == "ddpm" or eta > 0
    for i in range(len(ts)):
        t = torch.full((B,), ts[i], device=dev, dtype=torch.long)
        t_prev = torch.full((B,), ts[i + 1] if i + 1 < len(ts) else -1, device=dev, dtype=torch.long)
        last = i == len(ts) - 1
        pred = model(x, t, ctx, samples_per_bag=K)
        uncond = model(x, t, None, samples_per_bag=K) if guidance_scale is not None else None
        nz = noise() if stochastic and not last else None
        x = denoise_step(x, pred, t, t_prev, ac, mode=mode, eta=eta, prediction=cfg.prediction, noise=nz,
                         clip=cfg.clip_sample, guidance_scale=guidance_scale, model_output_uncond=uncond, out=x)
    return x.view(len(gens), K, G)


# ----------------------------------------------------------------------------- reader
class SlideReader:
    """Reads bags (or patches + embeds slide files) in a thread, ``prefetch`` items ahead."""

    def __init__(self, items: list[dict], args: argparse.Namespace, out: Path, prefetch: int,
                 mpp_table: dict[str, float] | None = None, encoder=None):
        self.items, self.args, self.out = items, args, out
        self.mpp_table = mpp_table or {}  # slide_id -> level-0 µm/px (--mpp-csv)
        self.q: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
        self._encoder = encoder  # built (and checked) once by main when there are slide inputs
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _read(self, it: dict):
        from pathgen.data.bags import read_h5_bag

        if it["kind"] == "bag":
            feats, _ = read_h5_bag(it["path"])
            return feats
        return self._embed_slide(it)

    def _embed_slide(self, it: dict):
        from pathgen.data.bags import read_h5_bag
        from pathgen.pipelines.embed import embed_one, feature_paths
        from pathgen.pipelines.patch import MPPChoice, PatchOptions, run_patch_stage

        a = self.args
        work = self.out / "work"
        slide = sb.Slide(it["slide_id"], Path(it["path"]))
        opts = PatchOptions(target_mpp=a.target_mpp, patch_size=a.patch_size)
        mpp = MPPChoice(self.mpp_table.get(slide.slide_id), a.mpp)
        pres = run_patch_stage(work, slide, opts, mpp)
        if pres.state == "failed":
            raise RuntimeError(pres.error or "patching failed")
        embed_one(slide, work, self._encoder, opts, mpp, a.embed_batch_size, 0, "cpu", False)
        fpath = feature_paths(work, slide.slide_id, False)[0]
        feats, _ = read_h5_bag(fpath)
        if not a.keep_features:
            fpath.unlink(missing_ok=True)
        return feats

    def _run(self):
        for it in self.items:
            t0 = time.perf_counter()
            try:
                feats, err = self._read(it), None
                if feats.ndim != 2 or len(feats) == 0:
                    feats, err = None, f"empty or malformed bag (shape {getattr(feats, 'shape', None)})"
                elif not np.isfinite(feats).all():
                    feats, err = None, "non-finite features"
            except Exception as exc:  # noqa: BLE001 - any unreadable input is a per-slide failure
                feats, err = None, f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
            self.q.put((it, feats, err, time.perf_counter() - t0))
        self.q.put(_STOP)

    def __iter__(self):
        while True:
            x = self.q.get()
            if x is _STOP:
                return
            yield x


# ----------------------------------------------------------------------------- one rank
def _next_part_index(out: Path, rank: int) -> int:
    idx = [int(p.stem.split("-")[-1]) for p in (out / PARTS).glob(f"rank{rank}-*.h5")] if (out / PARTS).is_dir() else []
    return max(idx, default=-1) + 1


def mean_table(ids: list[str], cases: list[str], S: np.ndarray, genes: list[str]) -> pd.DataFrame:
    """slide_id, case_id, ``<GENE>_rnaseq`` (mean of the K samples; a gene in two families once)."""
    from pathgen.data.expression import to_mcat_columns
    from pathgen.pipelines.synthesize import _unique_columns

    mean = _unique_columns(pd.DataFrame(S.mean(1), index=pd.Index(ids, name="case_id"), columns=genes))
    table = to_mcat_columns(mean).rename(columns={"case_id": "slide_id"})
    table.insert(1, "case_id", list(cases))
    return table


def write_part(out: Path, rank: int, n: int, rows: list[dict], genes: list[str]) -> str:
    """Write one part atomically: ``.parquet`` (means, for inspection) and ``.h5`` (all samples, what
    the merge reads); the merge trusts only parts that a ledger entry names."""
    import h5py

    name = f"rank{rank}-{n:05d}"
    ids = [r["slide_id"] for r in rows]
    cases = [r["case_id"] for r in rows]
    S = np.stack([r["samples"] for r in rows]).astype(np.float32)  # [n, K, G]
    with atomic_path(out / PARTS / f"{name}.parquet") as tmp:
        mean_table(ids, cases, S, genes).to_parquet(tmp, index=False)
    with atomic_path(out / PARTS / f"{name}.h5") as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("samples", data=S)
        f.create_dataset("slide_ids", data=np.array(ids, dtype=h5py.string_dtype()))
        f.create_dataset("case_ids", data=np.array(cases, dtype=h5py.string_dtype()))
    return name


def run_rank(args: argparse.Namespace, out: Path, rank: int, items: list[dict], model, transform, genes: list[str],
             dev, mpp_table: dict[str, float] | None = None, encoder=None) -> dict:
    import torch
    from tqdm.auto import tqdm

    from pathgen.diffusion import NoiseSchedule

    schedule = NoiseSchedule(model.cfg.schedule)
    crash_after = int(os.environ.get("PATHGEN_SYNTH_CRASH_AFTER", "0") or 0)
    acc = {"read_s": 0.0, "encode_s": 0.0, "sample_s": 0.0, "write_s": 0.0, "slides": 0, "patches": 0, "failed": 0}
    part_n = _next_part_index(out, rank)
    pending: list[dict] = []
    batch: list[tuple] = []
    bar = tqdm(total=len(items), desc=f"rank {rank}", unit="slide", position=rank, file=sys.stderr,
               disable=args.no_progress, dynamic_ncols=True)
    processed = 0

    def flush():
        nonlocal part_n, pending
        if not pending:
            return
        t0 = time.perf_counter()
        name = write_part(out, rank, part_n, pending, genes)
        part_n += 1
        for r in pending:
            atomic_write_text(ledger_path(out, r["slide_id"]), json.dumps({
                "slide_id": r["slide_id"], "state": "done", "rank": rank, "part": name,
                "n_patches": r["n_patches"], "timings": r["timings"], "finished": time.time(),
                # the MPP this slide was patched under (checked per slide on resume, mpp_conflicts)
                "mpp_override": (mpp_table or {}).get(r["slide_id"]), "mpp_default": args.mpp,
                "mpp_source": ((sb.read_status(out / "work", "patch", r["slide_id"]) or {}).get("slide")
                               or {}).get("mpp_source")}))
        acc["write_s"] += time.perf_counter() - t0
        pending = []

    def run_batch():
        nonlocal processed
        if not batch:
            return
        t0 = time.perf_counter()
        with torch.no_grad():
            feats = torch.from_numpy(np.concatenate([b[1] for b in batch])).to(dev)
            lens = [len(b[1]) for b in batch]
            cu = torch.tensor([0, *np.cumsum(lens)], dtype=torch.int32, device=dev)
            ctx = model.encode_context(feats, cu, max(lens))
            t1 = time.perf_counter()
            gens = [torch.Generator().manual_seed(stable_seed(args.seed, b[0]["slide_id"])) for b in batch]
            x = sample_streams(model, schedule, ctx, gens, samples=args.samples, steps=args.steps, mode=args.mode,
                               eta=args.eta, guidance_scale=args.guidance_scale)
        x = x.float().cpu().numpy()
        n, K = x.shape[:2]
        raw = transform.inverse_transform(x.reshape(n * K, -1)).reshape(n, K, -1)
        t2 = time.perf_counter()
        acc["encode_s"] += t1 - t0
        acc["sample_s"] += t2 - t1
        for i, (it, f, read_s) in enumerate(batch):
            pending.append({"slide_id": it["slide_id"], "case_id": it["case_id"], "samples": raw[i],
                            "n_patches": int(len(f)), "timings": {"read_s": round(read_s, 4),
                                                                  "encode_sample_s": round((t2 - t0) / n, 4)}})
            acc["slides"] += 1
            acc["patches"] += int(len(f))
        bar.update(n)
        processed += n
        batch.clear()
        if len(pending) >= args.chunk:
            flush()
        if crash_after and processed >= crash_after:
            os._exit(17)  # simulated crash: no flush, no cleanup

    reader = SlideReader(items, args, out, args.prefetch, mpp_table, encoder)
    t_wait = time.perf_counter()
    for it, feats, err, read_s in reader:
        acc["read_s"] += read_s
        if err is not None:
            atomic_write_text(ledger_path(out, it["slide_id"]), json.dumps({
                "slide_id": it["slide_id"], "state": "failed", "reason": err, "rank": rank, "path": it["path"],
                "finished": time.time()}))
            acc["failed"] += 1
            bar.update(1)
            continue
        batch.append((it, feats, read_s))
        if len(batch) >= args.batch_slides:
            run_batch()
    run_batch()
    flush()
    bar.close()
    acc["wall_s"] = time.perf_counter() - t_wait
    acc["peak_rss_mb"] = round(peak_rss_mb(), 1)
    acc["rank"] = rank
    return acc


# ----------------------------------------------------------------------------- merge
def merge(out: Path, order: list[str], genes: list[str], meta: dict) -> int:
    """Rank 0: every done slide's samples from the part its ledger names, in manifest order."""
    import h5py

    led = read_ledger(out)
    by_part: dict[str, set[str]] = {}
    for sid, st in led.items():
        if st.get("state") == "done":
            by_part.setdefault(st["part"], set()).add(sid)
    samples, cases = {}, {}
    for part, want in by_part.items():
        with h5py.File(out / PARTS / f"{part}.h5", "r") as f:
            ids = f["slide_ids"].asstr()[()]
            cs = f["case_ids"].asstr()[()]
            S = f["samples"][()]
        for i, sid in enumerate(ids):
            if sid in want:
                samples[sid], cases[sid] = S[i], cs[i]
    done = [s for s in order if s in samples]
    if not done:
        return 0
    S = np.stack([samples[s] for s in done])
    table = mean_table(done, [cases[s] for s in done], S, genes)
    atomic_write_text(out / PROVENANCE_NAME, json.dumps({**meta, "slide_ids": done}, indent=1))
    with atomic_path(out / "synthesized.csv") as tmp:
        table.to_csv(tmp, index=False)
    with atomic_path(out / "synthesized.parquet") as tmp:
        table.to_parquet(tmp, index=False)
    with atomic_path(out / "samples.h5") as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("samples", data=S, compression="gzip")  # [slides, K, G]
        f.create_dataset("slide_ids", data=np.array(done, dtype=h5py.string_dtype()))
        f.create_dataset("case_ids", data=np.array([cases[s] for s in done], dtype=h5py.string_dtype()))
        f.create_dataset("genes", data=np.array(genes, dtype=h5py.string_dtype()))
        f.attrs["meta"] = json.dumps(meta)
    return len(done)


# ----------------------------------------------------------------------------- CLI
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("manifest", type=Path, help="CSV: slide_id [, case_id] and features_path (h5 bag) or slide_path")
    p.add_argument("--model", type=Path, required=True, help="generator checkpoint (generator.pt)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--features", type=Path, default=None, help="folder of <slide_id>.h5 bags for rows without paths")
    p.add_argument("--samples", type=int, default=3, help="samples per slide (averaged in synthesized.csv)")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--mode", choices=["ddim", "ddpm"], default="ddim")
    p.add_argument("--eta", type=float, default=0.0)
    p.add_argument("--guidance-scale", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (torchrun: cuda:<LOCAL_RANK>)")
    p.add_argument("--batch-slides", type=int, default=1,
                   help="slides sampled together (1: bit-identical across any sharding; >1 faster on GPU, "
                        "same noise streams, float rounding may differ)")
    p.add_argument("--chunk", type=int, default=32, help="slides per output part (and ledger commit)")
    p.add_argument("--prefetch", type=int, default=4, help="bags read ahead (bounded queue)")
    p.add_argument("--retry-failed", action="store_true", help="also redo slides the ledger marks failed")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per rank")
    p.add_argument("--no-progress", action="store_true")
    g = p.add_argument_group("slide inputs (slide_path rows)")
    g.add_argument("--encoder", default="resnet50-trunc")
    g.add_argument("--encoder-weights", default=None)
    g.add_argument("--model-kwargs", default=None, metavar="JSON", help="timm:<model> only, as in pathgen embed")
    g.add_argument("--mean", default=None, metavar="R,G,B", help="timm:<model> only, as in pathgen embed")
    g.add_argument("--std", default=None, metavar="R,G,B", help="timm:<model> only, as in pathgen embed")
    g.add_argument("--embed-device", default="cpu")
    g.add_argument("--embed-batch-size", type=int, default=64)
    g.add_argument("--target-mpp", type=float, default=0.5)
    g.add_argument("--patch-size", type=int, default=256)
    g.add_argument("--keep-features", action="store_true", help="keep <out>/work/features/<slide_id>.h5")
    g.add_argument("--mpp", type=float, default=None, help="level-0 µm/px for slides whose metadata has none")
    g.add_argument("--mpp-csv", type=Path, default=None,
                   help="CSV slide_id,mpp: level-0 µm/px per slide (overrides the metadata)")


def main(args: argparse.Namespace) -> int:
    import torch

    from pathgen.models.generator.checkpoint import load_checkpoint, model_from_checkpoint, train_case_ids, versions

    if args.threads:
        torch.set_num_threads(args.threads)
    d = Dist()
    out = Path(args.out)
    t_start = time.perf_counter()
    if args.device == "auto":
        dev = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if torch.cuda.is_available() else "cpu")
    else:
        dev = torch.device(args.device)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}")
    from pathgen.pipelines.patch import mpp_overrides

    try:
        args.mpp, mpp_table = mpp_overrides(args)
        if args.target_mpp is None or not args.target_mpp > 0 or not np.isfinite(args.target_mpp):
            raise sb.UsageError(f"--target-mpp must be a positive number, got {args.target_mpp}")
        inputs = read_inputs(Path(args.manifest), args.features)
        encoder = None
        if (inputs["kind"] == "slide").any():  # a bad encoder is one usage error, not a failure per slide
            from pathgen.features import get_encoder

            try:
                encoder = get_encoder(args.encoder, weights=args.encoder_weights, device=args.embed_device,
                                      **encoder_options(args))
            except (ValueError, ImportError) as exc:
                raise sb.UsageError(f"--encoder {args.encoder}: {exc}") from exc
    except (sb.UsageError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        d.close()
        return sb.EXIT_USAGE
    order = inputs["slide_id"].tolist()
    unknown = unmatched_mpp_ids(mpp_table, order)
    if unknown and d.rank == 0:
        print(f"warning: {args.mpp_csv}: {len(unknown)} slide ids match no slide of {args.manifest} "
              f"(e.g. {unknown[:3]}); their MPP is not used", file=sys.stderr)
    plan = None
    settings = None
    if d.rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        led = read_ledger(out)
        settings = run_settings(args)
        from pathgen.features.encoder import file_sha256

        legacy_mpp = {"mpp": args.mpp, "mpp_csv": file_sha256(args.mpp_csv) if args.mpp_csv else None}
        error = check_settings(out, settings, led, legacy_mpp)
        kinds = dict(zip(inputs["slide_id"], inputs["kind"]))
        clash = mpp_conflicts(led, kinds, mpp_table, args.mpp)
        if error is None and clash:
            error = (f"{len(clash)} done slides (e.g. {clash[:3]}) were patched under other --mpp / --mpp-csv values "
                     "than these; their samples would be merged with samples made at another MPP. Fix: pass the "
                     f"earlier values (see their entries in {out / LEDGER}), or a new --out")
        if error is not None:
            plan = {"error": error}
    if plan is None and d.rank == 0:
        skip = {s for s, st in led.items()
                if st.get("state") == "done" or (st.get("state") == "failed" and not args.retry_failed)}
        todo = inputs[~inputs["slide_id"].isin(skip)]
        costs = {r.slide_id: slide_cost(r.kind, r.path) for r in todo.itertuples()}
        plan = {"shards": shard_lpt(costs, d.world), "costs": costs, "skipped": len(skip)}
    plan = d.broadcast(plan)
    if "error" in plan:
        if d.rank == 0:
            print(f"error: {plan['error']}", file=sys.stderr)
        d.close()
        return sb.EXIT_USAGE
    mine = set(plan["shards"][d.rank])
    pos = {sid: i for i, sid in enumerate(plan["shards"][d.rank])}  # LPT order: biggest first
    items = sorted((r for r in inputs.to_dict("records") if r["slide_id"] in mine), key=lambda r: pos[r["slide_id"]])
    ckpt = load_checkpoint(args.model)
    model, fam, transform = model_from_checkpoint(ckpt, dev)
    model.eval()
    genes = list(fam.columns)
    if d.rank == 0:  # inputs and checkpoint read: these settings now describe this folder
        record_settings(out, settings)
    d.barrier()
    stats = run_rank(args, out, d.rank, items, model, transform, genes, dev, mpp_table, encoder)
    stats["planned_patches"] = int(sum(plan["costs"][s] for s in mine))
    all_stats = d.gather(stats)
    d.barrier()
    rc = 0
    if d.rank == 0:
        meta = {"checkpoint": str(args.model), "samples": args.samples, "steps": args.steps, "mode": args.mode,
                "eta": args.eta, "guidance_scale": args.guidance_scale, "seed": args.seed,
                "families": fam.to_dict(), "versions": versions(), "world_size": d.world,
                # who trained the generator, for `pathgen evaluate`'s held-out check (as `pathgen synthesize`)
                "generator_train_case_ids": train_case_ids(ckpt)}
        t0 = time.perf_counter()
        n_done = merge(out, order, genes, meta)
        merge_s = time.perf_counter() - t0
        led = read_ledger(out)
        failures = {s: st.get("reason") for s, st in led.items() if st.get("state") == "failed"}
        wall = time.perf_counter() - t_start
        slides = sum(s["slides"] for s in all_stats)
        patches = sum(s["patches"] for s in all_stats)
        summary = {
            "world_size": d.world, "slides_in_manifest": len(order), "skipped_already_handled": plan["skipped"],
            "processed_this_run": slides, "failed_this_run": sum(s["failed"] for s in all_stats),
            "done_total": n_done, "failed_total": len(failures),
            "pending_total": len(order) - n_done - len(failures),
            "wall_s": round(wall, 3), "slides_per_s": round(slides / max(wall, 1e-9), 3),
            "patches_per_s": round(patches / max(wall, 1e-9), 1),
            "seconds": {k: round(sum(s[k] for s in all_stats), 3)
                        for k in ("read_s", "encode_s", "sample_s", "write_s")} | {"merge_s": round(merge_s, 3)},
            "peak_rss_mb_per_rank": [s["peak_rss_mb"] for s in all_stats],
            "ranks": all_stats, "failures": failures,
        }
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
        print(json.dumps({k: v for k, v in summary.items() if k != "ranks"}, indent=2))
        for sid, reason in sorted(failures.items()):
            print(f"  failed {sid}: {reason}", file=sys.stderr)
        if n_done:
            print(f"wrote {n_done} slides to {out}/synthesized.csv (+ .parquet, samples.h5); "
                  f"{len(failures)} failed (see {out}/ledger)")
        else:
            print(f"no slide synthesized; {len(failures)} failed (see {out}/ledger)")
        # one convention for batch jobs: 2 when some slides failed (fix them and re-run: done ones are kept)
        rc = sb.EXIT_FAILED if failures else 0
    d.barrier()
    d.close()
    return rc
