"""Detect nuclei in the sample slide, then analyse them with geopandas.

    python examples/spatial_analysis.py [SLIDE] [--out results]

Shows the three things most analyses start from: nucleus density on a grid of 100 µm squares
(written as a GeoParquet layer you can open in QGIS or QuPath), nearest-neighbour distances, and
selecting the nuclei inside a region of interest.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import geopandas as gpd
import numpy as np
import shapely
from scipy.spatial import cKDTree

import wsidet

ROOT = Path(__file__).resolve().parent


def density_grid(points: gpd.GeoDataFrame, cell_px: float) -> gpd.GeoDataFrame:
    """Squares of ``cell_px`` level-0 pixels with the number of nuclei in each."""
    col = np.floor(points["x"].to_numpy() / cell_px).astype(int)
    row = np.floor(points["y"].to_numpy() / cell_px).astype(int)
    cells, counts = np.unique(np.stack([row, col], axis=1), axis=0, return_counts=True)
    squares = shapely.box(
        cells[:, 1] * cell_px,
        cells[:, 0] * cell_px,
        (cells[:, 1] + 1) * cell_px,
        (cells[:, 0] + 1) * cell_px,
    )
    return gpd.GeoDataFrame({"nuclei": counts}, geometry=squares, crs=None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("slide", nargs="?", default=ROOT / "data" / "CMU-1-Small-Region.svs")
    parser.add_argument("--out", type=Path, default=Path("results"))
    args = parser.parse_args()

    points = wsidet.detect_slide(args.slide)
    mpp = points.attrs["wsidet"]["slide"]["mpp"]
    print(f"{len(points)} nuclei at {mpp:.3f} µm/px")

    cell_px = 100.0 / mpp  # 100 µm squares
    grid = density_grid(points, cell_px)
    grid["per_mm2"] = grid["nuclei"] / (0.1 * 0.1)
    args.out.mkdir(parents=True, exist_ok=True)
    grid_path = args.out / f"{points.attrs['wsidet']['slide']['slide_id']}-density.parquet"
    grid.to_parquet(grid_path, schema_version="1.1.0")
    print(
        f"density per 100 µm square: median {grid['per_mm2'].median():.0f}/mm², "
        f"max {grid['per_mm2'].max():.0f}/mm² -> {grid_path}"
    )

    xy = points[["x", "y"]].to_numpy()
    distances, _ = cKDTree(xy).query(xy, k=2)
    nn_um = distances[:, 1] * mpp
    q1, median, q3 = np.percentile(nn_um, [25, 50, 75])
    print(f"nearest-neighbour distance: median {median:.1f} µm (IQR {q1:.1f}-{q3:.1f})")

    roi = shapely.Point(1100, 1500).buffer(200 / mpp)  # a 200 µm radius disc
    inside = points[points.within(roi)]
    print(f"{len(inside)} nuclei within 200 µm of (1100, 1500) px")


if __name__ == "__main__":
    main()
