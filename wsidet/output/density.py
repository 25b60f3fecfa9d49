"""Nuclei per grid cell: a density map of a slide's detections, as polygons.

The grid starts at the slide's top-left corner with square cells of ``cell_um`` micrometres
(100 µm by default); the last row and column are cut at the slide's edge, and their area says
so. Each cell is a polygon in level-0 pixels (like the points), with its count, area (mm²) and
density (nuclei per mm² of cell), written as GeoParquet (geopandas) or as QuPath tiles in
GeoJSON (QuPath shows the measurements as a heat map).
"""

from __future__ import annotations

import json
import math
import os
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from wsidet.output.files import atomic_path

if TYPE_CHECKING:
    import geopandas as gpd

#: Default cell edge in micrometres.
DEFAULT_CELL_UM = 100.0


def count_grid(
    points_xy: npt.NDArray[np.floating[Any]], height: float, width: float, cell: float
) -> npt.NDArray[np.int64]:
    """Points per cell of a grid of ``cell``-pixel squares over a ``height × width`` image.

    Parameters
    ----------
    points_xy : ndarray, shape (n, 2)
        Level-0 (x, y) coordinates (pixel centres at +0.5).
    height, width : float
        Image size in level-0 pixels.
    cell : float
        Cell edge in level-0 pixels.

    Returns
    -------
    ndarray, shape (ceil(height / cell), ceil(width / cell)), int64
        Counts; a point on a cell edge belongs to the cell right or below it, one outside
        the image to none.
    """
    if not (math.isfinite(cell) and cell > 0):
        raise ValueError(f"cell must be a positive number of pixels, got {cell!r}")
    rows, cols = max(1, math.ceil(height / cell)), max(1, math.ceil(width / cell))
    xy = np.asarray(points_xy, np.float64).reshape(-1, 2)
    inside = (xy[:, 0] >= 0) & (xy[:, 0] < width) & (xy[:, 1] >= 0) & (xy[:, 1] < height)
    col = np.minimum((xy[inside, 0] // cell).astype(np.int64), cols - 1)
    row = np.minimum((xy[inside, 1] // cell).astype(np.int64), rows - 1)
    counts = np.bincount(row * cols + col, minlength=rows * cols)
    return counts.reshape(rows, cols).astype(np.int64)


def density_grid(frame: gpd.GeoDataFrame, cell_um: float = DEFAULT_CELL_UM) -> gpd.GeoDataFrame:
    """The density map of one slide's detections.

    Parameters
    ----------
    frame : GeoDataFrame
        A slide's detections (:func:`wsidet.read_detections`), with its metadata.
    cell_um : float
        Cell edge in micrometres.

    Returns
    -------
    GeoDataFrame
        One square polygon per cell (level-0 pixels, no CRS) with ``row``, ``col``,
        ``count``, ``area_mm2`` and ``per_mm2``; ``attrs["wsidet"]`` holds the slide id, the
        cell size and the pixel size.

    Raises
    ------
    ValueError
        The detections carry no slide size or pixel size (a grid in µm needs both).
    """
    import geopandas as gpd
    import shapely

    meta = frame.attrs.get("wsidet", {})
    slide = meta.get("slide", {})
    mpp, height, width = slide.get("mpp"), slide.get("height"), slide.get("width")
    if not mpp or not height or not width:
        raise ValueError(
            f"a density grid needs the slide's size and pixel size; "
            f"{slide.get('slide_id', 'these detections')!r} records none"
        )
    cell = cell_um / mpp
    counts = count_grid(np.column_stack([frame["x"], frame["y"]]), height, width, cell)
    rows, cols = np.indices(counts.shape)
    x0, y0 = cols.ravel() * cell, rows.ravel() * cell
    x1, y1 = np.minimum(x0 + cell, width), np.minimum(y0 + cell, height)
    area = (x1 - x0) * (y1 - y0) * mpp**2 / 1e6
    grid = gpd.GeoDataFrame(
        {
            "row": rows.ravel(),
            "col": cols.ravel(),
            "count": counts.ravel(),
            "area_mm2": area,
            "per_mm2": counts.ravel() / area,
        },
        geometry=shapely.box(x0, y0, x1, y1),
    )
    grid.attrs["wsidet"] = {
        "slide_id": slide.get("slide_id"),
        "cell_um": float(cell_um),
        "mpp": float(mpp),
        "method": meta.get("method"),
    }
    return grid


def write_density(grid: gpd.GeoDataFrame, path: str | os.PathLike[str], *, overwrite: bool) -> None:
    """A density grid as GeoParquet 1.1 (pixel space: no CRS)."""
    with atomic_path(path, overwrite=overwrite) as tmp:
        grid.to_parquet(tmp, index=False, schema_version="1.1.0", compression="zstd")


def write_density_geojson(
    grid: gpd.GeoDataFrame, path: str | os.PathLike[str], *, overwrite: bool
) -> None:
    """A density grid as QuPath tiles: each cell a ``tile`` with its measurements."""
    features = [
        {
            "type": "Feature",
            "geometry": {
                "type": "Polygon",
                "coordinates": [[list(map(float, xy)) for xy in geom.exterior.coords]],
            },
            "properties": {
                "objectType": "tile",
                "name": f"r{row} c{col}",
                "measurements": {
                    "Nuclei": int(count),
                    "Area mm2": float(area),
                    "Nuclei per mm2": float(density),
                },
            },
        }
        for geom, row, col, count, area, density in zip(
            grid.geometry,
            *(grid[c] for c in ("row", "col", "count", "area_mm2", "per_mm2")),
            strict=True,
        )
    ]
    meta = grid.attrs.get("wsidet", {})
    doc = {"type": "FeatureCollection", "wsidet": meta, "features": features}
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_text(json.dumps(doc))
