"""Conformal quantile on known cases, coverage on exchangeable simulations, refusals."""
import json
import math

import numpy as np
import pandas as pd
import pytest

from pathgen.eval import conformal as C


# ------------------------------------------------------------------ quantile
def test_quantile_known_cases():
    assert C.conformal_quantile(np.arange(1, 11), 0.1) == 10  # k = ceil(11 * 0.9) = 10 = n
    assert C.conformal_quantile(np.arange(1, 20), 0.1) == 18  # k = ceil(20 * 0.9) = 18
    assert C.conformal_quantile(np.arange(1, 101), 0.1) == 91  # k = ceil(101 * 0.9) = 91
    assert C.conformal_quantile(np.arange(1, 101)[::-1], 0.2) == 81  # order of input irrelevant
    s = np.random.default_rng(0).random(37)
    k = math.ceil(38 * 0.9)
    assert C.conformal_quantile(s, 0.1) == np.sort(s)[k - 1]
    assert C.conformal_quantile(s, 0.1) == np.quantile(s, k / 37, method="inverted_cdf")


def test_quantile_refuses_too_few_scores():
    assert C.min_calibration_size(0.1) == 9
    assert C.min_calibration_size(0.05) == 19
    assert C.min_calibration_size(0.2) == 4
    C.conformal_quantile(np.arange(9), 0.1)
    with pytest.raises(ValueError, match=r"ceil\(\(n\+1\)\(1-alpha\)\) = 9 > n = 8"):
        C.conformal_quantile(np.arange(8), 0.1)
    with pytest.raises(ValueError, match="alpha"):
        C.conformal_quantile(np.arange(20), 0.0)


def test_class_scores_by_hand():
    p = np.array([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]])
    assert np.allclose(C.class_scores(p, "lac"), 1 - p)
    # APS: mass of classes ranked at or above k
    assert np.allclose(C.class_scores(p, "aps"), [[0.5, 0.8, 1.0], [1.0, 0.6, 0.9]])
    # randomised APS: mass strictly above + u * p_k
    assert np.allclose(C.class_scores(p, "aps", u=np.array([0.5, 0.0])), [[0.25, 0.65, 0.9], [0.9, 0.0, 0.6]])
    with pytest.raises(ValueError, match="sum to 1"):
        C.class_scores(np.array([[0.5, 0.6]]))


# ------------------------------------------------------------------ simulated exchangeable data
def _grade_sim(rng, n, n_classes=4, sharp=2.0):
    logits = rng.normal(size=(n, n_classes)) * sharp
    p = np.exp(logits)
    p /= p.sum(1, keepdims=True)
    y = (rng.random(n)[:, None] > np.cumsum(p, 1)).sum(1)  # labels drawn from p
    # the model sees a distorted version (mis-calibrated), conformal must still cover
    q = p**0.6
    q /= q.sum(1, keepdims=True)
    return q, np.minimum(y, n_classes - 1)


@pytest.mark.parametrize("score,randomized", [("lac", False), ("aps", False), ("aps", True)])
def test_marginal_coverage_on_exchangeable_data(score, randomized):
    covs, sizes = [], []
    for seed in range(20):
        rng = np.random.default_rng(seed)
        p, y = _grade_sim(rng, 1500)
        cal = C.calibrate_sets(p[:500], y[:500], input_mode="synth", alpha=0.1, score=score,
                               randomized=randomized, seed=seed)
        pred = C.predict_sets(cal, p[500:], labels=y[500:], input_mode="synth", seed=seed + 100)
        covs.append(pred.coverage)
        sizes.append(pred.mean_set_size)
    # theory: 0.9 <= E[coverage] <= 0.9 + 1/501
    assert np.mean(covs) == pytest.approx(0.9, abs=0.012)
    assert 1.0 < np.mean(sizes) < 4.0


def test_class_conditional_coverage_per_class():
    per_class = {c: [] for c in range(4)}
    for seed in range(10):
        rng = np.random.default_rng(seed)
        p, y = _grade_sim(rng, 3000)
        cal = C.calibrate_sets(p[:1500], y[:1500], input_mode="real", mode="class")
        pred = C.predict_sets(cal, p[1500:], labels=y[1500:], input_mode="real")
        for c in range(4):
            per_class[c].append(pred.by_key[str(c)]["coverage"])
    for c in range(4):
        assert np.mean(per_class[c]) == pytest.approx(0.9, abs=0.02)


