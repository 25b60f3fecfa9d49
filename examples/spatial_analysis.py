"""Analyse the nuclei a run found, with geopandas: reads the results, never re-detects.

    wsidet run examples/data/CMU-1-Small-Region.svs --out results     # once
    python examples/spatial_analysis.py results [SLIDE_ID]

Shows the three things most analyses start from: the density grid the run wrote (nuclei per
100 µm square, ``SLIDE_ID.density.parquet``; open it in QGIS, or ``--format density.geojson``
for QuPath), nearest-neighbour distances, and the nuclei inside a region of interest.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import geopandas as gpd
import numpy as np
import shapely
from scipy.spatial import cKDTree

import wsidet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, nargs="?", default=Path("results"))
    parser.add_argument("slide_id", nargs="?", help="default: the folder's first slide")
    args = parser.parse_args()

    points = wsidet.read_detections(args.results)  # every done slide of the folder
    if points.empty:
        raise SystemExit(f"no detections in {args.results}: run wsidet run SLIDE --out it first")
    slide_id = args.slide_id or str(points["slide_id"].iloc[0])
    points = points[points["slide_id"] == slide_id]
    mpp = wsidet.read_detections(args.results / f"{slide_id}.parquet").attrs["wsidet"]["slide"][
        "mpp"
    ]
    print(f"{slide_id}: {len(points)} nuclei at {mpp:.3f} µm/px")

    grid_path = args.results / f"{slide_id}.density.parquet"
    if grid_path.is_file():
        grid = gpd.read_parquet(grid_path)
        full = grid[grid["area_mm2"] > 0.99 * grid["area_mm2"].max()]  # not cut at the edge
        occupied = full[full["count"] > 0]
        print(
            f"density per {grid.attrs.get('wsidet', {}).get('cell_um', 100):g} µm square: "
            f"median {occupied['per_mm2'].median():.0f}/mm², "
            f"max {occupied['per_mm2'].max():.0f}/mm² ({len(occupied)} cells with nuclei)"
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
