"""Cohort manifests: MCAT/SurvPath/PANTHER tables read unchanged; bad input refused with counts."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pathgen.data import check_cohort, parse_grade, read_manifest
from pathgen.data.manifest import strip_slide_extension
from tests.data.conftest import BLCA_CLINICAL

KIRC_PANTHER = "panther/src/splits/survival/TCGA_KIRC_overall_survival_k=0/train.csv"


def test_blca_table_as_manifest(blca_path, shared_data):
    clinical = pd.read_csv(shared_data / BLCA_CLINICAL)
    with pytest.warns(UserWarning, match="slides have no grade"):
        m = read_manifest(blca_path, grade_table=clinical)
    assert len(m.frame) == 437 and len(m.case_ids) == 373
    sid = m.frame["slide_id"].iloc[0]
    assert sid.startswith("TCGA-2F-A9KO-01Z-00-DX1.") and not sid.endswith(".svs") and sid.count(".") == 1
    cases = m.cases()
    assert len(cases) == 373 and cases["n_slides"].sum() == 437
    assert m.grade_categories == ["G1", "G2"]
    assert set(cases["grade"].dropna()) == {"G1", "G2"}
    assert cases["censorship"].isin([0, 1]).all()


def test_panther_days_mapped_explicitly(shared_data):
    path = shared_data / KIRC_PANTHER
    if not path.exists():
        pytest.skip(f"{path} not present")
    raw = pd.read_csv(path)
    m = read_manifest(path, check_censoring=True)
    assert m.mapping["survival_months"] == "os_survival_days (days) / os_censorship"
    np.testing.assert_allclose(m.frame["survival_months"], raw["os_survival_days"] / (365.25 / 12))
    assert m.mapping["is_female"] == "sex"
    assert set(m.frame["is_female"].dropna()) <= {0.0, 1.0}
    assert m.grade_categories[:2] == ["G1", "G2"] and m.mapping["grade"] == "histological_grade"
    assert "race" in m.frame.columns


def test_gbmlgg_grade_from_two_sources(shared_data):
    grades = pd.read_csv(shared_data / "pathomicfusion_gbmlgg/grade_data_LGG_grade2_grade3_subset.csv")
    cat = parse_grade(grades["Grade"].tolist() + [4])
    assert list(cat.categories) == ["2", "3", "4"] and cat.ordered


@pytest.mark.parametrize("values,order,expected", [
    (["G2", "g1", "GX", "[Not Available]", "G4"], None, ["G1", "G2", "G4"]),
    (["WHO III", "Grade II", "IV"], None, ["II", "III", "IV"]),
    (["High Grade", "Low Grade"], None, ["Low", "High"]),
])
def test_parse_grade(values, order, expected):
    assert list(parse_grade(values, order).categories) == expected


def test_parse_grade_refuses_mixed_and_unknown():
    with pytest.raises(ValueError, match="mixed grade notations"):
        parse_grade(["G1", "III"])
    with pytest.raises(ValueError, match="not understood"):
        parse_grade(["G1", "moderately"])


def _frame():
    return pd.DataFrame({"case_id": ["A", "A", "B", "C"], "slide_id": ["a1.svs", "a2.svs", "b.svs", "c.svs"],
                         "survival_months": [10.0, 10.0, 5.0, 7.0], "censorship": [0, 0, 1, 0],
                         "grade": ["G1", "G1", "G3", "G2"]})


def test_several_slides_per_case():
    m = read_manifest(_frame())
    assert m.case_ids == ["A", "B", "C"]
    assert list(m.slides_of("A")["slide_id"]) == ["a1", "a2"]
    assert m.cases().loc["A", "n_slides"] == 2


def test_refusals():
    f = _frame()
    f.loc[1, "slide_id"] = "a1.svs"
    with pytest.raises(ValueError, match="1 slide ids listed more than once"):
        read_manifest(f)
    f = _frame()
    f.loc[1, "survival_months"] = 11.0
    with pytest.raises(ValueError, match="1 patients have slides with different survival or grade"):
        read_manifest(f)
    f = _frame()
    f.loc[2, "survival_months"] = -1.0
    with pytest.raises(ValueError, match="1 negative survival times"):
        read_manifest(f)
    f = _frame()
    f["censorship"] = 1
    with pytest.raises(ValueError, match="all 3 patients are censored"):
        read_manifest(f)
    with pytest.raises(ValueError, match="no survival columns"):
        read_manifest(_frame().drop(columns=["survival_months"]))
    f = _frame()
    f.loc[0, "case_id"] = None
    with pytest.raises(ValueError, match="1 rows without case_id"):
        read_manifest(f)


def test_event_column_is_converted():
    f = _frame().rename(columns={"censorship": "dead"})
    f["dead"] = 1 - f["dead"]
    m = read_manifest(f, time_column="survival_months", event_column="dead")
    assert list(m.frame["censorship"]) == [0, 0, 1, 0]


def test_check_cohort_lists_both_sides():
    m = read_manifest(_frame())
    expr = pd.DataFrame({"G": [1.0, 2.0, 3.0]}, index=["A", "B", "Z"])
    with pytest.warns(UserWarning, match="1 patients have slides but no expression: C"):
        check = check_cohort(m, expr)
    assert check.cases_with_both == ["A", "B"]
    assert check.slides_without_expression == ["C"] and check.expression_without_slides == ["Z"]
    with pytest.raises(ValueError, match="expression but no slide: Z"):
        check_cohort(m, expr, strict=True)


def test_strip_slide_extension_keeps_uuid_dots():
    assert strip_slide_extension("TCGA-X-DX1.ABC-1.svs") == "TCGA-X-DX1.ABC-1"
    assert strip_slide_extension("TCGA-X-DX1.ABC-1") == "TCGA-X-DX1.ABC-1"
    assert strip_slide_extension("slide.sv") == "slide.sv"  # not rstrip('.svs')
