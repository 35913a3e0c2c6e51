"""``pathgen train-predictor``: k-fold patient-level CV of a grade + survival predictor.

For each fold: the expression transform and the survival bins are fitted on the fold's TRAINING
patients, and the survival head starts at their discrete-time hazards; the model
(``--model expression | slide | multimodal``) is trained on real expression with Adam, batches of
packed bags, and early stopping on the VALIDATION part (its loss, or its C-index with
``--selection c_index``); the best epoch's weights are checkpointed atomically
(``fold_<k>/predictor.pt``) and used once on the test part. The test part is never looked at
before the model is fixed.

Splits: ``splits.json`` of an earlier job of the run (train / val / calibration / test), a folder of
MCAT/PORPOISE ``splits_{k}.csv`` (columns train, val: MCAT's ``val`` is the held-out fold, so it
becomes our TEST part and a validation part is carved from ``train``, stratified by grade and
event), or fresh stratified folds. The resolved parts are written to ``<out>/splits.json`` so the
generator and ``pathgen evaluate`` use the same patients.

Outputs in ``--out``: ``metrics.json`` (per fold, mean and sd over folds of the C-index, IPCW
C-index, integrated Brier score, grade AUC macro/micro, balanced accuracy, quadratic kappa,
patient-bootstrap 95% CIs, and fold-averaged metrics over all test patients), ``predictions.csv``
(one row per patient, fold and part: risk, survival curve ``surv_k``, grade probabilities
``prob_<grade>``, labels, so ``pathgen evaluate`` and the conformal / fairness layers reuse them),
``run.json`` (the inputs, to rebuild the cohort), ``splits.json``, and per fold ``predictor.pt``,
``log.csv``, ``predictions.csv`` and ``summary.json`` (written last: it marks the fold finished).

Resuming: a re-run into the same ``--out`` (after a crash, or with ``--folds`` to add folds) reuses
every fold that finished with the same settings (options but ``--device``, grade classes, the fold's
patients, a digest of its patients' inputs: see ``fold_settings``), trains the rest of the requested
folds, and rebuilds ``predictions.csv`` and ``metrics.json`` from ALL finished folds of the folder
(``metrics.json``: ``folds_covered``, ``folds_trained``, ``folds_reused``, ``folds_missing``). A
finished fold with other settings is an error; ``--overwrite`` starts the folder over. To retrain
one fold, delete its ``fold_<k>`` folder.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import json
import math
import re
import shutil
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from pathgen.data.bags import PatientBags
from pathgen.data.splits import INNER_VAL_FRACTION, Fold, resolve_folds
from pathgen.data.survival import fit_survival_bins
from pathgen.data.transforms import ExpressionTransform
from pathgen.eval.metrics import c_index
from pathgen.models.predictor.checkpoint import save_predictor, versions
from pathgen.models.predictor.config import PredictorConfig
from pathgen.models.predictor.factory import build_predictor, model_inputs
from pathgen.models.predictor.layers import discrete_hazards
from pathgen.models.predictor.output import PredictorOutput, predictor_loss
from pathgen.pipelines.cohort import Cohort, add_cohort_arguments, load_cohort, save_splits
from pathgen.pipelines.distributed import Dist, check_in_sync, sharded_loader, wrap_ddp
from pathgen.pipelines.predictor_metrics import fold_metrics, mean_sd, pooled_bootstrap
from pathgen.pipelines.runtime import make_loader, resolve_device, seed_everything
from pathgen.pipelines.runtime import write_csv_log as _write_log
from pathgen.utils.io import atomic_path, atomic_write_text

SELECTIONS = ("loss", "c_index")


@dataclasses.dataclass
class PredictorOptions:
    """Training options (every one is a ``train-predictor`` flag of the same name)."""

    model: str = "expression"
    width: int = 64
    dropout: float = 0.25
    snn_depth: int = 2
    coattn_heads: int = 1
    transformer_heads: int = 4
    transformer_layers: int = 1
    n_bins: int = 4
    grade_loss: str = "ce"
    survival_weight: float = 0.3
    alpha: float = 0.0
    use_grade: bool = True
    transform: str = "standardize"
    epochs: int = 40
    patience: int = 8
    batch_size: int = 16
    lr: float = 2e-4
    weight_decay: float = 1e-5
    selection: str = "loss"
    inner_val_fraction: float = INNER_VAL_FRACTION  # only for folds without a test part (cohorts built by hand)
    max_patches: int | None = 512
    eval_max_patches: int | None = 8192
    n_boot: int = 1000
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {SELECTIONS}, not {self.selection!r}")
        if self.epochs < 1 or self.batch_size < 1 or self.patience < 1:
            raise ValueError("epochs, batch_size and patience must be >= 1")


# --------------------------------------------------------------------------------------------
# patients and parts
# --------------------------------------------------------------------------------------------
def usable_cases(cohort: Cohort, cfg_kind: str) -> set[str]:
    """Patients that have what the model reads (expression and/or feature files) and survival labels."""
    cases = cohort.manifest.cases()
    ok = set(cases.index[cases["survival_months"].notna() & cases["censorship"].notna()].astype(str))
    if cfg_kind in ("expression", "multimodal"):
        ok &= set(map(str, cohort.expression.index))
    if cfg_kind in ("slide", "multimodal"):
        ok &= {c for c, paths in cohort.features.items() if paths}
    return ok


def fold_parts(fold: Fold, usable: set[str]) -> tuple[dict[str, list[str]], dict[str, int]]:
    """The fold's parts restricted to usable patients, and how many each part lost."""
    parts, dropped = {}, {}
    for name, ids in fold.parts().items():
        parts[name] = [c for c in ids if c in usable]
        dropped[name] = len(ids) - len(parts[name])
    return parts, dropped


