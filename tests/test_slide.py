from __future__ import annotations

import pickle
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from tests.conftest import BlobSlide, make_blob_slide
from wsidet.errors import (
    MppUnknownError,
    SlideError,
    SlideFormatError,
    SlideNotFoundError,
    SlideReadError,
)
from wsidet.slide.reader import LevelReader, ResampledReader
from wsidet.slide.resample import resample_weights, resample_window
from wsidet.slide.wsi import Scale, _mpp_from_ome, open_slide
from wsidet.tiling import Grid


def test_aperio_sample(sample_slide: Path) -> None:
    slide = open_slide(sample_slide)
    assert slide.vendor == "aperio"
    assert slide.shape == (2967, 2220)
    assert slide.mpp == pytest.approx(0.499)
    assert slide.mpp_source == "file"
    assert slide.levels[0].tile == (240, 240)
    assert slide.slide_id == "CMU-1-Small-Region"
    # 0.499 is within tolerance of 0.5: the level is read as is.
    scale = slide.scale_for_mpp(0.5)
    assert (scale.level.index, scale.factor, scale.shape) == (0, 1.0, (2967, 2220))
    info = slide.info()
    assert info["levels"][0]["height"] == 2967


def test_generic_pyramid_levels_and_scales(blob_slide: BlobSlide) -> None:
    slide = open_slide(blob_slide.path)
    assert slide.vendor == "generic-tiff"
    assert [lv.shape for lv in slide.levels] == [(1200, 1600), (600, 800), (300, 400)]
    assert [lv.downsample for lv in slide.levels] == [(1.0, 1.0), (2.0, 2.0), (4.0, 4.0)]
    assert slide.mpp == pytest.approx(0.25)
    s = slide.scale_for_mpp(0.5)
    assert (s.level.index, s.factor, s.mpp) == (1, 1.0, pytest.approx(0.5))
    s = slide.scale_for_mpp(0.75)  # between levels 1 and 2: level 1 shrunk by 1.5
    assert s.level.index == 1 and s.factor == pytest.approx(1.5) and s.shape == (400, 533)
    # A tile of 1.5 level pixels per working pixel is no whole number of working pixels:
    # nothing to align chunks to, so a wanted chunk size is kept, not inflated to a multiple.
    tile = slide.levels[1].tile
    assert all(t % 3 for t in tile) and s.tile == (1, 1)
    grid = Grid.aligned((4000, 4000), halo=112, chunk=1024, tile=s.tile, align=16)
    assert set(grid.chunks[0][:-1]) == {1024}
    # An integer factor keeps whole tiles, and chunks stay multiples of them.
    s2 = Scale(slide.levels[0], 2.0, 0.5)
    assert s2.tile == (slide.levels[0].tile[0] // 2, slide.levels[0].tile[1] // 2)
    s = slide.scale_for_mpp(0.1)  # finer than level 0: level 0 enlarged
    assert s.level.index == 0 and s.factor == pytest.approx(0.4)
    np.testing.assert_allclose(
        s.to_level0(np.array([[0.0, 0.0], [9.5, 2.0]])), [[0.2, 0.2], [4.0, 1.0]]
    )


def test_mpp_override_and_unknown(tmp_path: Path) -> None:
    path = tmp_path / "nompp.tif"
    make_blob_slide(path, shape=(300, 300), mpp=None, physical_mpp=0.5, seed=0, n=5)
    slide = open_slide(path)
    assert slide.mpp is None and slide.mpp_source == "unknown"
    with pytest.raises(MppUnknownError, match="--mpp"):
        slide.scale_for_mpp(0.5)
    assert slide.scale_for_level(0).shape == (300, 300)
    slide = open_slide(path, mpp=0.25)
    assert slide.mpp == 0.25 and slide.mpp_source == "override"
    assert slide.scale_for_mpp(0.5).level.index == 1
    with pytest.raises(ValueError, match="mpp"):
        open_slide(path, mpp=-1)


def test_ome_tiff_pixel_size(tmp_path: Path) -> None:
    path = tmp_path / "x.ome.tif"
    make_blob_slide(path, shape=(256, 300), mpp=0.3, physical_mpp=0.3, seed=0, n=3, ome=True)
    slide = open_slide(path)
    assert slide.vendor == "ome-tiff" and slide.mpp == pytest.approx(0.3)
    assert slide.slide_id == "x"


@pytest.mark.parametrize(
    ("xml", "expected"),
    [
        ('<OME><Image><Pixels PhysicalSizeX="0.25" PhysicalSizeY="0.25"/></Image></OME>', 0.25),
        ('<Pixels PhysicalSizeX="250" PhysicalSizeXUnit="nm">', 0.25),
        ('<Pixels PhysicalSizeX="0.5" PhysicalSizeXUnit="furlong">', None),
        ("<Pixels SizeX='3'>", None),
        (None, None),
    ],
)
def test_mpp_from_ome_xml(xml, expected) -> None:
    got = _mpp_from_ome(SimpleNamespace(ome_metadata=xml))
    assert got == (pytest.approx(expected) if expected else None)


def test_dask_view_matches_reads(blob_slide: BlobSlide) -> None:
    slide = open_slide(blob_slide.path)
    scale = slide.scale_for_mpp(0.5)
    array = slide.to_dask(scale, chunks=((256, 256, 88), (300, 500)))
    whole = array.compute()
    assert whole.shape == (600, 800, 3) and whole.dtype == np.uint8
    np.testing.assert_array_equal(
        whole[100:300, 250:700], slide.read_region(100, 250, 200, 450, level=1)
    )


def test_resampled_view_is_exact_per_window(blob_slide: BlobSlide) -> None:
    slide = open_slide(blob_slide.path)
    scale = slide.scale_for_mpp(0.75)
    reader = slide.reader(scale)
    assert isinstance(reader, ResampledReader)
    source = slide.read_region(0, 0, 600, 800, level=1)
    _, _, wy = resample_weights(0, reader.shape[0], scale.factor, 600)
    _, _, wx = resample_weights(0, reader.shape[1], scale.factor, 800)
    whole = resample_window(source, wy, wx)
    chunked = slide.to_dask(scale, chunks=(97, 131)).compute()
    np.testing.assert_array_equal(chunked, whole)


def test_readers_pickle_as_path_and_level(blob_slide: BlobSlide) -> None:
    reader = LevelReader(blob_slide.path, 2)
    clone = pickle.loads(pickle.dumps(reader))
    assert (clone.path, clone.level, clone.shape) == (reader.path, 2, (300, 400, 3))
    np.testing.assert_array_equal(clone[10:20, 30:50], reader[10:20, 30:50])
    resampled = pickle.loads(pickle.dumps(ResampledReader(reader, 1.3)))
    assert resampled.shape == (231, 308, 3)
    slide = open_slide(blob_slide.path)
    assert pickle.loads(pickle.dumps(slide)) == slide
    with pytest.raises(ValueError, match="level"):
        LevelReader(blob_slide.path, 3)


def test_tissue_mask_of_blob_slide(blob_slide: BlobSlide, blank_slide: Path) -> None:
    mask = open_slide(blob_slide.path).tissue_mask()
    assert mask.fraction > 0.9  # pink everywhere
    assert open_slide(blank_slide).tissue_mask().fraction == 0.0


def test_missing_and_non_slide_files(tmp_path: Path) -> None:
    with pytest.raises(SlideNotFoundError, match="not found"):
        open_slide(tmp_path / "absent.svs")
    with pytest.raises(SlideNotFoundError, match="not a file"):
        open_slide(tmp_path)
    text = tmp_path / "notes.svs"
    text.write_text("not a slide\n")
    with pytest.raises(SlideFormatError, match="not a readable"):
        open_slide(text)
    # Errors refine the built-ins callers may already catch.
    with pytest.raises(FileNotFoundError):
        open_slide(tmp_path / "absent.svs")
    with pytest.raises(ValueError, match="not a readable"):
        open_slide(text)


def test_truncated_files(tmp_path: Path, sample_slide: Path, blob_slide: BlobSlide) -> None:
    data = sample_slide.read_bytes()
    cut = tmp_path / "cut.svs"
    cut.write_bytes(data[: len(data) // 2])  # the SVS directory sits after the tile data
    with pytest.raises(SlideError):
        open_slide(cut)
    data = blob_slide.path.read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(data[: len(data) // 2])  # directory first: its tiles end past the file
    with pytest.raises(SlideFormatError, match=r"cannot read .* \(truncated file\?\)"):
        open_slide(cut)


def test_a_corrupt_tile_fails_its_read_once(tmp_path: Path, blob_slide: BlobSlide) -> None:
    import tifffile

    data = bytearray(blob_slide.path.read_bytes())
    with tifffile.TiffFile(blob_slide.path) as tf:
        page = tf.series[0].levels[0].keyframe
        offset, count = page.dataoffsets[1], page.databytecounts[1]
    data[offset + 2 : offset + count] = bytes(count - 2)  # keep the JPEG start marker only
    bad = tmp_path / "bad.tif"
    bad.write_bytes(bytes(data))
    slide = open_slide(bad)  # the header is sound
    assert slide.read_region(0, 0, 200, 200).shape == (200, 200, 3)  # tile 0 is intact
    with pytest.raises(SlideReadError, match="tile 1 is corrupt"):
        slide.read_region(0, 0, 1200, 1600)


@pytest.mark.parametrize("reduce", [2, 4, 8])
def test_jpeg_tiles_decoded_smaller_match_the_shrunk_level(
    sample_slide: Path, blob_slide: BlobSlide, reduce: int
) -> None:
    """libjpeg's scaled decoding ~ the area mean of the full decode (RGB and YCbCr JPEG)."""
    from wsidet.slide.reader import LevelReader, ReducedLevelReader

    for path in (sample_slide, blob_slide.path):  # Aperio RGB JPEG; tifffile YCbCr JPEG
        assert reduce in open_slide(path).levels[0].reductions
        full = LevelReader(path, 0).read(0, 480, 0, 480).astype(np.float64)
        small = ReducedLevelReader(path, 0, reduce).read(0, 480 // reduce, 0, 480 // reduce)
        area = full.reshape(480 // reduce, reduce, 480 // reduce, reduce, 3).mean(axis=(1, 3))
        assert small.shape == area.shape
        assert np.abs(small - area).mean() < 2.0, path  # grey levels out of 255


def test_dct_reduction_is_a_choice_of_scale(blob_slide: BlobSlide) -> None:
    slide = open_slide(blob_slide.path)  # 0.25 µm/px, levels 1, 2, 4
    assert slide.scale_for_mpp(0.5).level.index == 1  # a real level is preferred
    coarse = slide.scale_for_mpp(2.0)
    assert (coarse.level.index, coarse.reduce, coarse.factor) == (2, 2, 2.0)
    plain = slide.scale_for_mpp(2.0, dct_reduce=False)
    assert (plain.level.index, plain.reduce, plain.factor) == (2, 1, 2.0)
