"""Predictor models: shapes with batch > 1 and uneven / empty bags, attention maps, packing that
does not change a patient's prediction, the weighted objective, checkpoints."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pathgen.models.losses import grade_cross_entropy, survival_nll
from pathgen.models.predictor.checkpoint import (load_predictor_checkpoint, predictor_from_checkpoint,
                                                 save_predictor)
from pathgen.models.predictor.config import PredictorConfig
from pathgen.models.predictor.factory import build_predictor
from pathgen.models.predictor.layers import PackedAttentionPool, segment_softmax
from pathgen.models.predictor.output import predictor_loss

FAMILIES = (("Tumor Suppressor Genes", 5), ("Oncogenes", 7), ("Protein Kinases", 3))
D = 12


def config(kind: str, **kw) -> PredictorConfig:
    names, sizes = zip(*FAMILIES)
    return PredictorConfig(kind=kind, family_names=names, family_sizes=sizes, feature_dim=D, width=16,
                           transformer_heads=2, **kw)


def packed(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(sum(lengths), D, generator=g)
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(torch.tensor(lengths), 0)
    expr = torch.randn(len(lengths), sum(s for _, s in FAMILIES), generator=g)
    return {"features": feats, "cu_seqlens": cu, "max_seqlen": max(lengths), "expression": expr}


def needs_coattention():
    return pytest.importorskip("pathgen.nn", reason="pathgen.nn.CoAttention not available")


@pytest.mark.parametrize("kind", ["expression", "slide", "multimodal"])
@pytest.mark.parametrize("grade_loss,grade_width", [("ce", 3), ("coral", 2)])
def test_shapes_with_uneven_and_empty_bags(kind, grade_loss, grade_width):
    if kind == "multimodal":
        needs_coattention()
    cfg = config(kind, n_grades=3, grade_loss=grade_loss)
    model = build_predictor(cfg).eval()
    lengths = [5, 0, 17, 1]
    out = model(**packed(lengths))
    assert out.survival_logits.shape == (4, cfg.n_bins)
    assert out.grade_logits.shape == (4, grade_width)
    assert torch.isfinite(out.survival_logits).all() and torch.isfinite(out.grade_logits).all()
    assert out.risk.shape == (4,) and out.survival.shape == (4, cfg.n_bins)
    assert torch.allclose(out.grade_probs.sum(1), torch.ones(4), atol=1e-5)
    assert bool((out.survival[:, 1:] <= out.survival[:, :-1] + 1e-7).all())  # S is non-increasing
    model.train()  # gradients stay finite with an empty bag in the batch
    loss, _ = predictor_loss(model(**packed(lengths)), torch.tensor([0, 1, 2, 3]), torch.tensor([0.0, 1.0, 0.0, 1.0]),
                             torch.tensor([0, 1, 2, -1]), cfg)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_no_grade_head():
    out = build_predictor(config("expression")).eval()(**packed([3, 4]))
    assert out.grade_logits is None and out.grade_probs is None


@pytest.mark.parametrize("kind", ["slide", "multimodal"])
def test_batching_does_not_change_a_patients_prediction(kind):
    """Packed bags: each patient's output is what it gets alone (no leakage between bags)."""
    if kind == "multimodal":
        needs_coattention()
    model = build_predictor(config(kind, n_grades=3)).eval()
    lengths = [6, 0, 11, 2]
    b = packed(lengths, seed=1)
    together = model(**b)
    cu = b["cu_seqlens"].tolist()
    for i, n in enumerate(lengths):
        single = {"features": b["features"][cu[i]:cu[i + 1]], "cu_seqlens": torch.tensor([0, n], dtype=torch.int32),
                  "max_seqlen": n, "expression": b["expression"][i:i + 1]}
        alone = model(**single)
        torch.testing.assert_close(together.survival_logits[i:i + 1], alone.survival_logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(together.grade_logits[i:i + 1], alone.grade_logits, atol=1e-5, rtol=1e-5)


def test_slide_attention_map():
    model = build_predictor(config("slide")).eval()
    lengths = [4, 0, 9]
    b = packed(lengths)
    a = model(**b).attention["patches"]
    assert a.shape == (13,)
    assert torch.allclose(a[:4].sum(), torch.tensor(1.0)) and torch.allclose(a[4:].sum(), torch.tensor(1.0))
    # the map responds to the patches: permuting a bag permutes its attention
    perm = torch.tensor([3, 2, 1, 0])
    b2 = dict(b, features=torch.cat([b["features"][:4][perm], b["features"][4:]]))
    torch.testing.assert_close(model(**b2).attention["patches"][:4], a[:4][perm])


def test_multimodal_attention_maps():
    needs_coattention()
    cfg = config("multimodal", coattn_heads=2)
    model = build_predictor(cfg).eval()
    lengths = [5, 8, 3]
    out = model(**packed(lengths))
    co = out.attention["coattn"]
    assert co.shape == (16, 2, len(FAMILIES))  # [total_n, heads, families]
    cu = [0, 5, 13, 16]
    for i in range(3):  # every family token's attention over its own patient's patches sums to 1
        torch.testing.assert_close(co[cu[i]:cu[i + 1]].sum(0), torch.ones(2, len(FAMILIES)), atol=1e-5, rtol=0)
    assert out.attention["path"].shape == (3, len(FAMILIES)) and out.attention["omic"].shape == (3, len(FAMILIES))
    torch.testing.assert_close(out.attention["path"].sum(1), torch.ones(3))


def test_multimodal_uses_both_inputs():
    needs_coattention()
    model = build_predictor(config("multimodal")).eval()
    b = packed([5, 7])
    base = model(**b).survival_logits
    assert not torch.allclose(model(**dict(b, expression=b["expression"] + 1.0)).survival_logits, base)
    assert not torch.allclose(model(**dict(b, features=b["features"] * 2.0)).survival_logits, base)


def test_segment_softmax_matches_per_bag_softmax():
    scores = torch.randn(9)
    seg = torch.tensor([0, 0, 0, 2, 2, 2, 2, 3, 3])
    got = segment_softmax(scores, seg, 4)
    for b in (0, 2, 3):
        torch.testing.assert_close(got[seg == b], torch.softmax(scores[seg == b], 0))
    pool = PackedAttentionPool(3, 4)
    h = torch.randn(9, 3)
    pooled, _ = pool(h, torch.tensor([0, 3, 3, 7, 9], dtype=torch.int32))
    assert torch.equal(pooled[1], torch.zeros(3))  # the empty bag pools to zeros


def test_loss_weights_and_missing_labels():
    cfg = config("expression", n_grades=3, survival_weight=0.3, alpha=0.2)
    torch.manual_seed(0)
    out = build_predictor(cfg)(**packed([1, 1, 1, 1]))
    y = torch.tensor([0, 3, 1, 2])
    c = torch.tensor([0.0, 1.0, 0.0, 1.0])
    g = torch.tensor([2, -1, 0, 1])  # patient 1 has no grade
    loss, parts = predictor_loss(out, y, c, g, cfg)
    known = g >= 0
    expected = 0.3 * survival_nll(out.survival_logits, y, c, alpha=0.2) + \
        0.7 * grade_cross_entropy(out.grade_logits[known], g[known])
    torch.testing.assert_close(loss, expected)
    assert parts["grade"] == pytest.approx(float(grade_cross_entropy(out.grade_logits[known], g[known]).detach()))
    # the unlabelled patient's grade logits get no gradient
    out.grade_logits.retain_grad()
    loss.backward()
    assert torch.equal(out.grade_logits.grad[1], torch.zeros(3)) and out.grade_logits.grad[0].abs().sum() > 0


def test_a_batch_without_grades_still_reaches_every_parameter():
    """Under DDP every parameter must take part in every step: a batch with no graded patient adds a
    zero grade term that still reaches the grade head (its gradient is zero, not missing)."""
    cfg = config("expression", n_grades=3, survival_weight=0.3, alpha=0.2)
    torch.manual_seed(0)
    model = build_predictor(cfg)
    out = model(**packed([1, 1]))
    loss, parts = predictor_loss(out, torch.tensor([0, 2]), torch.tensor([0.0, 1.0]), torch.tensor([-1, -1]), cfg)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == [] and np.isnan(parts["grade"])
    torch.testing.assert_close(loss, 0.3 * survival_nll(out.survival_logits, torch.tensor([0, 2]),
                                                        torch.tensor([0.0, 1.0]), alpha=0.2))


def test_loss_without_grade_head_is_the_nll():
    cfg = config("expression")
    out = build_predictor(cfg)(**packed([1, 1, 1]))
    y, c = torch.tensor([0, 1, 3]), torch.tensor([1.0, 0.0, 0.0])
    loss, _ = predictor_loss(out, y, c, torch.tensor([-1, -1, -1]), cfg)
    torch.testing.assert_close(loss, survival_nll(out.survival_logits, y, c))


def test_config_errors_name_the_problem():
    with pytest.raises(ValueError, match="feature_dim"):
        PredictorConfig(kind="slide")
    with pytest.raises(ValueError, match="gene families"):
        PredictorConfig(kind="expression")
    with pytest.raises(ValueError, match="n_grades"):
        config("expression", n_grades=1)
    with pytest.raises(ValueError, match=r"expression must be \[B, 15\]"):
        build_predictor(config("expression"))(expression=torch.zeros(2, 4))
    with pytest.raises(ValueError, match="another patch encoder"):
        build_predictor(config("slide"))(features=torch.zeros(3, D + 1), cu_seqlens=torch.tensor([0, 3]).int())


def test_checkpoint_round_trip(tmp_path):
    from pathgen.data.families import GeneFamilies
    from pathgen.data.survival import SurvivalBins

    cfg = config("slide", n_grades=3)
    model = build_predictor(cfg).eval()
    path = tmp_path / "p.pt"
    save_predictor(path, model_state=model.state_dict(), config=cfg,
                   families=GeneFamilies.from_mapping({"A": ["X", "Y"]}), transform=None,
                   bins=SurvivalBins((0.0, 1.0, 2.0, 3.0, 4.0)), grade_categories=["G1", "G2", "G3"])
    again, cfg2, objs = predictor_from_checkpoint(load_predictor_checkpoint(path))
    assert cfg2 == cfg and objs["grade_categories"] == ["G1", "G2", "G3"] and objs["bins"].n_bins == 4
    b = packed([4, 6])
    torch.testing.assert_close(again(**b).survival_logits, model(**b).survival_logits)
    with pytest.raises(FileNotFoundError, match="train-predictor"):
        load_predictor_checkpoint(tmp_path / "missing.pt")


def test_discrete_hazard_prior_is_the_nll_maximiser():
    from pathgen.models.predictor.layers import SurvivalGradeHeads, discrete_hazards

    y = torch.tensor([0, 0, 1, 2, 3, 3, 1, 2])
    c = torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0])
    h = discrete_hazards(y, c, 4)
    # bin 0: 1 death of 8 at risk; bin 1: 2 of 6; bin 2: 1 of 4; bin 3: 1 of 2
    torch.testing.assert_close(h, torch.tensor([1 / 8, 2 / 6, 1 / 4, 1 / 2]))
    heads = SurvivalGradeHeads(3, 4)
    heads.set_hazard_prior(h)
    logits = heads(torch.zeros(8, 3))[0].detach().requires_grad_(True)
    torch.testing.assert_close(torch.sigmoid(logits[0]), h)
    survival_nll(logits, y, c).backward()  # the prior is a stationary point of the NLL
    torch.testing.assert_close(logits.grad.sum(0), torch.zeros(4), atol=1e-6, rtol=0)