def grade_categories(cohort: Cohort, use_grade: bool) -> list[str]:
    """Grade classes of the cohort (lowest first), or [] when there is no usable grade."""
    if not use_grade:
        return []
    cats = cohort.manifest.grade_categories
    if len(cats) < 2:
        return []
    g = cohort.manifest.cases()["grade"]
    return cats if g.notna().sum() >= 2 else []


# --------------------------------------------------------------------------------------------
# running a model
# --------------------------------------------------------------------------------------------
@torch.no_grad()
def run_model(model: torch.nn.Module, cfg: PredictorConfig, loader: DataLoader, device: torch.device) -> dict:
    """Eval-mode predictions for every patient of ``loader`` (concatenated in loader order).

    Returns:
        dict with ``out`` (``PredictorOutput`` of all patients, logits only), ``case_ids``,
        ``survival_bin``, ``censorship``, ``grade``, ``survival_months``, ``n_patches``.
    """
    model.eval()
    surv, grade, cases, n_patches = [], [], [], []
    lab = {k: [] for k in ("survival_bin", "censorship", "grade", "survival_months")}
    for batch in loader:
        o = model(**model_inputs(batch, cfg, device))
        surv.append(o.survival_logits.float().cpu())
        if o.grade_logits is not None:
            grade.append(o.grade_logits.float().cpu())
        cases += batch["case_ids"]
        n_patches += (batch["cu_seqlens"][1:] - batch["cu_seqlens"][:-1]).tolist()
        for k in lab:
            lab[k].append(batch[k])
    out = PredictorOutput(torch.cat(surv), torch.cat(grade) if grade else None, {}, cfg.grade_loss)
    return {"out": out, "case_ids": cases, "n_patches": n_patches, **{k: torch.cat(v) for k, v in lab.items()}}


def validation_score(res: dict, cfg: PredictorConfig, selection: str) -> tuple[float, dict]:
    """Score to MINIMISE on the validation part (loss, or -C-index) and the logged values."""
    loss, parts = predictor_loss(res["out"], res["survival_bin"], res["censorship"], res["grade"], cfg)
    log = {"val_loss": float(loss), "val_survival_nll": parts["survival"], "val_grade_loss": parts["grade"],
           "val_c_index": float("nan")}
    t = res["survival_months"].numpy().astype(float)
    e = (1 - res["censorship"].numpy()).astype(int)
    try:
        log["val_c_index"] = c_index(t, e, res["out"].risk.numpy().astype(float))
    except ValueError:
        pass
    if selection == "c_index" and math.isfinite(log["val_c_index"]):
        return -log["val_c_index"], log
    return float(loss), log


