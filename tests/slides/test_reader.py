"""Slide readers: every installed backend on the real SVS files and generated pyramidal TIFFs."""
from __future__ import annotations

import sys

import numpy as np
import pytest

from pathgen.slides import (BackendUnavailableError, SlideError, UnsupportedSlideError, available_backends,
                            open_slide)
from pathgen.slides.metadata import mpp_from_resolution, parse_aperio_description

BACKENDS = available_backends()
JPEG_TOL = 10  # JPEG decoders may differ by a few levels per pixel


def _backend_params():
    return [pytest.param(b, id=b) for b in ("cucim", "openslide", "tifffile")]


def _need(backend):
    if backend not in BACKENDS:
        pytest.skip(f"{backend} not installed")


@pytest.mark.parametrize("backend", _backend_params())
def test_real_svs_jpeg(cmu_svs, backend):
    _need(backend)
    with open_slide(cmu_svs, backend=backend) as r:
        assert r.backend == backend
        assert r.dimensions == (2220, 2967)
        assert r.level_count == 1 and r.level_downsamples == (1.0,)
        assert r.mpp == pytest.approx(0.499)
        assert r.objective_power == 20
        assert {"label", "macro", "thumbnail"} <= set(r.associated_images)
        thumb = r.associated_image("thumbnail")
        assert thumb.ndim == 3 and thumb.shape[2] == 3 and thumb.dtype == np.uint8
        region = r.read_region((1000, 1500), 0, (300, 200))
        assert region.shape == (200, 300, 3) and region.dtype == np.uint8
        assert region.std() > 10  # tissue, not a constant fill


@pytest.mark.parametrize("backend", _backend_params())
def test_real_svs_jpeg2000_without_mpp(tcga_svs, backend):
    _need(backend)
    with open_slide(tcga_svs, backend=backend) as r:
        assert r.level_dimensions == ((4443, 3567), (2221, 1783))
        assert r.level_downsamples[1] == pytest.approx(2.0005, abs=1e-3)
        assert r.mpp is None and r.objective_power is None
        region = r.read_region((2000, 1500), 1, (128, 96))
        assert region.shape == (96, 128, 3)
        assert region.std() > 5


@pytest.mark.parametrize("backend", _backend_params())
def test_generated_pyramid(pyramid_tif, generic_tif, nompp_tif, backend):
    _need(backend)
    with open_slide(pyramid_tif, backend=backend) as r:
        assert r.level_dimensions == ((3072, 2048), (768, 512), (192, 128))
        assert r.level_downsamples == (1.0, 4.0, 16.0)
        assert r.mpp == pytest.approx(0.25)
        assert r.objective_power == 40
    with open_slide(generic_tif, backend=backend) as r:
        assert r.level_count == 3 and r.dimensions == (1280, 1536)
        assert r.mpp == pytest.approx(0.5)  # from the resolution tags alone
    with open_slide(nompp_tif, backend=backend) as r:
        assert r.mpp is None


def test_auto_prefers_cucim_then_falls_back(cmu_svs, kidney_tif):
    with open_slide(cmu_svs) as r:
        assert r.backend == BACKENDS[0]
    # cuCIM and OpenSlide refuse the untiled TIFF; tifffile reads it as a single level
    with open_slide(kidney_tif) as r:
        assert r.backend == "tifffile"
        assert r.dimensions == (1493, 901) and r.level_count == 1
        assert r.mpp is None
        assert r.read_region((700, 400), 0, (64, 32)).shape == (32, 64, 3)


REGIONS = [((0, 0), 0, (256, 256)), ((1013, 777), 0, (300, 200)), ((1200, 900), 1, (77, 131))]


