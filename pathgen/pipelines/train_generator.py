"""``pathgen train-generator``: fit the PathGen generator on one fold's training patients.

AdamW, EMA weights, packed bags (batch > 1), several noise draws per bag, gradient accumulation,
bf16 autocast on GPU, condition dropout (classifier-free guidance), validation every epoch by
per-gene Spearman of a few-step DDIM sample on the fold's validation patients, early stopping,
atomic checkpoints (best EMA weights in ``generator.pt``, full state in ``last.pt`` for
``--resume``), a CSV log. Normalisation is fitted on the training patients only.

A run folder holds one run: starting without ``--resume`` where ``generator.pt``/``last.pt``/
``log.csv``/``train_summary.json`` exist is refused (``--overwrite`` deletes them first).
``--resume`` continues ``last.pt`` only if it was written for the same fold, training patients,
model config, normalisation and options (``RESUME_FREE`` may change freely, ``RESUME_WARN`` with a
warning), and an early-stopped run stays stopped unless ``--patience`` grows. The shuffle order of
epoch e depends on (seed, e) alone, so a crashed-then-resumed single-process run reproduces the
uninterrupted one exactly. Training stops with an error at the first non-finite loss, after a
check of every bag's features for NaN/inf, and never reports success without a checkpoint of its own.

Data-parallel under ``torchrun --nproc-per-node N -m pathgen train-generator ...``
(``pathgen.pipelines.distributed``): each rank trains on its shard of the training patients
(``--batch-size`` per rank), DDP averages gradients, rank 0 validates and decides, and only rank 0
writes. The same code runs as one process without torchrun.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from pathgen.data.bags import PatientBags, read_h5_bag
from pathgen.data.transforms import ExpressionTransform
from pathgen.diffusion import NoiseSchedule
from pathgen.eval.metrics import per_gene_spearman
from pathgen.models.generator import PathGenDenoiser, make_config, sample, training_loss
from pathgen.models.generator.checkpoint import EMA, load_checkpoint, save_checkpoint, versions
from pathgen.pipelines.cohort import Cohort, add_cohort_arguments, load_cohort
from pathgen.pipelines.distributed import Dist, check_in_sync, sharded_loader, wrap_ddp
from pathgen.pipelines.runtime import make_loader, reseed_loader, resolve_device, seed_everything
from pathgen.pipelines.runtime import write_csv_log as _write_log
from pathgen.utils.io import atomic_write_text


@dataclasses.dataclass
class TrainOptions:
    preset: str = "small"
    epochs: int = 40
    batch_size: int = 8
    draws: int = 1  # noise draws per patient per step (they share the slide's co-attention pass)
    accumulate: int = 1
    lr: float = 3e-4
    weight_decay: float = 1e-2
    ema: float = 0.99
    max_patches: int | None = 1024
    transform: str = "minmax"
    prediction: str = "epsilon"
    loss: str = "l1_mse"
    cond_dropout: float = 0.1
    val_steps: int = 10
    val_every: int = 1
    patience: int = 8
    seed: int = 0
    device: str = "auto"
    num_workers: int = 0
    overrides: dict = dataclasses.field(default_factory=dict)  # extra GeneratorConfig fields


# What ``--resume`` may change. Free: how long to train and how often to validate (the budget:
# raising --epochs or --patience is what resuming is for), and where the job runs. Warned: how each
# optimiser step's work is laid out over processes, batches, accumulation and noise draws (moving a
# run to other hardware); the continuation is then not the uninterrupted run. Every other option
# (preset, overrides, lr, weight_decay, ema, max_patches, transform, prediction, loss, cond_dropout,
# val_steps, seed) defines what is trained or how checkpoints are selected: it must match last.pt.
RESUME_FREE = ("epochs", "patience", "val_every", "device", "num_workers")
RESUME_WARN = ("batch_size", "accumulate", "draws")
RUN_OUTPUTS = ("generator.pt", "last.pt", "log.csv", "train_summary.json")  # what one run writes


@torch.no_grad()
def validate(model: PathGenDenoiser, schedule: NoiseSchedule, loader: DataLoader, families, device,
             steps: int, seed: int) -> float:
    """Mean per-gene Spearman (across validation patients) of one DDIM sample per patient.

    The mean, not the median: with the handful of validation patients a fold has (7 in the demo),
    each gene's rho takes few distinct values (multiples of 1/28 for 7 patients) and their median
    ties across most epochs, so the first of many equal scores would win; the mean over genes is
    continuous. (``evaluate-generator`` reports the median on held-out patients.)
    """
    real, synth = [], []
    g = torch.Generator(device=device).manual_seed(seed)
    for batch in loader:
        ctx = model.encode_context(batch["features"].to(device), batch["cu_seqlens"].to(device), batch["max_seqlen"])
        x = sample(model, schedule, ctx, samples_per_bag=1, steps=steps, generator=g)
        synth.append(x[:, 0].float().cpu().numpy())
        real.append(batch["expression"].numpy())
    R, S = np.concatenate(real), np.concatenate(synth)
    if len(R) < 3:
        return float("nan")
    return mean_gene_spearman(R, S)


def mean_gene_spearman(R: np.ndarray,  # [P, G] real
                       S: np.ndarray) -> float:  # [P, G] synthesized
    """Mean over genes of Spearman's rho across patients: genes constant in the real data are skipped,
    genes the model synthesized as constants count as 0 (``per_gene_spearman``), so a collapsing
    generator is not selected."""
    rho, _, constant = per_gene_spearman(R, S)
    return float(rho[~constant].mean()) if (~constant).any() else float("nan")


def _finite_or_raise(x: np.ndarray,  # [n_i, patch_dim]
                     path: Path, case: str, role: str) -> None:
    if not np.isfinite(x).all():
        bad = ~np.isfinite(x)
        raise ValueError(f"{path}: {int(bad.sum())} non-finite (NaN/inf) feature values in {role} patient {case}'s "
                         f"bag (first at patch {int(np.argwhere(bad)[0][0])}); re-embed the slide (`pathgen embed`) "
                         "or leave the patient out of the manifest, then train again")


def check_finite_features(ds: PatientBags, role: str) -> None:
    """Raise, naming the file, if any patch feature of ``ds``'s bags is NaN or inf (one read per file)."""
    for case, paths in ds.features.items():
        for path in paths:
            _finite_or_raise(read_h5_bag(path)[0], path, case, role)


