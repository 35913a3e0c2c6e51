"""HDF5 bags: read unchanged by CLAM-style loaders, carry CLAM + TRIDENT attrs, written atomically."""
from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch

from pathgen.features.h5io import (check_coords_fit_slide, coords_attrs, geometry_from_attrs, h5_is_readable,
                                   read_coords_h5, read_features_h5, write_features_h5, write_patches_h5)
from pathgen.slides.errors import SlideError
from pathgen.slides.grid import plan_patches

CLAM_ATTRS = ("patch_size", "patch_level", "downsample", "level_dim", "downsampled_level_dim", "name")
TRIDENT_ATTRS = ("patch_size", "patch_size_level0", "level0_magnification", "target_magnification", "overlap",
                 "level0_width", "level0_height", "name")


def _info():  # a 40x slide, 8000x6000, levels 1/4/16
    return {"dimensions": [8000, 6000], "level_dimensions": [[8000, 6000], [2000, 1500], [500, 375]],
            "objective_power": 40.0, "backend": "tifffile"}


def test_coords_attrs_union_of_clam_and_trident():
    plan = plan_patches((1.0, 4.0, 16.0), 0.25, target_mpp=0.5, patch_size=256)
    a = coords_attrs("slide-1", _info(), plan)
    assert set(CLAM_ATTRS) <= set(a) and set(TRIDENT_ATTRS) <= set(a)
    assert a["patch_level"] == 0 and a["patch_size"] == 512  # CLAM: side read at patch_level
    assert a["target_patch_size"] == 256 and a["patch_size_level0"] == 512
    # no 20x level: read at level 0 (40x) and resize; TRIDENT's magnification is the read level's,
    # so its patch_size * level0_magnification / target_magnification is the region we embedded
    assert a["level0_magnification"] == 40 and a["target_magnification"] == 40 and a["embed_magnification"] == 20
    assert _trident_region(a) == 512
    assert list(a["level_dim"]) == [8000, 6000] and list(a["downsample"]) == [1.0, 1.0]
    plan = plan_patches((1.0, 4.0, 16.0), 0.25, target_mpp=1.0, patch_size=256)
    a = coords_attrs("slide-1", _info(), plan)
    assert (a["patch_level"], a["patch_size"], a["patch_size_level0"]) == (1, 256, 1024)
    assert list(a["downsample"]) == [4.0, 4.0] and list(a["level_dim"]) == [2000, 1500]
    assert a["target_magnification"] == 10 == a["embed_magnification"] and _trident_region(a) == 1024


def _trident_region(a):
    """The level-0 side TRIDENT reads for a coords file (WSI.visualize_coords / extract_patch_features)."""
    return round(float(a["patch_size"]) * float(a["level0_magnification"]) / float(a["target_magnification"]))


def _clam_region(a):
    """The level-0 side CLAM's Whole_Slide_Bag_FP reads: patch_size pixels at patch_level."""
    return round(float(a["patch_size"]) * float(a["downsample"][0]))


@pytest.mark.parametrize("target_mpp,patch_size", [(0.5, 256), (1.0, 256), (0.5, 224), (2.0, 256), (0.3, 256)])
def test_clam_and_trident_read_the_region_we_embedded(target_mpp, patch_size):
    plan = plan_patches((1.0, 4.0, 16.0), 0.25, target_mpp=target_mpp, patch_size=patch_size)
    a = coords_attrs("slide-1", _info(), plan)
    assert _trident_region(a) == _clam_region(a) == a["patch_size_level0"]


