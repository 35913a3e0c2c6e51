"""Bootstrap CIs, paired tests and Kaplan-Meier risk groups on known cases."""
import numpy as np
import pytest
from scipy import stats as sps

from pathgen.eval import stats as S
from pathgen.eval.metrics import c_index


def _surv(seed, n=150):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    t = rng.exponential(np.exp(-x))  # higher x -> earlier death
    c = rng.exponential(2.0, n)
    return np.minimum(t, c), (t <= c).astype(int), x


def test_bootstrap_ci_of_mean_matches_normal_theory_and_is_seeded():
    rng = np.random.default_rng(0)
    x = rng.normal(1.0, 2.0, 400)
    r = S.bootstrap_ci(np.mean, [x], n_boot=400, seed=1)
    half = 1.96 * x.std(ddof=1) / np.sqrt(len(x))
    assert r["estimate"] == pytest.approx(x.mean())
    assert r["ci_low"] == pytest.approx(x.mean() - half, abs=0.06)
    assert r["ci_high"] == pytest.approx(x.mean() + half, abs=0.06)
    assert r == S.bootstrap_ci(np.mean, [x], n_boot=400, seed=1)
    assert r != S.bootstrap_ci(np.mean, [x], n_boot=400, seed=2)


def test_bootstrap_skips_undefined_replicates_and_counts_them():
    t = np.arange(1.0, 13.0)
    e = np.zeros(12, dtype=int)
    e[0] = 1  # a single death: many replicates have none -> C undefined
    r = S.bootstrap_ci(c_index, [t, e, -t], n_boot=200, seed=0)
    assert 0 < r["n_valid"] < 200
    with pytest.raises(ValueError, match="every bootstrap replicate"):
        S.bootstrap_ci(lambda a: float("nan"), [t], n_boot=5)


def test_bootstrap_resamples_whole_cases():
    # two rows per case with identical values: resampling cases keeps rows paired
    case = np.repeat(np.arange(50), 2)
    v = np.repeat(np.random.default_rng(0).normal(size=50), 2)
    first_equals_second = lambda a: float(np.all(a[0::2] == a[1::2]))
    r = S.bootstrap_ci(first_equals_second, [v], n_boot=50, seed=0, case_ids=case)
    assert r["ci_low"] == 1.0
    r_rows = S.bootstrap_ci(first_equals_second, [v], n_boot=50, seed=0)
    assert r_rows["ci_high"] == 0.0


def test_paired_bootstrap_identical_models():
    t, e, x = _surv(0)
    r = S.paired_bootstrap(c_index, [t, e], x, x.copy(), n_boot=200, seed=0)
    assert r["delta"] == 0.0
    assert r["ci_low"] <= 0.0 <= r["ci_high"]
    assert r["p_value"] == pytest.approx(1.0)


def test_paired_bootstrap_clearly_different_models():
    t, e, x = _surv(1)
    noise = np.random.default_rng(9).normal(size=len(x))
    r = S.paired_bootstrap(c_index, [t, e], x, noise, n_boot=300, seed=0)
    assert r["delta"] > 0.1
    assert r["ci_low"] > 0.0
    assert r["p_value"] < 0.01
    assert r["metric_a"] == pytest.approx(c_index(t, e, x))


def test_paired_bootstrap_two_noise_models_not_significant():
    t, e, _ = _surv(2)
    rng = np.random.default_rng(3)
    r = S.paired_bootstrap(c_index, [t, e], rng.normal(size=len(t)), rng.normal(size=len(t)), n_boot=300, seed=0)
    assert r["ci_low"] < 0.0 < r["ci_high"]
    assert r["p_value"] > 0.05


