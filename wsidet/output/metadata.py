"""The metadata a slide's detections carry: typed here, a JSON dict on disk.

Detections keep it in ``GeoDataFrame.attrs["wsidet"]``, which geopandas stores in the Parquet
file's ``PANDAS_ATTRS`` entry and restores on read; the GeoJSON writer puts it before the
features. :class:`SlideMetadata` is the one place that knows its fields: the pipeline builds
it, writers store :meth:`~SlideMetadata.to_dict`, the cohort and resuming read it back with
:func:`read_parquet_metadata` (without reading the points).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


def _from(cls: type[T], data: Any) -> T:
    """A dataclass from a dict, ignoring keys it does not know (files of other versions)."""
    if not isinstance(data, dict):
        data = {}
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class SlideInfo:
    """The slide a run read."""

    path: str = ""
    slide_id: str = ""
    mpp: float | None = None
    mpp_source: str | None = None
    mpp_estimate: float | None = None
    height: int = 0
    width: int = 0
    vendor: str | None = None


@dataclass(frozen=True)
class ScaleInfo:
    """Where the method read the slide and how it was chunked."""

    level: int = 0
    factor: float = 1.0
    mpp: float | None = None
    halo: int = 0
    chunks_total: int = 0
    chunks_processed: int = 0


@dataclass(frozen=True)
class RunInfo:
    """What a run cost and covered."""

    seconds: float = 0.0
    processed_mpx: float = 0.0
    #: Area of the chunks processed (tissue and the glass around it in them).
    processed_area_mm2: float | None = None
    tissue_fraction: float | None = None
    tissue_area_mm2: float | None = None


@dataclass(frozen=True)
class SlideMetadata:
    """Everything recorded about one slide's detections.

    Attributes
    ----------
    version : str
        wsidet version that made them.
    slide, scale, run : SlideInfo, ScaleInfo, RunInfo
    method : str
    params : dict
        The method's parameters.
    precision : str
    weights, weights_hash : str, optional
    stain : dict, optional
        The slide's and the reference's stain statistics, when colours were normalised.
    totals : dict
        Sums of the method's aggregate maps over the slide (e.g. FCRN's count).
    chunk_totals : list of dict
        The same per chunk, with the chunk's level-0 box (x0, y0, x1, y1).
    warnings : list of str
        What looked wrong (a pixel size far from the estimate, an implausible density).
    signature : dict, optional
        The resume key (:meth:`wsidet.inference.spec.RunSpec.signature`), set by cohort runs.
    regions : list of dict, optional
        With regions (:mod:`wsidet.slide.regions`): per region its name, nuclei, area (mm²)
        and nuclei per mm².
    """

    version: str
    slide: SlideInfo
    method: str
    params: dict[str, Any]
    precision: str = "auto"
    weights: str | None = None
    weights_hash: str | None = None
    stain: dict[str, Any] | None = None
    scale: ScaleInfo = field(default_factory=ScaleInfo)
    totals: dict[str, float] = field(default_factory=dict)
    chunk_totals: list[dict[str, Any]] = field(default_factory=list)
    run: RunInfo = field(default_factory=RunInfo)
    warnings: list[str] = field(default_factory=list)
    signature: dict[str, Any] | None = None
    regions: list[dict[str, Any]] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON-able dict stored with the detections (``None`` fields left out)."""
        out = dataclasses.asdict(self)
        for key in ("signature", "regions"):
            if out[key] is None:
                del out[key]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SlideMetadata:
        """Metadata from a stored dict; fields it lacks take their defaults."""
        return cls(
            version=str(data.get("version", "")),
            slide=_from(SlideInfo, data.get("slide")),
            method=str(data.get("method", "")),
            params=dict(data.get("params") or {}),
            precision=str(data.get("precision", "auto")),
            weights=data.get("weights"),
            weights_hash=data.get("weights_hash"),
            stain=data.get("stain"),
            scale=_from(ScaleInfo, data.get("scale")),
            totals=dict(data.get("totals") or {}),
            chunk_totals=list(data.get("chunk_totals") or []),
            run=_from(RunInfo, data.get("run")),
            warnings=list(data.get("warnings") or []),
            signature=data.get("signature") if isinstance(data.get("signature"), dict) else None,
            regions=list(data["regions"]) if isinstance(data.get("regions"), list) else None,
        )

    def with_signature(self, signature: dict[str, Any]) -> SlideMetadata:
        """The same metadata with the run's resume key."""
        return dataclasses.replace(self, signature=signature)


def read_parquet_metadata(path: str | os.PathLike[str]) -> tuple[dict[str, Any], int]:
    """The stored metadata dict of a detections Parquet file and its number of points.

    Reads the file's footer only, not its points.

    Raises
    ------
    OSError
        The file cannot be read.
    ValueError, KeyError
        It is not a detections file (no wsidet metadata).
    """
    import pyarrow.parquet as pq

    footer = pq.read_metadata(path)
    attrs = json.loads(footer.schema.to_arrow_schema().metadata[b"PANDAS_ATTRS"])
    meta = attrs["wsidet"]
    if not isinstance(meta, dict):
        raise ValueError(f"{os.fspath(path)!r}: its wsidet metadata is not a mapping")
    return meta, footer.num_rows