@pytest.mark.parametrize("which", ["cmu_svs", "tcga_svs", "pyramid_tif", "generic_tif"])
def test_backends_agree_on_regions(which, request):
    path = request.getfixturevalue(which)
    if len(BACKENDS) < 2:
        pytest.skip("needs two backends")
    reads = {}
    for b in BACKENDS:
        with open_slide(path, backend=b) as r:
            reads[b] = [r.read_region(loc, min(lv, r.level_count - 1), size).astype(int) for loc, lv, size in REGIONS]
    ref = reads[BACKENDS[-1]]
    for b, regs in reads.items():
        for (_, level, _), got, want in zip(REGIONS, regs, ref):
            assert got.shape == want.shape
            if level > 0 and which == "tcga_svs" and b == "openslide":
                # a level at a non-integer downsample (2.0005): OpenSlide places the region at the
                # fractional position x / downsample and resamples; the others start at its floor
                assert np.abs(got - want).mean() < 25, b
                continue
            assert np.abs(got - want).max() <= JPEG_TOL, b
            assert np.abs(got - want).mean() < 1.0, b


def test_cucim_width_height_order(cmu_svs):
    """cuCIM: sizes are (width, height), arrays [height, width, C]; our reader keeps that."""
    if "cucim" not in BACKENDS:
        pytest.skip("cucim not installed")
    from cucim import CuImage

    img = CuImage(str(cmu_svs))
    assert tuple(img.size("XY")) == (2220, 2967)  # width, height
    assert tuple(img.shape[:2]) == (2967, 2220)  # rows, columns
    assert tuple(img.resolutions["level_dimensions"][0]) == (2220, 2967)
    raw = np.asarray(img.read_region(location=(100, 700), size=(64, 32), level=0))
    assert raw.shape[:2] == (32, 64)
    with open_slide(cmu_svs, backend="cucim") as r:
        ours = r.read_region((100, 700), 0, (64, 32))
        assert ours.shape == (32, 64, 3)
        np.testing.assert_array_equal(ours, raw[..., :3])
    if "openslide" in BACKENDS:
        with open_slide(cmu_svs, backend="openslide") as r:
            other = r.read_region((100, 700), 0, (64, 32))
        assert np.abs(other.astype(int) - ours.astype(int)).max() <= JPEG_TOL


@pytest.mark.parametrize("backend", _backend_params())
def test_batched_reads_match_single_reads(pyramid_tif, backend):
    _need(backend)
    locs = [(0, 0), (517, 1031), (2900, 1900), (-40, 10)]  # the last two cross the border
    with open_slide(pyramid_tif, backend=backend) as r:
        batch = r.read_regions(locs, 0, (200, 150))
        assert batch.shape == (4, 150, 200, 3)
        for i, loc in enumerate(locs):
            np.testing.assert_array_equal(batch[i], r.read_region(loc, 0, (200, 150)))
        inside = r.read_regions(locs[:2], 0, (200, 150))  # cuCIM's threaded batch path
        np.testing.assert_array_equal(inside, batch[:2])
        t = r.read_regions_tensor(locs[:2], 0, (200, 150))
        assert tuple(t.shape) == (2, 150, 200, 3) and str(t.device) == "cpu"


@pytest.mark.parametrize("backend", _backend_params())
def test_outside_the_slide_is_white(pyramid_tif, backend):
    _need(backend)
    with open_slide(pyramid_tif, backend=backend) as r:
        part = r.read_region((3072 - 50, 2048 - 20), 0, (100, 60))
        assert part.shape == (60, 100, 3)
        assert (part[20:, :] == 255).all() and (part[:, 50:] == 255).all()
        inside = r.read_region((3072 - 50, 2048 - 20), 0, (50, 20))
        np.testing.assert_array_equal(part[:20, :50], inside)
        assert (r.read_region((5000, 5000), 0, (16, 16)) == 255).all()
        with pytest.raises(ValueError, match="level 7 out of range"):
            r.read_region((0, 0), 7, (8, 8))


def test_thumbnail_fits_and_matches_a_level(pyramid_tif):
    with open_slide(pyramid_tif) as r:
        th = r.get_thumbnail(300)
        assert th.shape == (200, 300, 3)
        lvl = r.read_region((0, 0), 2, (192, 128)).astype(float)
        small = r.get_thumbnail(192).astype(float)
        assert small.shape == (128, 192, 3)
        assert np.abs(small - lvl).mean() < 3  # the 1/16 level is the same picture


