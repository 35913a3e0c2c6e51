"""`pathgen patch` / `pathgen embed` end to end: real SVS + generated TIFFs -> CLAM-readable bags,
idempotent re-runs, bad inputs that fail one line at a time while the batch goes on, exit codes."""
from __future__ import annotations

import argparse
import csv
import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from pathgen.features import get_encoder
from pathgen.pipelines import embed as embed_cmd
from pathgen.pipelines import patch as patch_cmd
from pathgen.slides import available_backends, open_slide
from pathgen.slides.loader import resize_patches
from pathgen.slides.tiff_writer import write_pyramidal_tiff
from tests.slides.synthetic import he_image

pytestmark = pytest.mark.integration


def run(cmd: str, *argv) -> int:
    """Parse and run one subcommand the way ``pathgen`` does (exit 1 on argparse errors)."""
    mod = {"patch": patch_cmd, "embed": embed_cmd}[cmd]
    p = argparse.ArgumentParser(prog=f"pathgen {cmd}")
    mod.add_arguments(p)
    try:
        args = p.parse_args([str(a) for a in argv])
    except SystemExit as exc:
        return int(exc.code)
    return mod.main(args)


def summary(out: Path, stage: str) -> dict:
    return json.loads((out / f"summary_{stage}.json").read_text())


def temp_files(out: Path) -> list[Path]:
    return [p for p in out.rglob(".*") if p.is_file()]


@pytest.fixture(scope="module")
def good_dir(tmp_path_factory, cmu_svs):
    """A folder holding the real CMU-1 SVS (a symlink) and a generated 40x pyramidal TIFF."""
    d = tmp_path_factory.mktemp("good")
    (d / cmu_svs.name).symlink_to(cmu_svs)
    write_pyramidal_tiff(d / "gen-40x.tif", he_image(1536, 2048, seed=5, radius=8, nuclei_per_1e4px=3),
                         mpp=0.25, downsamples=(1, 4, 16))
    return d


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory):
    """Two small generated 20x slides (quick to patch and embed)."""
    d = tmp_path_factory.mktemp("small")
    for i in (1, 2):
        write_pyramidal_tiff(d / f"s{i}.tif", he_image(1024, 1024, seed=10 + i), mpp=0.5, downsamples=(1, 4))
    return d


