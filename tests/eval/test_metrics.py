"""Survival, grade and fidelity metrics against lifelines, sklearn, scipy and naive loops."""
import numpy as np
import pytest
from lifelines import KaplanMeierFitter
from lifelines.utils import concordance_index
from scipy import stats as sps
from sklearn.metrics import balanced_accuracy_score, cohen_kappa_score, roc_auc_score

from pathgen.eval import metrics as M


def _surv_data(seed, n=200, tied=True):
    rng = np.random.default_rng(seed)
    if tied:  # many ties in time and in risk
        t = rng.integers(1, 25, n).astype(float)
        r = rng.integers(0, 8, n).astype(float)
    else:
        t = rng.exponential(10, n)
        r = rng.normal(size=n)
    e = rng.random(n) < 0.55
    return t, e, r


# ------------------------------------------------------------------ Harrell's C
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("tied", [True, False])
def test_c_index_matches_lifelines(seed, tied):
    t, e, r = _surv_data(seed, tied=tied)
    assert M.c_index(t, e, r) == pytest.approx(concordance_index(t, -r, e), abs=1e-12)


def test_c_index_perfect_reversed_and_undefined():
    t = np.arange(1.0, 11.0)
    e = np.ones(10)
    assert M.c_index(t, e, -t) == 1.0
    assert M.c_index(t, e, t) == 0.0
    assert M.c_index(t, e, np.zeros(10)) == 0.5
    with pytest.raises(ValueError, match="no admissible pairs"):
        M.c_index(t, np.zeros(10), -t)
    with pytest.raises(ValueError):
        M.c_index(t, e, np.full(10, np.nan))


def test_c_index_small_block_size_is_identical(monkeypatch):
    t, e, r = _surv_data(3, n=300)
    full = M.c_index(t, e, r)
    monkeypatch.setattr(M, "_PAIR_BLOCK", 500)  # forces many blocks
    assert M.c_index(t, e, r) == pytest.approx(full, abs=1e-12)


# ------------------------------------------------------------------ censoring KM, Uno's C, IBS
def test_censoring_km_matches_lifelines():
    t, e, _ = _surv_data(7)
    G = M.CensoringKM(t, e)
    kmf = KaplanMeierFitter().fit(t, 1 - e)
    grid = np.array([0.0, 0.5, 3.0, 7.5, 12.0, 24.0, 30.0])
    assert np.allclose(G(grid), kmf.survival_function_at_times(grid).to_numpy())


def _uno_naive(t, e, r, tt, te, tau):
    kmf = KaplanMeierFitter().fit(tt, 1 - te)
    num = den = 0.0
    for i in range(len(t)):
        if not e[i] or t[i] >= tau:
            continue
        w = 1.0 / kmf.survival_function_at_times([t[i]]).iloc[0] ** 2
        for j in range(len(t)):
            if t[j] > t[i] or (t[j] == t[i] and not e[j]):
                den += w
                num += w * (1.0 if r[i] > r[j] else 0.5 if r[i] == r[j] else 0.0)
    return num / den


@pytest.mark.parametrize("seed", [0, 1])
def test_ipcw_c_index_matches_naive_loop(seed):
    t, e, r = _surv_data(seed, n=60)
    tt, te, _ = _surv_data(seed + 100, n=150)
    res = M.ipcw_c_index(t, e, r, tt, te, tau=18.0)
    assert res["reason"] is None
    assert res["value"] == pytest.approx(_uno_naive(t, e, r, tt, te, 18.0), abs=1e-10)


def test_ipcw_equals_harrell_without_training_censoring():
    t, e, r = _surv_data(4, tied=False)
    tt = np.random.default_rng(5).exponential(10, 300)
    tau = 12.0
    res = M.ipcw_c_index(t, e, r, tt, np.ones(300), tau=tau)
    # Harrell on the same admissible pairs: events after tau become censored-like rows i
    e_tau = e & (t < tau)
    assert res["value"] == pytest.approx(M.c_index(t, e_tau, r), abs=1e-12)