def test_thumbnail_of_untiled_tiff_is_chunked(kidney_tif, monkeypatch):
    import pathgen.slides.reader as reader_mod

    monkeypatch.setattr(reader_mod, "_CHUNK", 256)  # force several chunks
    with open_slide(kidney_tif) as r:
        chunked = r.get_thumbnail(500)
    monkeypatch.setattr(reader_mod, "_CHUNK", 4096)
    with open_slide(kidney_tif) as r:
        whole = r.get_thumbnail(500)
    assert chunked.shape == whole.shape == (302, 500, 3)  # 901 * 500 / 1493 = 301.7
    assert np.abs(chunked.astype(int) - whole.astype(int)).mean() < 2


def _one_line_naming(err: Exception, path) -> str:
    msg = str(err)
    assert "\n" not in msg
    assert str(path) in msg and "fix:" in msg
    return msg


def test_truncated_real_svs(cmu_svs, tmp_path):
    bad = tmp_path / "truncated.svs"
    data = cmu_svs.read_bytes()
    bad.write_bytes(data[: int(len(data) * 0.3)])
    with pytest.raises(UnsupportedSlideError) as ei:
        open_slide(bad)
    _one_line_naming(ei.value, bad)


def test_truncated_generated_tiff(pyramid_tif, tmp_path):
    bad = tmp_path / "cut.tif"
    data = pyramid_tif.read_bytes()
    bad.write_bytes(data[: int(len(data) * 0.7)])  # directory intact, tiles missing
    for backend in ["auto"] + BACKENDS:
        with pytest.raises(UnsupportedSlideError, match="truncated") as ei:
            open_slide(bad, backend=backend)
        _one_line_naming(ei.value, bad)


