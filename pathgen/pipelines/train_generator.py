"""``pathgen train-generator``: fit the PathGen generator on one fold's training patients.

AdamW, EMA weights, packed bags (batch > 1), gradient accumulation, bf16 autocast on GPU,
condition dropout (classifier-free guidance), validation every epoch by per-gene Spearman of a
few-step DDIM sample on the fold's validation patients, early stopping, atomic checkpoints
(best EMA weights in ``generator.pt``, full state in ``last.pt`` for ``--resume``), a CSV log.
Normalisation is fitted on the training patients only.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from pathgen.data.bags import PatientBags
from pathgen.data.transforms import ExpressionTransform
from pathgen.diffusion import NoiseSchedule
from pathgen.eval.metrics import fidelity_report
from pathgen.models.generator import PathGenDenoiser, make_config, sample, training_loss
from pathgen.models.generator.checkpoint import EMA, load_checkpoint, save_checkpoint, versions
from pathgen.pipelines.cohort import Cohort, add_cohort_arguments, load_cohort
from pathgen.pipelines.runtime import make_loader, resolve_device, seed_everything
from pathgen.pipelines.runtime import write_csv_log as _write_log
from pathgen.utils.io import atomic_write_text


@dataclasses.dataclass
class TrainOptions:
    preset: str = "small"
    epochs: int = 40
    batch_size: int = 8
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


@torch.no_grad()
def validate(model: PathGenDenoiser, schedule: NoiseSchedule, loader: DataLoader, families, device,
             steps: int, seed: int) -> float:
    """Median per-gene Spearman (across validation patients) of one DDIM sample per patient."""
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
    rep = fidelity_report(R, S, np.ones(R.shape[1]), {"all": slice(None)})
    v = rep["overall"]["spearman_gene_median"]
    return float("nan") if v is None else float(v)


def train_generator(cohort: Cohort, fold_k: int, out: Path, opts: TrainOptions, resume: bool = False,
                    progress: bool = True) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(opts.seed)
    device = resolve_device(opts.device)
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
    clip = (-1.0, 1.0) if opts.transform == "minmax" else ((0.0, 1.0) if opts.transform == "minmax01" else None)
    cfg = make_config(opts.preset, fam.names, fam.sizes, patch_dim, prediction=opts.prediction, loss=opts.loss,
                      cond_dropout=opts.cond_dropout, clip_sample=clip, **opts.overrides)
    schedule = NoiseSchedule(cfg.schedule)
    model = PathGenDenoiser(cfg).to(device)
    ema = EMA(model, opts.ema)
    optim = torch.optim.AdamW(model.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
    start_epoch, best, best_epoch, bad_epochs, log_rows = 0, -math.inf, -1, 0, []
    last_path, best_path = out / "last.pt", out / "generator.pt"
    if resume and last_path.exists():
        state = load_checkpoint(last_path)
        model.load_state_dict(state["model"])
        ema.model.load_state_dict(state["ema"])
        ema.steps = state.get("ema_steps", 0)
        optim.load_state_dict(state["optimizer"])
        start_epoch, best, best_epoch, bad_epochs = state["epoch"] + 1, state["best"], state["best_epoch"], \
            state["bad_epochs"]
        log_rows = state["log"]
        torch.set_rng_state(state["rng"])
    train_loader = make_loader(train_ds, opts.batch_size, True, opts.seed, opts.num_workers)
    val_loader = make_loader(val_ds, opts.batch_size, False, opts.seed) if val_ds else None
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else _null()
    extra = {"fold": fold.to_dict(), "fold_k": fold_k, "train_case_ids": train_ids, "options": dataclasses.asdict(opts)}
    bar = tqdm(range(start_epoch, opts.epochs), desc=f"generator fold {fold_k}", disable=not progress,
               initial=start_epoch, total=opts.epochs)
    for epoch in bar:
        t0 = time.perf_counter()
        model.train()
        losses = []
        optim.zero_grad(set_to_none=True)
        for step, batch in enumerate(train_loader):
            ctx = model.encode_context(batch["features"].to(device), batch["cu_seqlens"].to(device),
                                       batch["max_seqlen"])
            with amp:
                loss = training_loss(model, schedule, batch["expression"].to(device), ctx)
            (loss / opts.accumulate).backward()
            if (step + 1) % opts.accumulate == 0 or step + 1 == len(train_loader):
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optim.step()
                optim.zero_grad(set_to_none=True)
                ema.update(model)
            losses.append(loss.item())
        due = (epoch + 1) % opts.val_every == 0 or epoch + 1 == opts.epochs
        if not due:
            log_rows.append({"epoch": epoch, "train_loss": float(np.mean(losses)), "val_spearman": float("nan"),
                             "seconds": round(time.perf_counter() - t0, 3), "selection": "skipped"})
            _write_log(out / "log.csv", log_rows)
            continue
        val = validate(ema.model, schedule, val_loader, fam, device, opts.val_steps, opts.seed) if val_loader else \
            float("nan")
        row = {"epoch": epoch, "train_loss": float(np.mean(losses)), "val_spearman": val,
               "seconds": round(time.perf_counter() - t0, 3)}
        log_rows.append(row)
        # selection on validation patients only; with too few of them for a Spearman (< 3), on the
        # training loss (said in the log)
        score = val if not math.isnan(val) else -row["train_loss"]
        row["selection"] = "val_spearman" if not math.isnan(val) else "train_loss"
        if score > best:
            best, best_epoch, bad_epochs = score, epoch, 0
            save_checkpoint(best_path, model_state=ema.model.state_dict(), config=cfg, families=fam,
                            transform=transform, extra={**extra, "epoch": epoch, "val_spearman": val})
        else:
            bad_epochs += 1
        save_checkpoint(last_path, model_state=model.state_dict(), config=cfg, families=fam, transform=transform,
                        extra={**extra, "ema": ema.model.state_dict(), "ema_steps": ema.steps, "optimizer": optim.state_dict(),
                               "epoch": epoch, "best": best, "best_epoch": best_epoch, "bad_epochs": bad_epochs,
                               "log": log_rows, "rng": torch.get_rng_state()})
        _write_log(out / "log.csv", log_rows)
        bar.set_postfix(loss=f"{row['train_loss']:.4f}", val_rho=f"{val:.3f}", best=f"{best:.3f}")
        if bad_epochs >= opts.patience:
            break
    summary = {"fold": fold_k, "best_epoch": best_epoch, "best_score": best,
               "selection": log_rows[-1]["selection"] if log_rows else None, "epochs_run": len(log_rows),
               "n_train": len(train_ids), "n_val": len(val_ids),
               "seconds_per_epoch": float(np.mean([r["seconds"] for r in log_rows])) if log_rows else None,
               "checkpoint": str(best_path), "config": cfg.to_dict(), "versions": versions()}
    atomic_write_text(out / "train_summary.json", json.dumps(summary, indent=2))
    return summary


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_cohort_arguments(p)
    p.add_argument("--out", type=Path, required=True, help="run folder (checkpoints, log, splits.json)")
    p.add_argument("--fold", type=int, default=0)
    d = TrainOptions()
    for f in dataclasses.fields(TrainOptions):
        if f.name in ("overrides", "seed"):
            continue
        default = getattr(d, f.name)
        kind = type(default) if default is not None else int
        p.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=default)
    p.add_argument("--resume", action="store_true", help="continue from <out>/last.pt")
    p.add_argument("--quiet", action="store_true")


def main(args: argparse.Namespace) -> int:
    out = Path(args.out)
    cohort = load_cohort(args, write_splits=out / "splits.json")
    opts = TrainOptions(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainOptions)
                           if f.name not in ("overrides",)})
    summary = train_generator(cohort, args.fold, out, opts, resume=args.resume, progress=not args.quiet)
    print(json.dumps({k: v for k, v in summary.items() if k != "config"}, indent=2))
    return 0