def prediction_frame(res: dict, fold_k: int, part: str, input_mode: str, categories: Sequence[str],
                     labels: pd.DataFrame) -> pd.DataFrame:
    """One row per patient: ids, labels, risk, survival curve, grade probabilities."""
    out: PredictorOutput = res["out"]
    S = out.survival.numpy()
    lab = labels.reindex(res["case_ids"])  # float64 labels (the batch carries float32 copies)
    frame = pd.DataFrame({
        "case_id": res["case_ids"], "fold": fold_k, "part": part, "input_mode": input_mode,
        "survival_months": lab["survival_months"].to_numpy(float),
        "censorship": lab["censorship"].to_numpy(float),
        "survival_bin": res["survival_bin"].numpy(), "grade_index": res["grade"].numpy(),
        "n_patches": res["n_patches"], "risk": out.risk.numpy().astype(float),
    })
    frame["grade"] = [categories[i] if 0 <= i < len(categories) else "" for i in frame["grade_index"]]
    for k in range(S.shape[1]):
        frame[f"surv_{k}"] = S[:, k]
    P = out.grade_probs
    if P is not None:
        for j, c in enumerate(categories):
            frame[f"prob_{c}"] = P[:, j].numpy()
    for col in ("age", "is_female", "race"):
        if col in lab.columns:
            frame[col] = lab[col].to_numpy()
    return frame