def test_mondrian_group_coverage_and_small_group_refusal():
    rng = np.random.default_rng(0)
    p, y = _grade_sim(rng, 1200)
    groups = np.where(rng.random(1200) < 0.5, "female", "male").astype(object)
    groups[:5] = "tiny"  # 5 calibration patients: ceil(6 * 0.9) = 6 > 5
    with pytest.raises(ValueError, match="'tiny'.*6 > n = 5"):
        C.calibrate_sets(p[:600], y[:600], input_mode="synth", mode="group", groups=groups[:600])
    cal = C.calibrate_sets(p[:600], y[:600], input_mode="synth", mode="group", groups=groups[:600], small_group="flag")
    assert cal.quantiles["tiny"] is None and "6 > n = 5" in cal.refused["tiny"]
    assert cal.n_per_key["tiny"] == 5
    test_groups = groups[600:].copy()
    test_groups[:3] = "tiny"
    pred = C.predict_sets(cal, p[600:], labels=y[600:], groups=test_groups, input_mode="synth")
    assert pred.n_without_set == 3 and pred.sets[0] is None and pred.covered[0] is None
    assert pred.by_key["tiny"]["refused"] is not None and pred.by_key["tiny"]["coverage"] is None
    for g in ("female", "male"):
        assert pred.by_key[g]["coverage"] == pytest.approx(0.9, abs=0.06)
    json.dumps(cal.to_dict())
    json.dumps(pred.to_dict())


def test_sets_are_the_classes_under_the_threshold():
    p = np.array([[0.7, 0.2, 0.1], [0.4, 0.35, 0.25]])
    cal = C.SetCalibration(alpha=0.1, score="lac", mode="marginal", input_mode="real", randomized=False,
                           n_classes=3, n_calibration=100, min_n=9, quantiles={"all": 0.85}, n_per_key={}, refused={})
    pred = C.predict_sets(cal, p, labels=np.array([1, 2]), input_mode="real")  # keeps p_k >= 0.15
    assert pred.sets == [[0, 1], [0, 1, 2]]
    assert pred.covered == [True, True] and pred.mean_set_size == 2.5


def test_predict_sets_refuses_labels_outside_the_classes():
    """grade -1 (ungraded) used to index the last class and count as covered or not."""
    rng = np.random.default_rng(1)
    p, y = _grade_sim(rng, 200)
    cal = C.calibrate_sets(p[:100], y[:100], input_mode="real")
    for bad in (-1, p.shape[1]):
        yt = y[100:].copy()
        yt[0] = bad
        with pytest.raises(ValueError, match="labels must be in"):
            C.predict_sets(cal, p[100:], labels=yt, input_mode="real")


def test_input_mode_mismatch_is_refused():
    rng = np.random.default_rng(0)
    p, y = _grade_sim(rng, 100)
    cal = C.calibrate_sets(p, y, input_mode="real")
    with pytest.raises(ValueError, match="exchangeable"):
        C.predict_sets(cal, p, input_mode="synth")
    with pytest.raises(ValueError, match="too few"):
        C.calibrate_sets(p[:8], y[:8], input_mode="real")


# ------------------------------------------------------------------ survival lower bound
def _surv_sim(rng, n, K=4, censor_rate=0.4):
    # true discrete hazards from a covariate; the model predicts them exactly
    x = rng.normal(size=n)
    h = 1 / (1 + np.exp(-(x[:, None] + np.linspace(-1.0, 0.5, K)[None, :])))
    S = np.cumprod(1 - h, axis=1)
    # true bin: first bin where the patient dies; K means survives past the last bin (put in K-1)
    died = rng.random((n, K)) < h
    t_bin = np.where(died.any(1), died.argmax(1), K - 1)
    c_bin = np.where(rng.random(n) < censor_rate, rng.integers(0, K, n), K)  # censoring bin, K = none
    obs = np.minimum(t_bin, c_bin)
    event = (t_bin <= c_bin) & died.any(1)
    return S, t_bin, obs.astype(int), event.astype(int)


def test_survival_bound_by_hand():
    S = np.array([[0.8, 0.5, 0.2], [0.3, 0.1, 0.05]])
    # S_padded = [1, .8, .5, .2] and [1, .3, .1, .05]; L = last bin start with S_padded > q
    assert C.lower_bound_bins(S, 0.5).tolist() == [1, 0]
    assert C.lower_bound_bins(S, 0.25).tolist() == [2, 1]
    assert C.lower_bound_bins(S, 1.0).tolist() == [0, 0]
    # score = S_padded[y + 1], 0 in the last bin; covered iff score <= q
    assert C.survival_scores(S, np.array([1, 2])).tolist() == [0.5, 0.0]
    assert C.survival_scores(S, np.array([0, 1])).tolist() == [0.8, 0.1]


def test_survival_score_and_bound_agree():
    rng = np.random.default_rng(0)
    S, _, obs, _ = _surv_sim(rng, 500)
    for q in (0.05, 0.3, 0.6, 0.95):
        L = C.lower_bound_bins(S, q)
        assert np.array_equal(L <= obs, C.survival_scores(S, obs) <= q)


def test_survival_lower_bound_coverage_on_exchangeable_data():
    lower, true = [], []
    for seed in range(20):
        rng = np.random.default_rng(seed)
        S, t_bin, obs, ev = _surv_sim(rng, 1500)
        cal = C.calibrate_survival(S[:500], obs[:500], ev[:500], input_mode="synth", alpha=0.1)
        pred = C.predict_survival(cal, S[500:], y_bin=obs[500:], event=ev[500:], input_mode="synth",
                                  bin_edges=np.array([0.0, 10, 20, 30, 40]))
        L = np.array(pred.lower_bin)
        lower.append(pred.coverage_lower)
        true.append(np.mean(L <= t_bin[500:]))
        assert pred.coverage_lower <= np.mean(L <= t_bin[500:]) <= pred.coverage_upper
        assert pred.mean_lower_time == pytest.approx(np.mean(np.array([0.0, 10, 20, 30])[L]))
    assert np.mean(lower) == pytest.approx(0.9, abs=0.012)  # exact for the observed outcome
    assert np.mean(true) >= 0.9 - 0.005  # conservative for the true survival time


