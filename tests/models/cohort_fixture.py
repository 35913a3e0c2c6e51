"""A tiny on-disk cohort (manifest, MCAT-style expression, signatures, CLAM-layout HDF5 bags)
whose patch features carry each patient's family programme, for generator/predictor tests."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd

FAMILIES = {"Tumor Suppressor Genes": [f"TS{i}" for i in range(5)],
            "Oncogenes": [f"ON{i}" for i in range(7)] + ["TS0"]}  # TS0 sits in two families


def make_tiny_cohort(root: Path, n_cases: int = 16, dim: int = 12, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "features").mkdir(exist_ok=True)
    genes = list(dict.fromkeys(g for fam in FAMILIES.values() for g in fam))
    # two latent programmes drive both expression and patch features
    z = rng.normal(size=(n_cases, 2))
    load = rng.normal(size=(2, len(genes)))
    expr = z @ load + 0.3 * rng.normal(size=(n_cases, len(genes)))
    proj = rng.normal(size=(2, dim))
    rows = []
    for i in range(n_cases):
        case = f"TCGA-XX-{i:04d}"
        n = int(rng.integers(8, 40))
        feats = (z[i] @ proj)[None] + 0.5 * rng.normal(size=(n, dim))
        coords = np.stack([rng.integers(0, 50, n) * 256, rng.integers(0, 50, n) * 256], 1)
        with h5py.File(root / "features" / f"{case}-01Z.h5", "w") as f:
            f.create_dataset("features", data=feats.astype(np.float32))
            f.create_dataset("coords", data=coords.astype(np.int64))
        rows.append({"case_id": case, "slide_id": f"{case}-01Z", "survival_months": float(rng.uniform(1, 100)),
                     "censorship": int(rng.random() < 0.4), "grade": ["G1", "G2", "G3"][i % 3],
                     "age": float(rng.uniform(30, 80)), "is_female": int(rng.random() < 0.5)})
    manifest = pd.DataFrame(rows)
    manifest.to_csv(root / "manifest.csv", index=False)
    table = pd.DataFrame(expr, columns=[f"{g}_rnaseq" for g in genes])
    table.insert(0, "case_id", manifest["case_id"])
    table.to_csv(root / "expression.csv", index=False)
    width = max(len(v) for v in FAMILIES.values())
    sig = pd.DataFrame({k: v + [None] * (width - len(v)) for k, v in FAMILIES.items()})
    sig.to_csv(root / "signatures.csv", index=False)
    return {"manifest": root / "manifest.csv", "expression": root / "expression.csv",
            "signatures": root / "signatures.csv", "features": root / "features", "z": z}