# --------------------------------------------------------------------------------------------
# one fold
# --------------------------------------------------------------------------------------------
def train_fold(cohort: Cohort, fold: Fold, opts: PredictorOptions, out: Path, *, progress: bool = True,
               dist: Dist | None = None) -> tuple[dict, pd.DataFrame | None]:
    """Train one fold with validation-based early stopping; predict every part with the best weights.

    Under torchrun, every rank trains on its shard of the training patients (DDP), rank 0 scores
    the validation part and its decision is broadcast, and rank 0 alone predicts and writes.

    Returns:
        ``(summary, predictions)``: the fold summary (parts sizes, best epoch, log, metrics of the
        test part) and the per-patient prediction frame of all parts (None on ranks other than 0).
    """
    dist = dist or Dist()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(opts.seed)
    device = dist.device(resolve_device(opts.device))
    parts, dropped = fold_parts(fold, usable_cases(cohort, opts.model))
    if len(parts["train"]) < 4:
        raise ValueError(f"fold {fold.k}: only {len(parts['train'])} usable training patients (dropped "
                         f"{dropped['train']} without expression/feature files/survival)")
    if not parts["test"]:
        raise ValueError(f"fold {fold.k}: no usable test patients")
    labels = cohort.manifest.cases()
    labels.index = labels.index.astype(str)
    categories = grade_categories(cohort, opts.use_grade)
    fam = cohort.families
    tr_lab = labels.loc[parts["train"]]
    bins = fit_survival_bins(tr_lab["survival_months"].to_numpy(float), tr_lab["censorship"].to_numpy(float),
                             n_bins=opts.n_bins)
    uses_expr = opts.model in ("expression", "multimodal")
    uses_slides = opts.model in ("slide", "multimodal")
    transform = ExpressionTransform.fit_on(cohort.expression.loc[:, fam.columns], parts["train"],
                                           method=opts.transform) if uses_expr else None

    def dataset(ids: list[str], train: bool) -> PatientBags:
        return PatientBags(ids, expression=cohort.expression if uses_expr else None, families=fam, labels=labels,
                           features=cohort.features if uses_slides else None, transform=transform,
                           survival_bins=bins, random_subsample=train,
                           max_patches=opts.max_patches if train else opts.eval_max_patches)

    datasets = {name: dataset(ids, name == "train") for name, ids in parts.items() if ids}
    feature_dim = datasets["train"].feature_dim if uses_slides else 0
    cfg = PredictorConfig(kind=opts.model, family_names=fam.names, family_sizes=fam.sizes, feature_dim=feature_dim,
                          width=opts.width, n_bins=bins.n_bins, n_grades=len(categories), grade_loss=opts.grade_loss,
                          survival_weight=opts.survival_weight, alpha=opts.alpha, dropout=opts.dropout,
                          snn_depth=opts.snn_depth, coattn_heads=opts.coattn_heads,
                          transformer_heads=opts.transformer_heads, transformer_layers=opts.transformer_layers)
    model = build_predictor(cfg)
    train_ds = datasets["train"]
    model.heads.set_hazard_prior(discrete_hazards(train_ds.survival_bin, train_ds.censorship, bins.n_bins))
    model = model.to(device)
    optim = torch.optim.Adam(model.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
    net = wrap_ddp(model, dist, device)
    dist.seed_ranks(opts.seed)  # own dropout / patch-subsampling streams per rank (weights come from rank 0)
    train_loader, set_epoch = sharded_loader(datasets["train"], opts.batch_size, opts.seed, dist)
    has_val = "val" in datasets
    val_loader = make_loader(datasets["val"], opts.batch_size, False, opts.seed) if has_val and dist.is_main else None
    ckpt_path = out / "predictor.pt"
    extra = {"fold": fold.to_dict(), "fold_k": fold.k, "parts": parts, "options": dataclasses.asdict(opts)}
    best, best_epoch, best_state, bad, log = math.inf, -1, None, 0, []
    bar = tqdm(range(opts.epochs), desc=f"{opts.model} fold {fold.k}", disable=not (progress and dist.is_main),
               leave=False)
    for epoch in bar:
        t0 = time.perf_counter()
        model.train()
        set_epoch(epoch)
        losses = []
        for i, batch in enumerate(train_loader):
            o = net(**model_inputs(batch, cfg, device))
            loss, _ = predictor_loss(o, batch["survival_bin"], batch["censorship"], batch["grade"], cfg)
            value = float(loss.detach())
            if not dist.active and not math.isfinite(value):
                # one process: stop at once (under torchrun every rank must keep its collectives in
                # step, so the check below on the all-reduced epoch loss stops all of them together)
                raise ValueError(_nonfinite_loss_message(fold.k, value, epoch, i, batch["case_ids"], out))
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            losses.append(value)
        row = {"epoch": epoch, "train_loss": dist.mean(float(np.mean(losses)), len(losses))}
        if not math.isfinite(row["train_loss"]):
            raise ValueError(_nonfinite_loss_message(fold.k, row["train_loss"], epoch, None, None, out))
        if has_val:  # rank 0 scores; every rank takes its decision
            score, vlog = validation_score(run_model(model, cfg, val_loader, device), cfg, opts.selection) \
                if dist.is_main else (None, None)
            score, vlog = dist.broadcast((score, vlog))
        else:  # no validation patients: keep the last epoch (stated in the summary)
            score, vlog = -float(epoch), {}
        row.update(vlog)
        row["seconds"] = round(time.perf_counter() - t0, 3)
        log.append(row)
        if score < best:
            best, best_epoch, bad = score, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
            if dist.is_main:
                save_predictor(ckpt_path, model_state=best_state, config=cfg, families=fam if uses_expr else None,
                               transform=transform, bins=bins, grade_categories=categories,
                               extra={**extra, "epoch": epoch, "val": vlog})
        else:
            bad += 1
        if dist.is_main:
            _write_log(out / "log.csv", log)
        bar.set_postfix(loss=f"{row['train_loss']:.3f}", val=f"{score:.3f}", best_epoch=best_epoch)
        if bad >= opts.patience:
            break
    bar.close()
    in_sync = check_in_sync(model, dist, f"train-predictor fold {fold.k}")
    if best_state is None:  # every validation score was NaN/inf (NaN < best is False)
        seen = sorted({str(r.get("val_loss")) for r in log})
        raise ValueError(f"fold {fold.k}: no epoch of {len(log)} gave a finite validation score (val_loss: "
                         f"{', '.join(seen)}), so there is no best model to keep (log: {out / 'log.csv'}); check "
                         f"the inputs of the fold's {len(parts['val'])} validation patients for NaN/inf (expression "
                         "table, patch-feature .h5 files, survival labels)")
    model.load_state_dict(best_state)
    if not dist.is_main:
        return {"fold": fold.k, "rank": dist.rank, "ranks_in_sync": in_sync}, None
    input_mode = "real" if uses_expr else "none"
    frames = []
    for name, ds in datasets.items():
        if name == "train":  # scored like the other parts (all patches up to eval_max_patches, fixed
            ds = dataset(parts["train"], False)  # selection), not with training's random draw of max_patches
        res = run_model(model, cfg, make_loader(ds, opts.batch_size, False, opts.seed), device)
        frames.append(prediction_frame(res, fold.k, name, input_mode, categories, labels))
    preds = pd.concat(frames, ignore_index=True)
    test = preds[preds["part"] == "test"]
    metrics = fold_metrics(test, preds[preds["part"] == "train"], bins.edges, categories, n_boot=opts.n_boot,
                           seed=opts.seed)
    with atomic_path(out / "predictions.csv") as tmp:  # before summary.json, which marks the fold finished
        preds.to_csv(tmp, index=False)
    settings = fold_settings(cohort, fold, opts)
    summary = {"fold": fold.k, **{f"n_{k}": len(v) for k, v in parts.items()}, "dropped": dropped,
               "best_epoch": best_epoch, "epochs_run": len(log), "selection": opts.selection if val_loader else
               "last epoch (no validation patients)", "best_val_score": best,
               "best_val": next((r for r in log if r["epoch"] == best_epoch), None), "survival_bins": bins.to_dict(),
               "world_size": dist.world, "batch_size_per_rank": opts.batch_size, "ranks_in_sync": in_sync,
               "checkpoint": str(ckpt_path), "predictions": str(out / "predictions.csv"), **metrics,
               "settings_key": settings_key(settings), "settings": settings, "log": log}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, default=_json_default))
    return summary, preds


