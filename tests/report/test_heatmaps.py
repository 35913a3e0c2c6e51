"""Heatmap placement on a synthetic slide with a known hot region, top-k tiles, distributed maps, CLI."""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from pathgen.report.attention import AttentionMaps, read_attention_h5, write_attention_h5
from pathgen.report.heatmaps import (HeatmapStyle, infer_patch_size, paint_scores, patch_size_level0, read_tiles,
                                     scale_scores, slide_canvas, smooth_canvas, top_k_indices)
from pathgen.slides.tiff_writer import write_pyramidal_tiff

# A NON-square slide, so that swapping x and y moves the hot region (and partly off the slide).
W0, H0, PATCH = 1024, 768, 64
PINK, BLUE = (232, 160, 200), (60, 80, 220)
FAMILIES = ["Tumor Suppressor Genes", "Oncogenes"]


def _grid_coords() -> np.ndarray:  # [192, 2] level-0 (x, y)
    xs, ys = np.meshgrid(np.arange(0, W0, PATCH), np.arange(0, H0, PATCH))
    return np.stack([xs.ravel(), ys.ravel()], 1).astype(np.int64)


def _top_right(coords: np.ndarray) -> np.ndarray:  # [N] bool: x in the right half, y in the top half
    return (coords[:, 0] >= W0 // 2) & (coords[:, 1] < H0 // 2)


def _bottom_left(coords: np.ndarray) -> np.ndarray:
    return (coords[:, 0] < W0 // 2) & (coords[:, 1] >= H0 // 2)


@pytest.fixture(scope="module")
def slide(tmp_path_factory) -> Path:
    """Pink slide whose top-right quadrant is blue (so tiles read from there are recognisable)."""
    img = np.empty((H0, W0, 3), np.uint8)
    img[:] = PINK
    img[: H0 // 2, W0 // 2:] = BLUE
    path = tmp_path_factory.mktemp("heatmap_slide") / "synthetic-slide.tif"
    write_pyramidal_tiff(path, img, mpp=0.5, downsamples=(1, 4), tile=256, compression="jpeg")
    return path


@pytest.fixture(scope="module")
def bag():
    """Weights over the grid: family 0 hot in the top-right quadrant, family 1 in the bottom-left."""
    rng = np.random.default_rng(0)
    coords = _grid_coords()
    w = rng.uniform(0.0, 0.2, size=(len(coords), 2))
    w[_top_right(coords), 0] += 1.0
    w[_bottom_left(coords), 1] += 1.0
    return coords, w / w.sum(0, keepdims=True)  # probabilities over patches, like the attention files


def _hot_pixels_in_top_right(values: np.ndarray) -> bool:
    """True when the hottest quarter of the painted pixels is exactly the top-right quadrant of the canvas."""
    h, w = values.shape
    hot = np.nan_to_num(values, nan=-1.0) >= 0.75
    quadrant = np.zeros_like(hot)
    quadrant[: h // 2, w // 2:] = True
    inside = hot[quadrant].mean()  # share of the quadrant that is hot
    outside = hot[~quadrant].mean()  # share of the rest that is hot
    return bool(inside > 0.95 and outside < 0.02)


def test_hot_region_lands_in_the_right_quadrant(slide, bag):
    coords, w = bag
    canvas = slide_canvas(slide, "synthetic-slide", coords, {"patch_size_level0": PATCH}, thumb_size=256)
    assert canvas.thumbnail.shape == (192, 256, 3)  # 1024 x 768 -> 256 x 192 (width, height kept apart)
    assert canvas.note is None
    style = HeatmapStyle(scale="rank", cmap="coolwarm", alpha=0.6)
    rgb, values = canvas.paint(w[:, 0], coords, style)
    assert _hot_pixels_in_top_right(values)
    # the colours follow: coolwarm's red end in the hot quadrant, blue end elsewhere
    h, wd = values.shape
    red_minus_blue = rgb[..., 0].astype(int) - rgb[..., 2].astype(int)
    base = canvas.thumbnail[..., 0].astype(int) - canvas.thumbnail[..., 2].astype(int)
    shift = red_minus_blue - base
    assert shift[: h // 2, wd // 2:].mean() > 40 > shift[h // 2:, : wd // 2].mean()
    # the other family is hot elsewhere: not a map of the slide's colours
    _, values1 = canvas.paint(w[:, 1], coords, style)
    assert not _hot_pixels_in_top_right(values1)
    assert np.nanmean(values1[h // 2:, : wd // 2]) > 0.8
    # swapping x and y (the classic bug) must fail the placement check
    _, swapped = canvas.paint(w[:, 0], coords[:, ::-1].copy(), style)
    assert not _hot_pixels_in_top_right(swapped)


def test_smoothing_and_percentile_keep_the_hot_region(slide, bag):
    coords, w = bag
    canvas = slide_canvas(slide, "synthetic-slide", coords, {"patch_size_level0": PATCH}, thumb_size=256)
    _, values = canvas.paint(w[:, 0], coords, HeatmapStyle(scale="percentile", smooth=0.3))
    h, wd = values.shape
    assert np.nanmean(values[: h // 2, wd // 2:]) > 0.7 > 0.3 > np.nanmean(values[h // 2:, : wd // 2])
    assert np.isfinite(values).all()  # the grid covers the whole slide


def test_paint_scores_geometry_and_overlap_mean():
    # slide 100 x 50, canvas 20 x 10 (5 level-0 px per canvas px); patches of side 20 level-0 px
    coords = np.array([[0, 0], [80, 30], [10, 0]])
    values, cov = paint_scores(np.array([1.0, 2.0, 3.0]), coords, 20, (100, 50), (10, 20))
    assert values.shape == (10, 20)
    assert values[0, 0] == 1.0 and values[0, 1] == 1.0  # patch 0 only: columns 0-1
    assert values[0, 2] == 2.0 and cov[0, 2] == 2  # patches 0 and 2 overlap: mean of 1 and 3
    assert values[0, 4] == 3.0 and np.isnan(values[0, 6])
    assert values[6, 16] == 2.0 and values[9, 19] == 2.0  # patch 1: x 80-100 -> cols 16-19, y 30-50 -> rows 6-9
    assert np.isnan(values[5, 16]) and np.isnan(values[6, 15])
    assert int(cov.sum()) == 3 * 16  # every patch painted as 4 x 4 canvas px


def test_smoothing_stays_inside_the_tissue():
    v = np.full((20, 20), np.nan)
    v[5:15, 5:15] = 1.0
    s = smooth_canvas(v, 2.0)
    assert np.isnan(s[0, 0]) and np.allclose(s[5:15, 5:15], 1.0)  # normalised convolution: no edge darkening


def test_scales():
    s = np.array([5.0, 1.0, 3.0, 3.0, 100.0])
    assert np.allclose(scale_scores(s, "rank"), [0.75, 0.0, 0.375, 0.375, 1.0])
    p = scale_scores(np.arange(101.0), "percentile")
    assert p[0] == 0.0 and p[-1] == 1.0 and np.isclose(p[50], 0.5)
    assert np.array_equal(scale_scores(s, "none"), s)
    with pytest.raises(ValueError, match="scale"):
        scale_scores(s, "zscore")
    with pytest.raises(ValueError, match="colormap"):
        HeatmapStyle(cmap="no-such-map")


def test_patch_size_from_attrs_and_grid():
    assert patch_size_level0({"patch_size_level0": 512}) == 512
    assert patch_size_level0({"patch_size": 256, "patch_level": 1, "downsample": [4.0, 4.0]}) == 1024  # CLAM
    assert patch_size_level0({}) is None
    assert infer_patch_size(_grid_coords()) == PATCH


def test_top_k_tiles_come_from_the_hot_region(slide, bag):
    coords, w = bag
    top = top_k_indices(w[:, 0], 6)
    assert _top_right(coords[top]).all()
    tiles = read_tiles(slide, coords[top], PATCH, tile_px=32)
    assert tiles.shape == (6, 32, 32, 3)
    mean = tiles.reshape(-1, 3).mean(0)
    assert mean[2] > 180 and mean[0] < 100  # blue quadrant, not pink
    pink = read_tiles(slide, coords[top_k_indices(w[:, 1], 3)], PATCH, tile_px=32).reshape(-1, 3).mean(0)
    assert pink[0] > 200


def _write_inputs(root: Path, slide: Path, bag) -> tuple[Path, Path, Path]:
    coords, w = bag
    feats_dir = root / "features"
    feats_dir.mkdir(parents=True)
    rng = np.random.default_rng(1)
    with h5py.File(feats_dir / "synthetic-slide.h5", "w") as f:
        f.create_dataset("features", data=rng.normal(size=(len(coords), 8)).astype(np.float32))
        d = f.create_dataset("coords", data=coords)
        d.attrs["patch_size_level0"] = PATCH
        d.attrs["level0_width"], d.attrs["level0_height"] = W0, H0
    manifest = root / "manifest.csv"
    pd.DataFrame({"case_id": ["P1", "P2"], "slide_id": ["synthetic-slide", "missing-slide"],
                  "slide_path": [str(slide), "slides/missing-slide.tif"]}).to_csv(manifest, index=False)
    att_dir = root / "attention"
    att = np.stack([w, w[:, ::-1]])  # 2 blocks: block 0 as the bag, block 1 swapped families
    write_attention_h5(att_dir / "P1.h5", AttentionMaps("P1", att, coords, np.zeros(len(coords), np.int64),
                                                         ["synthetic-slide"], FAMILIES))
    write_attention_h5(att_dir / "P2.h5", AttentionMaps("P2", att[:, :20], coords[:20], np.zeros(20, np.int64),
                                                         ["missing-slide"], FAMILIES))
    return manifest, feats_dir, att_dir


def test_attention_file_roundtrip_and_blocks(tmp_path, bag):
    coords, w = bag
    p = write_attention_h5(tmp_path / "C.h5", AttentionMaps("C", np.stack([w, 3 * w]), coords,
                                                             np.zeros(len(coords), np.int64), ["s"], FAMILIES))
    m = read_attention_h5(p)
    assert m.case_id == "C" and m.families == FAMILIES and m.slide_ids == ["s"]
    assert np.allclose(m.combined("mean"), 2 * w, atol=1e-6) and np.allclose(m.combined("last"), 3 * w, atol=1e-6)
    assert np.allclose(m.combined(0), w, atol=1e-6)
    with pytest.raises(ValueError, match="out of range"):
        m.combined(5)


def _cli(argv: list[str]) -> int:
    """Run ``pathgen heatmap`` through its own parser (the full CLI imports every subcommand)."""
    import argparse

    from pathgen.cli import COMMANDS
    from pathgen.pipelines import heatmap

    assert COMMANDS["heatmap"][0] == "pathgen.pipelines.heatmap"
    parser = argparse.ArgumentParser()
    heatmap.add_arguments(parser)
    return heatmap.main(parser.parse_args(argv))


def test_cli_writes_maps_grid_montage_distributed_and_index(tmp_path, slide, bag):
    from pathgen.data.survival import SurvivalBins
    from pathgen.models.predictor.checkpoint import save_predictor

    manifest, feats_dir, att_dir = _write_inputs(tmp_path, slide, bag)
    model, cfg = _tiny_predictor()
    ckpt = tmp_path / "predictor.pt"
    save_predictor(ckpt, model_state=model.state_dict(), config=cfg, families=None, transform=None,
                   bins=SurvivalBins((0.0, 10.0, 20.0, 30.0, 40.0)), grade_categories=["G1", "G2", "G3"])
    out = tmp_path / "heatmaps"
    rc = _cli(["--attention", str(att_dir), "--manifest", str(manifest), "--features", str(feats_dir),
               "--out", str(out), "--thumb-size", "256", "--top-k", "4", "--block", "0", "--smooth", "0.2",
               "--predictor", str(ckpt)])
    assert rc == 0
    index = json.loads((out / "index.json").read_text())
    p1 = index["cases"]["P1"]["slides"]["synthetic-slide"]["generator"]
    assert set(p1["families"]) == set(FAMILIES)
    from PIL import Image

    def red_minus_blue(family: str) -> np.ndarray:
        img = Image.open(out / p1["families"][family])
        assert img.size == (256, 192)  # thumbnail pixels, geo-aligned with the slide
        arr = np.asarray(img.convert("RGB")).astype(int)
        return arr[..., 0] - arr[..., 2]

    # block 0 (as the bag): family 0 redder than family 1 top-right, bluer bottom-left (the slide cancels out)
    diff = red_minus_blue(FAMILIES[0]) - red_minus_blue(FAMILIES[1])
    assert diff[:96, 128:].mean() > 60 and diff[96:, :128].mean() < -60
    assert (out / p1["grid"]).stat().st_size > 10_000 and (out / p1["topk"]).is_file()
    # distributed risk / grade maps and the per-patch table from the predictor
    entry = index["cases"]["P1"]
    pm = entry["slides"]["synthetic-slide"]["predictor"]
    assert (out / pm["risk"]).is_file() and (out / pm["grade"]).is_file() and (out / pm["grid"]).is_file()
    table = pd.read_csv(out / entry["distributed_csv"])
    assert len(table) == len(bag[0]) and {"x", "y", "risk", "grade", "prob_G1"} <= set(table.columns)
    # P2's slide file is missing: painted on a blank canvas of the level-0 size from the h5, noted, no montage;
    # it has no feature file, so no predictor maps either (noted)
    p2 = index["cases"]["P2"]
    s2 = p2["slides"]["missing-slide"]
    assert "not found" in s2["note"] and "topk" not in s2["generator"] and "predictor" not in s2
    assert any("no feature file" in n for n in p2["notes"])
    # a re-run skips the complete patients; a changed input redraws only its patient; a corrupt one is
    # recorded as failed (exit 2) while the rest stay
    args = ["--attention", str(att_dir), "--manifest", str(manifest), "--features", str(feats_dir), "--out", str(out),
            "--thumb-size", "256", "--top-k", "4", "--block", "0", "--smooth", "0.2", "--predictor", str(ckpt)]
    grid = out / p1["grid"]
    before = grid.stat().st_mtime_ns
    assert _cli(args) == 0
    again = json.loads((out / "index.json").read_text())
    assert again["skipped_done"] == 2 and again["cases"] == index["cases"] and grid.stat().st_mtime_ns == before
    (att_dir / "P2.h5").write_bytes(b"not an hdf5 file")
    assert _cli(args) == 2
    third = json.loads((out / "index.json").read_text())
    assert list(third["failed"]) == ["P2"] and "P2.h5" in third["failed"]["P2"]
    assert "--save-attention" in third["failed"]["P2"]
    assert third["skipped_done"] == 1 and "P1" in third["cases"]
    assert _cli([*args, "--overwrite", "--cases", "P1"]) == 0
    assert grid.stat().st_mtime_ns > before


def _tiny_predictor(kind: str = "slide"):
    from pathgen.models.predictor import PredictorConfig, build_predictor

    fam = dict(family_names=("A", "B"), family_sizes=(2, 3)) if kind == "multimodal" else {}
    cfg = PredictorConfig(kind=kind, feature_dim=8, width=16, n_bins=4, n_grades=3, dropout=0.0, **fam)
    torch.manual_seed(0)
    return build_predictor(cfg).eval(), cfg


@pytest.mark.parametrize("kind", ["slide", "multimodal"])
def test_distributed_predictions_run_each_patch_alone(kind):
    from pathgen.report.distributed import distributed_predictions, predictor_attention, slide_summary

    model, cfg = _tiny_predictor(kind)
    feats = torch.randn(10, 8)
    expr = torch.randn(5) if kind == "multimodal" else None
    pred = distributed_predictions(model, cfg, feats, expr, chunk=4)  # chunking must not change anything
    for i in (0, 5, 9):  # the model on a one-patch bag, by hand
        kw = {"expression": expr[None]} if expr is not None else {}
        with torch.no_grad():
            out = model(features=feats[i:i + 1], cu_seqlens=torch.tensor([0, 1], dtype=torch.int32), max_seqlen=1,
                        **kw)
        assert np.isclose(pred["risk"][i], float(out.risk[0]), atol=1e-5)
        assert np.allclose(pred["grade_probs"][i], out.grade_probs[0].numpy(), atol=1e-5)
    assert np.ptp(pred["risk"]) > 0  # different patches, different risks
    assert np.allclose(pred["expected_grade"], pred["grade_probs"] @ np.arange(3))
    s = slide_summary(pred)
    assert np.isclose(s["risk"], pred["risk"].mean()) and s["grade"] == int(np.rint(pred["grade"].mean()))
    att = predictor_attention(model, cfg, feats, expr)
    assert att.shape == ((10, 1) if kind == "slide" else (10, 2))
    assert np.allclose(att.sum(0), 1.0, atol=1e-5)  # probabilities over the bag's patches


class _CoattnModel(torch.nn.Module):
    """A transparent stand-in with the multimodal predictor's interface: per bag, every survival
    logit is sum(features) + sum(expression); co-attention = softmax of the first F feature columns."""

    def __init__(self, n_fam: int = 2):
        super().__init__()
        self.n_fam = n_fam
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, *, expression, features, cu_seqlens, max_seqlen):
        from pathgen.models.predictor import PredictorOutput

        B = cu_seqlens.numel() - 1
        seg = torch.repeat_interleave(torch.arange(B), torch.diff(cu_seqlens.long()))
        logit = torch.zeros(B).index_add(0, seg, features.sum(1)) + expression.sum(1)
        e = torch.exp(features[:, : self.n_fam])
        coattn = e / torch.zeros(B, self.n_fam).index_add(0, seg, e)[seg]
        return PredictorOutput(logit[:, None].repeat(1, 4) * 0.1, None, {"coattn": coattn[:, None, :]})


def test_distributed_and_coattention_with_expression():
    from pathgen.models.losses import risk_from_hazards
    from pathgen.models.predictor import PredictorConfig
    from pathgen.report.distributed import distributed_predictions, predictor_attention

    cfg = PredictorConfig(kind="multimodal", family_names=("A", "B"), family_sizes=(2, 3), feature_dim=4)
    model = _CoattnModel()
    feats, expr = torch.randn(7, 4), torch.randn(5)
    pred = distributed_predictions(model, cfg, feats, expr, chunk=3)
    expect = risk_from_hazards(torch.sigmoid((feats.sum(1) + expr.sum())[:, None].repeat(1, 4) * 0.1))
    assert np.allclose(pred["risk"], expect.numpy(), atol=1e-6)  # each patch alone, with the patient's expression
    assert "grade_probs" not in pred
    att = predictor_attention(model, cfg, feats, expr)
    assert att.shape == (7, 2) and np.allclose(att.sum(0), 1.0, atol=1e-6)  # one bag: columns sum to 1 over patches
    with pytest.raises(ValueError, match="expression"):
        distributed_predictions(model, cfg, feats, None)


def test_cli_corrupt_slide_fails_its_patient_only_and_temp_files_are_ignored(tmp_path, slide, bag):
    """A slide file that cannot be opened fails that patient (exit 2, named in index.json) while the
    others are drawn; an interrupted writer's temp file in the attention folder is not a patient."""
    manifest, feats_dir, att_dir = _write_inputs(tmp_path, slide, bag)
    bad = tmp_path / "slides" / "missing-slide.tif"
    bad.parent.mkdir()
    bad.write_bytes(slide.read_bytes()[:4096])  # a truncated copy: the header survives, the image does not
    pd.DataFrame({"case_id": ["P1", "P2"], "slide_id": ["synthetic-slide", "missing-slide"],
                  "slide_path": [str(slide), str(bad)]}).to_csv(manifest, index=False)
    (att_dir / ".P3.h5.abc123.tmp.h5").write_bytes(b"half written")
    out = tmp_path / "heatmaps"
    rc = _cli(["--attention", str(att_dir), "--manifest", str(manifest), "--out", str(out), "--thumb-size", "128",
               "--top-k", "0", "--block", "0"])
    index = json.loads((out / "index.json").read_text())
    assert rc == 2 and list(index["failed"]) == ["P2"] and "missing-slide.tif" in index["failed"]["P2"]
    assert "P1" in index["cases"] and not any(".tmp" in c for c in [*index["cases"], *index["failed"]])
