"""Per-group audit: groups, values against direct computation, small-group flags, gaps."""
import json

import numpy as np
import pandas as pd
import pytest

from pathgen.eval import fairness as F
from pathgen.eval.metrics import auc_macro, balanced_accuracy, c_index


def _table(seed=0, n=240):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    t = rng.exponential(np.exp(-x))
    c = rng.exponential(2.0, n)
    y = rng.integers(0, 3, n)
    p = rng.dirichlet(np.ones(3), n)
    p[np.arange(n), y] += 0.5
    p /= p.sum(1, keepdims=True)
    df = pd.DataFrame({
        "case_id": [f"P{i}" for i in range(n)],
        "is_female": rng.integers(0, 2, n),
        "age": rng.uniform(25, 85, n),
        "race": rng.choice(["white", "black or african american", "asian"], n, p=[0.85, 0.1, 0.05]),
        "site": rng.choice(["A", "B"], n),
        "time": np.minimum(t, c), "event": (t <= c).astype(int), "risk": x,
        "grade": y, "p0": p[:, 0], "p1": p[:, 1], "p2": p[:, 2],
        "covered": rng.random(n) < 0.9, "set_size": rng.integers(1, 4, n),
    })
    df.loc[:3, "age"] = np.nan
    return df


def test_group_labels():
    df = pd.DataFrame({"is_female": [1, 0, True, None], "age": [39.9, 40, 59.99, 60]})
    g = F.demographic_groups(df)
    assert g["sex"].tolist() == ["female", "male", "female", "missing"]
    assert g["age_band"].tolist() == ["<40", "40-60", "40-60", ">=60"]
    assert "race" not in g
    with pytest.raises(ValueError, match="not a column"):
        F.demographic_groups(df, extra=["site"])


def test_report_values_flags_and_gaps():
    df = _table()
    table, summary = F.fairness_report(
        df, attributes=["site"], grade_col="grade", prob_cols=["p0", "p1", "p2"],
        covered_col="covered", set_size_col="set_size", min_group_n=30, n_boot=50,
    )
    assert set(summary["attributes"]) == {"sex", "age_band", "race", "site"}
    assert list(table.columns) == ["attribute", "group", "n", "small", "flag", "metric", "value", "ci_low", "ci_high"]
    sex = summary["attributes"]["sex"]["groups"]
    m = df["is_female"] == 1
    fem = sex["female"]["metrics"]
    assert sex["female"]["n"] == int(m.sum())
    assert fem["c_index"]["value"] == pytest.approx(c_index(df.time[m], df.event[m], df.risk[m]))
    probs = df[["p0", "p1", "p2"]].to_numpy()
    assert fem["auc_macro"]["value"] == pytest.approx(auc_macro(df.grade[m].to_numpy(), probs[m]))
    assert fem["balanced_accuracy"]["value"] == pytest.approx(balanced_accuracy(df.grade[m].to_numpy(), probs[m]))
    assert fem["conformal_coverage"]["value"] == pytest.approx(df.covered[m].mean())
    assert fem["conformal_set_size"]["value"] == pytest.approx(df.set_size[m].mean())
    assert fem["c_index"]["ci_low"] <= fem["c_index"]["value"] <= fem["c_index"]["ci_high"]
    # the ~12-patient Asian group is reported, flagged small, and left out of the headline gap
    race = summary["attributes"]["race"]
    asian = race["groups"]["asian"]
    assert asian["small"] and "min_group_n" in asian["flag"]
    assert asian["metrics"]["c_index"]["value"] is not None
    assert ((table.attribute == "race") & (table.group == "asian")).sum() == 6
    small = {g for g, e in race["groups"].items() if e["small"]}
    assert small == {"asian", "black or african american"}  # ~12 and ~24 patients
    assert race["gaps"]["c_index"]["gap"] is None and "fewer than two groups" in race["gaps"]["c_index"]["note"]
    assert race["gaps"]["c_index"]["gap_all_groups"] > 0
    # age: 4 missing ages form a 'missing' group, never part of a gap
    age = summary["attributes"]["age_band"]
    assert age["groups"]["missing"]["n"] == 4
    gap = age["gaps"]["c_index"]
    vals = {g: e["metrics"]["c_index"]["value"] for g, e in age["groups"].items()
            if g != "missing" and not e["small"]}
    assert gap["gap"] == pytest.approx(max(vals.values()) - min(vals.values()))
    assert gap["max_group"] == max(vals, key=vals.get)
    json.dumps(summary)


