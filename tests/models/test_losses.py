"""Survival NLL against hand-computed values in every bin; grade losses (CE, CORAL)."""
import math

import pytest
import torch

from pathgen.models import losses as L

# hazards h = [0.1, 0.2, 0.3, 0.4]  ->  S = cumprod(1 - h) = [0.9, 0.72, 0.504, 0.3024]
#                                        S_padded = [1, 0.9, 0.72, 0.504, 0.3024]
H = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
LOGITS = torch.log(H / (1 - H))

# death in bin y: likelihood = S_padded[y] * h[y]  (alive through bins < y, then die in y)
UNCENSORED_BY_HAND = {
    0: -math.log(1.0 * 0.1),
    1: -math.log(0.9 * 0.2),
    2: -math.log(0.72 * 0.3),
    3: -math.log(0.504 * 0.4),
}
# censored in bin y: likelihood = S_padded[y + 1] (alive at least through bin y)
CENSORED_BY_HAND = {
    0: -math.log(0.9),
    1: -math.log(0.72),
    2: -math.log(0.504),
    3: -math.log(0.3024),
}
# the published off-by-one: deaths scored with S[y] * h[y] = S_padded[y + 1] * h[y]
PUBLISHED_UNCENSORED = {
    0: -math.log(0.9 * 0.1),
    1: -math.log(0.72 * 0.2),
    2: -math.log(0.504 * 0.3),
    3: -math.log(0.3024 * 0.4),
}


def _one(y, c, alpha=0.0):
    return L.survival_nll(LOGITS[None], torch.tensor([y]), torch.tensor([c]), alpha=alpha).item()


@pytest.mark.parametrize("y", [0, 1, 2, 3])
def test_uncensored_every_bin_matches_hand_value(y):
    assert _one(y, 0) == pytest.approx(UNCENSORED_BY_HAND[y], rel=1e-12)


@pytest.mark.parametrize("y", [0, 1, 2, 3])
def test_censored_every_bin_matches_hand_value(y):
    assert _one(y, 1) == pytest.approx(CENSORED_BY_HAND[y], rel=1e-12)


@pytest.mark.parametrize("y", [0, 1, 2, 3])
def test_published_off_by_one_gives_a_different_value(y):
    ours = _one(y, 0)
    assert ours != pytest.approx(PUBLISHED_UNCENSORED[y], rel=1e-6)
    # and the difference is exactly the extra bin-y survival factor the bug multiplies in
    assert PUBLISHED_UNCENSORED[y] - ours == pytest.approx(-math.log(1 - H[y].item()), rel=1e-9)


def test_alpha_weighting_and_batch_mean_by_hand():
    y = torch.tensor([1, 2, 0, 3])
    c = torch.tensor([0, 1, 0, 1])
    alpha = 0.4
    logits = LOGITS[None].repeat(4, 1)
    unc = [UNCENSORED_BY_HAND[1], 0.0, UNCENSORED_BY_HAND[0], 0.0]
    cen = [0.0, CENSORED_BY_HAND[2], 0.0, CENSORED_BY_HAND[3]]
    expected = sum((1 - alpha) * (u + k) + alpha * u for u, k in zip(unc, cen)) / 4
    assert L.survival_nll(logits, y, c, alpha=alpha).item() == pytest.approx(expected, rel=1e-12)
    assert L.SurvivalNLLLoss(alpha=alpha)(logits, y, c).item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("hazards", [H.tolist(), [0.05, 0.5, 0.15, 0.7, 0.25, 0.9]])
def test_nll_is_the_negative_log_of_a_proper_distribution(hazards):
    """exp(-NLL) of the package's loss is a probability distribution over the outcomes: death in
    bin 0..K-1 or survival past the last bin. Each probability is rebuilt here from the hazards
    alone, and every censored NLL is -log of the tail mass (death in a later bin or never)."""
    h = torch.tensor(hazards, dtype=torch.float64)
    K = len(hazards)
    logits = torch.log(h / (1 - h))[None]

    def nll(y, c):
        return L.survival_nll(logits, torch.tensor([y]), torch.tensor([c])).item()

    # independent: P(death in bin y) = prod_{j<y} (1 - h_j) * h_y;  P(alive past bin K-1) = prod_j (1 - h_j)
    want_death = [math.prod(1 - hazards[j] for j in range(y)) * hazards[y] for y in range(K)]
    want_past_last = math.prod(1 - x for x in hazards)
    assert sum(want_death) + want_past_last == pytest.approx(1.0, rel=1e-12)
    # the package: each death NLL is -log of its bin's probability ...
    p_death = [math.exp(-nll(y, 0)) for y in range(K)]
    assert p_death == pytest.approx(want_death, rel=1e-9)
    # ... and censoring in the last bin is -log of surviving past it: together they sum to 1
    p_past_last = math.exp(-nll(K - 1, 1))
    assert p_past_last == pytest.approx(want_past_last, rel=1e-9)
    assert sum(p_death) + p_past_last == pytest.approx(1.0, rel=1e-9)
    # censored in bin y: -log P(T > bin y) = -log(sum of the later death bins + survival past the last)
    for y in range(K):
        tail = sum(want_death[y + 1:]) + want_past_last
        assert nll(y, 1) == pytest.approx(-math.log(tail), rel=1e-9)
    # the batched call averages the same per-outcome NLLs
    ys = torch.tensor(list(range(K)) + [K - 1])
    cs = torch.tensor([0] * K + [1])
    probs = want_death + [want_past_last]
    batch = L.survival_nll(logits.repeat(K + 1, 1), ys, cs).item()
    assert batch == pytest.approx(-sum(math.log(p) for p in probs) / (K + 1), rel=1e-9)


