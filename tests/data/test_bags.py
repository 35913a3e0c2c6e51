"""Patient bags: lazy HDF5 reading, several slides per patient, caps, and the cu_seqlens packing."""
from __future__ import annotations

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from pathgen.data import (ExpressionTransform, GeneFamilies, PatientBags, collate_bags, family_matrix,
                          fit_survival_bins, read_manifest)
from pathgen.data.bags import h5_bag_shape, read_h5_bag

D = 6


def _write_h5(path, n, seed):
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(n, D)).astype(np.float32)
    coords = np.stack([np.arange(n) * 256, np.full(n, seed * 256)], axis=1).astype(np.int64)
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=feats)
        f.create_dataset("coords", data=coords)
    return feats, coords


@pytest.fixture()
def cohort(tmp_path, blca_table, blca_expression):
    """Four real BLCA patients: 3 patches; no features; 5 patches; two slides of 2 + 4 patches."""
    cases = sorted(blca_table["case_id"].unique())[:4]
    rows, truth = [], {}
    layout = {cases[0]: [3], cases[1]: [], cases[2]: [5], cases[3]: [2, 4]}
    for i, (case, sizes) in enumerate(layout.items()):
        per = blca_table[blca_table["case_id"] == case].iloc[0]
        truth[case] = []
        for j, n in enumerate(sizes or [0]):
            sid = f"{case}-S{j}"
            row = {"case_id": case, "slide_id": sid, "survival_months": per["survival_months"],
                   "censorship": per["censorship"], "grade": ["G1", "G2", "G3", "G2"][i]}
            if sizes:
                truth[case].append(_write_h5(tmp_path / f"{sid}.h5", n, seed=10 * i + j))
            rows.append(row)
    manifest = read_manifest(pd.DataFrame(rows), root=tmp_path)
    families = GeneFamilies.from_mapping({"A": ["TP53", "PTEN"], "B": ["EGFR", "TP53", "ERBB2"]})
    return manifest, families, truth, cases


def test_collate_packs_uneven_bags(cohort, blca_expression, tmp_path):
    manifest, families, truth, cases = cohort
    feats_map = manifest.features_paths(tmp_path)
    assert [len(feats_map[c]) for c in cases] == [1, 0, 1, 2]
    transform = ExpressionTransform.fit_on(family_matrix(blca_expression, families.columns),
                                           blca_expression.index[:200])
    labels = manifest.cases()
    ds = PatientBags(cases, expression=blca_expression, families=families, labels=labels, features=feats_map,
                     transform=transform)
    batch = collate_bags([ds[i] for i in range(4)])
    assert batch["cu_seqlens"].dtype == torch.int32
    assert batch["cu_seqlens"].tolist() == [0, 3, 3, 8, 14]
    assert batch["max_seqlen"] == 6 and isinstance(batch["max_seqlen"], int)
    assert batch["features"].shape == (14, D) and batch["coords"].shape == (14, 2)
    cu = batch["cu_seqlens"].tolist()
    for b, case in enumerate(cases):
        want = np.concatenate([f for f, _ in truth[case]]) if truth[case] else np.zeros((0, D), np.float32)
        np.testing.assert_array_equal(batch["features"][cu[b]:cu[b + 1]].numpy(), want)
    np.testing.assert_array_equal(batch["slide_index"][8:14].numpy(), [0, 0, 1, 1, 1, 1])
    np.testing.assert_array_equal(batch["coords"][8:10].numpy(), truth[cases[3]][0][1])
    assert batch["expression"].shape == (4, families.total)
    raw = blca_expression.loc[cases, families.columns].to_numpy()
    np.testing.assert_allclose(batch["expression"].numpy(), transform.transform(raw), rtol=1e-6, atol=1e-6)
    assert batch["expression"][:, families.slices["A"]].shape == (4, 2)
    assert batch["grade"].tolist() == [0, 1, 2, 1]
    assert batch["case_ids"] == cases
    assert batch["slide_ids"][3] == [f"{cases[3]}-S0", f"{cases[3]}-S1"]


def test_dataloader_batches_and_labels(cohort, blca_table, blca_expression, tmp_path):
    manifest, families, _, cases = cohort
    labels = manifest.cases()
    per_case = blca_table.drop_duplicates("case_id")
    bins = fit_survival_bins(per_case["survival_months"], per_case["censorship"])
    ds = PatientBags.from_manifest(manifest, expression=blca_expression, families=families, features_dir=tmp_path,
                                   survival_bins=bins)
    loader = DataLoader(ds, batch_size=3, collate_fn=collate_bags)
    batches = list(loader)
    assert [len(b["case_ids"]) for b in batches] == [3, 1]
    assert batches[0]["cu_seqlens"].tolist() == [0, 3, 3, 8]
    assert batches[1]["cu_seqlens"].tolist() == [0, 6]
    months = torch.cat([b["survival_months"] for b in batches]).numpy()
    np.testing.assert_allclose(months, labels.loc[cases, "survival_months"], rtol=1e-6)
    assert torch.cat([b["survival_bin"] for b in batches]).tolist() == list(bins.assign(months))