def test_tiny_group_flagged_for_conformal_and_undefined_metric_noted():
    df = _table(1, n=120)
    df.loc[:4, "site"] = "C"
    df.loc[:4, "event"] = 0  # no deaths in site C: C-index undefined there
    _, summary = F.fairness_report(df, attributes=["site"], risk_col="risk", min_group_n=10, n_boot=20)
    c = summary["attributes"]["site"]["groups"]["C"]
    assert c["small"] and "conformal" in c["flag"]
    assert c["metrics"]["c_index"]["value"] is None and "undefined" in c["metrics"]["c_index"]["note"]
    with pytest.raises(ValueError, match="missing"):
        F.fairness_report(df, risk_col="nope")


def test_ungraded_patients_are_left_out_of_grade_metrics():
    """grade -1 (no grade label) must not count as a wrong answer nor make AUC undefined."""
    df = _table(4, n=200)
    p = np.full((len(df), 3), 0.1)
    p[np.arange(len(df)), df["grade"].to_numpy()] = 0.8  # a perfect classifier
    df[["p0", "p1", "p2"]] = p
    df.loc[:39, "grade"] = -1  # 20 % ungraded
    _, s = F.fairness_report(df, grade_col="grade", prob_cols=["p0", "p1", "p2"], risk_col=None, n_boot=10)
    for g in s["attributes"]["sex"]["groups"].values():
        for name in ("auc_macro", "balanced_accuracy", "accuracy"):
            assert g["metrics"][name]["value"] == pytest.approx(1.0), name


def test_rank_metrics_are_fold_averaged_not_pooled_across_fold_models():
    """Risks of two folds' models on different scales: the C-index must be each fold's, averaged."""
    df = _table(5, n=240)
    df["fold"] = np.arange(len(df)) % 2
    df.loc[df["fold"] == 1, "risk"] += 3.0  # fold 1's model: same ranking, shifted scale
    p = df[["p0", "p1", "p2"]].to_numpy()
    df.loc[df["fold"] == 1, ["p0", "p1", "p2"]] = p[df["fold"] == 1] ** 3  # another fold, another calibration
    _, s = F.fairness_report(df, grade_col="grade", prob_cols=["p0", "p1", "p2"], fold_col="fold", n_boot=10)
    for name, grp in s["attributes"]["sex"]["groups"].items():
        m = (df["is_female"] == (1 if name == "female" else 0)).to_numpy()
        want_c = np.mean([c_index(df["time"][m & (df.fold == k)], df["event"][m & (df.fold == k)],
                                  df["risk"][m & (df.fold == k)]) for k in (0, 1)])
        want_auc = np.mean([auc_macro(df["grade"][m & (df.fold == k)].to_numpy(),
                                      df[["p0", "p1", "p2"]][m & (df.fold == k)].to_numpy()) for k in (0, 1)])
        assert grp["metrics"]["c_index"]["value"] == pytest.approx(want_c)
        assert grp["metrics"]["auc_macro"]["value"] == pytest.approx(want_auc)
        pooled = c_index(df["time"][m], df["event"][m], df["risk"][m])
        assert abs(pooled - want_c) > 0.02  # the pooled value differs, so the test can tell them apart
    with pytest.raises(ValueError, match="missing"):
        F.fairness_report(df, fold_col="nope")