def test_ipcw_not_computable_is_none_with_reason():
    t = np.array([1.0, 2.0, 30.0, 40.0])
    e = np.array([1, 1, 1, 0])
    tt = np.array([1.0, 5.0, 10.0])
    te = np.array([1, 1, 0])  # last training patient censored -> G(t >= 10) = 0
    res = M.ipcw_c_index(t, e, np.array([4.0, 3, 2, 1]), tt, te, tau=50.0)
    assert res["value"] is None and "G is 0" in res["reason"]
    res = M.ipcw_c_index(t, np.zeros(4), np.array([4.0, 3, 2, 1]), tt, te)
    assert res["value"] is None and "no observed death" in res["reason"]


def test_survival_at_step_function():
    S = np.array([[0.9, 0.6, 0.2]])
    edges = np.array([0.0, 10.0, 20.0, 30.0])
    got = M.survival_at(S, edges, np.array([0.0, 9.9, 10.0, 15.0, 20.0, 29.0, 30.0, 99.0]))
    assert got.tolist() == [[1.0, 1.0, 0.9, 0.9, 0.6, 0.6, 0.2, 0.2]]


def _ibs_naive(t, e, S, edges, tt, te, grid):
    kmf = KaplanMeierFitter().fit(tt, 1 - te)
    g_t = kmf.survival_function_at_times(t).to_numpy()
    g_grid = kmf.survival_function_at_times(grid).to_numpy()
    bs = []
    for n_s, s in enumerate(grid):
        tot = 0.0
        for i in range(len(t)):
            k = int(np.sum(edges[1:] <= s))
            Si = 1.0 if k == 0 else S[i, min(k, S.shape[1]) - 1]
            if t[i] <= s and e[i]:
                tot += Si**2 / g_t[i]
            elif t[i] > s:
                tot += (1 - Si) ** 2 / g_grid[n_s]
        bs.append(tot / len(t))
    return np.trapezoid(bs, grid) / (grid[-1] - grid[0])


def test_integrated_brier_matches_naive_loop():
    rng = np.random.default_rng(0)
    t, e, _ = _surv_data(11, n=80, tied=False)
    tt, te, _ = _surv_data(12, n=200, tied=False)
    h = rng.uniform(0.05, 0.6, (80, 4))
    S = np.cumprod(1 - h, axis=1)
    edges = np.array([0.0, 3.0, 8.0, 15.0, np.inf])
    grid = np.linspace(1.0, 14.0, 9)
    res = M.integrated_brier_score(t, e, S, edges, tt, te, times=grid)
    assert res["reason"] is None
    assert res["value"] == pytest.approx(_ibs_naive(t, e, S, edges, tt, te, grid), rel=1e-10)
    # without censoring, a constant S = 0.5 after the end of bin 0 gives Brier 0.25 at every time
    late = np.linspace(3.5, 14.0, 7)
    res = M.integrated_brier_score(t, np.ones(80), np.full((80, 4), 0.5), edges, tt, np.ones(200), times=late)
    assert res["value"] == pytest.approx(0.25)
    assert M.integrated_brier_score(t, e, S, edges, tt, te)["value"] is not None  # default grid


def test_integrated_brier_not_computable():
    t = np.array([1.0, 2.0, 3.0])
    res = M.integrated_brier_score(t, [1, 1, 1], np.full((3, 2), 0.5), [0, 2, 4], t, [1, 1, 1], times=[5.0, 6.0])
    assert res["value"] is None and "follow-up" in res["reason"]


