"""Precision modes: each agrees with fp32, and each keeps tiled == whole within itself."""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from tests.synthetic import blob_image, random_points
from tests.test_pipeline import RANDOM_WEIGHT_PARAMS, assert_same_points
from wsidet.errors import ParameterError
from wsidet.evaluation.metrics import match_points
from wsidet.inference.detector import DetectorSpec
from wsidet.inference.pipeline import detect_array, detect_slide
from wsidet.inference.precision import PRECISIONS, check_precision, resolve_precision
from wsidet.methods import get_method
from wsidet.slide.pyramid import write_pyramid
from wsidet.slide.wsi import open_slide
from wsidet.tiling import Grid

REDUCED = ("bf16", "fp16", "auto")


def f1_between(a: np.ndarray, b: np.ndarray, radius: float = 1.0) -> float:
    pairs, _ = match_points(a, b, radius)
    return 2 * len(pairs) / max(1, len(a) + len(b))


@pytest.fixture(scope="module")
def sample_crop(sample_slide: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 512 x 640 px field of the sample, dense with nuclei, as a slide of its own.

    Emulated fp16 on a CPU without native support is ~25x slower than fp32: the whole
    sample in every mode is the slow test below.
    """
    image = open_slide(sample_slide).read_region(1200, 800, 512, 640)
    path = tmp_path_factory.mktemp("precision") / "crop.tif"
    write_pyramid(path, image, mpp=0.499, downsamples=(1,))
    return path


def detect_points(path: Path, precision: str) -> np.ndarray:
    frame = detect_slide(path, device="cpu", precision=precision, tissue=False)
    return frame[["x", "y"]].to_numpy()


@pytest.mark.parametrize("precision", REDUCED)
def test_each_precision_finds_the_points_of_fp32(sample_crop: Path, precision: str) -> None:
    reference = detect_points(sample_crop, "fp32")
    assert len(reference) > 40
    assert f1_between(detect_points(sample_crop, precision), reference) >= 0.99


@pytest.mark.slow
@pytest.mark.parametrize("precision", REDUCED)
def test_each_precision_on_the_whole_sample(sample_slide: Path, precision: str) -> None:
    reference = detect_points(sample_slide, "fp32")
    assert f1_between(detect_points(sample_slide, precision), reference) >= 0.99


@pytest.mark.parametrize("precision", PRECISIONS)
def test_tiled_equals_whole_in_every_precision(precision: str, tmp_path: Path) -> None:
    """The seam property holds within each mode (oneDNN off, as in the fp32 seam tests)."""
    method = get_method("voca", **{**RANDOM_WEIGHT_PARAMS.get("voca", {}), "width": 8})
    torch.manual_seed(0)
    weights = str(tmp_path / "voca.safetensors")
    save_file(method.build_network().state_dict(), weights, metadata={"wsidet.method": "voca"})
    rng = np.random.default_rng(2)
    halo, stride = method.halo, method.stride
    shape = (2 * halo + 3 * stride + 77, 2 * halo + 5 * stride + 101)
    image = blob_image(shape, random_points(rng, shape, 300, 12, 0), 6.0, rng=rng)
    grid = Grid.aligned(shape, halo=halo, chunk=shape[0] // 2, align=stride)
    common = {"weights": weights, "device": "cpu", "precision": precision}
    spec = DetectorSpec(method, tile=stride * max(1, 192 // stride), **common)
    with torch.backends.mkldnn.flags(enabled=False):
        tiled, _ = detect_array(
            da.from_array(image, chunks=(*grid.chunks, (3,))), grid, spec, scheduler="sync"
        )
        whole = DetectorSpec(method, tile=4096, **common).get().detect(image)
    assert len(whole.points_yx) > 20
    assert_same_points((tiled.points_yx, tiled.scores), (whole.points_yx, whole.scores))


def test_precision_names_and_what_auto_means() -> None:
    assert resolve_precision("auto", torch.device("cuda")) == "fp16"
    assert resolve_precision("fp32", torch.device("cuda")) == "fp32"
    assert resolve_precision("auto", torch.device("cpu")) in {"fp32", "bf16"}
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"
    with pytest.raises(ParameterError, match="precision must be one of auto, fp32"):
        check_precision("fp64")