def test_survival_group_refusal_and_mode_check():
    rng = np.random.default_rng(1)
    S, _, obs, ev = _surv_sim(rng, 300)
    g = np.array(["a"] * 295 + ["b"] * 5)
    with pytest.raises(ValueError, match="'b'"):
        C.calibrate_survival(S, obs, ev, input_mode="synth", groups=g)
    cal = C.calibrate_survival(S, obs, ev, input_mode="synth", groups=g, small_group="flag")
    pred = C.predict_survival(cal, S, input_mode="synth", groups=g, y_bin=obs, event=ev)
    assert pred.n_without_bound == 5 and pred.lower_bin[-1] is None
    assert pred.by_key["a"]["coverage_lower"] >= 0.85
    json.dumps(pred.to_dict())
    with pytest.raises(ValueError, match="exchangeable"):
        C.predict_survival(cal, S, input_mode="real", groups=g)
    with pytest.raises(ValueError, match="non-increasing"):
        C.calibrate_survival(S[:, ::-1], obs, ev, input_mode="synth")


def test_demo_conformal_summary_reports_threshold_and_per_class():
    """The demo's conformal metrics.json carries the calibrated thresholds and per-class coverage (they
    were read under keys the result objects do not have, so they were always null)."""
    from pathgen.pipelines.demo import _conformal_arm

    rng = np.random.default_rng(0)

    def frame(n):
        g = rng.integers(0, 3, n)
        p = rng.dirichlet(np.ones(3), n) * 0.5
        p[np.arange(n), g] += 0.5
        h = np.clip(rng.uniform(0.05, 0.5, (n, 4)), 0, 1)
        s = np.cumprod(1 - h, axis=1)
        return pd.DataFrame({"case_id": [f"c{i}" for i in range(n)], "grade_index": g,
                             "survival_bin": rng.integers(0, 4, n), "censorship": rng.integers(0, 2, n),
                             **{f"prob_G{k + 1}": p[:, k] for k in range(3)},
                             **{f"surv_{k}": s[:, k] for k in range(4)}})

    res, rows = _conformal_arm(frame(120), frame(60), "real", 0.1)
    for score in ("lac", "aps"):
        r = res[f"grade_{score}"]
        assert r["qhat"] and all(0 < q <= 1 for q in r["qhat"].values())
        assert set(r["per_class"]) == {"0", "1", "2"} and sum(v["n"] for v in r["per_class"].values()) == 60
        total = sum(v["n"] * v["coverage"] for v in r["per_class"].values()) / 60
        assert total == pytest.approx(r["coverage"])
    assert len(rows) == 60


def test_demo_conformal_arm_leaves_ungraded_patients_out():
    from pathgen.pipelines.demo import _conformal_arm

    rng = np.random.default_rng(2)

    def frame(n, graded=True):
        h = rng.uniform(0.05, 0.5, (n, 4))
        d = {"case_id": [f"c{i}" for i in range(n)], "grade_index": rng.integers(0, 3, n) if graded else -np.ones(n, int),
             "survival_bin": rng.integers(0, 4, n), "censorship": rng.integers(0, 2, n),
             **{f"surv_{k}": np.cumprod(1 - h, axis=1)[:, k] for k in range(4)}}
        if graded:
            p = rng.dirichlet(np.ones(3), n)
            d.update({f"prob_G{k}": p[:, k] for k in range(3)})
        return pd.DataFrame(d)

    cal, test = frame(120), frame(60)
    cal.loc[:4, "grade_index"] = -1
    test.loc[:9, "grade_index"] = -1
    test["fold"] = np.arange(60) % 3
    res, rows = _conformal_arm(cal, test, "real", 0.1)
    cov = rows["covered_lac"].to_numpy()
    assert res["grade_lac"]["per_fold"] == {str(k): pytest.approx(np.nanmean(cov[np.arange(60) % 3 == k]))
                                            for k in range(3)}
    assert res["n_test_graded"] == 50 and res["n_calibration_graded"] == 115
    lac = res["grade_lac"]
    assert set(lac["per_class"]) <= {"0", "1", "2"} and sum(v["n"] for v in lac["per_class"].values()) == 50
    assert rows["covered_lac"][:10].isna().all() and rows["covered_lac"][10:].notna().all()
    assert lac["coverage"] == pytest.approx(rows["covered_lac"][10:].mean())
    # a cohort without grades: survival bounds only, no crash
    res, rows = _conformal_arm(frame(120, False), frame(60, False), "real", 0.1)
    assert "grade_lac" not in res and "no grade" in res["grade_refused"] and "survival_lower_bound" in res