def test_patch_cap(cohort, blca_expression, tmp_path):
    manifest, families, truth, cases = cohort
    feats = manifest.features_paths(tmp_path)
    fixed = PatientBags(cases, expression=None, families=families, features=feats, max_patches=4)
    item = fixed[3]
    all_rows = np.concatenate([f for f, _ in truth[cases[3]]])
    assert item.features.shape == (4, D)
    np.testing.assert_array_equal(item.features.numpy(), all_rows[[0, 2, 3, 5]])  # evenly spaced, repeatable
    assert fixed[0].features.shape == (3, D)  # under the cap: everything
    rnd = PatientBags(cases, expression=None, families=families, features=feats, max_patches=4,
                      random_subsample=True)
    draws = {tuple(rnd[3].slide_index.tolist()) + tuple(rnd[3].coords[:, 0].tolist()) for _ in range(20)}
    assert len(draws) > 1
    for _ in range(5):
        it = rnd[3]
        rows = {tuple(r) for r in all_rows.tolist()}
        assert it.features.shape == (4, D) and all(tuple(r) in rows for r in it.features.tolist())
    assert item.expression.shape == (0,)


def test_expression_only_bags_from_real_table(blca_path, blca_expression, blca_families):
    import warnings

    families, _ = blca_families
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        manifest = read_manifest(blca_path)
    ds = PatientBags.from_manifest(manifest, expression=blca_expression, families=families, feature_dim=1024)
    batch = collate_bags([ds[i] for i in range(8)])
    assert batch["features"].shape == (0, 1024)
    assert batch["cu_seqlens"].tolist() == [0] * 9 and batch["max_seqlen"] == 0
    assert batch["expression"].shape == (8, families.total) == (8, 3110)
    assert torch.isfinite(batch["expression"]).all()


def test_bad_inputs(cohort, blca_expression, tmp_path):
    manifest, families, _, cases = cohort
    with pytest.raises(ValueError, match="1 patients have no expression"):
        PatientBags(cases + ["TCGA-NO-NE00"], expression=blca_expression, families=families)
    with h5py.File(tmp_path / "odd.h5", "w") as f:
        f.create_dataset("features", data=np.zeros((2, D + 1), np.float32))
        f.create_dataset("coords", data=np.zeros((2, 2), np.int64))
    feats = manifest.features_paths(tmp_path)
    feats[cases[1]] = [tmp_path / "odd.h5"]
    with pytest.raises(ValueError, match="different dimensions"):
        PatientBags(cases, expression=None, families=families, features=feats)
    with h5py.File(tmp_path / "nofeat.h5", "w") as f:
        f.create_dataset("coords", data=np.zeros((2, 2), np.int64))
    with pytest.raises(ValueError, match="no 'features' dataset"):
        PatientBags(cases[:1], expression=None, families=families, features={cases[0]: [tmp_path / "nofeat.h5"]})
    with pytest.raises(ValueError, match="empty batch"):
        collate_bags([])


def test_unreadable_and_pt_feature_files_are_named(tmp_path):
    """Corrupt, truncated and .pt feature files: a ValueError naming the file and the fix."""
    good = tmp_path / "good.h5"
    with h5py.File(good, "w") as f:
        f.create_dataset("features", data=np.ones((50, 8), np.float32))
        f.create_dataset("coords", data=np.zeros((50, 2), np.int64))
    half = tmp_path / "half.h5"
    half.write_bytes(good.read_bytes()[: good.stat().st_size // 3])  # an interrupted copy
    junk = tmp_path / "junk.h5"
    junk.write_text("not hdf5")
    pt = tmp_path / "slide.pt"
    torch.save(torch.ones(5, 8), pt)
    for bad, fix in ((half, "copy it again"), (junk, "copy it again"), (pt, "h5_files")):
        for fn in (read_h5_bag, h5_bag_shape):
            with pytest.raises(ValueError, match=fix) as e:
                fn(bad)
            assert str(bad) in str(e.value)
    with pytest.raises(FileNotFoundError, match="missing.h5"):
        read_h5_bag(tmp_path / "missing.h5")


def test_leading_singleton_axis_is_dropped(tmp_path):
    """[1, N, D] features / [1, N, 2] coords (some CLAM forks) read as [N, D] / [N, 2]."""
    x = np.random.default_rng(0).normal(size=(7, 4)).astype(np.float32)
    c = np.arange(14, dtype=np.int64).reshape(7, 2)
    p = tmp_path / "b.h5"
    with h5py.File(p, "w") as f:
        f.create_dataset("features", data=x[None])
        f.create_dataset("coords", data=c[None])
    assert h5_bag_shape(p) == (7, 4)
    feats, coords = read_h5_bag(p)
    np.testing.assert_array_equal(feats, x)
    np.testing.assert_array_equal(coords, c)
    feats, coords = read_h5_bag(p, np.array([5, 1]))
    np.testing.assert_array_equal(feats, x[[1, 5]])
    with h5py.File(p, "w") as f:
        f.create_dataset("features", data=x)
        f.create_dataset("coords", data=c[:, :1])
    with pytest.raises(ValueError, match=r"'coords' must be \[N, 2\]"):
        read_h5_bag(p)