@pytest.fixture(scope="module")
def embedded(good_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    rc_patch = run("patch", good_dir, "--out", out)
    rc_embed = run("embed", good_dir, "--out", out, "--encoder", "stain-stats", "--batch-size", "16", "--save-pt")
    return out, rc_patch, rc_embed


def test_patch_then_embed_writes_clam_readable_bags(embedded):
    out, rc_patch, rc_embed = embedded
    assert (rc_patch, rc_embed) == (0, 0)
    assert summary(out, "embed")["done"] == 2 and summary(out, "patch")["done"] == 2
    for sid in ("cmu-1-small-region", "gen-40x"):
        with h5py.File(out / "patches" / f"{sid}.h5", "r") as f:
            n = len(f["coords"])
        # the CLAM way
        with h5py.File(out / "features" / f"{sid}.h5", "r") as f:
            features = torch.from_numpy(f["features"][:])
            coords = f["coords"][:]
            attrs = dict(f["coords"].attrs)
        assert features.shape == (n, 46) and features.dtype == torch.float32 and n > 5
        assert coords.dtype == np.int64 and coords.shape == (n, 2)
        for k in ("patch_size", "patch_level", "downsample", "level_dim", "patch_size_level0",
                  "level0_magnification", "target_magnification", "overlap", "level0_width", "level0_height", "name"):
            assert k in attrs, k
        assert attrs["name"] == sid
        assert (out / "masks" / f"{sid}.png").is_file()
        pt = torch.load(out / "pt_files" / f"{sid}.pt")
        torch.testing.assert_close(pt, features)
    assert not temp_files(out)


def test_a_truncated_pt_file_is_redone(embedded, good_dir, tmp_path):
    """A .pt cut short outside pathgen (an interrupted copy, a full disk) must not count as done."""
    import shutil

    src, _, _ = embedded
    out = tmp_path / "copy"
    shutil.copytree(src, out)
    pt = out / "pt_files" / "gen-40x.pt"
    pt.write_bytes(pt.read_bytes()[: pt.stat().st_size // 2])
    assert run("embed", good_dir, "--out", out, "--encoder", "stain-stats", "--batch-size", "16", "--save-pt") == 0
    s = summary(out, "embed")
    assert s["slides"]["gen-40x"]["state"] == "done" and s["skipped"] == 1
    torch.load(pt)  # whole again


def test_generated_40x_slide_is_patched_at_20x(embedded):
    out, _, _ = embedded
    with h5py.File(out / "features" / "gen-40x.h5", "r") as f:
        a = dict(f["coords"].attrs)
        coords = f["coords"][:]
    assert (a["patch_level"], a["patch_size"], a["patch_size_level0"]) == (0, 512, 512)
    # no 20x level: TRIDENT's target_magnification is the read level's (40), so that its
    # patch_size * level0_magnification / target_magnification is the 512 level-0 pixels embedded
    assert (a["level0_magnification"], a["target_magnification"], a["embed_magnification"]) == (40, 40, 20)
    assert a["patch_size"] * a["level0_magnification"] / a["target_magnification"] == a["patch_size_level0"]
    assert (coords % 512 == 0).all()


def test_clam_style_reread_gives_the_same_features(embedded, good_dir):
    """Re-read patches as CLAM's Whole_Slide_Bag_FP does (OpenSlide, coords attrs) and re-embed them."""
    if "openslide" not in available_backends():
        pytest.skip("openslide not installed")
    out, _, _ = embedded
    enc = get_encoder("stain-stats")
    for sid, name in (("gen-40x", "gen-40x.tif"), ("cmu-1-small-region", "cmu-1-small-region.svs")):
        with h5py.File(out / "features" / f"{sid}.h5", "r") as f:
            feats, coords, a = f["features"][:], f["coords"][:], dict(f["coords"].attrs)
        level, size, target = int(a["patch_level"]), int(a["patch_size"]), int(a["target_patch_size"])
        with open_slide(good_dir / name, backend="openslide") as r:
            idx = [0, len(coords) // 2, len(coords) - 1]
            x = torch.stack([torch.from_numpy(r.read_region(coords[i], level, (size, size))).permute(2, 0, 1)
                             for i in idx])
        again = enc.encode(resize_patches(x, target))
        torch.testing.assert_close(again, torch.from_numpy(feats[idx]), atol=2e-3, rtol=1e-3)


def test_rerun_skips_finished_slides(embedded, good_dir):
    out, _, _ = embedded
    h5 = out / "features" / "gen-40x.h5"
    before = h5.stat().st_mtime_ns
    assert run("embed", good_dir, "--out", out, "--encoder", "stain-stats", "--batch-size", "16", "--save-pt") == 0
    s = summary(out, "embed")
    assert (s["done"], s["skipped"], s["failed"]) == (0, 2, 0)
    assert h5.stat().st_mtime_ns == before


def test_half_done_slide_is_redone(small_dir, tmp_path):
    out = tmp_path / "out"
    assert run("embed", small_dir, "--out", out, "--encoder", "stain-stats") == 0
    # simulate a crash in the middle of writing s1: status "running" and a temp file left behind
    st_path = out / "status" / "embed" / "s1.json"
    st = json.loads(st_path.read_text())
    st["state"] = "running"
    st_path.write_text(json.dumps(st))
    stale = out / "features" / ".s1.h5.abc123.tmp.h5"
    stale.write_bytes(b"half")
    # and a finished-looking features file whose content is cut off
    (out / "features" / "s2.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64)
    assert run("embed", small_dir, "--out", out, "--encoder", "stain-stats") == 0
    s = summary(out, "embed")
    assert (s["done"], s["skipped"]) == (2, 0)
    assert not stale.exists() and not temp_files(out)
    with h5py.File(out / "features" / "s2.h5", "r") as f:
        assert f["features"].shape[1] == 46
    # a changed option redoes the work
    assert run("embed", small_dir, "--out", out, "--encoder", "stain-stats", "--patch-size", "224") == 0
    assert summary(out, "embed")["done"] == 2
    with h5py.File(out / "features" / "s1.h5", "r") as f:
        assert f["coords"].attrs["target_patch_size"] == 224


@pytest.fixture(scope="module")
def bad_dir(tmp_path_factory, cmu_svs, kidney_tif):
    d = tmp_path_factory.mktemp("bad")
    data = cmu_svs.read_bytes()
    (d / "truncated.svs").write_bytes(data[: int(len(data) * 0.3)])
    (d / "notes.svs").write_text("not a slide\n" * 20)
    write_pyramidal_tiff(d / "blank.tif", he_image(1024, 1024, seed=4, tissue="none"), mpp=0.5, downsamples=(1, 4))
    write_pyramidal_tiff(d / "nompp.tif", he_image(1024, 1024, seed=3), mpp=None, downsamples=(1, 4), aperio=False)
    (d / kidney_tif.name).symlink_to(kidney_tif)  # untiled, no MPP
    write_pyramidal_tiff(d / "good.tif", he_image(1024, 1024, seed=6), mpp=0.5, downsamples=(1, 4))
    return d


def test_bad_inputs_fail_one_line_each_and_the_batch_goes_on(bad_dir, tmp_path):
    out = tmp_path / "out"
    assert run("embed", bad_dir, "--out", out, "--encoder", "stain-stats") == 2
    s = summary(out, "embed")
    assert s["done"] == 1 and s["failed"] == 5 and s["slides"]["good"]["state"] == "done"
    expect = {"truncated": "incomplete or damaged", "notes": "no slide backend could open it",
              "blank": "no tissue found", "nompp": "--mpp", "kidney-48-5": "--mpp"}
    for sid, words in expect.items():
        err = s["failed_slides"][sid]
        assert "\n" not in err and str(bad_dir) in err and "fix:" in err and words in err, (sid, err)
        assert not (out / "features" / f"{sid}.h5").exists() and not (out / "patches" / f"{sid}.h5").exists()
        assert json.loads((out / "status" / "embed" / f"{sid}.json").read_text())["state"] == "failed"
    assert (out / "features" / "good.h5").is_file()
    assert not temp_files(out)
    # the MPP fixes work: --mpp for slides without one (the untiled kidney TIFF is read by tifffile but is blank)
    assert run("patch", bad_dir / "nompp.tif", "--out", out, "--mpp", "0.5") == 0
    mpp_csv = tmp_path / "mpp.csv"
    mpp_csv.write_text("slide_id,mpp\nnompp.tif,0.4\n")
    assert run("patch", bad_dir / "nompp.tif", "--out", out, "--mpp-csv", mpp_csv) == 0
    with h5py.File(out / "patches" / "nompp.h5", "r") as f:
        assert f["coords"].attrs["mpp"] == 0.4 and f["coords"].attrs["patch_size"] == 320


def test_changing_mpp_redoes_only_the_slides_that_use_it(bad_dir, tmp_path):
    """--mpp is the fallback for slides without an MPP: changing it redoes those, not slides with their own."""
    slides = tmp_path / "slides"
    slides.mkdir()
    for name in ("good.tif", "nompp.tif"):
        (slides / name).symlink_to(bad_dir / name)
    out = tmp_path / "out"
    assert run("embed", slides, "--out", out, "--encoder", "stain-stats", "--mpp", "0.5") == 0
    assert run("embed", slides, "--out", out, "--encoder", "stain-stats", "--mpp", "0.5") == 0
    assert summary(out, "embed")["skipped"] == 2
    assert run("embed", slides, "--out", out, "--encoder", "stain-stats", "--mpp", "0.4") == 0
    s = summary(out, "embed")
    assert (s["done"], s["skipped"]) == (1, 1) and s["slides"]["nompp"]["state"] == "done"
    with h5py.File(out / "features" / "nompp.h5", "r") as f:
        assert f["coords"].attrs["mpp"] == 0.4


def test_unexpected_errors_stop_the_batch_unless_skip_errors(small_dir, tmp_path, monkeypatch):
    real = patch_cmd.patch_one

    def flaky(path, slide_id, *a, **k):  # fault injection: a bug, not a bad slide
        if slide_id == "s1":
            raise RuntimeError("boom")
        return real(path, slide_id, *a, **k)

    monkeypatch.setattr(patch_cmd, "patch_one", flaky)
    out = tmp_path / "out"
    assert run("patch", small_dir, "--out", out) == 2
    s = summary(out, "patch")
    assert s["failed"] == 1 and s["not_run"] == ["s2"] and "boom" in s["failed_slides"]["s1"]
    assert run("patch", small_dir, "--out", out, "--skip-errors") == 2
    s = summary(out, "patch")
    assert (s["done"], s["failed"], s["not_run"]) == (1, 1, [])


def test_manifest_csv_with_relative_paths(small_dir, tmp_path):
    man = small_dir.parent / "manifest.csv"
    with open(man, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["slide_path", "case_id"])
        w.writerow([os.path.relpath(small_dir / "s2.tif", man.parent), "c1"])
    out = tmp_path / "out"
    assert run("patch", man, "--out", out) == 0
    assert (out / "patches" / "s2.h5").is_file() and summary(out, "patch")["done"] == 1


def test_usage_errors_exit_1(small_dir, tmp_path):
    good_dir = small_dir
    out = tmp_path / "out"
    assert run("patch", tmp_path / "missing", "--out", out) == 1
    assert run("patch", good_dir) == 1  # no --out
    assert run("embed", good_dir, "--out", out, "--encoder", "no-such-encoder") == 1
    assert run("embed", good_dir, "--out", out, "--encoder", "resnet50-trunc") == 1  # weights required
    (tmp_path / "empty").mkdir()
    assert run("patch", tmp_path / "empty", "--out", out) == 1
    bad_csv = tmp_path / "m.csv"
    bad_csv.write_text("file\nx.svs\n")
    assert run("patch", bad_csv, "--out", out) == 1
    assert run("patch", good_dir, "--out", out, "--mpp-csv", bad_csv) == 1
    assert run("patch", good_dir, "--out", out, "--patch-size", "256", "--overlap", "300") == 1
    # an --out that cannot be a folder: one usage error before any slide, not a failure per slide
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    for o in (a_file, a_file / "sub"):
        assert run("patch", good_dir, "--out", o) == 1
        assert run("embed", good_dir, "--out", o, "--encoder", "stain-stats") == 1
    assert not (a_file.parent / "a_file" / "patches").exists()


@pytest.mark.slow  # building the full `pathgen` parser imports every subcommand's module
def test_pathgen_cli_entry_point(small_dir, tmp_path):
    from pathgen.cli import main

    out = tmp_path / "out"
    assert main(["patch", str(small_dir / "s1.tif"), "--out", str(out), "--target-mpp", "2.0",
                 "--patch-size", "128"]) == 0
    with h5py.File(out / "patches" / "s1.h5", "r") as f:
        a = f["coords"].attrs
        assert (a["patch_level"], a["patch_size"], a["target_patch_size"]) == (1, 128, 128)
    with pytest.raises(SystemExit) as ei:
        main(["patch", str(small_dir)])  # no --out: a usage error
    assert ei.value.code == 1


def test_embed_reuses_clam_and_trident_coordinates(small_dir, tmp_path):
    """--coords-dir: CLAM's patches h5 (patch_level + patch_size) and TRIDENT's (patch_size_level0 +
    patch_size at target magnification), written the way those tools write them."""
    clam, trident = tmp_path / "clam", tmp_path / "trident"
    clam.mkdir()
    trident.mkdir()
    coords = np.array([[0, 0], [256, 256], [512, 256]], dtype=np.int64)
    with h5py.File(clam / "s1.h5", "w") as f:  # CLAM create_patches_fp: level 1 (4x), 64 px there
        d = f.create_dataset("coords", data=coords.astype(np.int32), maxshape=(None, 2), chunks=(32, 2))
        d.attrs.update(patch_size=64, patch_level=1, downsample=(4.0, 4.0), downsampled_level_dim=(256, 256),
                       level_dim=(256, 256), name="s1", save_path=str(clam))
    with h5py.File(trident / "s2_patches.h5", "w") as f:  # TRIDENT: 20x -> 10x, 128 px at 10x = 256 at level 0
        d = f.create_dataset("coords", data=coords)
        d.attrs.update(patch_size=128, patch_size_level0=256, level0_magnification=20.0, target_magnification=10.0,
                       overlap=0, name="s2", level0_width=1024, level0_height=1024)
    out = tmp_path / "out"
    assert run("embed", small_dir / "s1.tif", "--out", out, "--encoder", "stain-stats", "--coords-dir", clam) == 0
    assert run("embed", small_dir / "s2.tif", "--out", out, "--encoder", "stain-stats", "--coords-dir", trident) == 0
    assert not (out / "patches").exists()  # nothing was patched
    enc = get_encoder("stain-stats")
    for sid, level, read, target in (("s1", 1, 64, 64), ("s2", 0, 256, 128)):
        with h5py.File(out / "features" / f"{sid}.h5", "r") as f:
            feats, got_coords, a = f["features"][:], f["coords"][:], dict(f["coords"].attrs)
        np.testing.assert_array_equal(got_coords, coords)
        assert (a["patch_level"], a["patch_size"], a["target_patch_size"]) == (level, read, target)
        assert "patch_size_level0" in a and "level0_magnification" in a and "level_dim" in a
        with open_slide(small_dir / f"{sid}.tif") as r:
            x = torch.from_numpy(r.read_region(coords[1], level, (read, read))).permute(2, 0, 1)[None]
        torch.testing.assert_close(enc.encode(resize_patches(x, target))[0], torch.from_numpy(feats[1]),
                                   atol=2e-3, rtol=1e-3)
    # a slide without a coords file fails with one line; the batch goes on
    assert run("embed", small_dir, "--out", tmp_path / "o2", "--encoder", "stain-stats", "--coords-dir", clam) == 2
    s = summary(tmp_path / "o2", "embed")
    assert s["done"] == 1 and "no coords file" in s["failed_slides"]["s2"]


@pytest.mark.parametrize("backend", ["tifffile", "openslide"])
def test_patch_skips_a_slide_that_fails_to_decode(small_dir, cmu_svs, tmp_path, backend):
    """A tile whose JPEG header is damaged (markers intact, so the integrity check passes) makes OpenSlide
    (OpenSlideError) and tifffile (Jpeg8Error) raise while segmenting: that slide fails with one line and the
    batch goes on."""
    import tifffile

    if backend not in available_backends():
        pytest.skip(f"{backend} not installed")
    d = tmp_path / "in"
    d.mkdir()
    with tifffile.TiffFile(cmu_svs) as tif:
        o = tif.pages[0].dataoffsets[0]
    data = bytearray(cmu_svs.read_bytes())
    data[o + 2:o + 202] = b"\xff" * 200
    (d / "a-corrupt.svs").write_bytes(bytes(data))
    (d / "s1.tif").symlink_to(small_dir / "s1.tif")
    out = tmp_path / "out"
    assert run("patch", d, "--out", out, "--backend", backend) == 2
    s = summary(out, "patch")
    assert (s["done"], s["failed"], s["not_run"]) == (1, 1, []), s
    err = s["failed_slides"]["a-corrupt"]
    assert "\n" not in err and str(d / "a-corrupt.svs") in err and "reading the slide failed" in err
    assert "fix:" in err and not (out / "patches" / "a-corrupt.h5").exists()


def _coords_h5(path: Path, coords, **attrs) -> None:
    with h5py.File(path, "w") as f:
        f.create_dataset("coords", data=np.asarray(coords)).attrs.update(attrs)


def test_embed_rejects_coords_that_do_not_fit_the_slide(small_dir, tmp_path):
    """--coords-dir files are checked against the slide read: out-of-bounds corners, non-finite values and
    another slide's sizes fail that slide (naming the coords file); the batch goes on."""
    clam = {"patch_size": 64, "patch_level": 1, "downsample": (4.0, 4.0), "level_dim": (256, 256),
            "downsampled_level_dim": (256, 256)}
    trident = {"patch_size": 128, "patch_size_level0": 256, "level0_magnification": 20.0,
               "target_magnification": 10.0, "overlap": 0}
    bad = tmp_path / "bad"
    bad.mkdir()
    _coords_h5(bad / "s1.h5", [[0, 0], [256, 5000]], name="s1", **clam)  # y beyond the 1024 px slide
    _coords_h5(bad / "s2_patches.h5", [[0, 0], [256, 256]], name="s2", level0_width=1024, level0_height=1024,
               **trident)
    out = tmp_path / "out"
    assert run("embed", small_dir, "--out", out, "--encoder", "stain-stats", "--coords-dir", bad) == 2
    s = summary(out, "embed")
    assert s["slides"]["s2"]["state"] == "done" and s["failed"] == 1
    err = s["failed_slides"]["s1"]
    assert str(bad / "s1.h5") in err and "outside s1" in err and "[256, 5000]" in err and "fix:" in err
    cases = {"nan": ([[0.0, 0.0], [np.nan, 256.0]], {"name": "s1", **clam}, "finite whole pixel"),
             "3col": ([[0, 0, 0]], {"name": "s1", **clam}, "[N, 2]"),
             "foreign": ([[0, 0]], {"name": "other", "level0_width": 2048, "level0_height": 1024, **trident},
                         "level-0 size is 2048x1024")}
    for tag, (coords, attrs, words) in cases.items():
        d = tmp_path / tag
        d.mkdir()
        _coords_h5(d / "s1_patches.h5", coords, **attrs)
        assert run("embed", small_dir / "s1.tif", "--out", tmp_path / f"o-{tag}", "--encoder", "stain-stats",
                   "--coords-dir", d) == 2
        err = summary(tmp_path / f"o-{tag}", "embed")["failed_slides"]["s1"]
        assert str(d / "s1_patches.h5") in err and words in err and "\n" not in err, (tag, err)
    # a coords file named for another slide but fitting this one: a warning, and the slide's own sizes are written
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    _coords_h5(renamed / "s1_patches.h5", [[0, 0], [256, 256]], name="s2", **trident)
    with pytest.warns(UserWarning, match="name attribute 's2' is not 's1'"):
        assert run("embed", small_dir / "s1.tif", "--out", tmp_path / "o-renamed", "--encoder", "stain-stats",
                   "--coords-dir", renamed) == 0
    with h5py.File(tmp_path / "o-renamed" / "features" / "s1.h5", "r") as f:
        a = f["coords"].attrs
        assert (a["level0_width"], a["level0_height"], a["name"]) == (1024, 1024, "s1")


def test_resume_checks_this_runs_outputs(small_dir, tmp_path, monkeypatch):
    """The status records absolute paths, and "already done" looks at the outputs this run expects: a run
    from another folder or on a copied output folder skips; a copy missing an output redoes it."""
    import shutil

    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path)
    assert run("patch", small_dir / "s1.tif", "--out", "out") == 0
    st = json.loads((tmp_path / "out" / "status" / "patch" / "s1.json").read_text())
    assert st["outputs"][0] == str(tmp_path / "out" / "patches" / "s1.h5")
    monkeypatch.chdir(tmp_path / "sub")  # same folder, reached by another relative path
    assert run("patch", small_dir / "s1.tif", "--out", "../out") == 0
    assert summary(tmp_path / "out", "patch")["skipped"] == 1
    monkeypatch.chdir(tmp_path)
    shutil.copytree("out", "copy")
    shutil.copytree("out", "copy2")
    (tmp_path / "copy2" / "patches" / "s1.h5").unlink()  # the original's file still exists
    shutil.rmtree("out")
    assert run("patch", small_dir / "s1.tif", "--out", "copy") == 0
    assert summary(tmp_path / "copy", "patch")["skipped"] == 1
    assert run("patch", small_dir / "s1.tif", "--out", "copy2") == 0
    assert summary(tmp_path / "copy2", "patch")["done"] == 1
    assert (tmp_path / "copy2" / "patches" / "s1.h5").is_file()


def test_non_finite_numbers_are_usage_errors(small_dir, tmp_path):
    for flags in (("--target-mpp", "nan"), ("--target-mpp", "inf"), ("--mpp", "inf"), ("--min-tissue-mm2", "nan"),
                  ("--min-hole-mm2", "-1")):
        assert run("patch", small_dir, "--out", tmp_path / "out", *flags) == 1, flags
    assert not (tmp_path / "out").exists()
