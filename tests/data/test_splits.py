"""Patient-level splits: deterministic, disjoint, stratified; MCAT split files read."""
from __future__ import annotations

import pandas as pd
import pytest

from pathgen.data import make_folds, read_manifest, read_splits, write_splits
from tests.data.conftest import BLCA_CLINICAL


@pytest.fixture(scope="module")
def cases(blca_path, shared_data):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        m = read_manifest(blca_path, grade_table=pd.read_csv(shared_data / BLCA_CLINICAL))
    return m.cases()


def test_folds_deterministic_disjoint_and_complete(cases):
    folds = make_folds(cases, n_folds=5, seed=3)
    again = make_folds(cases.sample(frac=1.0, random_state=1), n_folds=5, seed=3)  # row order irrelevant
    assert [f.to_dict() for f in folds] == [f.to_dict() for f in again]
    assert [f.to_dict() for f in make_folds(cases, seed=4)] != [f.to_dict() for f in folds]
    tested = [c for f in folds for c in f.test]
    assert sorted(tested) == sorted(cases.index)  # every patient tested exactly once
    for f in folds:
        f.check_disjoint()
        assert set(f.train) | set(f.val) | set(f.calibration) | set(f.test) == set(cases.index)
        n_rest = len(cases) - len(f.test)
        assert abs(len(f.val) - 0.15 * n_rest) <= 1 and abs(len(f.calibration) - 0.15 * n_rest) <= 1


def test_folds_are_stratified(cases):
    folds = make_folds(cases, n_folds=5, seed=0)
    event = 1 - cases["censorship"]
    overall = event.mean()
    for f in folds:
        assert abs(event.loc[f.test].mean() - overall) < 0.05
        assert abs(event.loc[f.val].mean() - overall) < 0.08
        g1 = (cases.loc[f.test, "grade"] == "G1").sum()
        assert 3 <= g1 <= 6  # 21 G1 patients dealt over 5 folds


def test_write_read_roundtrip(cases, tmp_path):
    folds = make_folds(cases, n_folds=3, seed=0)
    write_splits(folds, tmp_path)
    back = read_splits(tmp_path, known_cases=list(cases.index))
    assert [f.to_dict() for f in back] == [f.to_dict() for f in folds]


def test_read_mcat_splits(shared_data, blca_table):
    folder = shared_data / "mcat/splits/5foldcv/tcga_blca"
    folds = read_splits(folder, known_cases=list(blca_table["case_id"].unique()))
    assert [f.k for f in folds] == [0, 1, 2, 3, 4]
    for f in folds:
        assert f.train and f.val and not f.test
        assert f.heldout == f.val
        assert not set(f.train) & set(f.val)
    raw = pd.read_csv(folder / "splits_0.csv")
    assert folds[0].train == raw["train"].dropna().tolist()


def test_bad_split_files(tmp_path, shared_data):
    pd.DataFrame({"train": ["A", "B"], "val": ["B", None]}).to_csv(tmp_path / "splits_0.csv")
    with pytest.raises(ValueError, match="case B is in both 'train' and 'val'"):
        read_splits(tmp_path / "splits_0.csv")
    with pytest.raises(ValueError, match="are not in the cohort"):
        read_splits(shared_data / "mcat/splits/5foldcv/tcga_blca/splits_0.csv", known_cases=["X"])
    pd.DataFrame({"a": [1]}).to_csv(tmp_path / "splits_1.csv")
    with pytest.raises(ValueError, match="no 'train' column"):
        read_splits(tmp_path / "splits_1.csv")


def test_too_few_patients():
    tiny = pd.DataFrame({"censorship": [0, 1, 0]}, index=["a", "b", "c"])
    with pytest.raises(ValueError, match="3 patients cannot fill 5 folds"):
        make_folds(tiny)
