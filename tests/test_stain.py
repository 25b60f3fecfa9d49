"""Stain normalisation: colour conversions, the Reinhard map, and its place in the pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from skimage.color import lab2rgb, rgb2lab

from tests.conftest import BlobSlide, make_blob_slide
from tests.test_pipeline import assert_same_points
from wsidet.errors import WeightsError
from wsidet.inference.pipeline import detect_slide
from wsidet.methods import get_method
from wsidet.slide.stain import (
    Reinhard,
    StainStats,
    lab_to_rgb,
    rgb_to_lab,
    slide_stain_stats,
    stain_stats,
)
from wsidet.slide.wsi import open_slide
from wsidet.train.checkpoint import save_weights
from wsidet.weights import stain_reference

LOG = get_method("log")


@given(rgb=hnp.arrays(np.float64, (7, 9, 3), elements=st.floats(0, 1), fill=st.nothing()))
def test_lab_conversions_equal_scikit_image(rgb: np.ndarray) -> None:
    lab = rgb_to_lab(torch.from_numpy(rgb).permute(2, 0, 1)).permute(1, 2, 0).numpy()
    np.testing.assert_allclose(lab, rgb2lab(rgb), atol=1e-9)
    back = lab_to_rgb(torch.from_numpy(lab).permute(2, 0, 1)).permute(1, 2, 0).numpy()
    np.testing.assert_allclose(back, lab2rgb(lab), atol=1e-9)
    # The sRGB standard's two pieces do not quite meet at their knee (0.04045): a value there
    # comes back 3e-8 off, in scikit-image too.
    np.testing.assert_allclose(back, rgb, atol=1e-7)


def test_reinhard_moves_the_statistics_to_the_reference() -> None:
    rng = np.random.default_rng(0)
    # A mid-toned "tissue" image (no pixel near clipping, nothing lighter than glass).
    image = (rng.normal([150, 90, 160], [15, 12, 10], (64, 80, 3))).clip(0, 255).astype(np.uint8)
    source = stain_stats([image])
    target = StainStats((60.0, 20.0, -15.0), (9.0, 6.0, 7.0), 1)
    out = Reinhard(source, target)(torch.from_numpy(image).permute(2, 0, 1).double() / 255)
    moved = stain_stats([(out.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)])
    np.testing.assert_allclose(moved.mean, target.mean, atol=0.6)
    np.testing.assert_allclose(moved.std, target.std, rtol=0.05)
    # A slide without tissue is left as it is.
    glass = Reinhard(StainStats((50.0, 0.0, 0.0), (1.0, 1.0, 1.0), 0), target)
    x = torch.rand(3, 5, 5)
    assert glass.identity and torch.equal(glass(x), x)
    assert StainStats.from_dict(target.as_dict()) == target
    with pytest.raises(ValueError, match="positive"):
        StainStats.from_dict({"mean": [1, 2, 3], "std": [1, 0, 1]})
    with pytest.raises(ValueError, match="no stained tissue"):
        stain_stats([np.full((4, 4, 3), 250, np.uint8)])


@pytest.fixture(scope="module")
def pale_slide(tmp_path_factory: pytest.TempPathFactory) -> BlobSlide:
    path = tmp_path_factory.mktemp("stain") / "pale.tif"
    return make_blob_slide(path, shape=(700, 900), mpp=0.5, physical_mpp=0.5, seed=7, n=40)


def test_slide_statistics_are_reproducible(pale_slide: BlobSlide) -> None:
    slide = open_slide(pale_slide.path)
    scale = slide.scale_for_mpp(0.5)
    first = slide_stain_stats(slide, scale)
    assert first == slide_stain_stats(open_slide(pale_slide.path), scale) and first.pixels > 0


def test_normalised_detection_is_seam_exact_and_recorded(pale_slide: BlobSlide) -> None:
    reference = StainStats((45.0, 35.0, -30.0), (20.0, 15.0, 12.0), 1)
    runs = [
        detect_slide(pale_slide.path, LOG, chunk=chunk, device="cpu", stain=reference)
        for chunk in (160, 10_000)
    ]
    tiled, whole = ((r[["x", "y"]].to_numpy(), r["score"].to_numpy()) for r in runs)
    assert_same_points(tiled, whole)  # the criterion of every seam test
    meta = runs[0].attrs["wsidet"]["stain"]
    assert meta["reference"] == reference.as_dict() and meta["slide"]["pixels"] > 0
    plain = detect_slide(pale_slide.path, LOG, chunk=160, device="cpu")
    assert plain.attrs["wsidet"]["stain"] is None
    # The map changes what the detector sees (LoG works on the haematoxylin it implies).
    assert not np.array_equal(plain["score"].to_numpy(), runs[0]["score"].to_numpy())


def test_reference_comes_from_the_weights(pale_slide: BlobSlide, tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="records none"):
        detect_slide(pale_slide.path, LOG, device="cpu", stain=True)
    method = get_method("voca", width=4)
    network = method.build_network()
    reference = StainStats((60.0, 20.0, -15.0), (9.0, 6.0, 7.0), 100)
    header = save_weights(
        network, method, tmp_path / "h.safetensors", stain_reference=reference.as_dict()
    )
    assert stain_reference(header) == reference
    # Weights without it in the header: the training record beside them.
    bare = save_weights(network, method, tmp_path / "r.safetensors")
    assert stain_reference(bare) is None
    (tmp_path / "r.json").write_text(json.dumps({"stain_reference": reference.as_dict()}))
    assert stain_reference(bare) == reference
    frame = detect_slide(pale_slide.path, "voca", weights=header, device="cpu", stain=True)
    assert frame.attrs["wsidet"]["stain"]["reference"] == reference.as_dict()
