"""Survival bins (MCAT convention) and the censorship checks."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pathgen.data import SurvivalBins, check_survival, days_to_months, fit_survival_bins


def test_bins_match_mcat_recipe_on_blca_train(blca_table):
    cases = blca_table.drop_duplicates("case_id")
    train = cases[cases["train"] == 1]
    bins = fit_survival_bins(train["survival_months"], train["censorship"])
    # independent MCAT recipe: qcut of uncensored times, outer edges widened over all (train) patients
    _, q = pd.qcut(train.loc[train["censorship"] == 0, "survival_months"], q=4, retbins=True, labels=False)
    q[0], q[-1] = train["survival_months"].min() - 1e-6, train["survival_months"].max() + 1e-6
    np.testing.assert_allclose(bins.edges, q)
    labels = bins.assign(train["survival_months"])
    expected = pd.cut(train["survival_months"], bins=q, labels=False, right=False, include_lowest=True)
    np.testing.assert_array_equal(labels, expected.to_numpy())
    assert labels.min() == 0 and labels.max() == 3
    # uncensored training patients fill the four bins about equally
    counts = np.bincount(labels[train["censorship"].to_numpy() == 0], minlength=4)
    assert counts.max() - counts.min() <= 2


def test_bins_deterministic_and_serialisable(blca_table):
    cases = blca_table.drop_duplicates("case_id")
    a = fit_survival_bins(cases["survival_months"], cases["censorship"])
    b = SurvivalBins.from_dict(a.to_dict())
    assert a == b
    assert list(a.assign([-5.0, 1e6])) == [0, 3]  # test times outside the training range


def test_days_to_months():
    assert days_to_months(365.25) == pytest.approx(12.0)


@pytest.mark.parametrize("times,cens,msg", [
    ([1.0, 2.0, 3.0], [1, 1, 1], "all 3 patients are censored"),
    ([1.0] * 40, [0] * 39 + [1], "looks like inverted coding"),
    ([1.0, -2.0, 3.0], [0, 1, 0], "1 negative survival times"),
    ([1.0, np.nan, 3.0], [0, 1, 0], "1 missing survival times"),
    ([1.0, 2.0, 3.0], [0, 2, 1], "censorship must be 0"),
])
def test_refused_survival_labels(times, cens, msg):
    with pytest.raises(ValueError, match=msg):
        check_survival(times, cens)


def test_too_few_events():
    with pytest.raises(ValueError, match="only 2 uncensored"):
        fit_survival_bins([1.0, 2.0, 3.0, 4.0], [0, 0, 1, 1])
