"""Detections on disk: GeoParquet 1.1, QuPath GeoJSON, and reading them back.

Schema (one row per nucleus): ``x``, ``y`` (float64, level-0 pixels, pixel centres at +0.5),
``score`` (float32), ``method`` and ``slide_id`` (categorical), ``geometry`` (Point, no CRS:
pixel space). Slide and run metadata ride in ``GeoDataFrame.attrs["wsidet"]``, which geopandas
stores in the Parquet file metadata and restores on read.

Every write is atomic: the file is written under a temporary name in the same folder and
renamed into place, so a crash never leaves half a file under the final name.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from wsidet.errors import DetectionsFormatError, PartialCohortWarning
from wsidet.output.files import atomic_path, ensure_free, open_text

if TYPE_CHECKING:
    import geopandas as gpd

    from wsidet.slide.wsi import Slide

#: QuPath class of every detection, and its display colour.
QUPATH_CLASS = {"name": "Nucleus", "color": [220, 40, 40]}
#: Output formats: the points, and what is drawn from them (density grid, region table,
#: QC preview).
FORMATS = (
    "parquet",
    "geojson",
    "geojson.gz",
    "density",
    "density.geojson",
    "regions.csv",
    "preview.png",
)
_SUFFIX = {
    "parquet": ".parquet",
    "geojson": ".geojson",
    "geojson.gz": ".geojson.gz",
    "density": ".density.parquet",
    "density.geojson": ".density.geojson",
    "regions.csv": ".regions.csv",
    "preview.png": ".preview.png",
}
#: Formats that carry the run's metadata and signature; the others (density, preview, region
#: table) are drawn from the Parquet file and say nothing of how it was made.
SIGNED_FORMATS = ("parquet", "geojson", "geojson.gz")
#: Files of a folder that are not a slide's detections.
_NOT_DETECTIONS = (".density.parquet",)


def detections_frame(
    points_xy: npt.NDArray[np.floating[Any]],
    scores: npt.NDArray[np.floating[Any]],
    *,
    method: str,
    slide_id: str,
    metadata: dict[str, Any] | None = None,
) -> gpd.GeoDataFrame:
    """A GeoDataFrame with the detection schema.

    Parameters
    ----------
    points_xy : ndarray, shape (n, 2)
        Level-0 ``(x, y)``.
    scores : ndarray, shape (n,)
    method, slide_id : str
    metadata : dict, optional
        JSON-able; stored as ``attrs["wsidet"]``.

    Returns
    -------
    geopandas.GeoDataFrame
    """
    import geopandas as gpd
    import pandas as pd

    pts = np.asarray(points_xy, np.float64).reshape(-1, 2)
    sc = np.asarray(scores, np.float32).reshape(-1)
    if len(pts) != len(sc):
        raise ValueError(f"{len(pts)} points but {len(sc)} scores")
    n = len(pts)
    frame = gpd.GeoDataFrame(
        {
            "x": pts[:, 0],
            "y": pts[:, 1],
            "score": sc,
            "method": pd.Categorical([method] * n, categories=[method]),
            "slide_id": pd.Categorical([slide_id] * n, categories=[slide_id]),
        },
        geometry=gpd.points_from_xy(pts[:, 0], pts[:, 1]),
        crs=None,
    )
    if metadata is not None:
        frame.attrs["wsidet"] = metadata
    return frame


def write_geoparquet(
    frame: gpd.GeoDataFrame, path: str | os.PathLike[str], *, overwrite: bool = False
) -> Path:
    """Write detections as GeoParquet 1.1 (WKB points, no CRS), atomically.

    Returns
    -------
    pathlib.Path
        The written file.
    """
    with atomic_path(path, overwrite=overwrite) as tmp:
        frame.to_parquet(tmp, index=False, schema_version="1.1.0", compression="zstd")
    return Path(path)


def _geojson_features(frame: gpd.GeoDataFrame, batch: int = 65536) -> Iterator[str]:
    """Feature strings, built batch by batch so memory stays flat for millions of points."""
    cls = json.dumps(QUPATH_CLASS, separators=(",", ":"))
    head = '{"type":"Feature","geometry":{"type":"Point","coordinates":['
    props = '"properties":{"objectType":"detection","classification":' + cls
    x = frame["x"].to_numpy(np.float64)
    y = frame["y"].to_numpy(np.float64)
    s = frame["score"].to_numpy(np.float64)
    for start in range(0, len(x), batch):
        stop = start + batch
        yield ",\n".join(
            f'{head}{xi:.3f},{yi:.3f}]}},{props},"measurements":{{"score":{si:.6g}}}}}}}'
            for xi, yi, si in zip(x[start:stop], y[start:stop], s[start:stop], strict=True)
        )


def write_geojson(
    frame: gpd.GeoDataFrame, path: str | os.PathLike[str], *, overwrite: bool = False
) -> Path:
    """Write detections as a QuPath-readable GeoJSON FeatureCollection, atomically.

    Each feature is a Point in level-0 pixels with ``properties.objectType = "detection"``, a
    ``classification`` (name and colour) and the score under ``measurements``. The run
    metadata is a foreign member ``"wsidet"`` of the collection (RFC 7946 §6.1), which QuPath
    ignores. A path ending in ``.gz`` is gzip-compressed; QuPath opens plain ``.geojson`` by
    drag and drop, so decompress first if your version does not read ``.gz``.

    Returns
    -------
    pathlib.Path
    """
    target = Path(path)
    # The temporary name lacks the target's .gz: compression follows the target.
    gz = target.name.endswith(".gz")
    with atomic_path(target, overwrite=overwrite) as tmp, open_text(tmp, "wt", compressed=gz) as fh:
        meta = {
            "method": _single(frame, "method"),
            "slide_id": _single(frame, "slide_id"),
            **frame.attrs.get("wsidet", {}),
        }
        fh.write('{"type":"FeatureCollection","wsidet":')
        fh.write(json.dumps(meta, separators=(",", ":"), default=str))
        fh.write(',"features":[\n')
        first = True
        for chunk in _geojson_features(frame):
            if chunk:
                fh.write(chunk if first else ",\n" + chunk)
                first = False
        fh.write("\n]}\n")
    return target


def output_paths(
    out_dir: str | os.PathLike[str], slide_id: str, formats: Sequence[str]
) -> dict[str, Path]:
    """Where :func:`write_detections` puts each format for a slide.

    Raises
    ------
    ValueError
        An unknown format.
    """
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ValueError(f"formats must be some of {', '.join(FORMATS)}, got {list(formats)}")
    return {f: Path(out_dir) / f"{slide_id}{_SUFFIX[f]}" for f in dict.fromkeys(formats)}


def write_region_table(
    frame: gpd.GeoDataFrame, path: str | os.PathLike[str], *, overwrite: bool = False
) -> Path:
    """The per-region table of a run limited to regions, as CSV (one row per region).

    Raises
    ------
    ValueError
        The detections were not limited to regions.
    """
    import csv

    table = frame.attrs.get("wsidet", {}).get("regions")
    if table is None:
        raise ValueError(f"{_slide_id(frame)!r} was not run on regions: no region table to write")
    with (
        atomic_path(path, overwrite=overwrite) as tmp,
        open(tmp, "w", newline="", encoding="utf-8") as fh,
    ):
        writer = csv.DictWriter(fh, fieldnames=["region", "count", "area_mm2", "per_mm2"])
        writer.writeheader()
        writer.writerows(table)
    return Path(path)


def write_detections(
    frame: gpd.GeoDataFrame,
    out_dir: str | os.PathLike[str],
    *,
    formats: Sequence[str] = ("parquet", "geojson"),
    overwrite: bool = False,
    cell_um: float | None = None,
    slide: Slide | None = None,
) -> dict[str, Path]:
    """Write one slide's detections in several formats; nothing is written if any exists.

    Parameters
    ----------
    frame : GeoDataFrame
        From :func:`wsidet.detect_slide` (its ``slide_id`` names the files).
    out_dir : path
    formats : sequence of str
        Some of :data:`FORMATS`: ``parquet``, ``geojson``, ``geojson.gz`` (the points),
        ``density`` (GeoParquet) and ``density.geojson`` (QuPath tiles): nuclei per grid
        cell (:mod:`wsidet.output.density`); ``regions.csv``: the per-region table of a run
        limited to regions (count, area mm², nuclei per mm²); ``preview.png``: the QC picture
        (:mod:`wsidet.output.preview`; reads the slide named in the metadata).
    overwrite : bool
    cell_um : float, optional
        The density grid's cell edge in µm (default
        :data:`~wsidet.output.density.DEFAULT_CELL_UM`).
    slide : Slide, optional
        The slide, for the preview (default: opened where the metadata says it is).

    Returns
    -------
    dict of str to pathlib.Path
    """
    from wsidet.output import density

    slide_id = _slide_id(frame)
    paths = output_paths(out_dir, slide_id, formats)
    if not overwrite:
        ensure_free(list(paths.values()))
    writers = {"parquet": write_geoparquet, "geojson": write_geojson, "geojson.gz": write_geojson}
    grid = None
    for fmt, path in paths.items():
        if fmt == "regions.csv":
            write_region_table(frame, path, overwrite=overwrite)
        elif fmt == "preview.png":
            from wsidet.output.preview import write_preview

            write_preview(frame, path, slide=slide, overwrite=overwrite)
        elif fmt.startswith("density"):
            if grid is None:
                grid = density.density_grid(frame, cell_um or density.DEFAULT_CELL_UM)
            write = density.write_density if fmt == "density" else density.write_density_geojson
            write(grid, path, overwrite=overwrite)
        else:
            writers[fmt](frame, path, overwrite=overwrite)
    return paths


def _single(frame: gpd.GeoDataFrame, column: str) -> str | None:
    """The one category of a categorical column, if it has exactly one."""
    if column not in frame:
        return None
    cats = frame[column].cat.categories
    return str(cats[0]) if len(cats) == 1 else None


def _slide_id(frame: gpd.GeoDataFrame) -> str:
    meta = frame.attrs.get("wsidet", {})
    slide_id = meta.get("slide", {}).get("slide_id")
    if slide_id:
        return str(slide_id)
    single = _single(frame, "slide_id")
    if single is None:
        raise ValueError("frame must hold one slide (set attrs['wsidet']['slide']['slide_id'])")
    return single


def _read_geojson(path: Path) -> gpd.GeoDataFrame:
    with open_text(path) as fh:
        doc = json.load(fh)
    feats = doc.get("features", [])
    xy = np.array([f["geometry"]["coordinates"][:2] for f in feats], np.float64).reshape(-1, 2)
    scores = np.array(
        [f.get("properties", {}).get("measurements", {}).get("score", np.nan) for f in feats],
        np.float32,
    )
    meta = doc.get("wsidet") or {}
    method = meta.pop("method", None) or "unknown"
    slide_id = meta.pop("slide_id", None) or path.name.split(".")[0]
    return detections_frame(xy, scores, method=method, slide_id=slide_id, metadata=meta or None)


def detection_files(folder: Path) -> tuple[list[Path], dict[str, str]]:
    """Per-slide Parquet files of an output folder, and the slides left out with the reason.

    With a manifest, the files of its ``done`` slides; failed slides, Parquet files it does not
    list, and rows whose file would lie outside the folder are left out (a manifest is data:
    it must not send a reader elsewhere on the disk). Without one, every Parquet file.
    """
    from wsidet.output.manifest import MANIFEST, load_rows

    parquets = sorted(
        f
        for f in folder.glob("*.parquet")
        if f.name != MANIFEST and not f.name.endswith(_NOT_DETECTIONS)
    )
    if not (folder / MANIFEST).is_file():
        return parquets, {}
    root = folder.resolve()
    files: list[Path] = []
    skipped: dict[str, str] = {}
    for row in load_rows(folder).values():
        if row.status != "done":
            skipped[row.slide_id] = f"{row.status}: {row.error}" if row.error else row.status
            continue
        name = row.output or f"{row.slide_id}.parquet"
        file = folder / name
        if file.resolve().parent != root or not name.endswith(".parquet"):
            skipped[row.slide_id] = f"its manifest row names a file outside the folder ({name!r})"
            continue
        if not file.is_file():
            raise FileNotFoundError(
                f"the manifest of {str(folder)!r} lists {row.slide_id!r} as done, but "
                f"{str(file)!r} is missing; rerun the cohort to make it again"
            )
        files.append(file)
    listed = set(files)
    for stray in parquets:
        if stray not in listed and stray.stem not in skipped:
            skipped[stray.stem] = "not listed as done in the manifest"
    return sorted(files), skipped


def read_detections(path: str | os.PathLike[str]) -> gpd.GeoDataFrame:
    """Detections as a GeoDataFrame, from a file or a folder of per-slide files.

    Parameters
    ----------
    path : path
        A ``.parquet`` file written by wsidet, a ``.geojson``/``.geojson.gz`` file, or an output
        folder: with a manifest, the Parquet files of its ``done`` slides; without, all its
        ``*.parquet`` files; concatenated, ``slide_id`` telling the slides apart.

    Returns
    -------
    geopandas.GeoDataFrame
        The detection schema; for a single Parquet file, ``attrs["wsidet"]`` holds the slide
        and run metadata; for a folder, ``attrs["wsidet"]["skipped"]`` maps each slide left
        out to the reason.

    Warns
    -----
    PartialCohortWarning
        A folder's cohort is incomplete: some slides failed, are not listed as done, or are
        listed with a file outside the folder. The warning names each and why.
    """
    import geopandas as gpd
    import pandas as pd

    p = Path(path)
    if p.is_dir():
        files, skipped = detection_files(p)
        if skipped:
            listed = "; ".join(f"{k} ({v})" for k, v in sorted(skipped.items()))
            warnings.warn(
                f"read_detections({str(p)!r}): {len(skipped)} slide(s) left out: {listed}",
                PartialCohortWarning,
                stacklevel=2,
            )
        if not files:
            empty = detections_frame(np.zeros((0, 2)), np.zeros(0), method="", slide_id="")
            empty.attrs = {"wsidet": {"skipped": skipped}}
            return empty
        frames = [gpd.read_parquet(f) for f in files]
        merged = pd.concat(frames, ignore_index=True)
        for col in ("method", "slide_id"):
            merged[col] = merged[col].astype("category")
        out = gpd.GeoDataFrame(merged, geometry="geometry", crs=None)
        out.attrs = {"wsidet": {"skipped": skipped}}
        return out
    if not p.is_file():
        raise FileNotFoundError(f"no detections at {str(p)!r}")
    name = p.name.lower()
    if name.endswith(".parquet"):
        return gpd.read_parquet(p)
    if name.endswith((".geojson", ".geojson.gz", ".json")):
        return _read_geojson(p)
    raise DetectionsFormatError(
        f"cannot read detections from {str(p)!r}: expected .parquet or .geojson"
    )
