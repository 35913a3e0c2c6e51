"""Tissue segmentation, patch grids by physical resolution, and the prefetching patch loader."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pathgen.slides import MissingMPPError, open_slide
from pathgen.slides.grid import grid_coords, plan_patches, read_mpp_csv, tissue_coords
from pathgen.slides.loader import PatchLoader, resize_patches
from pathgen.slides.tissue import (TissueParams, otsu_threshold, save_overlay, segment_image, segment_tissue)
from tests.slides.synthetic import BACKGROUND, STROMA, he_image


# ---------------------------------------------------------------- tissue
@pytest.fixture(scope="module")
def cmu_tissue(cmu_svs):
    with open_slide(cmu_svs) as r:
        return segment_tissue(r), r.dimensions


def test_real_svs_has_tissue(cmu_tissue, tmp_path):
    tissue, (w0, h0) = cmu_tissue
    # the CMU-1 crop: a strip of skin across the middle, glass on both sides
    assert 0.15 < tissue.tissue_fraction < 0.7
    assert len(tissue.contours) >= 1
    big = max(tissue.contours, key=len)
    assert big[:, 0].min() >= 0 and big[:, 0].max() <= w0 and big[:, 1].max() <= h0
    assert tissue.mask[:, :40].mean() < 0.05  # left margin is glass
    png = tmp_path / "overlay.png"
    save_overlay(png, tissue, np.array([[1000, 1000]]), 256)
    from PIL import Image

    with Image.open(png) as im:
        assert im.format == "PNG" and max(im.size) <= 2048
    assert not list(tmp_path.glob(".*tmp*"))


def test_blank_image_has_no_tissue():
    blank = he_image(600, 800, tissue="none", noise=6.0)
    t = segment_image(blank, (4.0, 4.0), 0.5)
    assert not t.mask.any() and t.contours == []


def test_blank_generated_slide_has_no_tissue(blank_tif):
    with open_slide(blank_tif) as r:
        assert segment_tissue(r).tissue_fraction == 0


def test_segmentation_geometry_holes_and_specks():
    """A disc of tissue with a big hole (kept), a small hole (filled) and a speck (dropped)."""
    img = np.empty((400, 400, 3), np.uint8)
    img[:] = BACKGROUND
    yy, xx = np.mgrid[0:400, 0:400]
    disc = (yy - 200) ** 2 + (xx - 200) ** 2 <= 150 ** 2
    big_hole = (yy - 200) ** 2 + (xx - 200) ** 2 <= 40 ** 2
    small_hole = (yy - 120) ** 2 + (xx - 200) ** 2 <= 4 ** 2
    speck = (yy - 20) ** 2 + (xx - 20) ** 2 <= 3 ** 2
    truth = disc & ~big_hole
    img[disc | speck] = STROMA
    img[big_hole | small_hole] = BACKGROUND
    # 1 px = 8 level-0 px at 0.5 µm: areas in mm² are (4e-3)² per px; big hole 0.08, small hole 0.0008, speck 0.0005
    t = segment_image(img, (8.0, 8.0), 0.5, TissueParams(median_size=1, close_size=0))
    iou = (t.mask & truth).sum() / (t.mask | truth).sum()
    assert iou > 0.97
    assert t.mask[120, 200]  # small hole filled
    assert not t.mask[200, 200]  # big hole kept open
    assert not t.mask[20, 20]  # speck dropped
    assert len(t.contours) == 1 and len(t.holes) == 1
    # contours are level-0 coordinates: the disc's outline has radius ~150 px * 8
    r = np.hypot(t.contours[0][:, 0] - 200 * 8 - 4, t.contours[0][:, 1] - 200 * 8 - 4)
    assert np.allclose(r, 150 * 8, rtol=0.03)


def test_otsu_threshold_splits_two_modes():
    rng = np.random.default_rng(0)
    v = np.concatenate([rng.normal(20, 3, 5000), rng.normal(120, 10, 3000)]).clip(0, 255).astype(np.uint8)
    thr = otsu_threshold(v)
    assert 25 < thr < 90  # any threshold in the empty gap separates the modes equally well
    assert (v[v <= thr] < 40).all() and (v[v > thr] > 60).all()


def test_tissue_fractions_of_boxes():
    img = np.empty((100, 100, 3), np.uint8)
    img[:] = BACKGROUND
    img[:, :50] = STROMA
    t = segment_image(img, (10.0, 10.0), 0.5, TissueParams(median_size=1, close_size=0, min_tissue_mm2=0))
    # tissue is level-0 x < 500; mask pixels (10 level-0 px each) count by their centres
    f = t.fractions(np.array([[0, 0], [600, 0], [250, 0], [450, 0], [495, 0]]), 100)
    np.testing.assert_allclose(f, [1.0, 0.0, 1.0, 0.5, 0.1], atol=0.01)


# ---------------------------------------------------------------- grid
def test_level_choice_40x_with_4x_level():
    ds = (1.0, 4.0, 16.0)  # 40x slide at 0.25 µm/px with 10x and 2.5x levels
    p = plan_patches(ds, 0.25, target_mpp=1.0, patch_size=256)
    assert (p.level, p.read_size, p.resize, p.patch_size_level0) == (1, 256, False, 1024)
    p = plan_patches(ds, 0.25, target_mpp=0.5, patch_size=256)
    assert (p.level, p.read_size, p.resize, p.patch_size_level0) == (0, 512, True, 512)
    p = plan_patches(ds, 0.25, target_mpp=2.0, patch_size=224)
    assert (p.level, p.read_size, p.patch_size_level0) == (1, 448, 1792)
    p = plan_patches(ds, 0.25, target_mpp=0.25, patch_size=224, overlap=32)
    assert (p.level, p.read_size, p.step_level0) == (0, 224, 192)


def test_level_choice_tolerates_aperio_downsamples_and_rounding():
    p = plan_patches((1.0, 4.0002, 16.0011), 0.25, target_mpp=1.0)
    assert (p.level, p.read_size, p.resize) == (1, 256, False)
    p = plan_patches((1.0,), 0.499, target_mpp=0.5)  # CMU-1: 0.499 vs 0.5 is not worth a resize
    assert (p.level, p.read_size, p.resize) == (0, 256, False)
    assert p.effective_mpp == pytest.approx(0.499)
    p = plan_patches((1.0,), 0.46, target_mpp=0.5)  # 8.7 % off: resize
    assert p.read_size == 278 and p.resize


def test_missing_mpp_is_a_clear_error():
    with pytest.raises(MissingMPPError) as ei:
        plan_patches((1.0, 2.0), None, path="slides/x.svs")
    msg = str(ei.value)
    assert msg.startswith("slides/x.svs:") and "--mpp" in msg and "--mpp-csv" in msg and "\n" not in msg


def test_grid_coords_are_whole_patches():
    p = plan_patches((1.0,), 0.5, target_mpp=0.5, patch_size=256)
    c = grid_coords((1000, 600), p)
    assert c.dtype == np.int64 and c.shape == (3 * 2, 2)
    assert (c[:, 0] + 256 <= 1000).all() and (c[:, 1] + 256 <= 600).all()
    assert set(map(tuple, c.tolist())) == {(x, y) for x in (0, 256, 512) for y in (0, 256)}


def test_tissue_coords_keep_tissue_patches(cmu_tissue):
    tissue, dims = cmu_tissue
    p = plan_patches((1.0,), 0.499, 0.5, 256)
    coords, frac = tissue_coords(dims, p, tissue, 0.5)
    assert 5 < len(coords) < len(grid_coords(dims, p))
    assert (frac >= 0.5).all()
    all_coords, _ = tissue_coords(dims, p, tissue, 0.0)
    assert len(all_coords) >= len(coords)


def test_read_mpp_csv(tmp_path):
    p = tmp_path / "mpp.csv"
    p.write_text("slide_id,mpp\na.svs,0.25\nTCGA-XX-DX1.AB12-CD,0.5\n")
    t = read_mpp_csv(p)
    assert t["a"] == 0.25 and t["a.svs"] == 0.25 and t["TCGA-XX-DX1.AB12-CD"] == 0.5
    (tmp_path / "bad.csv").write_text("name,res\na,1\n")
    with pytest.raises(ValueError, match="slide_id,mpp"):
        read_mpp_csv(tmp_path / "bad.csv")
    for bad in ("-1", "inf", "nan"):
        (tmp_path / "neg.csv").write_text(f"wsi,mpp\na,{bad}\n")
        with pytest.raises(ValueError, match="finite positive"):
            read_mpp_csv(tmp_path / "neg.csv")


# ---------------------------------------------------------------- loader
@pytest.mark.parametrize("num_workers", [0, 2])
def test_loader_yields_every_patch_in_order(pyramid_tif, num_workers):
    with open_slide(pyramid_tif) as r:
        plan = plan_patches(r.level_downsamples, r.mpp, target_mpp=0.5, patch_size=64)
        coords = grid_coords(r.dimensions, plan)[::7][:23]
        loader = PatchLoader.from_plan(r, coords, plan, batch_size=5, num_workers=num_workers)
        assert len(loader) == 5
        got_c, got_x = zip(*loader)
        c = torch.cat(got_c).numpy()
        x = torch.cat(got_x)
        np.testing.assert_array_equal(c, coords)
        assert x.shape == (23, 3, 64, 64) and x.dtype == torch.uint8
        # each patch = the region read at the plan's level, resized 128 -> 64
        for i in (0, 11, 22):
            region = torch.from_numpy(r.read_region(coords[i], plan.level, (plan.read_size,) * 2)).permute(2, 0, 1)
            assert plan.read_size == 128
            torch.testing.assert_close(x[i], resize_patches(region[None], 64)[0])


def test_loader_float_output_and_errors(pyramid_tif):
    with open_slide(pyramid_tif) as r:
        coords = np.array([[0, 0], [256, 256]])
        (_, x), = list(PatchLoader(r, coords, 0, 32, 32, batch_size=8, dtype=torch.float32))
        assert x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
        with pytest.raises(ValueError, match="out of range"):
            list(PatchLoader(r, coords, 9, 32, 32, num_workers=2))


def test_resize_patches_downscales_smoothly():
    x = torch.zeros(1, 3, 64, 64, dtype=torch.uint8)
    x[..., ::2] = 200  # 1-px stripes: an antialiased 4x downscale averages them out
    y = resize_patches(x, 16)
    assert y.shape == (1, 3, 16, 16) and y.dtype == torch.uint8
    assert (y[..., 2:-2] - 100).abs().max() <= 2
    assert resize_patches(x, 64) is x