def _tile_table(path, page: int = 0):
    """``(offsets, byte counts, file position and struct format of each tag's array)`` of a tiled page."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        pg = tif.pages[page]
        fmt = {3: "H", 4: "I", 16: "Q"}
        tags = [pg.tags[n] for n in ("TileOffsets", "TileByteCounts")]
        return (list(pg.dataoffsets), list(pg.databytecounts),
                [(t.valueoffset, tif.byteorder + fmt[int(t.dtype)]) for t in tags])


def _set_tile_entry(data: bytearray, where: tuple[int, str], index: int, value: int) -> None:
    import struct

    pos, fmt = where
    struct.pack_into(fmt, data, pos + index * struct.calcsize(fmt), value)


def test_corrupt_jpeg_tiles_are_refused_by_every_backend(cmu_svs, tmp_path):
    """Tile data overwritten with 0xFF (a bad copy): cuCIM would decode them as grey and carry on."""
    offsets, counts, _ = _tile_table(cmu_svs)
    data = bytearray(cmu_svs.read_bytes())
    start, stop = offsets[34] + 100, offsets[40] + 50  # the end of tile 34 through the start of tile 40
    data[start:stop] = b"\xff" * (stop - start)
    bad = tmp_path / "garbled.svs"
    bad.write_bytes(bytes(data))
    for backend in ["auto"] + BACKENDS:
        with pytest.raises(UnsupportedSlideError, match=r"page 0 \(2220x2967 px\) tile 34 of 130 is not a "
                                                        r"complete JPEG stream.*6 more tiles") as ei:
            open_slide(bad, backend=backend)
        assert "download or copy it again" in _one_line_naming(ei.value, bad)


def test_corrupt_jpeg2000_tile_is_refused(tcga_svs, tmp_path):
    offsets, _, _ = _tile_table(tcga_svs, page=2)
    data = bytearray(tcga_svs.read_bytes())
    data[offsets[7]:offsets[7] + 4] = bytes(4)  # the codestream's SOC + SIZ markers
    bad = tmp_path / "j2k.svs"
    bad.write_bytes(bytes(data))
    with pytest.raises(UnsupportedSlideError, match=r"page 2 .* tile 7 of 63 is not a complete JPEG 2000") as ei:
        open_slide(bad)
    _one_line_naming(ei.value, bad)


def test_absent_tiles_are_not_corrupt(cmu_svs, tmp_path):
    """A tile with offset and byte count 0 is absent (tifffile and libtiff fill it), not damaged."""
    offsets, counts, (where_offsets, where_counts) = _tile_table(cmu_svs)
    data = bytearray(cmu_svs.read_bytes())
    data[offsets[34]:offsets[34] + counts[34]] = b"\xff" * counts[34]
    _set_tile_entry(data, where_offsets, 34, 0)
    _set_tile_entry(data, where_counts, 34, 0)
    sparse = tmp_path / "sparse.svs"
    sparse.write_bytes(bytes(data))
    with open_slide(sparse, backend="tifffile") as r:
        assert r.dimensions == (2220, 2967)


def test_text_file_named_svs(tmp_path):
    bad = tmp_path / "notes.svs"
    bad.write_text("this is not a slide\n" * 10)
    with pytest.raises(UnsupportedSlideError, match="no slide backend could open it") as ei:
        open_slide(bad)
    _one_line_naming(ei.value, bad)


def test_missing_file(tmp_path):
    with pytest.raises(SlideError, match="file not found"):
        open_slide(tmp_path / "nope.svs")


def test_cucim_refuses_untiled_with_a_clear_error(kidney_tif):
    if "cucim" not in BACKENDS:
        pytest.skip("cucim not installed")
    with pytest.raises(SlideError, match="not a tiled image") as ei:
        open_slide(kidney_tif, backend="cucim")
    _one_line_naming(ei.value, kidney_tif)


def test_large_untiled_tiff_is_refused(kidney_tif, monkeypatch):
    import pathgen.slides.tifffile_reader as tr

    monkeypatch.setattr(tr, "MAX_UNTILED_PIXELS", 1000)
    with pytest.raises(SlideError, match="tiled pyramidal TIFF") as ei:
        open_slide(kidney_tif, backend="tifffile")
    _one_line_naming(ei.value, kidney_tif)
    with pytest.raises(UnsupportedSlideError):  # auto: every backend refuses it
        open_slide(kidney_tif)


def test_missing_backend_gives_install_hint(cmu_svs, monkeypatch):
    monkeypatch.setitem(sys.modules, "cucim", None)  # as if cuCIM were not installed
    monkeypatch.delitem(sys.modules, "pathgen.slides.cucim_reader", raising=False)
    with pytest.raises(BackendUnavailableError, match="pip install cucim"):
        open_slide(cmu_svs, backend="cucim")
    with open_slide(cmu_svs) as r:  # auto goes on to the next backend
        assert r.backend != "cucim"
    assert "cucim" not in available_backends()


def test_mpp_override_and_default(tcga_svs, cmu_svs):
    with open_slide(tcga_svs, default_mpp=0.25) as r:
        assert (r.mpp, r.mpp_source) == (0.25, "default")
    with open_slide(cmu_svs, default_mpp=0.25) as r:  # metadata wins over a default
        assert (r.mpp, r.mpp_source) == (pytest.approx(0.499), "metadata")
    with open_slide(cmu_svs, mpp=0.3) as r:  # an override wins over metadata
        assert (r.mpp, r.mpp_source) == (0.3, "override")
        assert r.info()["mpp"] == 0.3


def test_metadata_parsing():
    d = parse_aperio_description("Aperio Image Library v11\r\n46000x32914 |AppMag = 20|MPP = 0.4990|Filename = X")
    assert d == {"AppMag": "20", "MPP": "0.4990", "Filename": "X"}
    assert parse_aperio_description("ImageJ=1.5\nunit=micron") == {}
    assert mpp_from_resolution((40000, 1), "CENTIMETER") == pytest.approx(0.25)
    assert mpp_from_resolution(101600.0, 2) == pytest.approx(0.25)  # pixels per inch
    assert mpp_from_resolution((72, 1), "INCH") is None  # a default 72 dpi means "unknown"
    assert mpp_from_resolution((1, 1), "NONE") is None
