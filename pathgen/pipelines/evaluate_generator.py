"""``pathgen evaluate-generator``: fidelity of synthesized expression on held-out patients.

Per family and overall (``pathgen.eval.metrics.fidelity_report``): per-gene Spearman across
patients (median, IQR, % of genes significant at FDR 0.05), the published pooled Spearman and
nMAE (MAE / per-gene range on TRAINING patients). Baselines on the same split: the training mean,
and ridge regression from mean-pooled patch features (alpha chosen by CV on training patients).
Writes ``metrics.json`` and a real-vs-synthesized figure per family.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from pathgen.data.bags import read_h5_bag
from pathgen.data.expression import read_expression
from pathgen.data.families import GeneFamilies
from pathgen.eval.metrics import fidelity_report
from pathgen.models.generator.checkpoint import load_checkpoint, versions
from pathgen.pipelines.cohort import Cohort, add_cohort_arguments, load_cohort
from pathgen.utils.io import atomic_path, atomic_write_text


def mean_pooled(cohort: Cohort, ids: list[str]) -> np.ndarray:
    rows = []
    for c in ids:
        feats = [read_h5_bag(p)[0] for p in cohort.features[c]]
        rows.append(np.concatenate(feats).mean(0))
    return np.stack(rows)


def ridge_baseline(cohort: Cohort, fam: GeneFamilies, train_ids: list[str], test_ids: list[str]) -> np.ndarray:
    from sklearn.linear_model import RidgeCV
    from sklearn.preprocessing import StandardScaler

    Xtr, Xte = mean_pooled(cohort, train_ids), mean_pooled(cohort, test_ids)
    sc = StandardScaler().fit(Xtr)
    Ytr = cohort.expression.loc[train_ids, fam.columns].to_numpy(float)
    mu, sd = Ytr.mean(0), Ytr.std(0) + 1e-8
    model = RidgeCV(alphas=np.logspace(-2, 4, 13)).fit(sc.transform(Xtr), (Ytr - mu) / sd)
    return model.predict(sc.transform(Xte)) * sd + mu


def evaluate_generator(cohort: Cohort, synthesized: pd.DataFrame, train_ids: list[str], test_ids: list[str],
                       out: Path, figure: bool = True) -> dict:
    fam = cohort.families
    test_ids = [c for c in test_ids if c in synthesized.index and cohort.features.get(c)]
    if len(test_ids) < 3:
        raise ValueError(f"evaluate-generator: only {len(test_ids)} held-out patients have synthesized expression")
    real = cohort.expression.loc[test_ids, fam.columns].to_numpy(float)
    synth = synthesized.loc[test_ids, fam.columns].to_numpy(float)
    train = cohort.expression.loc[train_ids, fam.columns].to_numpy(float)
    ranges = train.max(0) - train.min(0)
    slices = fam.slices
    report = fidelity_report(real, synth, ranges, slices, genes=fam.columns)
    mean_pred = np.repeat(train.mean(0, keepdims=True), len(test_ids), 0)
    train_feat = cohort.cases_with_features(train_ids)
    baselines = {"train_mean": fidelity_report(real, mean_pred, ranges, slices, genes=fam.columns),
                 "ridge": fidelity_report(real, ridge_baseline(cohort, fam, train_feat, test_ids), ranges, slices,
                                          genes=fam.columns)}
    metrics = {**report, "baselines": baselines, "n_train": len(train_ids), "n_test": len(test_ids),
               "versions": versions(),
               "definitions": {"nmae": "mean over genes of MAE_g / (max - min of gene g over training patients)",
                               "spearman_gene_median": "median over genes of Spearman rho across held-out patients",
                               "spearman_pooled": "Spearman over all patient x gene pairs (published metric)"}}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2, default=_json_default))
    if figure:
        plot_fidelity(real, synth, fam, out / "fidelity.png", report)
    return metrics


def plot_fidelity(real: np.ndarray, synth: np.ndarray, fam: GeneFamilies, path: Path, report: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.stats import spearmanr

    n = len(fam.names)
    fig, axes = plt.subplots(2, n, figsize=(3.2 * n, 6.2))
    for i, (name, sl) in enumerate(fam.slices.items()):
        r, s = real[:, sl], synth[:, sl]
        # standardise per gene so families with different scales share a plot
        z = lambda a: (a - r.mean(0)) / (r.std(0) + 1e-8)  # noqa: E731
        ax = axes[0, i]
        ax.scatter(z(r).ravel(), z(s).ravel(), s=2, alpha=0.2)
        ax.set_title(f"{name}\n(per-gene z, real vs synth)", fontsize=8)
        ax.set_xlabel("real")
        ax.set_ylabel("synthesized")
        rhos = [spearmanr(r[:, g], s[:, g]).statistic for g in range(r.shape[1])
                if r[:, g].std() > 0 and s[:, g].std() > 0]
        axes[1, i].hist(rhos, bins=30, range=(-1, 1), color="tab:orange")
        med = report["families"][name]["spearman_gene_median"]
        axes[1, i].axvline(0, color="k", lw=0.5)
        axes[1, i].set_title(f"per-gene rho, median {med:.2f}" if med is not None else "per-gene rho", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, required=True, help="the generator checkpoint whose split is used")
    p.add_argument("--synthesized", type=Path, required=True, help="synthesized.csv from `pathgen synthesize`")
    add_cohort_arguments(p)
    p.add_argument("--out", type=Path, required=True)


def main(args: argparse.Namespace) -> int:
    ckpt = load_checkpoint(args.model)
    fold = ckpt["fold"]
    if not fold.get("test"):  # its val patients chose the checkpoint (early stopping): not held out
        print(f"error: {args.model}: fold {ckpt.get('fold_k')} has no test patients, and its validation patients "
              "selected this checkpoint, so scoring on them would flatter the generator. Train with a split that has a "
              "test part (pathgen's own folds, or MCAT/PORPOISE splits_<k>.csv, whose val column is the held-out fold)",
              file=sys.stderr)
        return 1
    fam = GeneFamilies.from_dict(ckpt["families"])
    cohort = load_cohort(args, families=fam)
    synth = read_expression(args.synthesized)
    m = evaluate_generator(cohort, synth, ckpt["train_case_ids"], fold["test"], args.out)
    o = m["overall"]
    print(f"held-out patients: {m['n_test']}; per-gene Spearman median {o['spearman_gene_median']:.3f}, "
          f"pooled {o['spearman_pooled']:.3f}, nMAE {o['nmae']:.3f}")
    for name, b in m["baselines"].items():
        bo = b["overall"]
        med = bo["spearman_gene_median"]
        print(f"  baseline {name}: Spearman median {med if med is None else round(med, 3)}, nMAE {bo['nmae']:.3f}")
    print(f"wrote {args.out}/metrics.json")
    return 0