# ------------------------------------------------------------------ grade
def test_grade_metrics_against_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 300)
    p = rng.dirichlet(np.ones(4), 300)
    p[np.arange(300), y] += 0.3
    p /= p.sum(1, keepdims=True)
    g = M.grade_metrics(y, p)
    assert g["auc_macro"] == pytest.approx(roc_auc_score(y, p, multi_class="ovr", average="macro"))
    onehot = np.eye(4)[y]
    assert g["auc_micro"] == pytest.approx(roc_auc_score(onehot, p, average="micro"))
    pred = p.argmax(1)
    recalls = [np.mean(pred[y == c] == c) for c in range(4)]
    assert g["balanced_accuracy"] == pytest.approx(np.mean(recalls))
    assert g["accuracy"] == pytest.approx(np.mean(pred == y))
    assert g["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert g["kappa_quadratic"] == pytest.approx(cohen_kappa_score(y, pred, weights="quadratic"))
    # quadratic kappa by its definition
    O = np.zeros((4, 4))
    np.add.at(O, (y, pred), 1)
    W = (np.subtract.outer(np.arange(4), np.arange(4)) ** 2) / 9
    E = np.outer(O.sum(1), O.sum(0)) / O.sum()
    assert g["kappa_quadratic"] == pytest.approx(1 - (W * O).sum() / (W * E).sum())


@pytest.mark.parametrize("seed", range(4))
def test_binary_auc_matches_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    pos = rng.random(120) < 0.3
    score = rng.integers(0, 6, 120).astype(float) + pos  # heavy ties
    assert M.binary_auc(pos, score) == pytest.approx(roc_auc_score(pos, score), abs=1e-12)
    with pytest.raises(ValueError):
        M.binary_auc(np.zeros(5, bool), np.arange(5.0))


def test_grade_metrics_absent_class_macro_over_present():
    rng = np.random.default_rng(1)
    y = rng.choice([0, 1, 3], 200)  # class 2 absent
    p = rng.dirichlet(np.ones(4), 200)
    g = M.grade_metrics(y, p)
    assert g["classes_absent"] == [2] and g["classes_present"] == [0, 1, 3]
    expected = np.mean([roc_auc_score(y == c, p[:, c]) for c in (0, 1, 3)])
    assert g["auc_macro"] == pytest.approx(expected)
    one = M.grade_metrics(np.zeros(10, dtype=int), rng.dirichlet(np.ones(3), 10))
    assert one["auc_macro"] is None and one["auc_micro"] is None
    with pytest.raises(ValueError):
        M.auc_macro(np.zeros(10, dtype=int), rng.dirichlet(np.ones(3), 10))
    with pytest.raises(ValueError):
        M.grade_metrics(np.array([0, 5]), rng.dirichlet(np.ones(3), 2))


# ------------------------------------------------------------------ aggregation
def test_aggregate_by_case_means_and_order():
    ids = np.array(["b", "a", "b", "c", "a"])
    v = np.array([[1.0, 2], [3, 4], [5, 6], [7, 8], [9, 10]])
    cases, m = M.aggregate_by_case(ids, v)
    assert cases.tolist() == ["b", "a", "c"]
    assert m.tolist() == [[3.0, 4.0], [6.0, 7.0], [7.0, 8.0]]
    cases, lab = M.first_by_case(ids, [1, 0, 1, 1, 0])
    assert cases.tolist() == ["b", "a", "c"] and lab.tolist() == [1, 0, 1]
    with pytest.raises(ValueError, match="differ"):
        M.first_by_case(ids, [1, 0, 0, 1, 0])


# ------------------------------------------------------------------ fidelity
def test_fidelity_report_against_scipy_and_hand_nmae():
    rng = np.random.default_rng(0)
    P, G = 40, 12
    real = rng.normal(size=(P, G))
    synth = 0.7 * real + rng.normal(scale=0.7, size=(P, G))
    synth[:, 5] = 1.0  # a constant synthesized gene
    train_ranges = np.full(G, 4.0)
    train_ranges[11] = 0.0  # zero training range: excluded from nMAE
    fam = {"A": slice(0, 6), "B": [6, 7, 8, 9, 10, 11]}
    rep = M.fidelity_report(real, synth, train_ranges, fam)
    a = rep["families"]["A"]
    # the collapsed gene 5 scores rho = 0, p = 1 (a failure of the model, not left out)
    rhos = [sps.spearmanr(real[:, g], synth[:, g]).statistic for g in range(5)] + [0.0]
    ps = [sps.spearmanr(real[:, g], synth[:, g]).pvalue for g in range(5)] + [1.0]
    assert a["n_constant_genes"] == 0 and a["n_collapsed_genes"] == 1 and a["n_genes"] == 6
    assert a["spearman_gene_median"] == pytest.approx(np.median(rhos))
    assert a["spearman_gene_iqr"] == pytest.approx(np.percentile(rhos, [25, 75]).tolist())
    q = sps.false_discovery_control(ps)
    assert a["pct_genes_fdr05"] == pytest.approx(100 * np.mean(q < 0.05))
    assert a["spearman_pooled"] == pytest.approx(sps.spearmanr(real[:, :6].ravel(), synth[:, :6].ravel()).statistic)
    assert a["nmae"] == pytest.approx(np.mean(np.abs(real[:, :6] - synth[:, :6]).mean(0) / 4.0))
    b = rep["families"]["B"]
    assert b["n_zero_range_genes"] == 1
    assert b["nmae"] == pytest.approx(np.mean(np.abs(real[:, 6:11] - synth[:, 6:11]).mean(0) / 4.0))
    assert rep["overall"]["n_genes"] == 12 and rep["overall"]["n_collapsed_genes"] == 1
    for key in ("spearman_gene_median", "spearman_gene_iqr", "pct_genes_fdr05", "spearman_pooled", "nmae"):
        assert key in rep["overall"] and key in a


def test_fidelity_collapsed_generator_is_not_flattered():
    """Half the genes synthesized as constants: the median must fall, not be taken over the rest."""
    rng = np.random.default_rng(0)
    real = rng.normal(size=(60, 100))
    gen = 0.8 * real + 0.6 * rng.normal(size=(60, 100))
    gen[:, 50:] = 0.0
    rep = M.fidelity_report(real, gen, np.full(100, 6.0), {"all": slice(0, 100)})["overall"]
    rho = [sps.spearmanr(real[:, g], gen[:, g]).statistic for g in range(50)] + [0.0] * 50
    assert rep["spearman_gene_median"] == pytest.approx(np.median(rho))
    assert rep["spearman_gene_median"] < 0.5
    assert rep["pct_genes_fdr05"] <= 50.0 and rep["n_collapsed_genes"] == 50


def test_fidelity_real_constant_genes_left_out_and_shared_genes_once():
    rng = np.random.default_rng(3)
    real = rng.normal(size=(30, 6))
    real[:, 2] = 1.0  # constant in the real data: no rho
    synth = real + rng.normal(scale=0.5, size=(30, 6))
    # columns 0-2 are family A (g0, g1, g2), 3-5 family B (g0 again, g3, g4): g0 is shared
    genes = ["g0", "g1", "g2", "g0", "g3", "g4"]
    synth[:, 3] = -synth[:, 0]  # the shared gene's second copy disagrees, so counting it twice shows
    fam = {"A": [0, 1, 2], "B": [3, 4, 5]}
    rep = M.fidelity_report(real, synth, np.full(6, 4.0), fam, genes=genes)
    assert rep["families"]["A"]["n_constant_genes"] == 1
    ov = rep["overall"]
    assert ov["n_genes"] == 5 and ov["n_constant_genes"] == 1
    cols = [0, 1, 4, 5]
    rho = [sps.spearmanr(real[:, g], synth[:, g]).statistic for g in cols]
    assert ov["spearman_gene_median"] == pytest.approx(np.median(rho))
    with pytest.raises(ValueError, match="genes must name"):
        M.fidelity_report(real, synth, np.full(6, 4.0), fam, genes=genes[:5])


def test_fidelity_perfect_and_anti_and_errors():
    rng = np.random.default_rng(2)
    real = rng.normal(size=(30, 8))
    fam = {"all": slice(0, 8)}
    perfect = M.fidelity_report(real, real.copy(), np.ptp(real, 0), fam)["overall"]
    assert perfect["spearman_gene_median"] == pytest.approx(1.0) and perfect["nmae"] == 0.0
    assert perfect["pct_genes_fdr05"] == 100.0
    anti = M.fidelity_report(real, -real, np.ptp(real, 0), fam)["overall"]
    assert anti["spearman_gene_median"] == pytest.approx(-1.0)
    with pytest.raises(ValueError):
        M.fidelity_report(real, real[:, :4], np.ones(8), fam)
    with pytest.raises(ValueError, match="outside"):
        M.fidelity_report(real, real, np.ones(8), {"x": [9]})