def test_trident_coords_are_read_from_the_coarsest_sufficient_level():
    info = {**_info(), "level_downsamples": [1.0, 4.0, 16.0]}
    # TRIDENT 10x / 256 px on a 40x slide: 1024 level-0 px; level 1 (4x) gives 256 px, no need to decode level 0
    t = {"patch_size": 256, "patch_size_level0": 1024, "level0_magnification": 40.0, "target_magnification": 10.0}
    level, read, out, a = geometry_from_attrs(t, info, "slide-1")
    assert (level, read, out) == (1, 256, 256)
    assert _trident_region(a) == _clam_region(a) == 1024
    # 20x / 256: no 2x level, so level 0 and a resize; re-exported attributes still give 512 to both tools
    t = {"patch_size": 256, "patch_size_level0": 512, "level0_magnification": 40.0, "target_magnification": 20.0}
    level, read, out, a = geometry_from_attrs(t, info, "slide-1")
    assert (level, read, out) == (0, 512, 256)
    assert _trident_region(a) == _clam_region(a) == 512 and a["embed_magnification"] == 20


def test_features_h5_reads_the_clam_way(tmp_path):
    plan = plan_patches((1.0, 4.0, 16.0), 0.25, target_mpp=0.5, patch_size=256)
    coords = np.array([[0, 0], [512, 0], [1024, 512]], dtype=np.int64)
    feats = np.random.default_rng(0).normal(size=(3, 42)).astype(np.float32)
    p = tmp_path / "features" / "slide-1.h5"
    write_features_h5(p, feats, coords, coords_attrs("slide-1", _info(), plan), {"encoder": "stain-stats", "x": 1})
    # exactly how CLAM / MCAT-style loaders read a bag
    with h5py.File(p, "r") as f:
        features = torch.from_numpy(f["features"][:])
        coords_read = f["coords"][:]
        attrs = dict(f["coords"].attrs)
        fattrs = dict(f["features"].attrs)
    assert features.dtype == torch.float32 and features.shape == (3, 42)
    np.testing.assert_array_equal(features.numpy(), feats)
    assert coords_read.dtype == np.int64 and coords_read.shape == (3, 2)
    np.testing.assert_array_equal(coords_read, coords)
    assert set(CLAM_ATTRS) <= set(attrs) and set(TRIDENT_ATTRS) <= set(attrs)
    assert fattrs["encoder"] == "stain-stats" and json.loads(fattrs["config"])["x"] == 1
    f2, c2, a2 = read_features_h5(p)
    np.testing.assert_array_equal(f2, feats)
    assert a2["config"]["encoder"] == "stain-stats" and a2["config"]["pathgen_version"]
    assert h5_is_readable(p, ("features", "coords"))
    assert not list(p.parent.glob(".*"))  # no temp file left


def test_patches_h5_layout_and_failed_write_leaves_nothing(tmp_path):
    plan = plan_patches((1.0,), 0.5, target_mpp=0.5, patch_size=256)
    a = coords_attrs("s", {"dimensions": [1000, 800], "level_dimensions": [[1000, 800]], "backend": "x"}, plan)
    p = tmp_path / "patches" / "s.h5"
    write_patches_h5(p, np.array([[0, 0], [256, 0]]), a, np.array([0.9, 0.5]))
    coords, attrs = read_coords_h5(p)
    assert coords.tolist() == [[0, 0], [256, 0]] and attrs["patch_level"] == 0 and attrs["name"] == "s"
    assert attrs["level0_magnification"] == 20  # no objective power: from the MPP
    bad = tmp_path / "features" / "t.h5"
    with pytest.raises(ValueError, match="do not match"):
        write_features_h5(bad, np.zeros((3, 4)), np.zeros((2, 2)), a, {"encoder": "e"})
    assert not bad.exists() and not list(bad.parent.glob("*"))
    assert not h5_is_readable(bad, ("features",))
    (tmp_path / "junk.h5").write_bytes(b"\x89HDF\r\n" + b"\0" * 20)  # a cut-off file is not "done"
    assert not h5_is_readable(tmp_path / "junk.h5", ("features",))


