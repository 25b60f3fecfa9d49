"""The OpenSlide fallback: same pixels as tiffslide where both read, same lazy, picklable reads."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import BlobSlide
from wsidet.errors import SlideFormatError
from wsidet.inference.pipeline import detect
from wsidet.inference.spec import ExecOptions, RunSpec
from wsidet.methods import get_method
from wsidet.slide import openslide_reader, wsi
from wsidet.slide.wsi import open_slide

pytestmark = pytest.mark.skipif(
    not openslide_reader.available(), reason="needs OpenSlide (pip install wsidet[openslide])"
)


def windows(shape: tuple[int, int]) -> list[tuple[int, int]]:
    h, w = shape
    return [(0, 0), (h // 3, w // 5), (max(0, h - 300), max(0, w - 300)), (h - 7, w - 11)]


@pytest.mark.parametrize("name", ["sample", "blobs"])
def test_fallback_reads_the_same_pixels_as_tiffslide(
    name: str, sample_slide: Path, blob_slide: BlobSlide
) -> None:
    path = sample_slide if name == "sample" else blob_slide.path
    tiff, osl = open_slide(path, backend="tiffslide"), open_slide(path, backend="openslide")
    assert osl.backend == "openslide" and tiff.backend == "tiffslide"
    assert osl.mpp == tiff.mpp and osl.levels[0].shape == tiff.levels[0].shape
    assert osl.vendor == tiff.vendor
    for level in range(min(len(tiff.levels), len(osl.levels))):
        assert osl.levels[level].shape == tiff.levels[level].shape
        for y0, x0 in windows(tiff.levels[level].shape):
            a = tiff.read_region(y0, x0, 300, 300, level=level)
            b = osl.read_region(y0, x0, 300, 300, level=level)
            assert np.array_equal(a, b), (level, y0, x0)


def test_the_reader_pickles_as_path_and_level(sample_slide: Path) -> None:
    slide = open_slide(sample_slide, backend="openslide")
    reader = slide.reader(slide.scale_for_level(0))
    assert type(reader).__name__ == "OpenSlideLevelReader"
    assert len(pickle.dumps(reader)) < 300  # no open handle travels with it
    again = pickle.loads(pickle.dumps(reader))
    assert np.array_equal(again[100:140, 50:90], reader.read(100, 140, 50, 90))


def test_detections_through_the_fallback_equal_tiffslides(sample_slide: Path) -> None:
    run, options = RunSpec(get_method("log")), ExecOptions(chunk=1024, device="cpu")
    a = detect(open_slide(sample_slide, backend="tiffslide"), run, options, scheduler="sync")
    b = detect(open_slide(sample_slide, backend="openslide"), run, options, scheduler="sync")
    assert len(a) > 1000
    assert np.array_equal(a[["x", "y", "score"]].to_numpy(), b[["x", "y", "score"]].to_numpy())


def test_auto_falls_back_where_tiffslide_refuses(sample_slide: Path, monkeypatch) -> None:
    def refuse(path, mpp):
        raise SlideFormatError(f"not a readable TIFF-based slide: {path!r}")

    monkeypatch.setattr(wsi, "_open_tiffslide", refuse)
    assert open_slide(sample_slide).backend == "openslide"
    with pytest.raises(SlideFormatError, match="TIFF-based"):
        open_slide(sample_slide, backend="tiffslide")


def test_a_file_neither_reads_is_refused_in_one_line(tmp_path: Path) -> None:
    bogus = tmp_path / "x.svs"
    bogus.write_bytes(b"II*\0 not a slide at all")
    with pytest.raises(SlideFormatError) as caught:
        open_slide(bogus)
    assert "\n" not in str(caught.value)
    with pytest.raises(ValueError, match="backend"):
        open_slide(bogus, backend="pillow")
