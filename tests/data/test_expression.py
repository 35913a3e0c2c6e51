"""Expression tables: MCAT columns and genes x samples matrices give the same frame; bad input is named."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pathgen.data import read_expression, to_mcat_columns


def test_blca_mcat_table(blca_table, blca_expression):
    n_rna = sum(str(c).endswith("_rnaseq") for c in blca_table.columns)
    assert blca_expression.shape == (blca_table["case_id"].nunique(), n_rna) == (373, 2814)
    assert blca_expression.index.name == "case_id"
    row = blca_table.iloc[5]
    assert blca_expression.loc[row["case_id"], "TP53"] == row["TP53_rnaseq"]


def test_matrix_layout_matches_mcat(blca_expression):
    sub = blca_expression.iloc[:5, :20]
    matrix = sub.T.copy()
    matrix.columns = [f"{c}-01" for c in sub.index]  # cBioPortal sample barcodes
    matrix.insert(0, "Entrez_Gene_Id", np.arange(len(matrix)))
    matrix.insert(0, "Hugo_Symbol", matrix.index)
    extra = matrix.iloc[:, 2].rename(f"{sub.index[0]}-11") + 100.0  # a normal sample of case 0
    matrix[extra.name] = extra.to_numpy()
    out, report = read_expression(matrix.reset_index(drop=True), return_report=True)
    assert report.layout == "matrix"
    assert any("lowest TCGA sample-type" in n for n in report.notes)
    pd.testing.assert_frame_equal(out.loc[sub.index, sub.columns], sub, check_names=False)


def test_roundtrip_mcat_columns(blca_expression):
    sub = blca_expression.iloc[:4, :6]
    back = read_expression(to_mcat_columns(sub))
    pd.testing.assert_frame_equal(back, sub, check_names=False)


def _table():
    return pd.DataFrame({"case_id": ["A", "B", "C"], "slide_id": ["a", "b", "c"],
                         "G1_rnaseq": [1.0, 2.0, 3.0], "G2_rnaseq": [0.5, np.nan, 1.0],
                         "G3_rnaseq": [1, 2, 3], "G1_cnv": [0, 1, 0]})


def test_nan_policy_counts():
    with pytest.warns(UserWarning, match="1 NaN values in 1 genes"):
        out, report = read_expression(_table(), return_report=True)
    assert list(out.columns) == ["G1", "G3"] and report.n_nan == 1 and report.genes_with_nan == ["G2"]
    with pytest.raises(ValueError, match="1 NaN values"):
        read_expression(_table(), on_nan="error")


def test_non_numeric_is_named():
    t = _table()
    t["G3_rnaseq"] = ["1", "two", "n/a?"]
    with pytest.raises(ValueError, match=r"2 non-numeric cells in 1 expression columns, e.g. G3 \(2\)"):
        read_expression(t, on_nan="keep")


def test_duplicated_cases():
    t = pd.concat([_table(), _table().iloc[[0]]], ignore_index=True)  # identical repeat: one row per slide
    out, report = read_expression(t, on_nan="keep", return_report=True)
    assert len(out) == 3 and report.duplicated_ids_identical == 1
    t.loc[3, "G1_rnaseq"] = 9.0
    with pytest.raises(ValueError, match="1 cases have several rows with different expression"):
        read_expression(t, on_nan="keep")
    with pytest.warns(UserWarning, match="resolved by 'mean'"):
        out = read_expression(t, on_nan="keep", on_duplicate="mean")
    assert out.loc["A", "G1"] == 5.0


def test_missing_file_and_columns(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_expression(tmp_path / "nope.csv")
    with pytest.raises(ValueError, match="no 'case_id' column"):
        read_expression(pd.DataFrame({"id": ["a"], "G_rnaseq": [1.0]}))