def test_coords_must_be_n_by_2_finite_whole_numbers(tmp_path):
    def write(name, data):
        p = tmp_path / name
        with h5py.File(p, "w") as f:
            f.create_dataset("coords", data=data).attrs["patch_level"] = 0
        return p

    coords, _ = read_coords_h5(write("int32.h5", np.array([[0, 0], [256, 512]], dtype=np.int32)))
    assert coords.dtype == np.int64 and coords.tolist() == [[0, 0], [256, 512]]
    coords, _ = read_coords_h5(write("whole.h5", np.array([[0.0, 256.0]])))  # whole floats are fine
    assert coords.tolist() == [[0, 256]]
    for name, data, words in (("nan.h5", np.array([[0.0, 0.0], [np.nan, 1.0]]), "row 1 is [nan, 1.0]"),
                              ("inf.h5", np.array([[np.inf, 0.0]]), "finite whole pixel"),
                              ("half.h5", np.array([[10.5, 3.0]]), "finite whole pixel"),
                              ("flat.h5", np.arange(6), "got shape [6]"),
                              ("three.h5", np.zeros((4, 3), dtype=np.int64), "got shape [4, 3]")):
        p = write(name, data)
        with pytest.raises(SlideError, match="fix:") as ei:
            read_coords_h5(p)
        assert str(p) in str(ei.value) and words in str(ei.value), name


def test_coords_are_checked_against_the_slide_read():
    info = {**_info(), "level_downsamples": [1.0, 4.0, 16.0]}
    ok = np.array([[0, 0], [7999, 5999]], dtype=np.int64)
    check_coords_fit_slide(ok, {"name": "slide-1", "patch_level": 1, "level_dim": [2000, 1500]}, info, "slide-1",
                           "c.h5")
    for coords in ([[-1, 0]], [[0, 6000]], [[8000, 0]]):
        with pytest.raises(SlideError, match=r"c\.h5: 1 of 1 patch corners lie outside slide-1 \(8000x6000"):
            check_coords_fit_slide(np.array(coords), {}, info, "slide-1", "c.h5")
    with pytest.raises(SlideError, match="level-0 size is 4000x6000, but slide-1 is 8000x6000"):
        check_coords_fit_slide(ok[:1], {"name": "other", "level0_width": 4000, "level0_height": 6000}, info,
                               "slide-1", "c.h5")
    with pytest.raises(SlideError, match="level-1 size is 1000x750"):  # CLAM's record of another slide
        check_coords_fit_slide(ok[:1], {"patch_level": 1, "level_dim": [1000, 750]}, info, "slide-1", "c.h5")
    with pytest.warns(UserWarning, match="name attribute 'slide-2' is not 'slide-1'"):
        check_coords_fit_slide(ok, {"name": "slide-2"}, info, "slide-1", "c.h5")
    # the output attributes describe the slide read, not the coords file
    a = geometry_from_attrs({"patch_size_level0": 512, "patch_size": 256, "level0_width": 1, "level0_height": 2},
                            info, "slide-1")[3]
    assert (a["level0_width"], a["level0_height"], a["name"]) == (8000, 6000, "slide-1")


def test_a_write_that_fails_midway_leaves_no_file(tmp_path, monkeypatch):
    """The features dataset is written, then the coords write fails: no features file may remain
    (a half file would look done to a resumed run)."""
    from pathgen.features import h5io

    plan = plan_patches((1.0,), 0.5, target_mpp=0.5, patch_size=256)
    a = coords_attrs("s", {"dimensions": [1000, 800], "level_dimensions": [[1000, 800]], "backend": "x"}, plan)
    out = tmp_path / "features" / "s.h5"
    out.parent.mkdir()

    def boom(f, coords, attrs):
        assert "features" in f  # the features are already in the file being written
        raise OSError("disk full")

    monkeypatch.setattr(h5io, "_write_coords", boom)
    with pytest.raises(OSError, match="disk full"):
        write_features_h5(out, np.ones((2, 4)), np.zeros((2, 2), np.int64), a, {"encoder": "e"})
    assert not out.exists() and list(out.parent.iterdir()) == []