def _nonfinite_loss_message(k: int, value: float, epoch: int, batch: int | None, case_ids, out: Path) -> str:
    where = f"epoch {epoch}" + (f", batch {batch} (patients {list(case_ids)[:8]})" if batch is not None else "")
    return (f"fold {k}: training loss is {value} at {where}; stopped (log: {out / 'log.csv'}). Check the inputs "
            "for NaN/inf (expression table, patch-feature .h5 files, survival labels) or lower --lr")


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _clean(o):
    """NaN/inf -> None recursively (strict JSON)."""
    if isinstance(o, dict):
        return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return o


# --------------------------------------------------------------------------------------------
# resuming: which folds of a run folder are finished, and with which settings
# --------------------------------------------------------------------------------------------
# Options that do not change what a fold computes: a fold trained on CPU is reused by a GPU re-run.
SETTINGS_IGNORED = ("device",)


def fold_settings(cohort: Cohort, fold: Fold, opts: PredictorOptions) -> dict:
    """What a fold's results depend on, compared before a finished fold is reused.

    * ``options``: every ``PredictorOptions`` field but ``device``;
    * ``grade_categories``: the cohort's grade classes (the size of the grade head);
    * ``parts``: the fold's patients per part (train / val / calibration / test);
    * ``data_sha256``: a digest of the cohort inputs those patients read: their manifest labels,
      the gene families and their expression rows (expression / multimodal models), their
      patch-feature file names and sizes (slide / multimodal models). Contents, not paths, so a
      moved run or cohort folder still resumes, and an edited table does not.
    """
    ids = sorted({str(c) for part in fold.parts().values() for c in part})
    h = hashlib.sha256()
    cases = cohort.manifest.cases()
    cases.index = cases.index.astype(str)
    h.update(cases.reindex(ids).to_csv().encode())
    if opts.model in ("expression", "multimodal"):
        fam = cohort.families
        h.update(json.dumps(fam.to_dict(), sort_keys=True, default=str).encode())
        expr = cohort.expression.set_axis(cohort.expression.index.astype(str))
        have = set(expr.index)
        rows = [c for c in ids if c in have]
        e = expr.loc[rows, fam.columns]
        h.update(json.dumps(rows).encode())
        h.update(np.ascontiguousarray(e.to_numpy(np.float64)).tobytes())
    if opts.model in ("slide", "multimodal"):
        for c in ids:
            for f in cohort.features.get(c, []) or []:
                f = Path(f)
                h.update(f"{c}:{f.name}:{f.stat().st_size if f.exists() else -1}\n".encode())
    return {"options": {k: v for k, v in dataclasses.asdict(opts).items() if k not in SETTINGS_IGNORED},
            "grade_categories": grade_categories(cohort, opts.use_grade), "parts": fold.to_dict(),
            "data_sha256": h.hexdigest()}


def settings_key(settings: dict) -> str:
    """Short digest of ``fold_settings`` (stored in each fold's summary.json)."""
    from pathgen.pipelines.slide_batch import config_hash

    return config_hash(_clean(settings))


def _settings_diff(old: dict, new: dict) -> str:
    """What differs between two ``fold_settings``, in words."""
    diffs = []
    o_opts, n_opts = old.get("options") or {}, new.get("options") or {}
    for k in sorted(set(o_opts) | set(n_opts)):
        if o_opts.get(k) != n_opts.get(k):
            diffs.append(f"--{k.replace('_', '-')} {o_opts.get(k)!r} then, {n_opts.get(k)!r} now")
    if old.get("grade_categories") != new.get("grade_categories"):
        diffs.append(f"grade categories {old.get('grade_categories')} then, {new.get('grade_categories')} now")
    if old.get("parts") != new.get("parts"):
        diffs.append("the fold's patients (splits) differ")
    if old.get("data_sha256") != new.get("data_sha256"):
        diffs.append("the cohort inputs of its patients (labels, expression or feature files) differ")
    return "; ".join(diffs) or "settings differ"


