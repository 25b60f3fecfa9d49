"""Annotated images and slides: finding them, reading their points, choosing a fold.

Point files are matched to images by file stem, or else by the number in the name
(``img12.png`` ↔ ``img12.csv``, ``001cell.png`` ↔ ``001.csv``) when the name holds exactly one
number and no other image has it. That number is then the image's key in split files; other
images are keyed by their stem (so ``TCGA-A1-A0SB...`` and ``TCGA-A1-A0SD...`` never share a
key). Points are returned as ``yx`` pixel indices (pixel centres are integers):

* CSV ``x,y`` columns: pixel indices, 0-based (``one_based=True`` for MATLAB-style files such as
  CRCHisto's, which are shifted by one);
* GeoJSON (e.g. exported from QuPath: ``Point`` and ``MultiPoint`` features) and GeoParquet
  (wsidet's ``x``, ``y`` columns, or point geometries): level-0 coordinates with pixel centres
  at +0.5, shifted by half a pixel.

GeoJSON polygons (QuPath annotations drawn around the annotated areas of a slide) are read as
*regions*: training patches and evaluation are limited to them (see
:func:`wsidet.annotations.sources.load_sources`).
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from wsidet.errors import WsidetError

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".scn", ".bif")
POINT_SUFFIXES = (".csv", ".geojson", ".json", ".parquet")


class AnnotationError(WsidetError, ValueError):
    """Annotations cannot be found, paired or read."""


@dataclass(frozen=True)
class Annotated:
    """An image (or slide) and the file with its nucleus points.

    Attributes
    ----------
    key : str
        Identifier used by split files (the number in the file name when there is one).
    image : pathlib.Path
    points : pathlib.Path
    """

    key: str
    image: Path
    points: Path


def _number(stem: str) -> str | None:
    """The number in a name that holds exactly one (``img012`` -> ``"12"``), else None."""
    digits = re.findall(r"\d+", stem)
    return str(int(digits[0])) if len(digits) == 1 else None


def _split_id(text: str) -> str:
    """A split file's image id as a key: numbers without leading zeros, names as they are."""
    text = text.strip()
    return str(int(text)) if text.isdigit() else text


def _keys(stems: Sequence[str]) -> dict[str, str]:
    """Key of each stem: its number where no other stem has that number, else the stem."""
    numbers = {stem: _number(stem) for stem in stems}
    counts: dict[str | None, int] = {}
    for n in numbers.values():
        counts[n] = counts.get(n, 0) + 1
    return {stem: n if n is not None and counts[n] == 1 else stem for stem, n in numbers.items()}


def find_pairs(images: str | Path, points: str | Path) -> list[Annotated]:
    """Pair every image in ``images`` with its point file in ``points``.

    Raises
    ------
    AnnotationError
        A folder is missing, or no image has a point file.
    """
    images, points = Path(images), Path(points)
    for folder, what in ((images, "images"), (points, "points")):
        if not folder.is_dir():
            raise AnnotationError(f"{what} folder not found: {str(folder)!r}")
    point_files = sorted(p for p in points.iterdir() if p.suffix.lower() in POINT_SUFFIXES)
    by_stem = {p.stem: p for p in point_files}
    by_number: dict[str, list[Path]] = {}
    for p in point_files:
        number = _number(p.stem)
        if number is not None:
            by_number.setdefault(number, []).append(p)
    image_files = sorted(
        f for f in images.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES + SLIDE_SUFFIXES
    )
    keys = _keys([f.stem for f in image_files])
    pairs = []
    for image in image_files:
        match = by_stem.get(image.stem)
        key = keys[image.stem]
        if match is None and key != image.stem:  # matched by its (unique) number
            candidates = by_number.get(key, [])
            match = candidates[0] if len(candidates) == 1 else None
        if match is not None:
            pairs.append(Annotated(key, image, match))
    if not pairs:
        raise AnnotationError(
            f"no image in {str(images)!r} has a point file in {str(points)!r} "
            "(matched by file stem or by the number in the name)"
        )
    pairs.sort(key=lambda a: (0, int(a.key), "") if a.key.isdigit() else (1, 0, a.key))
    return pairs


@dataclass(frozen=True)
class Annotations:
    """What an annotation file holds.

    Attributes
    ----------
    points_yx : ndarray, shape (n, 2)
        Nucleus centres as pixel indices (pixel centres are integers).
    regions : ndarray, shape (m, 4)
        Bounding boxes ``(y0, x0, y1, x1)`` of the annotated areas, in the same pixel
        indices (half-open); empty when the file draws none.
    """

    points_yx: npt.NDArray[np.float64]
    regions: npt.NDArray[np.float64]


