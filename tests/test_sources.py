"""Annotation files, image keys for split files, and annotated regions as training sources."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
from PIL import Image

from tests.conftest import make_blob_slide
from tests.synthetic import blob_image, random_points
from wsidet.annotations.files import (
    Annotated,
    AnnotationError,
    find_pairs,
    read_annotations,
    select_fold,
)
from wsidet.annotations.sources import Window, load_source, load_sources
from wsidet.methods import get_method
from wsidet.train.dataset import PointDataset

METHOD = get_method("voca", width=4)


def feature(kind: str, coordinates: object) -> dict:
    return {"type": "Feature", "geometry": {"type": kind, "coordinates": coordinates}}


def _touch_pairs(tmp_path: Path, stems: list[str]) -> tuple[Path, Path]:
    images, points = tmp_path / "images", tmp_path / "points"
    images.mkdir()
    points.mkdir()
    for stem in stems:
        Image.new("RGB", (4, 4)).save(images / f"{stem}.png")
        (points / f"{stem}.csv").write_text("x,y\n1,2\n")
    return images, points


def test_keys_are_numbers_only_when_unambiguous(tmp_path: Path) -> None:
    tcga = ["TCGA-A1-A0SB-01Z", "TCGA-A1-A0SD-01Z"]  # several numbers, and shared ones
    images, points = _touch_pairs(tmp_path, ["img7", "img012", *tcga, "x1_a", "x1_b"])
    keys = {p.image.stem: p.key for p in find_pairs(images, points)}
    assert keys == {
        "img7": "7", "img012": "12", tcga[0]: tcga[0], tcga[1]: tcga[1],
        "x1_a": "x1_a", "x1_b": "x1_b",
    }  # fmt: skip
    split = tmp_path / "split.csv"
    split.write_text(f"image_id,fold\n007,1\n12,2\n{tcga[0]},1\n{tcga[1]},2\nx1_a,1\n")
    fold1 = {p.image.stem for p in select_fold(find_pairs(images, points), split, 1)}
    fold2 = {p.image.stem for p in select_fold(find_pairs(images, points), split, 2)}
    assert fold1 == {"img7", tcga[0], "x1_a"} and fold2 == {"img012", tcga[1]}


def test_points_from_qupath_geojson_and_geoparquet(tmp_path: Path) -> None:
    doc = {
        "type": "FeatureCollection",
        "features": [
            feature("Point", [10.5, 20.5]),
            # QuPath's points tool exports one annotation holding a MultiPoint.
            feature("MultiPoint", [[1.5, 2.5], [3.5, 4.5]]),
            feature("Polygon", [[[0, 0], [50, 0], [50, 30], [0, 0]]]),
        ],
    }  # fmt: skip
    path = tmp_path / "a.geojson"
    path.write_text(json.dumps(doc))
    notes = read_annotations(path)
    np.testing.assert_allclose(notes.points_yx, [[20, 10], [2, 1], [4, 3]])
    np.testing.assert_allclose(notes.regions, [[-0.5, -0.5, 29.5, 49.5]])
    only_regions = tmp_path / "b.geojson"
    only_regions.write_text(json.dumps({**doc, "features": doc["features"][2:]}))
    with pytest.raises(AnnotationError, match="no Point or MultiPoint"):
        read_annotations(only_regions)
    frame = gpd.GeoDataFrame(geometry=gpd.points_from_xy([10.5, 3.5], [20.5, 4.5]))
    frame.to_parquet(tmp_path / "c.parquet")  # geometry only, no x/y columns
    np.testing.assert_allclose(
        read_annotations(tmp_path / "c.parquet").points_yx, [[20, 10], [4, 3]]
    )


def test_regions_become_sources_with_their_points(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    pts = random_points(rng, (200, 300), 20, min_sep=20, margin=10)
    image = tmp_path / "img1.png"
    Image.fromarray(blob_image((200, 300), pts, 5.0, rng=rng)).save(image)
    boxes = [(10, 20, 110, 150), (100, 160, 190, 290)]  # (y0, x0, y1, x1) pixel indices
    features = [feature("MultiPoint", (pts[:, ::-1] + 0.5).tolist())] + [
        feature("Polygon", [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]])
        for y0, x0, y1, x1 in boxes
    ]
    points = tmp_path / "img1.geojson"
    points.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    with pytest.raises(AnnotationError, match="pixel size of plain images must be given"):
        load_sources(Annotated("1", image, points), METHOD)
    sources = load_sources(Annotated("1", image, points), METHOD, image_mpp=METHOD.mpp)
    assert [s.key for s in sources] == ["1#0", "1#1"]
    pixels = np.asarray(Image.open(image).convert("RGB"))
    for source, (y0, x0, y1, x1) in zip(sources, boxes, strict=True):
        assert isinstance(source, Window) and source.shape == (y1 - y0, x1 - x0)
        np.testing.assert_array_equal(source.read(0, 5, 0, 7), pixels[y0 : y0 + 5, x0 : x0 + 7])
        pixel = np.floor(pts + 0.5)
        inside = (pixel >= [y0, x0]).all(1) & (pixel < [y1, x1]).all(1)
        np.testing.assert_allclose(source.points_yx, pts[inside] - [y0, x0])
    with pytest.raises(AnnotationError, match="2 regions"):
        load_source(Annotated("1", image, points), METHOD, image_mpp=METHOD.mpp)
    # Patches are cut inside the regions only.
    dataset = PointDataset(sources, METHOD, patch=64, samples=4, augment=None)
    assert all(dataset[i][0].shape == (3, 64, 64) for i in range(4))


def test_a_slide_is_limited_to_its_annotated_area(tmp_path: Path) -> None:
    path = tmp_path / "s.tif"
    truth = make_blob_slide(path, shape=(800, 900), mpp=0.5, physical_mpp=0.5, seed=2, n=40)
    near = truth.points_xy[(truth.points_xy[:, 0] < 400) & (truth.points_xy[:, 1] < 300)]
    frame = gpd.GeoDataFrame(geometry=gpd.points_from_xy(near[:, 0], near[:, 1]))
    frame.to_parquet(tmp_path / "s.parquet")
    (source,) = load_sources(Annotated("s", path, tmp_path / "s.parquet"), METHOD)
    assert isinstance(source, Window)
    y0, x0, y1, x1 = source.box
    idx = near[:, ::-1] - 0.5
    assert (y0, x0) == (
        max(0, int(np.floor(idx[:, 0].min() - 64 + 0.5))),
        max(0, int(np.floor(idx[:, 1].min() - 64 + 0.5))),
    )
    assert y1 <= 300 + 64 + 1 and x1 <= 400 + 64 + 1
    assert len(source.points_yx) == len(near)
