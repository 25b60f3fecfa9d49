"""The density grid: counts per cell that add up to the points, as GeoParquet and QuPath tiles."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsidet.output.density import count_grid, density_grid
from wsidet.output.detections import detections_frame, read_detections, write_detections

sizes = st.tuples(st.integers(1, 3000), st.integers(1, 3000))
unit = st.floats(0, 1, exclude_max=True)


@settings(max_examples=80, deadline=None)
@given(
    size=sizes,
    cell=st.floats(7.0, 900.0),
    fractions=st.lists(st.tuples(unit, unit), max_size=60),
)
def test_counts_equal_a_histogram_with_the_slide_edge_as_last_edge(size, cell, fractions) -> None:
    height, width = size
    xy = np.array([(fx * width, fy * height) for fx, fy in fractions]).reshape(-1, 2)
    counts = count_grid(xy, height, width, cell)
    rows, cols = counts.shape
    assert (rows, cols) == (int(np.ceil(height / cell)), int(np.ceil(width / cell)))
    assert counts.sum() == len(xy)
    y_edges = np.append(np.arange(rows) * cell, height)
    x_edges = np.append(np.arange(cols) * cell, width)
    reference, _, _ = np.histogram2d(xy[:, 1], xy[:, 0], bins=[y_edges, x_edges])
    assert np.array_equal(counts, reference.astype(np.int64))


def test_points_outside_the_image_are_not_counted() -> None:
    xy = np.array([[-1.0, 5.0], [5.0, 100.0], [100.0, 5.0], [5.0, 5.0]])
    assert count_grid(xy, 100, 100, 50).sum() == 1
    with pytest.raises(ValueError, match="cell"):
        count_grid(xy, 100, 100, 0.0)


def frame(n: int = 200, seed: int = 0) -> gpd.GeoDataFrame:
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, [1000, 700], (n, 2))
    meta = {"slide": {"slide_id": "s1", "mpp": 0.5, "width": 1000, "height": 700}, "method": "log"}
    return detections_frame(xy, rng.random(n), method="log", slide_id="s1", metadata=meta)


def test_the_grid_is_polygons_with_counts_areas_and_densities() -> None:
    points = frame()
    grid = density_grid(points, cell_um=100.0)  # 200 px cells: 4 rows × 5 columns
    assert len(grid) == 20 and grid["count"].sum() == len(points)
    assert grid.geometry.total_bounds.tolist() == [0.0, 0.0, 1000.0, 700.0]
    assert grid.geometry.area.sum() == pytest.approx(1000 * 700)
    # The last row is cut at the slide's edge: 100 px of 200, half the area.
    last = grid[grid["row"] == 3]
    assert np.allclose(last["area_mm2"], 0.1 * 0.05)
    assert np.allclose(grid["per_mm2"], grid["count"] / grid["area_mm2"])
    joined = gpd.sjoin(points, grid, predicate="within")
    per_cell = joined.groupby("index_right").size().reindex(grid.index, fill_value=0)
    assert (per_cell == grid["count"]).all()


def test_a_grid_needs_the_pixel_size() -> None:
    points = frame()
    points.attrs["wsidet"]["slide"]["mpp"] = None
    with pytest.raises(ValueError, match="pixel size"):
        density_grid(points)


def test_written_beside_the_points_and_read_back(tmp_path: Path) -> None:
    points = frame()
    paths = write_detections(
        points, tmp_path, formats=["parquet", "density", "density.geojson"], cell_um=50.0
    )
    grid = gpd.read_parquet(paths["density"])
    assert grid["count"].sum() == len(points) and grid.attrs["wsidet"]["cell_um"] == 50.0
    doc = json.loads(paths["density.geojson"].read_text())
    tiles = doc["features"]
    assert len(tiles) == len(grid) and tiles[0]["properties"]["objectType"] == "tile"
    assert sum(t["properties"]["measurements"]["Nuclei"] for t in tiles) == len(points)
    # The folder still reads as one slide's detections: the grid is not mistaken for one.
    assert len(read_detections(tmp_path)) == len(points)