FOLD_DIR = re.compile(r"fold_(\d+)$")


def finished_folds(out: Path, cohort: Cohort, resolved: Sequence[Fold], opts: PredictorOptions) -> dict[int, dict]:
    """``{k: summary}`` of the folds of ``out`` that finished with the settings of this call.

    A fold is finished when its ``summary.json`` (written last, atomically) is there; a fold
    folder without one (a crash mid-fold) is simply trained again. A finished fold with other
    settings, one from an older pathgen (no per-fold predictions) or one the splits do not have
    is an error: the run folder would mix two runs.
    """
    by_k = {f.k: f for f in resolved}
    fix = "pass a new --out, or --overwrite to start this run folder over"
    done = {}
    for d in sorted(out.glob("fold_*")):
        m = FOLD_DIR.match(d.name)
        if not (m and d.is_dir() and (d / "summary.json").exists()):
            continue
        k = int(m.group(1))
        try:
            summary = json.loads((d / "summary.json").read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"{d / 'summary.json'}: unreadable ({exc}); delete {d} to train fold {k} again, or "
                             f"{fix}") from exc
        if k not in by_k:
            raise ValueError(f"{d}: fold {k} finished in this run folder, but the splits now have folds "
                             f"{sorted(by_k)}; {fix}")
        if "settings_key" not in summary or not (d / "predictions.csv").exists():
            raise ValueError(f"{d}: finished by an older pathgen (no settings key or per-fold predictions.csv), so "
                             f"it can be neither checked nor combined with new folds; {fix}")
        settings = fold_settings(cohort, by_k[k], opts)
        if summary["settings_key"] != settings_key(settings):
            raise ValueError(f"{d}: fold {k} finished with other settings than this call's "
                             f"({_settings_diff(summary.get('settings') or {}, settings)}); a re-run into the same "
                             f"--out only resumes the same run: {fix}")
        done[k] = summary
    return done


def read_fold_predictions(path: Path) -> pd.DataFrame:
    """A fold's ``predictions.csv`` (ids and grade labels kept as strings)."""
    return pd.read_csv(path, dtype={"case_id": str, "grade": str}, keep_default_na=False, na_values=[""])


def clear_run(out: Path) -> list[str]:
    """``--overwrite``: remove what ``train-predictor`` wrote in ``out`` (fold folders and the run files)."""
    removed = []
    for d in sorted(out.glob("fold_*")):
        if FOLD_DIR.match(d.name) and d.is_dir():
            shutil.rmtree(d)
            removed.append(d.name)
    for name in ("metrics.json", "predictions.csv", "run.json", "splits.json"):
        if (out / name).exists():
            (out / name).unlink()
            removed.append(name)
    return removed