def _geojson_annotations(doc: object) -> tuple[list[list[float]], list[list[float]]]:
    """(x, y) points and (x0, y0, x1, y1) polygon bounds, in the file's coordinates."""
    feats = doc.get("features", []) if isinstance(doc, dict) else doc
    if isinstance(doc, dict) and doc.get("type") == "Feature":
        feats = [doc]
    if not isinstance(feats, list):
        raise ValueError("no features")
    points: list[list[float]] = []
    boxes: list[list[float]] = []
    for f in feats:
        geometry = f.get("geometry") or {}
        kind, coords = geometry.get("type"), geometry.get("coordinates") or []
        if kind == "Point":
            points.append(coords[:2])
        elif kind == "MultiPoint":
            points += [c[:2] for c in coords]
        elif kind in ("Polygon", "MultiPolygon"):
            rings = coords if kind == "Polygon" else [r for poly in coords for r in poly]
            xy = np.array([c[:2] for ring in rings for c in ring], np.float64)
            boxes.append([*xy.min(axis=0), *xy.max(axis=0)])
    return points, boxes


def read_annotations(path: str | Path, *, one_based: bool = False) -> Annotations:
    """Nucleus centres (and annotated regions) of an annotation file.

    Raises
    ------
    AnnotationError
        The file cannot be read, or it has features but no point among them.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    boxes: list[list[float]] = []
    try:
        if suffix == ".csv":
            with open(path, newline="") as fh:
                rows = list(csv.DictReader(fh))
            if rows and not {"x", "y"} <= set(rows[0]):
                raise AnnotationError(f"{str(path)!r} needs columns x and y")
            xy = np.array([[float(r["x"]), float(r["y"])] for r in rows], np.float64)
            xy = xy.reshape(-1, 2) - (1.0 if one_based else 0.0)
        elif suffix in (".geojson", ".json"):
            points, boxes = _geojson_annotations(json.loads(path.read_text()))
            if not points and boxes:
                raise AnnotationError(
                    f"{str(path)!r} has regions but no Point or MultiPoint features"
                )
            # Level-0 coordinates (pixel centres at +0.5) to pixel indices.
            xy = np.array(points, np.float64).reshape(-1, 2) - 0.5
        elif suffix == ".parquet":
            import geopandas as gpd

            frame = gpd.read_parquet(path)
            if {"x", "y"} <= set(frame.columns):
                xy = frame[["x", "y"]].to_numpy(np.float64)
            else:
                parts = frame.geometry.explode(index_parts=False)
                parts = parts[parts.geom_type == "Point"]
                xy = np.stack([parts.x.to_numpy(), parts.y.to_numpy()], axis=1)
            xy = xy.reshape(-1, 2) - 0.5
        else:
            raise AnnotationError(f"unsupported point file {str(path)!r}")
    except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
        if isinstance(exc, AnnotationError):
            raise
        raise AnnotationError(f"cannot read points from {str(path)!r}: {exc}") from exc
    # Bounds of polygons are level-0 coordinates: as half-open pixel-index boxes.
    regions = np.array([[b[1], b[0], b[3], b[2]] for b in boxes], np.float64).reshape(-1, 4)
    return Annotations(np.ascontiguousarray(xy[:, ::-1]), regions - 0.5)


def read_points(path: str | Path, *, one_based: bool = False) -> npt.NDArray[np.float64]:
    """Nucleus centres of an annotation file as ``yx`` pixel indices, shape (n, 2)."""
    return read_annotations(path, one_based=one_based).points_yx


def select_fold(
    pairs: Sequence[Annotated],
    split: str | Path,
    fold: str | int,
    *,
    column: str | None = None,
) -> list[Annotated]:
    """The pairs whose row in a split file has ``fold`` in its fold column.

    Parameters
    ----------
    pairs : sequence of Annotated
    split : path
        CSV whose first column is the image id (matched to ``Annotated.key``).
    fold : str or int
        Value to select (``1``, ``"train_pool"``...).
    column : str, optional
        Fold column; default: the first column whose name contains "fold", else "split".

    Raises
    ------
    AnnotationError
        The file has no such column, or no pair is in the fold.
    """
    with open(split, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise AnnotationError(f"split file {str(split)!r} is empty")
    names = list(rows[0])
    if column is None:
        column = next((n for n in names[1:] if "fold" in n.lower()), None) or next(
            (n for n in names[1:] if "split" in n.lower()), None
        )
    if column not in names:
        raise AnnotationError(f"split file {str(split)!r} has no fold column (columns: {names})")
    wanted = {_split_id(r[names[0]]) for r in rows if r[column].strip() == str(fold)}
    chosen = [p for p in pairs if p.key in wanted]
    if not chosen:
        values = sorted({r[column] for r in rows})
        raise AnnotationError(
            f"no image is in fold {fold!r} of column {column!r} (values: {', '.join(values)})"
        )
    return chosen
