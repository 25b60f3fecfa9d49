"""Regions in, counts out: detection limited to polygons, with a region column and a table."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st
from wsidet.cli.main import main

from tests.conftest import BlobSlide
from wsidet.inference.pipeline import detect
from wsidet.inference.spec import ExecOptions, RunSpec
from wsidet.methods import get_method
from wsidet.output.detections import read_detections
from wsidet.slide.regions import Regions, RegionsError, read_regions

LOG = get_method("log")


def qupath_annotations(path: Path, polygons: dict[str, list[tuple[float, float]]]) -> Path:
    """A GeoJSON FeatureCollection as QuPath exports annotations."""
    features = [
        {
            "type": "Feature",
            "id": f"id-{i}",
            "geometry": {"type": "Polygon", "coordinates": [[*ring, ring[0]]]},
            "properties": {"objectType": "annotation", "name": name},
        }
        for i, (name, ring) in enumerate(polygons.items())
    ]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def square(x0: float, y0: float, size: float) -> list[tuple[float, float]]:
    return [(x0, y0), (x0 + size, y0), (x0 + size, y0 + size), (x0, y0 + size)]


def test_regions_are_read_from_qupath_geojson_and_geoparquet(tmp_path: Path) -> None:
    geojson = qupath_annotations(
        tmp_path / "a.geojson", {"tumour": square(0, 0, 10), "stroma": square(20, 0, 5)}
    )
    regions = read_regions(geojson)
    assert regions.names == ("tumour", "stroma")
    assert [g.area for g in regions.geometries] == [100.0, 25.0]
    layer = gpd.GeoDataFrame({"name": ["a"]}, geometry=[shapely.Polygon(square(0, 0, 4))])
    layer.to_parquet(tmp_path / "b.parquet")
    assert read_regions(tmp_path / "b.parquet").names == ("a",)
    unnamed = {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [square(0, 0, 1)]}}
    (tmp_path / "c.geojson").write_text(json.dumps(unnamed))
    assert read_regions(tmp_path / "c.geojson").names == ("region 1",)


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ('{"type": "Point", "coordinates": [1, 2]}', "no polygons"),
        ("not json", "cannot read"),
    ],
)
def test_unusable_regions_are_refused_in_one_line(tmp_path: Path, content, fragment) -> None:
    path = tmp_path / "r.geojson"
    path.write_text(content)
    with pytest.raises(RegionsError, match=fragment) as caught:
        read_regions(path)
    assert isinstance(caught.value, ValueError) and "\n" not in str(caught.value)


@settings(max_examples=40, deadline=None)
@given(
    boxes=st.lists(
        st.tuples(st.integers(0, 90), st.integers(0, 90), st.integers(1, 40)),
        min_size=1,
        max_size=4,
    ),
    points=st.lists(st.tuples(st.floats(0, 130), st.floats(0, 130)), max_size=40),
)
def test_each_point_gets_the_first_region_holding_it(boxes, points) -> None:
    geoms = [shapely.box(x, y, x + s, y + s) for x, y, s in boxes]
    regions = Regions(
        tuple(f"r{i}" for i in range(len(geoms))), tuple(shapely.to_wkb(g) for g in geoms)
    )
    xy = np.array(points, np.float64).reshape(-1, 2)
    labels = regions.label(xy)
    for (x, y), label in zip(xy, labels, strict=True):
        holding = [i for i, g in enumerate(geoms) if shapely.contains_xy(g, x, y)]
        assert label == (holding[0] if holding else -1)


def test_detection_is_limited_to_regions_and_counted_per_region(
    blob_slide: BlobSlide, tmp_path: Path
) -> None:
    # Level-0 pixels of the 1600 × 1200 blob slide: two regions, most nuclei outside both.
    path = qupath_annotations(
        tmp_path / "regions.geojson",
        {"left": square(100, 100, 500), "right": [(900, 300), (1500, 400), (1200, 1100)]},
    )
    regions = read_regions(path)
    options = ExecOptions(chunk=256, device="cpu")
    everywhere = detect(blob_slide.path, RunSpec(LOG), options, scheduler="sync")
    limited = detect(blob_slide.path, RunSpec(LOG, regions=regions), options, scheduler="sync")
    # The same points as a spatial join of the unlimited run with the regions.
    layer = gpd.GeoDataFrame({"name": regions.names}, geometry=regions.geometries)
    joined = gpd.sjoin(everywhere, layer, predicate="within")
    assert 0 < len(limited) < len(everywhere)
    assert sorted(map(tuple, limited[["x", "y"]].to_numpy())) == sorted(
        map(tuple, joined[["x", "y"]].to_numpy())
    )
    assert dict(limited["region"].value_counts()) == dict(joined["name"].value_counts())
    table = {r["region"]: r for r in limited.attrs["wsidet"]["regions"]}
    assert {k: v["count"] for k, v in table.items()} == dict(joined["name"].value_counts())
    mpp = limited.attrs["wsidet"]["slide"]["mpp"]
    assert table["left"]["area_mm2"] == pytest.approx(500 * 500 * mpp**2 / 1e6)
    assert table["left"]["per_mm2"] == pytest.approx(
        table["left"]["count"] / table["left"]["area_mm2"]
    )
    assert RunSpec(LOG, regions=regions).signature("f") != RunSpec(LOG).signature("f")
    assert "regions" not in RunSpec(LOG).signature("f")  # older outputs stay reusable


def test_cli_writes_the_region_column_and_table(blob_slide: BlobSlide, tmp_path: Path) -> None:
    path = qupath_annotations(tmp_path / "r.geojson", {"roi": square(0, 0, 800)})
    out = tmp_path / "out"
    args = ["run", str(blob_slide.path), "--out", str(out), "--method", "log", "-q"]
    assert main([*args, "--regions", str(path)]) == 0
    frame = read_detections(out / "blobs.parquet")
    assert set(frame["region"]) == {"roi"}
    assert (frame["x"] < 800).all() and (frame["y"] < 800).all()
    with open(out / "blobs.regions.csv") as fh:
        (row,) = list(csv.DictReader(fh))
    assert row["region"] == "roi" and int(row["count"]) == len(frame)


def test_a_region_nested_in_another_has_its_own_count(
    blob_slide: BlobSlide, tmp_path: Path
) -> None:
    path = qupath_annotations(
        tmp_path / "nested.geojson",
        {"tumour": square(0, 0, 1200), "hotspot": square(300, 300, 400)},
    )
    regions = read_regions(path)
    options = ExecOptions(chunk=256, device="cpu")
    limited = detect(blob_slide.path, RunSpec(LOG, regions=regions), options, scheduler="sync")
    table = {r["region"]: r["count"] for r in limited.attrs["wsidet"]["regions"]}
    inside = shapely.contains_xy(regions.geometries[1], limited["x"], limited["y"])
    assert table["hotspot"] == int(inside.sum()) > 0  # counted although "tumour" comes first
    assert table["tumour"] == len(limited)
    assert set(limited["region"]) == {"tumour"}  # the column names the first region only
    assert limited.attrs["wsidet"]["warnings"] == [] or all(
        "per mm²" not in w for w in limited.attrs["wsidet"]["warnings"]
    )  # no density warning from points inside drawn regions
