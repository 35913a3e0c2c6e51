"""Fixtures for the cohort-data tests: the real TCGA tables from ../shared/data, loaded once."""
from __future__ import annotations

import warnings

import pandas as pd
import pytest

BLCA = "mcat/datasets_csv_sig/tcga_blca_all_clean.csv.zip"
BLCA_CLINICAL = "survpath/datasets_csv/clinical_data/tcga_blca_clinical.csv"
SIGNATURES = "mcat/datasets_csv_sig/signatures.csv"


@pytest.fixture(scope="session")
def blca_path(shared_data):
    p = shared_data / BLCA
    if not p.exists():
        pytest.skip(f"{p} not present")
    return p


@pytest.fixture(scope="session")
def blca_table(blca_path) -> pd.DataFrame:
    """The raw MCAT BLCA table (437 slides, 373 cases)."""
    return pd.read_csv(blca_path, compression="zip")


@pytest.fixture(scope="session")
def blca_expression(blca_table) -> pd.DataFrame:
    from pathgen.data import read_expression

    return read_expression(blca_table)


@pytest.fixture(scope="session")
def blca_families(blca_expression, shared_data):
    from pathgen.data import load_gene_families

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return load_gene_families(blca_expression.columns, shared_data / SIGNATURES, source="blca")
