"""Generator: shapes, determinism, sampler vs twin, overfit, checkpoint round-trip and resume,
synthesize + evaluate outputs."""
from __future__ import annotations

import argparse
import functools
import json

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

import pathgen.models.generator.diffusion as gen_diffusion
from pathgen.diffusion import NoiseSchedule
from pathgen.models.generator import PathGenDenoiser, make_config, sample, training_loss
from pathgen.models.generator.checkpoint import load_checkpoint, model_from_checkpoint
from pathgen.ops import denoise_step
from pathgen.pipelines.cohort import load_cohort
from pathgen.pipelines.evaluate_generator import evaluate_generator
from pathgen.pipelines.synthesize import synthesize
from pathgen.pipelines.train_generator import TrainOptions, train_generator
from tests.models.cohort_fixture import make_tiny_cohort

SIZES = (5, 8)


def _model(**kw):
    cfg = make_config("small", ["a", "b"], SIZES, patch_dim=12, d_model=32, n_heads=4, ctx_dim=16,
                      encoder_hidden=(32,), decoder_hidden=(32,), time_dim=16, **kw)
    return PathGenDenoiser(cfg)


def _ctx(model, lengths=(7, 0, 13), seed=0):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(sum(lengths), 12, generator=g)
    cu = torch.tensor([0, *np.cumsum(lengths)], dtype=torch.int32)
    return model.encode_context(feats, cu)


def test_forward_shapes_and_attention_maps():
    torch.manual_seed(0)
    model = _model().eval()
    ctx = _ctx(model)
    K = 2
    x = torch.randn(3 * K, sum(SIZES))
    t = torch.randint(0, 1000, (3 * K,))
    out, maps = model(x, t, ctx, samples_per_bag=K, need_weights=True)
    assert out.shape == (6, 13)
    assert len(maps) == model.cfg.n_blocks
    assert maps[0].shape == (20, 4, K * 2)  # [total_n, H, K * F]
    # probabilities over each slide's patches sum to one (the empty bag has none)
    s = maps[0][:7].sum(0)
    torch.testing.assert_close(s, torch.ones_like(s), atol=1e-5, rtol=0)
    # families get different context: the learnable family embeddings break the published symmetry
    assert not torch.allclose(maps[0][:7, :, 0], maps[0][:7, :, 1])


def test_condition_dropout_and_unconditional_branch():
    torch.manual_seed(0)
    model = _model().eval()
    for p in model.parameters():  # make every gate non-zero so the context matters
        torch.nn.init.normal_(p, std=0.2)
    ctx = _ctx(model)
    x = torch.randn(3, 13)
    t = torch.tensor([5, 500, 900])
    full = model(x, t, ctx)
    dropped = model(x, t, ctx, cond=torch.tensor([False, False, False]))
    uncond = model(x, t, None)
    torch.testing.assert_close(dropped, uncond)
    assert not torch.allclose(full, uncond)


def test_sampler_is_deterministic_and_matches_twin(monkeypatch):
    torch.manual_seed(0)
    model = _model(clip_sample=(-1.0, 1.0)).eval()
    sched = NoiseSchedule()
    ctx = _ctx(model)
    run = lambda: sample(model, sched, ctx, samples_per_bag=3, steps=8, generator=torch.Generator().manual_seed(1))  # noqa: E731
    a, b = run(), run()
    assert a.shape == (3, 3, 13)
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    monkeypatch.setattr(gen_diffusion, "denoise_step", functools.partial(denoise_step, backend="reference"))
    ref = run()
    torch.testing.assert_close(a, ref, atol=1e-4, rtol=1e-4)
    # DDPM mode and guidance run through the same fused step
    c = sample(model, sched, ctx, samples_per_bag=1, steps=5, mode="ddpm", guidance_scale=2.0,
               generator=torch.Generator().manual_seed(2))
    assert torch.isfinite(c).all() and c.shape == (3, 1, 13)