# --------------------------------------------------------------------------------------------
# cross-validation
# --------------------------------------------------------------------------------------------
def train_predictor_cv(cohort: Cohort, opts: PredictorOptions, out: Path, *, folds: Sequence[int] | None = None,
                       inputs: dict | None = None, progress: bool = True, dist: Dist | None = None,
                       overwrite: bool = False) -> dict | None:
    """Run the k-fold CV and write the run folder (see module docstring); resumes an earlier call.

    Every fold writes ``fold_<k>/predictions.csv`` and then ``fold_<k>/summary.json`` (with its
    ``settings_key``, see ``fold_settings``). A re-run into the same ``out`` reuses the folds that
    finished with the same settings (a fold finished with other settings is an error), trains the
    requested folds that are not finished, and rebuilds ``predictions.csv`` and ``metrics.json``
    from ALL finished folds of ``out`` (``metrics["folds_covered"]``), not only those of this call.

    Args:
        cohort: the cohort (its folds are resolved with ``resolve_folds`` first).
        opts: training options.
        out: run folder.
        folds: fold indices to run (default: all).
        inputs: how the cohort was loaded (paths), stored in ``run.json`` for ``pathgen evaluate``.
        overwrite: delete the fold folders and run files of ``out`` first and start over.

    Returns:
        The ``metrics.json`` content (None on ranks other than 0 of a torchrun job).
    """
    dist = dist or Dist()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cases = cohort.manifest.cases()
    cases.index = cases.index.astype(str)
    resolved = resolve_folds(cohort.folds, cases, opts.inner_val_fraction, opts.seed)
    cohort = dataclasses.replace(cohort, folds=resolved)
    todo = [f for f in resolved if folds is None or f.k in set(folds)]
    if not todo:
        raise ValueError(f"none of folds {list(folds or [])} is in the splits (have {[f.k for f in resolved]})")
    # rank 0 looks at the folder; every rank takes its answer (or its error)
    state = None
    if dist.is_main:
        try:
            removed = clear_run(out) if overwrite else []
            state = {"done": finished_folds(out, cohort, resolved, opts), "removed": removed, "error": None}
        except ValueError as exc:
            state = {"error": str(exc)}
    state = dist.broadcast(state)
    if state["error"]:
        raise ValueError(state["error"])
    done: dict[int, dict] = state["done"]
    if dist.is_main and state["removed"]:
        print(f"train-predictor: --overwrite removed {', '.join(state['removed'])} from {out}")
    train = [f for f in todo if f.k not in done]
    covered = sorted(set(done) | {f.k for f in train})
    if dist.is_main:
        save_splits(out / "splits.json", resolved)
    categories = grade_categories(cohort, opts.use_grade)
    if dist.is_main:
        atomic_write_text(out / "run.json", json.dumps(_clean({
            "model": opts.model, "inputs": inputs or {}, "options": dataclasses.asdict(opts),
            "grade_categories": categories, "folds": covered, "folds_trained": [f.k for f in train],
            "folds_reused": sorted(done), "world_size": dist.world, "versions": versions()}), indent=2))
        if done:
            print(f"train-predictor: reusing finished fold(s) {sorted(done)} of {out} (same settings; "
                  f"--overwrite starts over); training {[f.k for f in train] or 'none'}")
    t0 = time.perf_counter()
    for f in tqdm(train, desc=f"train-predictor {opts.model}", disable=not (progress and dist.is_main)):
        train_fold(cohort, f, opts, out / f"fold_{f.k}", progress=progress, dist=dist)
    if not dist.is_main:
        return None
    summaries = [json.loads((out / f"fold_{k}" / "summary.json").read_text()) for k in covered]
    preds = pd.concat([read_fold_predictions(out / f"fold_{k}" / "predictions.csv") for k in covered],
                      ignore_index=True)
    with atomic_path(out / "predictions.csv") as tmp:
        preds.to_csv(tmp, index=False)
    fold_rows = [{k: v for k, v in s.items() if k not in ("log", "settings")} for s in summaries]
    mean, sd = mean_sd(fold_rows)
    tests = preds[preds["part"] == "test"]
    missing = [f.k for f in resolved if f.k not in covered]
    metrics = {
        "model": opts.model, "n_folds": len(covered), "grade_categories": categories,
        "n_patients_tested": int(tests["case_id"].nunique()),
        "folds": fold_rows, "mean": mean, "sd": sd,
        "fold_averaged_bootstrap": pooled_bootstrap(tests, categories, n_boot=opts.n_boot, seed=opts.seed),
        "selection": f"validation {opts.selection}; the test part is used once, after selection",
        "folds_covered": covered, "folds_trained": [f.k for f in train], "folds_reused": sorted(done),
        "folds_missing": missing, "complete": not missing,
        "seconds": round(time.perf_counter() - t0, 1), "options": dataclasses.asdict(opts),
        "files": {"predictions": "predictions.csv", "splits": "splits.json",
                  "checkpoints": [f"fold_{k}/predictor.pt" for k in covered],
                  "fold_predictions": [f"fold_{k}/predictions.csv" for k in covered]},
        "versions": versions(),
    }
    metrics = _clean(json.loads(json.dumps(metrics, default=_json_default)))
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2))
    return metrics