def test_eps_clamp_keeps_loss_finite_and_gradients_flow():
    logits = torch.tensor([[-50.0, 50.0, 0.0]], requires_grad=True)
    loss = L.survival_nll(logits, torch.tensor([0]), torch.tensor([0]))
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(logits.grad).all()


def test_invalid_labels_raise():
    with pytest.raises(ValueError, match="0-based"):
        L.survival_nll(LOGITS[None], torch.tensor([4]), torch.tensor([0]))
    with pytest.raises(ValueError, match="0/1"):
        L.survival_nll(LOGITS[None], torch.tensor([0]), torch.tensor([2]))
    with pytest.raises(ValueError, match="alpha"):
        L.survival_nll(LOGITS[None], torch.tensor([0]), torch.tensor([0]), alpha=1.5)


def test_risk_is_minus_sum_of_survival():
    assert L.risk_from_hazards(H[None]).item() == pytest.approx(-(0.9 + 0.72 + 0.504 + 0.3024))
    assert L.risk_from_logits(LOGITS[None]).item() == pytest.approx(-(0.9 + 0.72 + 0.504 + 0.3024))
    # higher hazards -> higher risk
    assert L.risk_from_hazards(torch.tensor([[0.5, 0.5]])) > L.risk_from_hazards(torch.tensor([[0.1, 0.1]]))


# ------------------------------------------------------------------ grade
def test_grade_cross_entropy_by_hand():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 3.0]])
    y = torch.tensor([0, 1])
    e = math.exp
    expected = (-math.log(e(2) / (e(2) + 2)) - math.log(e(1) / (1 + e(1) + e(3)))) / 2
    assert L.grade_cross_entropy(logits, y).item() == pytest.approx(expected, rel=1e-6)
    assert L.grade_loss(logits, y, "ce").item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError):
        L.grade_cross_entropy(logits, torch.tensor([0, 3]))


def test_coral_levels_and_loss_by_hand():
    y = torch.tensor([0, 2, 3])
    assert L.coral_levels(y, 4).tolist() == [[0, 0, 0], [1, 1, 0], [1, 1, 1]]
    logits = torch.tensor([[0.0, 0.0, 0.0], [1.0, -1.0, 2.0], [0.5, 0.5, 0.5]])
    sp = lambda x: math.log1p(math.exp(x))  # softplus: -log sigmoid(-x)
    # task loss: level 1 -> softplus(-z); level 0 -> softplus(z)
    row0 = 3 * sp(0.0)
    row1 = sp(-1.0) + sp(1.0) + sp(2.0)
    row2 = 3 * sp(-0.5)
    assert L.coral_loss(logits, y).item() == pytest.approx((row0 + row1 + row2) / 3, rel=1e-6)


def test_coral_probs_sum_to_one_and_predict():
    logits = torch.tensor([[3.0, 1.0, -2.0], [-3.0, -4.0, -5.0]])
    p = L.coral_probs(logits)
    assert p.shape == (2, 4)
    assert torch.allclose(p.sum(1), torch.ones(2))
    assert (p >= 0).all()
    assert L.coral_predict(logits).tolist() == [2, 0]
    s = torch.sigmoid(torch.tensor(3.0))
    assert p[0, 0].item() == pytest.approx(1 - s.item())


def test_coral_head_trains_on_ordinal_toy():
    torch.manual_seed(0)
    x = torch.linspace(-2, 2, 200)[:, None]
    y = torch.bucketize(x[:, 0], torch.tensor([-1.0, 0.0, 1.0]))
    head = L.CoralHead(1, 4)
    opt = torch.optim.Adam(head.parameters(), lr=0.3)
    for _ in range(60):
        opt.zero_grad()
        loss = L.coral_loss(head(x), y)
        loss.backward()
        opt.step()
    acc = (L.coral_predict(head(x)) == y).float().mean().item()
    assert acc > 0.9
    assert torch.allclose(L.grade_probs(head(x), "coral").sum(1), torch.ones(200))


def test_grade_loss_unknown_kind():
    with pytest.raises(ValueError, match="unknown grade loss"):
        L.grade_loss(torch.zeros(1, 3), torch.tensor([0]), "bce")
    assert torch.allclose(L.grade_probs(torch.zeros(1, 3)), torch.full((1, 3), 1 / 3))


def test_saturated_logits_keep_their_gradient():
    """Confidently wrong predictions (|logit| 30) must still be pushed back: with log(clamp(p, eps)) the
    loss was large and the gradient exactly zero."""
    logits = torch.tensor([[-30.0, 0.0, 0.0], [30.0, 0.0, 0.0]], requires_grad=True)
    # patient 0 died in bin 0 (predicted hazard ~1e-13); patient 1 was censored in bin 0 (hazard ~1)
    loss = L.survival_nll(logits, torch.tensor([0, 0]), torch.tensor([0, 1]))
    assert loss.item() == pytest.approx(30.0, rel=1e-3)
    loss.backward()
    assert logits.grad[0, 0] < -0.4 and logits.grad[1, 0] > 0.4  # raise the first hazard, lower the second
