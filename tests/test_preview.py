"""The QC preview: written beside the outputs, of the documented size, with informative fields."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image
from wsidet.cli.main import main

from tests.conftest import BlobSlide
from wsidet.output.preview import FIELD, THUMB, choose_fields, preview_size
from wsidet.slide.wsi import open_slide

shapes = st.tuples(st.integers(1, 6), st.integers(1, 6))


@settings(max_examples=60, deadline=None)
@given(data=st.data(), shape=shapes, seed=st.integers(0, 2**31))
def test_fields_are_dense_sparse_and_random_on_tissue(data, shape, seed) -> None:
    counts = data.draw(hnp.arrays(np.int64, shape, elements=st.integers(0, 50)))
    tissue = data.draw(hnp.arrays(np.bool_, shape))
    fields = choose_fields(counts, tissue, seed)
    cells = [cell for _, cell in fields]
    (why, dense), *rest = fields
    assert why == "dense" and counts[dense] == counts.max()
    allowed = tissue if tissue.any() else np.ones(shape, bool)
    others = int(allowed.sum()) - int(allowed[dense])
    assert len(set(cells)) == len(cells) == 1 + min(2, others)
    for why, cell in rest:
        assert allowed[cell], why
    if rest and rest[0][0] == "sparse":
        others = [c for c in zip(*np.nonzero(allowed), strict=True) if c != dense]
        assert counts[rest[0][1]] == min(counts[c] for c in others)
    assert choose_fields(counts, tissue, seed) == fields  # the same picture when made again


def test_run_writes_a_preview_of_the_documented_size(blob_slide: BlobSlide, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main(["run", str(blob_slide.path), "--out", str(out), "--method", "log", "-q"]) == 0
    png = out / "blobs.preview.png"
    thumb, _ = open_slide(blob_slide.path).thumbnail(THUMB)
    with Image.open(png) as image:
        assert image.format == "PNG" and image.mode == "RGB"
        assert (image.height, image.width) == preview_size(thumb.shape[:2])
        pixels = np.asarray(image)
    assert max(thumb.shape[:2]) == THUMB
    # The dense field (top right) holds drawn points: cyan circle pixels.
    field = pixels[28 + 8 : 28 + 8 + FIELD, -8 - FIELD : -8]
    assert ((field[..., 0] < 60) & (field[..., 1] > 200) & (field[..., 2] > 200)).sum() > 50

    png.unlink()
    assert main(["preview", str(out)]) == 0  # from the results, the slide where they say
    assert png.is_file()


def test_no_preview_and_a_moved_slide(blob_slide: BlobSlide, tmp_path: Path, capsys) -> None:
    moved = tmp_path / "moved.tif"
    shutil.copy(blob_slide.path, tmp_path / "blobs.tif")
    out = tmp_path / "out"
    args = ["run", str(tmp_path / "blobs.tif"), "--out", str(out), "--method", "log", "-q"]
    assert main([*args, "--no-preview"]) == 0
    assert not (out / "blobs.preview.png").exists()
    (tmp_path / "blobs.tif").rename(moved)
    capsys.readouterr()
    assert main(["preview", str(out / "blobs.parquet")]) == 1
    assert "not found" in capsys.readouterr().err
    assert main(["preview", str(out / "blobs.parquet"), str(moved)]) == 0
    assert (out / "blobs.preview.png").is_file()


@pytest.mark.parametrize("bad", [["preview", "nowhere.parquet"]])
def test_preview_of_nothing_is_one_line(bad, capsys) -> None:
    assert main(bad) == 1
    err = capsys.readouterr().err
    assert err.startswith("wsidet: error: ") and err.count("\n") == 1


def test_moved_slides_are_reused_and_their_preview_drawn_where_they_are(
    blob_slide: BlobSlide, tmp_path: Path
) -> None:
    first, moved, out = tmp_path / "a", tmp_path / "b", tmp_path / "out"
    first.mkdir()
    shutil.copy(blob_slide.path, first / "blobs.tif")
    args = ["--out", str(out), "--method", "log", "-q"]
    assert main(["run", str(first / "blobs.tif"), *args]) == 0
    (out / "blobs.preview.png").unlink()
    first.rename(moved)  # the metadata still names a/blobs.tif
    assert main(["run", str(moved / "blobs.tif"), *args]) == 0  # reused, not failed
    assert (out / "blobs.preview.png").is_file()