def format_summary(metrics: dict) -> str:
    m, s = metrics["mean"], metrics["sd"]
    lines = [f"{metrics['model']} predictor, {metrics['n_folds']} folds, {metrics['n_patients_tested']} test patients"]
    if "folds_covered" in metrics:
        lines.append(f"  folds {metrics['folds_covered']} (trained now {metrics['folds_trained']}, reused "
                     f"{metrics['folds_reused']}"
                     + (f"; not run yet: {metrics['folds_missing']}" if metrics.get("folds_missing") else "") + ")")
    for k in ("c_index", "c_index_ipcw", "ibs", "grade_auc_macro", "grade_auc_micro", "balanced_accuracy",
              "kappa_quadratic"):
        if m.get(k) is not None:
            sd = f" +- {s[k]:.3f}" if s.get(k) is not None else ""
            per = ", ".join("-" if f.get(k) is None else f"{f[k]:.3f}" for f in metrics["folds"])
            lines.append(f"  {k:<18} {m[k]:.3f}{sd}   folds: {per}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    add_cohort_arguments(p)
    p.add_argument("--out", type=Path, required=True, help="run folder (metrics.json, predictions.csv, checkpoints)")
    p.add_argument("--grade-column", default=None, help="grade column of the table (default: grade / "
                   "histological_grade when present)")
    p.add_argument("--grade-table", type=Path, default=None, help="CSV with case_id + a grade column, merged in")
    p.add_argument("--no-grade", action="store_true", help="survival head only, even if the table has grades")
    p.add_argument("--folds", default=None, help="comma-separated fold indices to run (default: all); folds of "
                   "--out that finished with the same settings are reused, and metrics.json covers every finished "
                   "fold of --out")
    p.add_argument("--overwrite", action="store_true", help="delete the fold folders, metrics.json and "
                   "predictions.csv of --out first and start over (needed when the settings changed)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--quiet", action="store_true")
    d = PredictorOptions()
    for f in dataclasses.fields(PredictorOptions):
        if f.name in ("seed", "use_grade"):
            continue
        default = getattr(d, f.name)
        flag = f"--{f.name.replace('_', '-')}"
        if f.name == "model":
            p.add_argument(flag, choices=["expression", "slide", "multimodal"], default=default)
        elif f.name == "selection":
            p.add_argument(flag, choices=list(SELECTIONS), default=default)
        elif f.name == "grade_loss":
            p.add_argument(flag, choices=["ce", "coral"], default=default)
        elif f.name == "transform":
            p.add_argument(flag, choices=["standardize", "minmax", "minmax01"], default=default)
        elif f.name in ("max_patches", "eval_max_patches"):
            p.add_argument(flag, type=_int_or_none, default=default, help="patch cap per patient ('none' = all)")
        else:
            p.add_argument(flag, type=type(default), default=default)


def _int_or_none(s: str) -> int | None:
    return None if str(s).lower() in ("none", "all", "0") else int(s)


def cohort_inputs(args: argparse.Namespace) -> dict:
    """Absolute paths of the cohort inputs (stored in run.json)."""
    def ab(p):
        return str(Path(p).resolve()) if p is not None else None
    return {"manifest": ab(args.manifest), "expression": ab(args.expression), "signatures": ab(args.signatures),
            "features": ab(getattr(args, "features", None)), "grade_column": args.grade_column,
            "grade_table": ab(args.grade_table), "splits": ab(args.splits), "n_folds": args.n_folds, "seed": args.seed}


def main(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if args.threads:
        torch.set_num_threads(args.threads)
    cohort = load_cohort(args)
    if args.grade_column and not cohort.manifest.grade_categories:
        raise ValueError(f"{args.manifest}: --grade-column {args.grade_column!r} gave no grades; check the column "
                         "name (or pass --grade-table CSV with case_id + grade)")
    if args.model in ("slide", "multimodal") and not any(cohort.features.values()):
        raise ValueError(f"--model {args.model} needs patch features: pass --features DIR (pathgen embed's "
                         "<out>/features) or a manifest with a features_path column")
    opts = PredictorOptions(**{f.name: getattr(args, f.name) for f in dataclasses.fields(PredictorOptions)
                               if f.name != "use_grade"}, use_grade=not args.no_grade)
    folds = [int(x) for x in args.folds.split(",")] if args.folds else None
    dist = Dist.for_device(resolve_device(opts.device))
    try:
        metrics = train_predictor_cv(cohort, opts, out, folds=folds, inputs=cohort_inputs(args),
                                     progress=not args.quiet, dist=dist, overwrite=getattr(args, "overwrite", False))
        dist.barrier()  # rank 0 has written every file
    finally:
        dist.close()
    if not dist.is_main:
        return 0
    print(format_summary(metrics))
    print(f"wrote {out / 'metrics.json'} and {out / 'predictions.csv'}")
    return 0
