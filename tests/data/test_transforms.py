"""Expression transforms are fitted on training patients only, invertible and JSON-serialisable."""
from __future__ import annotations

import json

import numpy as np
import pytest

from pathgen.data import ExpressionTransform, family_matrix


@pytest.fixture(scope="module")
def split(blca_expression):
    ids = sorted(blca_expression.index)
    rng = np.random.default_rng(0)
    test = set(rng.choice(ids, 80, replace=False))
    return [c for c in ids if c not in test], sorted(test)


@pytest.mark.parametrize("method", ["standardize", "minmax", "minmax01"])
def test_fit_never_sees_test_rows(blca_expression, blca_families, split, method):
    families, _ = blca_families
    expr = family_matrix(blca_expression, families.columns)
    train, test = split
    a = ExpressionTransform.fit_on(expr, train, method=method)
    perturbed = expr.copy()
    perturbed.loc[test] = perturbed.loc[test] * 1000.0 + 77.0
    b = ExpressionTransform.fit_on(perturbed, train, method=method)
    assert a.state_dict() == b.state_dict()
    # ...whereas the same perturbation of training rows does change the state
    moved = expr.copy()
    moved.loc[train[:10]] = moved.loc[train[:10]] * 1000.0 + 77.0
    assert ExpressionTransform.fit_on(moved, train, method=method).state_dict() != a.state_dict()


def test_ranges_and_inverse(blca_expression, blca_families, split):
    families, _ = blca_families
    expr = family_matrix(blca_expression, families.columns)
    train, test = split
    mm = ExpressionTransform.fit_on(expr, train, method="minmax", clip_quantiles=(0.01, 0.99))
    y = mm.transform(expr.loc[test])
    assert y.min() >= -1.0 - 1e-9 and y.max() <= 1.0 + 1e-9
    x = expr.loc[test].to_numpy()
    inside = (x >= mm.low) & (x <= mm.high)
    np.testing.assert_allclose(mm.inverse_transform(y)[inside], x[inside], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(mm.inverse_transform(y)[~inside], np.clip(x, mm.low, mm.high)[~inside])
    st = ExpressionTransform.fit_on(expr, train, method="standardize")
    z = st.transform(expr.loc[train])
    nonconst = st.scale != 1.0
    np.testing.assert_allclose(z.mean(axis=0)[nonconst], 0.0, atol=1e-8)
    m01 = ExpressionTransform.fit_on(expr, train, method="minmax01").transform(expr.loc[train])
    assert m01.min() >= 0.0 and m01.max() <= 1.0 + 1e-12


def test_state_dict_is_json_and_exact(blca_expression, split):
    train, test = split
    t = ExpressionTransform.fit_on(blca_expression.iloc[:, :50], train)
    back = ExpressionTransform.from_state_dict(json.loads(json.dumps(t.state_dict())))
    np.testing.assert_array_equal(back.transform(blca_expression.iloc[:, :50].loc[test]),
                                  t.transform(blca_expression.iloc[:, :50].loc[test]))


def test_clear_errors(blca_expression):
    with pytest.raises(ValueError, match="2 training cases have no expression"):
        ExpressionTransform.fit_on(blca_expression, ["NOPE-1", "NOPE-2"])
    t = ExpressionTransform().fit(blca_expression.iloc[:20, :5])
    with pytest.raises(ValueError, match="columns differ from the fitted genes"):
        t.transform(blca_expression.iloc[:20, 1:6])
    with pytest.raises(ValueError, match="method must be one of"):
        ExpressionTransform(method="log")
    with pytest.raises(ValueError, match="NaN values in the training rows"):
        ExpressionTransform().fit(np.array([[1.0, np.nan], [2.0, 3.0]]))
    with pytest.raises(ValueError, match="family genes are not in the expression table"):
        family_matrix(blca_expression, ["TP53", "NOT_A_GENE"])