def test_loss_decreases_on_tiny_overfit():
    torch.manual_seed(0)
    model = _model(dropout=0.0, cond_dropout=0.0)
    sched = NoiseSchedule()
    ctx = _ctx(model, lengths=(5, 9, 4, 6))
    x0 = torch.rand(4, 13) * 2 - 1
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)

    def eval_loss():
        gg = torch.Generator().manual_seed(123)
        with torch.no_grad():
            return float(np.mean([float(training_loss(model, sched, x0, model.encode_context(
                ctx_feats, ctx.cu_seqlens), generator=gg)) for _ in range(8)]))

    ctx_feats = torch.randn(24, 12, generator=torch.Generator().manual_seed(3))
    before = eval_loss()
    for _ in range(150):
        c = model.encode_context(ctx_feats, ctx.cu_seqlens)
        loss = training_loss(model, sched, x0, c, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = eval_loss()
    assert after < 0.6 * before, (before, after)


def test_noise_draws_share_the_slide_pass():
    """draws=K == the same K noisings with each bag repeated K times (one co-attention pass per slide)."""
    model = _model(dropout=0.0).eval()  # eval: no condition dropout
    sched = NoiseSchedule()
    lengths = (7, 3, 13)
    feats = torch.randn(sum(lengths), 12, generator=torch.Generator().manual_seed(1))
    cu = torch.tensor([0, *np.cumsum(lengths)], dtype=torch.int32)
    x0 = torch.rand(3, 13) * 2 - 1
    K = 3
    shared = training_loss(model, sched, x0, model.encode_context(feats, cu), draws=K,
                           generator=torch.Generator().manual_seed(5))
    rep = [feats[cu[i]:cu[i + 1]] for i in range(3) for _ in range(K)]
    cu_rep = torch.tensor([0, *np.cumsum([len(r) for r in rep])], dtype=torch.int32)
    repeated = training_loss(model, sched, x0.repeat_interleave(K, 0), model.encode_context(torch.cat(rep), cu_rep),
                             generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(shared, repeated, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(shared, training_loss(model, sched, x0, model.encode_context(feats, cu), draws=1,
                                                    generator=torch.Generator().manual_seed(5)))


def _args(paths, out, **kw):
    ns = argparse.Namespace(manifest=paths["manifest"], expression=paths["expression"],
                            signatures=paths["signatures"], features=paths["features"], splits=None,
                            n_folds=4, seed=0)
    for k, v in kw.items():
        setattr(ns, k, v)
    return ns


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cohort")
    paths = make_tiny_cohort(root)
    run = root / "run"
    cohort = load_cohort(_args(paths, run), write_splits=run / "splits.json")
    opts = TrainOptions(epochs=3, batch_size=4, val_steps=3, max_patches=16, seed=0,
                        overrides=dict(d_model=32, n_heads=4, ctx_dim=16, encoder_hidden=(32,),
                                       decoder_hidden=(32,), time_dim=16))
    summary = train_generator(cohort, 0, run, opts, progress=False)
    return paths, run, cohort, opts, summary


def test_published_layernorm_and_old_checkpoints():
    """``patch_norm="layernorm"`` (per patch) stays available, and configs saved before the option
    existed load as layernorm models (their state dicts have no standardisation buffers)."""
    ln = _model(patch_norm="layernorm")
    assert isinstance(ln.patch_norm, torch.nn.LayerNorm) and not hasattr(ln, "patch_mean")
    d = ln.cfg.to_dict()
    d.pop("patch_norm")
    old = PathGenDenoiser(type(ln.cfg).from_dict(d))
    old.load_state_dict(ln.state_dict())  # strict: same keys
    std = _model()
    assert std.cfg.patch_norm == "standardize" and "patch_mean" in std.state_dict()
    with pytest.raises(ValueError, match="patch_norm"):
        _model(patch_norm="batchnorm")


def test_checkpoint_round_trip_and_resume(trained):
    paths, run, cohort, opts, summary = trained
    assert summary["epochs_run"] == 3
    ckpt = load_checkpoint(run / "generator.pt")
    model, fam, transform = model_from_checkpoint(ckpt)
    assert fam.sizes == (5, 8) and model.cfg.family_sizes == (5, 8)
    assert set(ckpt["train_case_ids"]) <= set(cohort.fold(0).train)
    # transform fitted on training patients only: refit on them reproduces it
    from pathgen.data.transforms import ExpressionTransform
    refit = ExpressionTransform.fit_on(cohort.expression.loc[:, fam.columns], ckpt["train_case_ids"], method="minmax")
    np.testing.assert_allclose(refit.state_dict()["center"], transform.state_dict()["center"])
    # patch standardisation: per-feature statistics of the TRAINING patients' patches only
    from pathgen.data.bags import read_h5_bag
    train_patches = np.concatenate([read_h5_bag(p)[0] for c in ckpt["train_case_ids"] for p in cohort.features[c]])
    np.testing.assert_allclose(model.patch_mean.numpy(), train_patches.mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(model.patch_std.numpy(), train_patches.std(0), rtol=1e-3, atol=1e-5)
    # same weights -> same outputs
    again, _, _ = model_from_checkpoint(load_checkpoint(run / "generator.pt"))
    x, t = torch.randn(2, 13), torch.tensor([3, 700])
    ctx = model.encode_context(torch.randn(10, 12), torch.tensor([0, 4, 10], dtype=torch.int32))
    torch.testing.assert_close(model(x, t, ctx), again(x, t, ctx))
    # resume continues from last.pt instead of starting over
    more = train_generator(cohort, 0, run, TrainOptions(**{**opts.__dict__, "epochs": 5}), resume=True, progress=False)
    assert more["epochs_run"] == 5
    log = pd.read_csv(run / "log.csv")
    assert list(log["epoch"]) == [0, 1, 2, 3, 4]


def test_synthesize_and_evaluate_outputs(trained, tmp_path):
    paths, run, cohort, opts, summary = trained
    fold = cohort.fold(0)
    ids = fold.test
    table = synthesize(run / "generator.pt", cohort, ids, tmp_path / "syn", samples=2, steps=4, seed=3,
                       save_attention=True, progress=False)
    again = synthesize(run / "generator.pt", cohort, ids, tmp_path / "syn2", samples=2, steps=4, seed=3,
                       progress=False)
    pd.testing.assert_frame_equal(table, again)
    assert list(table.index) == ids
    csv = pd.read_csv(tmp_path / "syn" / "synthesized.csv")
    assert csv.columns[0] == "case_id" and "TS0_rnaseq" in csv.columns
    assert csv.columns.is_unique  # TS0 sits in two families but is reported once
    side = json.loads((tmp_path / "syn" / "synthesized.json").read_text())  # provenance for `pathgen evaluate`
    assert side["generator_train_case_ids"] == sorted(load_checkpoint(run / "generator.pt")["train_case_ids"])
    assert side["case_ids"] == ids and not set(ids) & set(side["generator_train_case_ids"])
    with h5py.File(tmp_path / "syn" / "samples.h5") as f:
        assert f["samples"].shape == (len(ids), 2, 13)
        assert json.loads(f.attrs["meta"])["families"]["sizes"] == [5, 8]
    with h5py.File(tmp_path / "syn" / "attention" / f"{ids[0]}.h5") as f:
        assert f["attention"].shape[0] == 3 and f["attention"].shape[2] == 2
        assert f["coords"].shape == (f["attention"].shape[1], 2)
    # synthesized values are in the input's units (inverse transform), within the training range
    train = cohort.expression.loc[fold.train, cohort.families.columns]
    lo, hi = train.min().to_numpy(), train.max().to_numpy()
    vals = table.loc[:, cohort.families.columns].to_numpy()
    assert (vals >= lo - 1e-6).all() and (vals <= hi + 1e-6).all()
    m = evaluate_generator(cohort, table, fold.train, ids, tmp_path / "eval")
    for key in ("spearman_gene_median", "spearman_pooled", "nmae"):
        assert key in m["overall"]
        for fam in cohort.families.names:
            assert key in m["families"][fam]
        assert key in m["baselines"]["ridge"]["overall"] and key in m["baselines"]["train_mean"]["overall"]
    assert (tmp_path / "eval" / "metrics.json").exists() and (tmp_path / "eval" / "fidelity.png").exists()
    written = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    for key in ("spearman_gene_median", "spearman_pooled", "nmae"):
        assert written["overall"][key] == pytest.approx(m["overall"][key], abs=1e-12)  # the file is the return
    # headline metrics recomputed independently, in the input units (synthesized table vs the real
    # expression of the held-out patients that have features; gene ranges over the TRAINING patients)
    from scipy.stats import spearmanr

    cols = cohort.families.columns  # the concatenated vector: TS0 is in two families
    held = [c for c in ids if cohort.features.get(c)]
    assert written["n_test"] == len(held) >= 3 and written["n_train"] == len(fold.train)
    real = cohort.expression.loc[held, cols].to_numpy(float)
    syn = table.loc[held, cols].to_numpy(float)
    train_vals = cohort.expression.loc[fold.train, cols].to_numpy(float)
    gene_range = train_vals.max(0) - train_vals.min(0)

    def headline(r, s, rg):
        # genes constant in the real data have no rho; genes synthesized as a constant score 0
        rhos = [spearmanr(r[:, g], s[:, g]).statistic if np.ptp(s[:, g]) > 0 else 0.0
                for g in range(r.shape[1]) if np.ptp(r[:, g]) > 0]
        ok = rg > 0
        return {"spearman_gene_median": float(np.median(rhos)) if rhos else None,
                "spearman_pooled": float(spearmanr(r.ravel(), s.ravel()).statistic),
                "nmae": float(np.mean(np.mean(np.abs(r - s), axis=0)[ok] / rg[ok]))}

    def check(got, want, what):
        for key, v in want.items():
            if v is None:
                assert got[key] is None, (what, key)
            else:
                assert got[key] == pytest.approx(v, abs=1e-9), (what, key, got[key], v)

    first = sorted({g: i for i, g in reversed(list(enumerate(cols)))}.values())  # a shared gene counts once overall
    overall = headline(real[:, first], syn[:, first], gene_range[first])
    check(written["overall"], overall, "overall")
    for name, sl in cohort.families.slices.items():
        check(written["families"][name], headline(real[:, sl], syn[:, sl], gene_range[sl]), name)
    # the training-mean baseline: same real values against a constant prediction
    mean_pred = np.repeat(train_vals.mean(0, keepdims=True), len(held), 0)
    check(written["baselines"]["train_mean"]["overall"],
          headline(real[:, first], mean_pred[:, first], gene_range[first]), "train_mean")
    # the model is scored against the real values, not trivially (a self-comparison gives rho 1, nMAE 0)
    assert not np.allclose(real, syn)
    assert overall["nmae"] > 1e-3 and written["overall"]["nmae"] > 1e-3
    assert written["overall"]["spearman_gene_median"] is not None
    assert written["overall"]["spearman_gene_median"] < 0.999 and written["overall"]["spearman_pooled"] < 0.999


def test_validation_score_is_the_mean_per_gene_spearman():
    from scipy.stats import spearmanr

    from pathgen.pipelines.train_generator import mean_gene_spearman

    rng = np.random.default_rng(0)
    R = rng.normal(size=(7, 30))
    S = R + rng.normal(size=(7, 30))
    S[:, 3] = 1.0  # synthesized as a constant: scores rho = 0 (a collapsed gene is a failure, not skipped)
    R[:, 5] = 2.0  # constant in the real data: no rho, skipped
    want = np.mean([spearmanr(R[:, g], S[:, g]).statistic if g != 3 else 0.0 for g in range(30) if g != 5])
    assert mean_gene_spearman(R, S) == pytest.approx(want, abs=1e-12)
    assert mean_gene_spearman(R, np.ones_like(R)) == 0.0  # a fully collapsed generator scores 0
    assert np.isnan(mean_gene_spearman(np.ones_like(R), S))


def test_ensemble_of_generators(trained, tmp_path):
    """Several checkpoints of one fold synthesize as one ensemble: every member's K samples are kept
    and the table is their mean; members of different folds are refused."""
    paths, run, cohort, opts, summary = trained
    ids = cohort.fold(0).test
    single = synthesize(run / "generator.pt", cohort, ids, tmp_path / "one", samples=2, steps=4, seed=3,
                        progress=False)
    pair = synthesize([run / "generator.pt", run / "generator.pt"], cohort, ids, tmp_path / "two", samples=2,
                      steps=4, seed=3, progress=False)
    with h5py.File(tmp_path / "two" / "samples.h5") as f:
        S = f["samples"][()]
        assert S.shape == (len(ids), 4, 13) and json.loads(f.attrs["meta"])["members"] == 2
    with h5py.File(tmp_path / "one" / "samples.h5") as f:
        np.testing.assert_allclose(S[:, :2], f["samples"][()], rtol=1e-6)  # member 0 draws as a lone model
    assert not np.allclose(S[:, :2], S[:, 2:])  # member 1 draws its own noise
    assert list(pair.index) == list(single.index)
    other = torch.load(run / "generator.pt", weights_only=False)
    other["train_case_ids"] = list(other["train_case_ids"])[1:]
    torch.save(other, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other patients"):
        synthesize([run / "generator.pt", tmp_path / "other.pt"], cohort, ids, tmp_path / "bad", samples=2, steps=4,
                   progress=False)


def test_evaluate_generator_refuses_a_fold_without_test_patients(trained, tmp_path, capsys):
    """Its val patients chose the checkpoint: scoring on them would be selection-biased."""
    import argparse

    from pathgen.pipelines import evaluate_generator as eg

    paths, run, cohort, opts, summary = trained
    ck = torch.load(run / "generator.pt", weights_only=False)
    ck["fold"]["test"] = []
    torch.save(ck, tmp_path / "no_test.pt")
    rc = eg.main(argparse.Namespace(model=tmp_path / "no_test.pt", synthesized=tmp_path / "x.csv", out=tmp_path / "o"))
    assert rc == 1 and "no test patients" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