def patch_stats(ds: PatientBags) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-feature mean and sd [patch_dim] over every patch of the (training) patients' bags (one
    pass over the feature files, no patch cap; float64 sums). Raises, naming the file, on a NaN or
    inf feature (``check_finite_features``)."""
    n, s1, s2 = 0, 0.0, 0.0
    for case, paths in ds.features.items():
        for path in paths:
            arr = read_h5_bag(path)[0]
            _finite_or_raise(arr, path, case, "training")
            x = torch.from_numpy(arr).double()  # [n_i, patch_dim]
            n, s1, s2 = n + x.shape[0], s1 + x.sum(0), s2 + (x * x).sum(0)
    if n == 0:
        raise ValueError("patch statistics: the training patients have no patches")
    mean = s1 / n
    return mean.float(), (s2 / n - mean * mean).clamp_min(0).sqrt().float()


class TrainStep(nn.Module):
    """Context encoding + diffusion loss as ONE forward, so DDP sees every parameter use (the patch
    projection included) and all-reduces all gradients."""

    def __init__(self, model: PathGenDenoiser, schedule: NoiseSchedule, draws: int):
        super().__init__()
        self.model, self.schedule, self.draws = model, schedule, draws

    def forward(self, features: torch.Tensor,  # [total_n, patch_dim]
                cu_seqlens: torch.Tensor,  # [n_bags + 1] int32
                max_seqlen: int,
                x0: torch.Tensor) -> torch.Tensor:  # [n_bags, G_total]
        ctx = self.model.encode_context(features, cu_seqlens, max_seqlen)
        return training_loss(self.model, self.schedule, x0, ctx, draws=self.draws)


def prepare_run_folder(out: Path, resume: bool, overwrite: bool, dist: Dist) -> None:
    """Refuse to start over an earlier run's outputs unless ``resume`` (continue it) or ``overwrite``
    (delete them first, on rank 0)."""
    if resume and overwrite:
        raise ValueError(f"{out}: --resume continues the run in this folder and --overwrite deletes it; pass one")
    existing = [name for name in RUN_OUTPUTS if (out / name).exists()]
    if overwrite:
        if dist.is_main:
            for name in existing:
                (out / name).unlink()
        dist.barrier()
        return
    if resume:
        if not (out / "last.pt").exists() and existing:
            warnings.warn(f"{out}: --resume but no last.pt to continue; starting over, and this run replaces "
                          f"{', '.join(existing)}", stacklevel=3)
        return
    if existing:
        raise FileExistsError(f"{out}: holds {', '.join(existing)} of an earlier train-generator run; pass --resume "
                              "to continue it, --overwrite to delete them and start over, or a new --out")


def _plain(x):
    """JSON-shaped copy (tuples -> lists) so saved and current values compare equal when they are."""
    return json.loads(json.dumps(x, default=str))


def _same(a, b) -> bool:
    """Equal as saved (JSON text, so NaN entries of a transform state compare equal to themselves)."""
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def _short(x, limit: int = 80) -> str:
    text = json.dumps(_plain(x))
    return text if len(text) <= limit else text[:limit] + "..."


def check_resumable(state: dict, last_path: Path, *, fold_k: int, train_ids: list[str], cfg, families,
                    transform: ExpressionTransform, opts: TrainOptions, world: int) -> None:
    """Raise unless ``last.pt`` (``state``) was written by this same run: fold, training patients,
    model config, gene families, normalisation and every option outside ``RESUME_FREE``/``RESUME_WARN``
    (those in ``RESUME_WARN`` and the process count only warn)."""
    diffs = []
    if state.get("fold_k") != fold_k:
        diffs.append(f"fold {state.get('fold_k')} in last.pt, {fold_k} now")
    saved_ids = state.get("train_case_ids")
    if saved_ids is None:
        diffs.append("training patients not recorded in last.pt")
    elif sorted(map(str, saved_ids)) != sorted(map(str, train_ids)):
        only_saved = sorted(set(map(str, saved_ids)) - set(map(str, train_ids)))
        only_now = sorted(set(map(str, train_ids)) - set(map(str, saved_ids)))
        diffs.append(f"training patients ({len(only_saved)} only in last.pt, e.g. {only_saved[:3]}; "
                     f"{len(only_now)} only now, e.g. {only_now[:3]})")
    saved_cfg, now_cfg = _plain(state.get("config", {})), cfg.to_dict()
    keys = [k for k in dict.fromkeys([*saved_cfg, *now_cfg]) if not _same(saved_cfg.get(k), now_cfg.get(k))]
    diffs += [f"model config {k}: {_short(saved_cfg.get(k))} in last.pt, {_short(now_cfg.get(k))} now" for k in keys]
    if not _same(state.get("families"), families.to_dict()):
        diffs.append("gene families (--signatures or the expression columns changed)")
    if not _same(state.get("transform"), transform.state_dict()):
        diffs.append("expression normalisation fitted on the training patients (the expression data changed)")
    saved_opts, now_opts = _plain(state.get("options", {})), _plain(dataclasses.asdict(opts))
    changed = [k for k in now_opts if not _same(saved_opts.get(k), now_opts[k]) and k not in RESUME_FREE]
    diffs += [f"option {k}: {_short(saved_opts.get(k))} in last.pt, {_short(now_opts[k])} now"
              for k in changed if k not in RESUME_WARN]
    if diffs:
        raise ValueError(f"{last_path}: cannot --resume, it was written by another run: {'; '.join(diffs)}. "
                         f"Resume with that run's fold, data and options (only {', '.join(RESUME_FREE)} may change), "
                         "or start over: a new --out, or --overwrite (deletes generator.pt, last.pt, log.csv and "
                         "train_summary.json in this folder)")
    layout = [f"{k} {saved_opts.get(k)} -> {now_opts[k]}" for k in changed if k in RESUME_WARN]
    if state.get("world_size", 1) != world:
        layout.append(f"processes {state.get('world_size', 1)} -> {world}")
    if layout:
        warnings.warn(f"{last_path}: resuming with {', '.join(layout)}; the continued run differs from an "
                      "uninterrupted one (other batches/steps)", stacklevel=3)


def train_generator(cohort: Cohort, fold_k: int, out: Path, opts: TrainOptions, resume: bool = False,
                    progress: bool = True, dist: Dist | None = None, overwrite: bool = False) -> dict:
    """Train fold ``fold_k``'s generator into ``out`` and return the summary (also ``train_summary.json``).

    ``resume``: continue ``out/last.pt`` (checked to be this run's; ``check_resumable``); starts
    fresh when there is none. ``overwrite``: delete an earlier run's outputs in ``out`` first.
    Without either, an earlier run's outputs in ``out`` are an error (``prepare_run_folder``).

    Raises:
        FileExistsError: ``out`` holds another run's outputs.
        ValueError: ``last.pt`` is another run's; a feature file holds NaN/inf (named).
        FloatingPointError: a non-finite training loss (no checkpoint is written for that epoch).
    """
    dist = dist or Dist()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    prepare_run_folder(out, resume, overwrite, dist)
    seed_everything(opts.seed)
    device = dist.device(resolve_device(opts.device))
    fold = cohort.fold(fold_k)
    train_ids = cohort.cases_with_features(fold.train)
    val_ids = cohort.cases_with_features(fold.val)
    if len(train_ids) < 2:
        raise ValueError(f"fold {fold_k}: {len(train_ids)} training patients have feature files; "
                         "run `pathgen embed` first or pass --features")
    fam = cohort.families
    transform = ExpressionTransform.fit_on(cohort.expression.loc[:, fam.columns], train_ids, method=opts.transform)
    labels = cohort.manifest.cases()
    common = dict(expression=cohort.expression, families=fam, labels=labels, features=cohort.features,
                  transform=transform)
    train_ds = PatientBags(train_ids, max_patches=opts.max_patches, random_subsample=True, **common)
    val_ds = PatientBags(val_ids, max_patches=opts.max_patches, random_subsample=False, **common) if val_ids else None
    patch_dim = train_ds[0].features.shape[1]
    stats = patch_stats(train_ds)  # also the NaN/inf check of every training bag, naming the file
    if val_ds is not None:
        check_finite_features(val_ds, "validation")
    clip = (-1.0, 1.0) if opts.transform == "minmax" else ((0.0, 1.0) if opts.transform == "minmax01" else None)
    cfg = make_config(opts.preset, fam.names, fam.sizes, patch_dim, prediction=opts.prediction, loss=opts.loss,
                      cond_dropout=opts.cond_dropout, clip_sample=clip, **opts.overrides)
    schedule = NoiseSchedule(cfg.schedule)
    model = PathGenDenoiser(cfg)
    if cfg.patch_norm == "standardize":
        model.set_patch_stats(*stats)
    model = model.to(device)
    ema = EMA(model, opts.ema)
    optim = torch.optim.AdamW(model.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
    start_epoch, best, best_epoch, bad_epochs, log_rows, resumed = 0, -math.inf, -1, 0, [], False
    last_path, best_path = out / "last.pt", out / "generator.pt"
    if resume and last_path.exists():
        state = load_checkpoint(last_path)
        check_resumable(state, last_path, fold_k=fold_k, train_ids=train_ids, cfg=cfg, families=fam,
                        transform=transform, opts=opts, world=dist.world)
        model.load_state_dict(state["model"])
        ema.model.load_state_dict(state["ema"])
        ema.steps = state.get("ema_steps", 0)
        optim.load_state_dict(state["optimizer"])
        start_epoch, best, best_epoch, bad_epochs = state["epoch"] + 1, state["best"], state["best_epoch"], \
            state["bad_epochs"]
        log_rows, resumed = state["log"], True
        torch.set_rng_state(state["rng"])  # one process: the exact stream; ranks re-seed below
        if state.get("cuda_rng") is not None and device.type == "cuda" and not dist.active:
            torch.cuda.set_rng_state(state["cuda_rng"], device)
    step_module = wrap_ddp(TrainStep(model, schedule, opts.draws), dist, device,
                           find_unused_parameters=cfg.cond_dropout == 0)  # null_context unused then
    dist.seed_ranks(opts.seed, start_epoch)  # ranks draw their own noise (weights come from rank 0)
    train_loader, set_epoch = sharded_loader(train_ds, opts.batch_size, opts.seed, dist, opts.num_workers)
    val_loader = make_loader(val_ds, opts.batch_size, False, opts.seed) if val_ds and dist.is_main else None
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    extra = {"fold": fold.to_dict(), "fold_k": fold_k, "train_case_ids": train_ids, "options": dataclasses.asdict(opts)}
    # an early-stopped run stays stopped (last.pt holds bad_epochs == patience) unless --patience grew
    end_epoch = start_epoch if resumed and bad_epochs >= opts.patience else opts.epochs
    bar = tqdm(range(start_epoch, end_epoch), desc=f"generator fold {fold_k}", disable=not (progress and dist.is_main),
               initial=start_epoch, total=opts.epochs)
    for epoch in bar:
        t0 = time.perf_counter()
        model.train()
        set_epoch(epoch)
        reseed_loader(train_loader, opts.seed, epoch)  # epoch e's order from (seed, e): resume == uninterrupted
        losses = []
        optim.zero_grad(set_to_none=True)
        for step, batch in enumerate(train_loader):
            boundary = (step + 1) % opts.accumulate == 0 or step + 1 == len(train_loader)
            sync = contextlib.nullcontext() if boundary or not dist.active else step_module.no_sync()
            with sync:
                with amp:
                    loss = step_module(batch["features"].to(device), batch["cu_seqlens"].to(device),
                                       batch["max_seqlen"], batch["expression"].to(device))
                (loss / opts.accumulate).backward()
            value = loss.item()
            if not dist.active and not math.isfinite(value):  # under DDP all ranks stop together below
                raise FloatingPointError(
                    f"train-generator fold {fold_k}: non-finite training loss ({value}) at epoch {epoch}, step {step} "
                    f"(patients {batch.get('case_ids')}); check the inputs for NaN/inf (features, expression) or "
                    f"lower --lr. Nothing was written for epoch {epoch}; {out} keeps earlier epochs' files, "
                    "--overwrite to start over")
            if boundary:
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optim.step()
                optim.zero_grad(set_to_none=True)
                ema.update(model)
            losses.append(value)
        train_loss = dist.mean(float(np.mean(losses)), len(losses))
        if not math.isfinite(train_loss):
            raise FloatingPointError(
                f"train-generator fold {fold_k}: non-finite training loss ({train_loss}) in epoch {epoch}; check the "
                f"inputs for NaN/inf (features, expression) or lower --lr. Nothing was written for epoch {epoch}; "
                f"{out} keeps earlier epochs' files, --overwrite to start over")
        due = (epoch + 1) % opts.val_every == 0 or epoch + 1 == opts.epochs
        if not due:
            log_rows.append({"epoch": epoch, "train_loss": train_loss, "val_spearman": float("nan"),
                             "seconds": round(time.perf_counter() - t0, 3), "selection": "skipped"})
            if dist.is_main:
                _write_log(out / "log.csv", log_rows)
            continue
        # rank 0 validates and every rank takes its number, so all ranks stop at the same epoch
        val = validate(ema.model, schedule, val_loader, fam, device, opts.val_steps, opts.seed) if val_loader else \
            float("nan")
        val = dist.broadcast(val)
        row = {"epoch": epoch, "train_loss": train_loss, "val_spearman": val,
               "seconds": round(time.perf_counter() - t0, 3)}
        log_rows.append(row)
        # selection on validation patients only; with too few of them for a Spearman (< 3), on the
        # training loss (said in the log)
        score = val if not math.isnan(val) else -row["train_loss"]
        row["selection"] = "val_spearman" if not math.isnan(val) else "train_loss"
        if score > best:
            best, best_epoch, bad_epochs = score, epoch, 0
            if dist.is_main:
                save_checkpoint(best_path, model_state=ema.model.state_dict(), config=cfg, families=fam,
                                transform=transform, extra={**extra, "epoch": epoch, "val_spearman": val})
        else:
            bad_epochs += 1
        if dist.is_main:
            save_checkpoint(last_path, model_state=model.state_dict(), config=cfg, families=fam, transform=transform,
                            extra={**extra, "ema": ema.model.state_dict(), "ema_steps": ema.steps,
                                   "optimizer": optim.state_dict(), "epoch": epoch, "best": best,
                                   "best_epoch": best_epoch, "bad_epochs": bad_epochs, "log": log_rows,
                                   "rng": torch.get_rng_state(), "world_size": dist.world,
                                   "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None})
            _write_log(out / "log.csv", log_rows)
        bar.set_postfix(loss=f"{row['train_loss']:.4f}", val_rho=f"{val:.3f}", best=f"{best:.3f}")
        if bad_epochs >= opts.patience:
            break
    if best_epoch < 0 or (dist.is_main and not best_path.exists()):
        raise RuntimeError(f"{out}: train-generator fold {fold_k} chose no checkpoint (epochs run: {len(log_rows)}, "
                           f"--epochs {opts.epochs}); train at least one epoch (raise --epochs), or --overwrite to "
                           "start over")
    in_sync = check_in_sync(model, dist, f"train-generator fold {fold_k}")
    summary = {"fold": fold_k, "best_epoch": best_epoch, "best_score": best,
               "selection": log_rows[-1]["selection"] if log_rows else None, "epochs_run": len(log_rows),
               "n_train": len(train_ids), "n_val": len(val_ids),
               "seconds_per_epoch": float(np.mean([r["seconds"] for r in log_rows])) if log_rows else None,
               "world_size": dist.world, "batch_size_per_rank": opts.batch_size,
               "global_batch_size": opts.batch_size * opts.accumulate * dist.world, "ranks_in_sync": in_sync,
               "checkpoint": str(best_path), "config": cfg.to_dict(), "versions": versions()}
    if dist.is_main:
        atomic_write_text(out / "train_summary.json", json.dumps(summary, indent=2))
    dist.barrier()  # nobody reads the checkpoint before rank 0 has written it
    return summary


OPTION_HELP = {
    "preset": "model size",
    "epochs": "maximum epochs",
    "batch_size": "patients per step (per process)",
    "draws": "noise draws per patient per step; they share the slide's co-attention pass",
    "accumulate": "steps whose gradients are summed before an optimiser step",
    "lr": "AdamW learning rate",
    "weight_decay": "AdamW weight decay",
    "ema": "decay of the weights' exponential moving average (the EMA weights are saved and sampled)",
    "max_patches": "patches drawn per patient and step ('none' = the whole bag)",
    "transform": "expression scaling fitted on the training patients (PathGen: minmax to [-1, 1])",
    "prediction": "what the network predicts: epsilon (PathGen's noise), v_prediction, or sample (x0); on "
                  "demo-size cohorts epsilon learns least (README)",
    "loss": "l1_mse: (L1 + MSE) / 2 per family (PathGen); mse",
    "cond_dropout": "probability of dropping the slide condition (for classifier-free guidance)",
    "val_steps": "DDIM steps of the validation sampler (checkpoint selected by the mean per-gene Spearman on "
                 "val; genes synthesized as constants count 0)",
    "val_every": "epochs between validations",
    "patience": "validations without improvement before early stopping",
    "device": "auto (cuda if available), cpu, cuda, cuda:1",
    "num_workers": "bag-reading processes",
}


def _int_or_none(s: str) -> int | None:
    return None if str(s).lower() in ("none", "all") else int(s)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_cohort_arguments(p)
    p.add_argument("--out", type=Path, required=True, help="run folder (checkpoints, log, splits.json)")
    p.add_argument("--fold", type=int, default=0)
    from pathgen.data.transforms import METHODS
    from pathgen.models.generator.config import PRESETS

    d = TrainOptions()
    for f in dataclasses.fields(TrainOptions):
        if f.name in ("overrides", "seed"):
            continue
        default = getattr(d, f.name)
        flag, kw = f"--{f.name.replace('_', '-')}", dict(default=default, help=OPTION_HELP.get(f.name, "") + " (default %(default)s)")
        if f.name == "preset":
            p.add_argument(flag, choices=sorted(PRESETS), **kw)
        elif f.name == "transform":
            p.add_argument(flag, choices=list(METHODS), **kw)
        elif f.name == "prediction":
            p.add_argument(flag, choices=["epsilon", "v_prediction", "sample"], **kw)
        elif f.name == "loss":
            p.add_argument(flag, choices=["l1_mse", "mse"], **kw)
        elif f.name == "max_patches":
            p.add_argument(flag, type=_int_or_none, **kw)
        else:
            p.add_argument(flag, type=type(default) if default is not None else int, **kw)
    p.add_argument("--resume", action="store_true",
                   help="continue <out>/last.pt (same fold, data and options; --epochs/--patience may grow)")
    p.add_argument("--overwrite", action="store_true",
                   help="delete <out>'s generator.pt, last.pt, log.csv and train_summary.json first and start over")
    p.add_argument("--quiet", action="store_true")


def main(args: argparse.Namespace) -> int:
    out = Path(args.out)
    opts = TrainOptions(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainOptions)
                           if f.name not in ("overrides",)})
    dist = Dist.for_device(resolve_device(opts.device))
    try:
        prepare_run_folder(out, args.resume, args.overwrite, dist)  # before splits.json is (re)written
        cohort = load_cohort(args, write_splits=out / "splits.json" if dist.is_main else None)
        # the folder is prepared above (an --overwrite has already deleted the old outputs)
        summary = train_generator(cohort, args.fold, out, opts, resume=args.resume, progress=not args.quiet,
                                  dist=dist)
    finally:
        dist.close()
    if dist.is_main:
        print(json.dumps({k: v for k, v in summary.items() if k != "config"}, indent=2))
    return 0
