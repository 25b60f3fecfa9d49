from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

from tests.synthetic import GLASS, blob_image, random_points
from wsidet.slide.pyramid import write_pyramid

# Deterministic by default, so the README's test command is CI's and a red run reproduces;
# HYPOTHESIS_PROFILE=random explores new examples.
settings.register_profile(
    "default",
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
    derandomize=True,
)
settings.register_profile("random", parent=settings.get_profile("default"), derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_SLIDE = ROOT / "examples" / "data" / "CMU-1-Small-Region.svs"
SHARED_DATA = ROOT.parent / "shared" / "data"

#: Nucleus radius in micrometres used by the synthetic slides (≈ 7 px at 0.5 µm/px).
NUCLEUS_RADIUS_UM = 3.5


@dataclass(frozen=True)
class BlobSlide:
    """A synthetic slide file and its nuclei in level-0 (x, y) pixel coordinates."""

    path: Path
    points_xy: np.ndarray
    mpp: float | None


def make_blob_slide(
    path: Path,
    *,
    shape: tuple[int, int],
    mpp: float | None,
    physical_mpp: float,
    seed: int,
    downsamples: tuple[int, ...] = (1, 2, 4),
    n: int = 120,
    ome: bool = False,
) -> BlobSlide:
    """Write a pyramidal JPEG TIFF with nuclei; ``physical_mpp`` sets their size in pixels."""
    rng = np.random.default_rng(seed)
    radius = NUCLEUS_RADIUS_UM / physical_mpp
    pts = random_points(rng, shape, n, min_sep=4 * radius, margin=radius + 2)
    image = blob_image(shape, pts, radius, rng=rng)
    write_pyramid(path, image, mpp=mpp, downsamples=downsamples, ome=ome)
    # Array indices (pixel centres integer) -> level-0 coordinates (pixel centres at +0.5).
    return BlobSlide(path, pts[:, ::-1] + 0.5, mpp)


@pytest.fixture(scope="session")
def blob_slide(tmp_path_factory: pytest.TempPathFactory) -> BlobSlide:
    """1200 × 1600 px at 0.25 µm/px with levels 1, 2, 4: a 0.5 µm/px model reads level 1."""
    path = tmp_path_factory.mktemp("slides") / "blobs.tif"
    return make_blob_slide(path, shape=(1200, 1600), mpp=0.25, physical_mpp=0.25, seed=1)


@pytest.fixture(scope="session")
def blank_slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Only glass (with JPEG noise): no tissue anywhere."""
    path = tmp_path_factory.mktemp("slides") / "blank.tif"
    rng = np.random.default_rng(3)
    image = np.clip(GLASS + rng.normal(0, 2, (900, 1100, 3)), 0, 255).astype(np.uint8)
    write_pyramid(path, image, mpp=0.5, downsamples=(1, 4))
    return path


@pytest.fixture(scope="session")
def sample_slide() -> Path:
    if not SAMPLE_SLIDE.is_file():
        pytest.skip(f"sample slide missing: {SAMPLE_SLIDE}")
    return SAMPLE_SLIDE


@pytest.fixture(scope="session")
def crchisto_dir() -> Path:
    path = SHARED_DATA / "crchisto"
    if not (path / "images").is_dir():
        pytest.skip(f"CRCHisto data not found at {path}")
    return path