def test_paired_fold_tests_match_scipy():
    a = np.array([0.71, 0.65, 0.69, 0.74, 0.70, 0.68, 0.72, 0.66])
    b = np.array([0.61, 0.60, 0.62, 0.66, 0.63, 0.64, 0.61, 0.60])
    r = S.paired_fold_tests(a, b)
    assert r["wilcoxon"]["p_value"] == pytest.approx(sps.wilcoxon(a, b).pvalue)
    assert r["ttest"]["p_value"] == pytest.approx(sps.ttest_rel(a, b).pvalue)
    assert r["ttest"]["p_value"] < 0.001
    assert r["mean_diff"] == pytest.approx(np.mean(a - b))


def test_paired_fold_tests_edge_cases():
    same = S.paired_fold_tests([0.6, 0.7, 0.65], [0.6, 0.7, 0.65])
    assert same["wilcoxon"]["p_value"] == 1.0 and same["ttest"]["p_value"] == 1.0
    assert "zero" in same["wilcoxon"]["note"]
    one = S.paired_fold_tests([0.6], [0.5])
    assert one["wilcoxon"]["p_value"] is None and "too few" in one["ttest"]["note"]
    five = S.paired_fold_tests([0.7, 0.71, 0.72, 0.73, 0.74], [0.6, 0.6, 0.6, 0.6, 0.6])
    assert five["wilcoxon"]["p_value"] == pytest.approx(0.0625)
    assert "smallest attainable" in five["wilcoxon"]["note"]
    with pytest.raises(ValueError):
        S.paired_fold_tests([0.1, 0.2], [0.1])


def test_km_risk_groups_separated_and_png(tmp_path):
    t, e, x = _surv(4, n=300)
    train_risk = np.random.default_rng(5).normal(size=200)
    png = tmp_path / "km.png"
    r = S.km_risk_groups(train_risk, x, t, e, png=png)
    assert r["threshold"] == pytest.approx(np.median(train_risk))
    assert r["n_low"] + r["n_high"] == 300 and r["n_high"] == int((x > r["threshold"]).sum())
    assert r["p_value"] < 1e-4
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    noise = S.km_risk_groups(train_risk, np.random.default_rng(6).normal(size=300), t, e)
    assert noise["p_value"] > 0.01 and noise["png"] is None


def test_km_risk_groups_empty_group_reason():
    t, e, x = _surv(7, n=40)
    r = S.km_risk_groups(np.array([100.0]), x, t, e)
    assert r["p_value"] is None and "empty" in r["reason"]


def test_corrected_resampled_t_test_by_hand():
    """Nadeau & Bengio (2003): var(d) inflated by (1/F + n_test/n_train); for 5-fold CV the ratio is 1/4."""
    a = np.array([0.71, 0.66, 0.69, 0.74, 0.70])
    b = np.array([0.65, 0.64, 0.66, 0.69, 0.68])
    d = a - b
    res = S.paired_fold_tests(a, b, test_train_ratio=0.25)
    t = d.mean() / np.sqrt((1 / 5 + 0.25) * d.var(ddof=1))
    assert res["ttest_corrected"]["statistic"] == pytest.approx(t)
    assert res["ttest_corrected"]["p_value"] == pytest.approx(2 * sps.t.sf(abs(t), 4))
    # more conservative than the plain paired t-test, which ignores the overlap of training sets
    assert res["ttest_corrected"]["p_value"] > res["ttest"]["p_value"]
    assert S.paired_fold_tests(a, b)["ttest_corrected"]["p_value"] is None  # no ratio, no corrected test
    with pytest.raises(ValueError, match="test_train_ratio"):
        S.paired_fold_tests(a, b, test_train_ratio=float("nan"))


def test_holm_by_hand():
    p = [0.01, None, 0.04, 0.03, 0.5]
    # sorted 0.01, 0.03, 0.04, 0.5 (m = 4): 0.04, 0.09, max(0.09, 0.08) = 0.09, max(0.09, 0.5) = 0.5
    assert S.holm(p) == [pytest.approx(0.04), None, pytest.approx(0.09), pytest.approx(0.09), pytest.approx(0.5)]
    assert S.holm([0.6, 0.7]) == [pytest.approx(1.0), pytest.approx(1.0)]
    assert S.holm([]) == []
