"""Annotated images and slides: finding them, reading their points, choosing a fold.

Point files are matched to images by file stem, or else by the number in the name
(``img12.png`` ↔ ``img12.csv``, ``001cell.png`` ↔ ``001.csv``). Points are returned as ``yx``
pixel indices (pixel centres are integers):

* CSV ``x,y`` columns: pixel indices, 0-based (``one_based=True`` for MATLAB-style files such as
  CRCHisto's, which are shifted by one);
* GeoJSON (e.g. exported from QuPath) and wsidet GeoParquet: level-0 coordinates with pixel
  centres at +0.5, shifted by half a pixel.
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


def _key(stem: str) -> str:
    digits = re.findall(r"\d+", stem)
    return str(int(digits[0])) if digits else stem


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
    by_key: dict[str, list[Path]] = {}
    for p in point_files:
        by_key.setdefault(_key(p.stem), []).append(p)
    pairs = []
    for image in sorted(images.iterdir()):
        if image.suffix.lower() not in IMAGE_SUFFIXES + SLIDE_SUFFIXES:
            continue
        match = by_stem.get(image.stem)
        if match is None:
            candidates = by_key.get(_key(image.stem), [])
            match = candidates[0] if len(candidates) == 1 else None
        if match is not None:
            pairs.append(Annotated(_key(image.stem), image, match))
    if not pairs:
        raise AnnotationError(
            f"no image in {str(images)!r} has a point file in {str(points)!r} "
            "(matched by file stem or by the number in the name)"
        )
    pairs.sort(key=lambda a: (int(a.key) if a.key.isdigit() else a.key, a.key))
    return pairs


def read_points(path: str | Path, *, one_based: bool = False) -> npt.NDArray[np.float64]:
    """Nucleus centres of an annotation file as ``yx`` pixel indices, shape (n, 2)."""
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            with open(path, newline="") as fh:
                rows = list(csv.DictReader(fh))
            if rows and not {"x", "y"} <= set(rows[0]):
                raise AnnotationError(f"{str(path)!r} needs columns x and y")
            xy = np.array([[float(r["x"]), float(r["y"])] for r in rows], np.float64)
            xy = xy.reshape(-1, 2) - (1.0 if one_based else 0.0)
        elif suffix in (".geojson", ".json"):
            doc = json.loads(path.read_text())
            feats = doc.get("features", []) if isinstance(doc, dict) else doc
            coords = [
                f["geometry"]["coordinates"][:2]
                for f in feats
                if f.get("geometry", {}).get("type") == "Point"
            ]
            xy = np.array(coords, np.float64).reshape(-1, 2) - 0.5
        elif suffix == ".parquet":
            import geopandas as gpd

            frame = gpd.read_parquet(path)
            xy = frame[["x", "y"]].to_numpy(np.float64) - 0.5
        else:
            raise AnnotationError(f"unsupported point file {str(path)!r}")
    except (OSError, ValueError, KeyError) as exc:
        if isinstance(exc, AnnotationError):
            raise
        raise AnnotationError(f"cannot read points from {str(path)!r}: {exc}") from exc
    return np.ascontiguousarray(xy[:, ::-1])


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
    wanted = {_key(r[names[0]]) for r in rows if r[column] == str(fold)}
    chosen = [p for p in pairs if p.key in wanted]
    if not chosen:
        values = sorted({r[column] for r in rows})
        raise AnnotationError(
            f"no image is in fold {fold!r} of column {column!r} (values: {', '.join(values)})"
        )
    return chosen
