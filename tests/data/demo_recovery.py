"""Is the demo cohort's expression signal recoverable from simple patch statistics?

Deliberately independent of ``pathgen.features``: a dozen colour/texture statistics per 256 px
tissue patch, mean-pooled per slide, then a cross-validated ridge regression per family score;
the Spearman correlation between held-out predictions and the true scores is the recovery.

Run as a script on a cohort folder: ``python tests/data/demo_recovery.py DIR``.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile
from scipy.ndimage import uniform_filter
from scipy.stats import spearmanr
from sklearn.linear_model import RidgeCV
from sklearn.model_selection import KFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

PATCH = 256


def patch_stats(rgb: np.ndarray) -> np.ndarray | None:
    """Colour/texture statistics of one patch ``[256, 256, 3]`` uint8, or None for background."""
    x = rgb.astype(np.float32)
    od = -np.log10(np.clip(x, 1, 255) / 255.0)  # [H, W, 3]
    tissue = od.sum(axis=2) > 0.25
    if tissue.mean() < 0.5:
        return None
    gray = x.mean(axis=2)
    dark = gray < 110
    gy, gx = np.gradient(gray)
    grad = np.hypot(gx, gy)
    dog = uniform_filter(gray, 5) - uniform_filter(gray, 21)
    t = tissue
    return np.array([
        *od[t].mean(axis=0),  # mean OD per channel (stain amounts)
        *od[t].std(axis=0),
        dark.mean(),  # nuclear area fraction
        grad[t].mean(),  # edge density (many small nuclei -> more edges per area)
        (grad > 20)[t].mean(),
        np.abs(dog)[t].mean(),  # blob-scale texture
        *(od[dark].mean(axis=0) if dark.any() else np.zeros(3)),  # nuclear colour (hue, intensity)
        (od[..., 0] / (od[..., 1] + 1e-3))[dark].mean() if dark.any() else 0.0,
        (od[..., 1] - od[..., 0])[t & ~dark].mean(),  # eosin-ness of non-nuclear tissue
        1.0 - tissue.mean(),  # lumen / white inside tissue patches
    ], dtype=np.float64)


def slide_features(path: str | Path) -> np.ndarray:
    """Mean-pooled patch statistics of a slide's level 0."""
    with tifffile.TiffFile(path) as tf:
        img = tf.pages[0].asarray()
    h, w = img.shape[:2]
    rows = [patch_stats(img[y:y + PATCH, x:x + PATCH]) for y in range(0, h - PATCH + 1, PATCH)
            for x in range(0, w - PATCH + 1, PATCH)]
    rows = [r for r in rows if r is not None]
    if not rows:
        raise ValueError(f"{path}: no tissue patch")
    return np.mean(rows, axis=0)


def recovery(cohort: str | Path, n_splits: int = 5, seed: int = 0) -> pd.DataFrame:
    """Held-out Spearman between ridge predictions from slide features and each family score."""
    cohort = Path(cohort)
    manifest = pd.read_csv(cohort / "manifest.csv")
    scores = pd.read_csv(cohort / "family_scores.csv", index_col="case_id").loc[manifest["case_id"]]
    feats = np.stack([slide_features(cohort / p) for p in manifest["slide_path"]])
    n_splits = min(n_splits, len(manifest))
    out = []
    for fam in scores.columns:
        y = scores[fam].to_numpy()
        pred = np.zeros_like(y)
        for tr, te in KFold(n_splits, shuffle=True, random_state=seed).split(feats):
            model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-2, 3, 12)))
            model.fit(feats[tr], y[tr])
            pred[te] = model.predict(feats[te])
        out.append({"family": fam, "spearman": float(spearmanr(pred, y).statistic), "n": len(y)})
    return pd.DataFrame(out)


if __name__ == "__main__":
    res = recovery(sys.argv[1])
    print(res.to_string(index=False))
    print(f"median spearman {res['spearman'].median():.3f}")
