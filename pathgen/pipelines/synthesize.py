"""``pathgen synthesize``: generate expression for patients from their patch bags.

Slides x samples run together through the fused sampler; outputs are in the input's units
(the training transform inverted): ``synthesized.csv`` and ``.parquet`` (case_id + MCAT-style
``<GENE>_rnaseq`` columns, the mean of the K samples, readable by ``pathgen.data.read_expression``)
and ``samples.h5`` (every sample, for uncertainty), each carrying the family order and sizes.
``synthesized.json`` beside them records the settings and the generator's training patients, so
``pathgen evaluate`` can refuse synthesized expression of patients the generator trained on.
With ``--save-attention``, per-patient co-attention maps land in ``attention/<case_id>.h5``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from pathgen.data.bags import PatientBags
from pathgen.data.expression import to_mcat_columns
from pathgen.diffusion import NoiseSchedule
from pathgen.models.generator import sample
from pathgen.models.generator.checkpoint import load_checkpoint, model_from_checkpoint, train_case_ids, versions
from pathgen.pipelines.cohort import Cohort, add_cohort_arguments, load_cohort
from pathgen.pipelines.train_generator import make_loader, resolve_device
from pathgen.utils.io import atomic_path, atomic_write_text

PROVENANCE_NAME = "synthesized.json"  # next to synthesized.csv: settings and the generator's training patients


def load_members(ckpt_paths: Sequence[Path], device) -> list[tuple]:
    """Load one generator or an ensemble of them: ``[(model, families, transform, ckpt)]``.

    Members must generate the same gene columns and, when they record one, come from the same
    training patients (an ensemble over folds would leak held-out patients into each other).
    """
    members = []
    for p in ckpt_paths:
        ckpt = load_checkpoint(p)
        model, fam, transform = model_from_checkpoint(ckpt, device)
        if members:
            fam0, ck0 = members[0][1], members[0][3]
            if list(fam.columns) != list(fam0.columns) or fam.sizes != fam0.sizes:
                raise ValueError(f"{p}: its gene families differ from {ckpt_paths[0]}'s; ensemble members must "
                                 "be trained on the same families")
            if sorted(ckpt.get("train_case_ids") or []) != sorted(ck0.get("train_case_ids") or []):
                raise ValueError(f"{p}: trained on other patients than {ckpt_paths[0]}; ensemble only the "
                                 "generators of one fold")
        members.append((model, fam, transform, ckpt))
    return members


def synthesize(ckpt_path: Path | Sequence[Path], cohort: Cohort, case_ids: list[str], out: Path, *,
               samples: int = 3, steps: int = 50, mode: str = "ddim", eta: float = 0.0,
               guidance_scale: float | None = None, seed: int = 0, batch_size: int = 8, device: str = "auto",
               save_attention: bool = False, progress: bool = True) -> pd.DataFrame:
    """Synthesize expression for ``case_ids`` (those with feature files); returns the mean table
    (case_id x unique genes, input units) and writes the files described in the module docstring.

    ``ckpt_path`` may list several generators of one fold (a deep ensemble, e.g. several seeds):
    each draws ``samples`` samples per patient, the table is the mean over all members x samples,
    and ``samples.h5`` holds them all [P, members x K, G]; attention maps come from the first member.
    """
    out = Path(out)
    dev = resolve_device(device)
    paths = [Path(ckpt_path)] if isinstance(ckpt_path, (str, Path)) else [Path(p) for p in ckpt_path]
    members = load_members(paths, dev)
    model, fam, transform, ckpt = members[0]
    ids = cohort.cases_with_features(case_ids)
    missing = sorted(set(case_ids) - set(ids))
    if missing:
        print(f"synthesize: {len(missing)} patients have no feature files and are skipped (e.g. {missing[:3]})")
    if not ids:
        raise ValueError("synthesize: none of the requested patients has feature files")
    ds = PatientBags(ids, expression=None, families=fam, features=cohort.features)
    loader = make_loader(ds, batch_size, False, seed)
    g = torch.Generator(device=dev).manual_seed(seed)
    all_samples, att_dir = [], out / "attention"
    bar = tqdm(total=len(ids), desc="synthesize", unit="patient", disable=not progress)
    schedules = [NoiseSchedule(member.cfg.schedule) for member, *_ in members]
    for batch in loader:
        feats, cu = batch["features"].to(dev), batch["cu_seqlens"].to(dev)
        parts, maps = [], None
        for m, (member, _, member_transform, _) in enumerate(members):
            ctx = member.encode_context(feats, cu, batch["max_seqlen"])
            res = sample(member, schedules[m], ctx, samples_per_bag=samples, steps=steps,
                         mode=mode, eta=eta, guidance_scale=guidance_scale, generator=g,
                         need_weights=save_attention and m == 0)
            x, mp = res if save_attention and m == 0 else (res, None)
            maps = mp if m == 0 else maps
            x = x.float().cpu().numpy()  # [b, K, G] transformed units
            b = x.shape[0]
            parts.append(member_transform.inverse_transform(x.reshape(b * samples, -1)).reshape(b, samples, -1))
        raw = np.concatenate(parts, axis=1)  # [b, members * K, G] input units
        all_samples.append(raw)
        if save_attention:
            _save_attention(att_dir, batch, maps, samples, len(fam.names), fam.names)
        bar.update(b)
    bar.close()
    S = np.concatenate(all_samples).astype(np.float32)  # [P, members * K, G]
    mean = _unique_columns(pd.DataFrame(S.mean(1), index=pd.Index(ids, name="case_id"), columns=fam.columns))
    meta = {"checkpoint": str(paths[0]), "checkpoints": [str(p) for p in paths], "members": len(paths),
            "samples": samples, "steps": steps, "mode": mode, "eta": eta,
            "guidance_scale": guidance_scale, "seed": seed, "families": fam.to_dict(), "versions": versions(),
            "fold_k": ckpt.get("fold_k"),
            # who trained the generator: `pathgen evaluate` refuses to test a predictor on these patients'
            # synthesized expression (it would not be held out); None = not recorded in the checkpoint
            "generator_train_case_ids": train_case_ids(ckpt),
            "case_ids": list(ids)}
    out.mkdir(parents=True, exist_ok=True)
    table = to_mcat_columns(mean)
    # the provenance sidecar first: a synthesized.csv that exists always has its synthesized.json
    atomic_write_text(out / PROVENANCE_NAME, json.dumps(meta, indent=2))
    with atomic_path(out / "synthesized.csv") as tmp:
        table.to_csv(tmp, index=False)
    with atomic_path(out / "synthesized.parquet") as tmp:
        table.to_parquet(tmp, index=False)
    with atomic_path(out / "samples.h5") as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("samples", data=S, compression="gzip")  # [P, members * K, G]
        f.create_dataset("case_ids", data=np.array(ids, dtype=h5py.string_dtype()))
        f.create_dataset("genes", data=np.array(fam.columns, dtype=h5py.string_dtype()))
        f.attrs["meta"] = json.dumps(meta)
    return mean


def _unique_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """A gene listed in two families is generated twice; report it once (the mean of both)."""
    if not frame.columns.has_duplicates:
        return frame
    return frame.T.groupby(level=0, sort=False).mean().T


def _save_attention(att_dir: Path, batch: dict, maps: list, K: int, n_fam: int, names) -> None:
    """Per patient: coords [n, 2] and attention [n_blocks, n, F] (mean over heads and samples)."""
    cu = batch["cu_seqlens"].tolist()
    stacked = torch.stack([m.float().cpu() for m in maps])  # [L, total_n, H, K*F]
    L, N, H, _ = stacked.shape
    att = stacked.view(L, N, H, K, n_fam).mean(dim=(2, 3))  # [L, total_n, F]
    for i, case in enumerate(batch["case_ids"]):
        a, b = cu[i], cu[i + 1]
        with atomic_path(att_dir / f"{case}.h5") as tmp, h5py.File(tmp, "w") as f:
            f.create_dataset("attention", data=att[:, a:b].numpy())
            f.create_dataset("coords", data=batch["coords"][a:b].numpy())
            f.create_dataset("slide_index", data=batch["slide_index"][a:b].numpy())
            f.attrs["slide_ids"] = json.dumps(batch["slide_ids"][i])
            f.attrs["families"] = json.dumps(list(names))


def select_cases(cohort: Cohort, which: str, fold_k: int | None) -> list[str]:
    if which == "all":
        return list(cohort.manifest.case_ids)
    if which in ("train", "val", "calibration", "test", "heldout"):
        fold = cohort.fold(fold_k if fold_k is not None else 0)
        return fold.heldout if which == "heldout" else fold.parts()[which]
    path = Path(which)
    if path.exists():
        return [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    raise ValueError(f"--cases must be all|train|val|calibration|test|heldout or a file of case ids, got {which!r}")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, nargs="+", required=True,
                   help="generator checkpoint (generator.pt); several of one fold = an ensemble, averaged")
    add_cohort_arguments(p)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--cases", default="test", help="all | test | val | calibration | heldout | FILE of case ids")
    p.add_argument("--samples", type=int, default=3, help="samples per patient, averaged (published: 3)")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps (ignored for --mode ddpm: all T steps)")
    p.add_argument("--mode", choices=["ddim", "ddpm"], default="ddim")
    p.add_argument("--eta", type=float, default=0.0)
    p.add_argument("--guidance-scale", type=float, default=None)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="auto")
    p.add_argument("--save-attention", action="store_true")


def main(args: argparse.Namespace) -> int:
    ckpt = load_checkpoint(args.model[0])
    if args.splits is None:  # the generator's own split
        cand = Path(args.model[0]).parent / "splits.json"
        args.splits = cand if cand.exists() else None
    cohort = load_cohort(args)
    ids = select_cases(cohort, args.cases, ckpt.get("fold_k"))
    seen = sorted(set(ids) & set(ckpt.get("train_case_ids") or []))
    if seen:  # their synthetic expression is not held-out: evaluating on it would flatter the generator
        print(f"warning: {len(seen)} of the {len(ids)} selected patients trained {args.model[0]} (e.g. {seen[:3]}); "
              "their synthesized expression must not be used to evaluate models on held-out patients "
              "(use --cases test, or the generator of the fold that held them out)", file=sys.stderr)
    table = synthesize(args.model, cohort, ids, args.out, samples=args.samples, steps=args.steps, mode=args.mode,
                       eta=args.eta, guidance_scale=args.guidance_scale, seed=args.seed, batch_size=args.batch_size,
                       device=args.device, save_attention=args.save_attention)
    print(f"wrote {len(table)} patients x {table.shape[1]} genes to {args.out}/synthesized.csv (+ .parquet, samples.h5)")
    return 0
