from __future__ import annotations

import gzip
import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsidet.errors import OutputExistsError
from wsidet.output.detections import (
    detections_frame,
    read_detections,
    write_detections,
    write_geojson,
    write_geoparquet,
)
from wsidet.output.files import atomic_path

META = {"slide": {"slide_id": "s1", "mpp": 0.25, "width": 100, "height": 80}, "method": "log"}


def frame(n: int = 5, seed: int = 0) -> gpd.GeoDataFrame:
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 1000, (n, 2))
    return detections_frame(xy, rng.random(n), method="log", slide_id="s1", metadata=META)


def test_schema() -> None:
    f = frame()
    assert list(f.columns) == ["x", "y", "score", "method", "slide_id", "geometry"]
    assert f["x"].dtype == np.float64 and f["score"].dtype == np.float32
    assert f["method"].dtype == "category" and f["slide_id"].dtype == "category"
    assert f.crs is None and (f.geometry.x == f["x"]).all() and (f.geometry.y == f["y"]).all()
    with pytest.raises(ValueError, match="scores"):
        detections_frame(np.zeros((2, 2)), np.zeros(3), method="m", slide_id="s")


def test_geoparquet_is_1_1_with_metadata(tmp_path: Path) -> None:
    path = write_geoparquet(frame(), tmp_path / "s1.parquet")
    meta = pq.read_schema(path).metadata
    geo = json.loads(meta[b"geo"])
    assert geo["version"] == "1.1.0" and geo["primary_column"] == "geometry"
    assert geo["columns"]["geometry"]["geometry_types"] == ["Point"]
    assert json.loads(meta[b"PANDAS_ATTRS"])["wsidet"]["slide"]["mpp"] == 0.25
    back = read_detections(path)
    assert back.attrs["wsidet"] == META


@settings(max_examples=25)
@given(
    xy=st.lists(st.tuples(st.floats(0, 1e5), st.floats(0, 1e5)), max_size=40),
    gz=st.booleans(),
)
def test_writers_round_trip(tmp_path_factory, xy, gz) -> None:
    tmp = tmp_path_factory.mktemp("rt")
    pts = np.array(xy, float).reshape(-1, 2)
    scores = np.linspace(0, 1, len(pts)).astype(np.float32)
    f = detections_frame(pts, scores, method="log", slide_id="s1", metadata=META)
    p = read_detections(write_geoparquet(f, tmp / "s1.parquet"))
    np.testing.assert_array_equal(p[["x", "y"]].to_numpy(), pts)
    np.testing.assert_array_equal(p["score"].to_numpy(), scores)
    g = read_detections(write_geojson(f, tmp / ("s1.geojson.gz" if gz else "s1.geojson")))
    np.testing.assert_allclose(g[["x", "y"]].to_numpy(), pts, atol=5e-4)  # 3 decimals
    np.testing.assert_allclose(g["score"].to_numpy(), scores, rtol=1e-5)
    assert list(g["method"].cat.categories) == ["log"]
    assert g.attrs.get("wsidet", {}).get("slide") == META["slide"]


def test_geojson_follows_qupath_rules(tmp_path: Path) -> None:
    path = write_geojson(frame(3), tmp_path / "s1.geojson")
    doc = json.loads(path.read_text())
    assert doc["type"] == "FeatureCollection" and len(doc["features"]) == 3
    for feature in doc["features"]:
        assert feature["type"] == "Feature" and feature["geometry"]["type"] == "Point"
        props = feature["properties"]
        assert props["objectType"] == "detection"
        cls = props["classification"]
        assert isinstance(cls["name"], str) and len(cls["color"]) == 3
        assert all(isinstance(c, int) and 0 <= c <= 255 for c in cls["color"])
        assert all(isinstance(v, int | float) for v in props["measurements"].values())
    gz = write_geojson(frame(3), tmp_path / "s1.geojson.gz")
    with gzip.open(gz, "rt") as fh:
        assert json.load(fh)["features"] == doc["features"]


def test_empty_outputs_are_valid(tmp_path: Path) -> None:
    empty = detections_frame(np.zeros((0, 2)), np.zeros(0), method="log", slide_id="s1")
    paths = write_detections(empty, tmp_path, formats=["parquet", "geojson"])
    assert len(read_detections(paths["parquet"])) == 0
    assert json.loads(paths["geojson"].read_text())["features"] == []


def test_no_overwrite_without_consent(tmp_path: Path) -> None:
    paths = write_detections(frame(), tmp_path)
    before = {p: p.read_bytes() for p in paths.values()}
    with pytest.raises(OutputExistsError, match="--overwrite"):
        write_detections(frame(7, seed=1), tmp_path)
    assert {p: p.read_bytes() for p in paths.values()} == before
    write_detections(frame(7, seed=1), tmp_path, overwrite=True)
    assert len(read_detections(paths["parquet"])) == 7
    with pytest.raises(FileExistsError):  # refines the built-in
        write_geoparquet(frame(), paths["parquet"])


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "out" / "x.parquet"

    def write_then_fail() -> None:
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_then_fail()
    assert list((tmp_path / "out").iterdir()) == []


def test_read_folder_and_bad_paths(tmp_path: Path) -> None:
    a = detections_frame(np.ones((2, 2)), np.ones(2), method="log", slide_id="a")
    b = detections_frame(np.zeros((3, 2)), np.ones(3), method="log", slide_id="b")
    write_geoparquet(a, tmp_path / "a.parquet")
    write_geoparquet(b, tmp_path / "b.parquet")
    both = read_detections(tmp_path)
    assert len(both) == 5 and set(both["slide_id"].cat.categories) == {"a", "b"}
    with pytest.raises(FileNotFoundError):
        read_detections(tmp_path / "missing.parquet")
    (tmp_path / "x.csv").write_text("x,y\n")
    with pytest.raises(ValueError, match="formats"):
        write_detections(a, tmp_path, formats=["csv"])
