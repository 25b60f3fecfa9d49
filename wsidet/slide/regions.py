"""Regions a run is limited to: QuPath annotations or any polygons, in level-0 pixels.

A regions file is GeoJSON (a QuPath export of annotations: a FeatureCollection, a Feature, or a
list of them) or GeoParquet (any polygon layer), its coordinates in level-0 pixels of the slide
(QuPath's own). Only polygons count: points and lines are skipped, and a file without any
polygon is refused. A region is named by its
``name`` (QuPath's annotation name), else its classification, else ``region N``.

:class:`Regions` is small, frozen and picklable (geometries as WKB), so it rides in the run's
specification to workers and its :meth:`~Regions.digest` joins the resume key.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from wsidet.errors import ParameterError


class RegionsError(ParameterError):
    """A regions file that cannot be used (unreadable, no polygons, not pixel coordinates)."""


@dataclass(frozen=True)
class Regions:
    """Named polygons in level-0 pixels.

    Attributes
    ----------
    names : tuple of str
    wkb : tuple of bytes
        Each region's (Multi)Polygon as WKB.
    """

    names: tuple[str, ...]
    wkb: tuple[bytes, ...]

    @property
    def geometries(self) -> list[Any]:
        """The regions as shapely geometries."""
        import shapely

        return list(shapely.from_wkb(list(self.wkb)))

    def digest(self) -> str:
        """A content hash of names and shapes (part of the resume key)."""
        h = hashlib.sha256()
        for name, wkb in zip(self.names, self.wkb, strict=True):
            h.update(name.encode() + b"\0" + wkb)
        return "sha256:" + h.hexdigest()[:16]

    def any_in_boxes(self, boxes: npt.NDArray[np.float64]) -> npt.NDArray[np.bool_]:
        """Which level-0 boxes ``(y0, x0, y1, x1)``, shape (n, 4), touch some region."""
        import shapely

        union = shapely.union_all(self.geometries)
        b = np.asarray(boxes, np.float64).reshape(-1, 4)
        cells = shapely.box(b[:, 1], b[:, 0], b[:, 3], b[:, 2])
        return np.asarray(shapely.intersects(cells, union), bool)

    def label(self, xy: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
        """The index of the first region holding each point, -1 for none; ``xy`` (n, 2)."""
        import shapely

        pts = np.asarray(xy, np.float64).reshape(-1, 2)
        out = np.full(len(pts), -1, np.int64)
        for i, geom in enumerate(self.geometries):
            free = out < 0
            inside = shapely.contains_xy(geom, pts[free, 0], pts[free, 1])
            out[np.flatnonzero(free)[inside]] = i
        return out

    def counts(self, xy: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
        """Points inside each region, counted for every region holding them; ``xy`` (n, 2)."""
        import shapely

        pts = np.asarray(xy, np.float64).reshape(-1, 2)
        return np.array(
            [int(shapely.contains_xy(g, pts[:, 0], pts[:, 1]).sum()) for g in self.geometries],
            np.int64,
        )

    def areas_px(self, width: float, height: float) -> list[float]:
        """Each region's area in level-0 pixels², within the slide's bounds."""
        import shapely

        slide = shapely.box(0, 0, width, height)
        return [float(shapely.area(shapely.intersection(g, slide))) for g in self.geometries]


def _name(properties: Any, index: int) -> str:
    props = properties if isinstance(properties, dict) else {}
    name = props.get("name")
    if not name and isinstance(props.get("classification"), dict):
        name = props["classification"].get("name")
    return str(name) if name else f"region {index + 1}"


def _features(doc: Any) -> list[dict[str, Any]]:
    if isinstance(doc, list):
        return [f for item in doc for f in _features(item)]
    if isinstance(doc, dict) and doc.get("type") == "FeatureCollection":
        return list(doc.get("features") or [])
    if isinstance(doc, dict) and doc.get("type") == "Feature":
        return [doc]
    if isinstance(doc, dict) and "coordinates" in doc:  # a bare geometry
        return [{"type": "Feature", "geometry": doc, "properties": {}}]
    return []


def read_regions(path: str | os.PathLike[str]) -> Regions:
    """Regions from a GeoJSON (QuPath annotations) or GeoParquet file.

    Raises
    ------
    RegionsError
        The file cannot be read or holds no polygon.
    """
    import shapely

    p = Path(path)
    items: list[tuple[Any, Any]]
    try:
        if p.name.lower().endswith(".parquet"):
            import geopandas as gpd

            layer = gpd.read_parquet(p)
            names_col = layer["name"] if "name" in layer.columns else [None] * len(layer)
            items = [({"name": n}, g) for n, g in zip(names_col, layer.geometry, strict=True)]
        else:
            text = p.read_text(encoding="utf-8")
            items = [
                (f.get("properties"), shapely.geometry.shape(f["geometry"]))
                for f in _features(json.loads(text))
                if f.get("geometry")
            ]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise RegionsError(f"cannot read regions from {str(p)!r}: {exc}") from None
    names, wkb = [], []
    for i, (props, geom) in enumerate(items):
        if geom is None or geom.is_empty or geom.geom_type not in ("Polygon", "MultiPolygon"):
            continue
        names.append(_name(props, i))
        wkb.append(shapely.to_wkb(shapely.make_valid(geom)))
    if not names:
        raise RegionsError(f"{str(p)!r} holds no polygons (regions must be areas, in level-0 px)")
    return Regions(tuple(names), tuple(wkb))
