"""The manifest of an output folder: one row per slide, what was done and how.

``manifest.parquet`` describes the folder's outputs, not the last command: a slide whose
outputs a run refused to replace keeps the row that describes them. It is read tolerantly
(rows of older wsidet versions, or with unknown columns, still load) and written atomically,
at most every few seconds during a run and once at its end, because outputs, not the
manifest, are the authority on what is done (see :mod:`wsidet.cohort.resume`): a manifest that lags
behind after a crash costs nothing.

Several runs may write into one folder at once (two ``wsidet run`` on disjoint slides, or a
cohort split over machines sharing a file system). Each write therefore takes a lock file in
the folder (``.manifest.lock``), reads the manifest as it is on disk, puts this run's rows
over it and replaces it, so no run's rows are lost to another's.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wsidet._version import __version__
from wsidet.errors import WsidetError
from wsidet.output.files import atomic_path

if TYPE_CHECKING:
    import pandas as pd

MANIFEST = "manifest.parquet"
#: Lock file taken while the manifest is read, merged and replaced.
LOCK = ".manifest.lock"
#: Seconds to wait for another run's manifest write (each takes well under a second).
LOCK_TIMEOUT = 60.0
#: Seconds between manifest writes during a run (rewriting it after every slide of a
#: cohort of thousands would cost time quadratic in the cohort).
WRITE_INTERVAL = 10.0


class ManifestError(WsidetError, OSError):
    """The manifest of an output folder cannot be written."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class SlideResult:
    """The outcome for one slide (a manifest row).

    Attributes
    ----------
    path : str
        The slide file as given.
    slide_id : str
        Its file name without extension; names its outputs.
    status : str
        ``"done"`` or ``"failed"``.
    n_points : int
    seconds : float
        Wall time from the slide's start to its outputs being written (on a cluster this
        includes time queued behind other slides).
    error : str
        One line, for failed slides.
    method, weights_hash, params : str
        How the points were made (params as sorted JSON).
    output : str
        The Parquet file name, relative to the folder.
    processed_mpx : float
        Working megapixels of the chunks processed.
    area_mm2 : float
        Area of those chunks (NaN when the pixel size is unknown).
    tissue_mm2 : float
        Tissue area found on the slide (NaN when not known).
    totals : str
        JSON of the method's totals (e.g. FCRN's count).
    warnings : str
        JSON list of what looked wrong (a pixel size far from its nuclei's estimate, an
        implausible density), one sentence each.
    signature : str
        JSON of the run signature the outputs carry (see :mod:`wsidet.cohort.resume`).
    reused : bool
        Done by an earlier run; this one found its outputs.
    version : str
        wsidet version that wrote the row.
    finished : str
        Local time the row was written.
    """

    path: str
    slide_id: str
    status: str
    n_points: int = 0
    seconds: float = 0.0
    error: str = ""
    method: str = ""
    weights_hash: str = ""
    params: str = ""
    output: str = ""
    processed_mpx: float = 0.0
    area_mm2: float = float("nan")
    tissue_mm2: float = float("nan")
    totals: str = "{}"
    warnings: str = "[]"
    signature: str = ""
    reused: bool = False
    version: str = __version__
    finished: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S"))


_FIELDS = {f.name: f for f in dataclasses.fields(SlideResult)}


def _coerce(name: str, value: Any) -> Any:
    """A manifest cell as the field's type; missing or unreadable cells become the default."""
    spec = _FIELDS[name]
    default = spec.default if spec.default is not dataclasses.MISSING else None
    if spec.default_factory is not dataclasses.MISSING:
        default = spec.default_factory()
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return default
    kind = {"n_points": int, "seconds": float, "processed_mpx": float, "area_mm2": float,
            "tissue_mm2": float, "reused": bool}.get(name, str)  # fmt: skip
    try:
        return kind(value)
    except (TypeError, ValueError):
        return default


def read_manifest(out: str | os.PathLike[str]) -> pd.DataFrame | None:
    """The manifest of an output folder as a DataFrame, if there is one."""
    import pandas as pd

    path = Path(out) / MANIFEST
    return pd.read_parquet(path) if path.is_file() else None


def load_rows(out: str | os.PathLike[str]) -> dict[str, SlideResult]:
    """Manifest rows by slide id; rows without a slide id are dropped, unknown columns ignored.

    An unreadable manifest reads as empty: outputs carry what resuming needs.
    """
    try:
        frame = read_manifest(out)
    except (OSError, ValueError):
        return {}
    rows: dict[str, SlideResult] = {}
    if frame is None:
        return rows
    for record in frame.to_dict("records"):
        slide_id = _coerce("slide_id", record.get("slide_id", record.get("slide")))
        if not slide_id:
            continue
        values = {name: _coerce(name, record.get(name)) for name in _FIELDS}
        values["slide_id"] = slide_id
        values["path"] = values["path"] or str(record.get("slide") or slide_id)
        values["status"] = values["status"] or "failed"
        rows[slide_id] = SlideResult(**values)
    return rows


class ManifestWriter:
    """Keeps a folder's manifest rows and writes them, atomically and not too often.

    Parameters
    ----------
    out : path
        The output folder.
    rows : dict, optional
        Rows already there (from :func:`load_rows`).
    interval : float
        Minimum seconds between writes, except forced ones.

    Notes
    -----
    Nothing is written while no row is ``done``: a run in which every slide failed leaves
    no folder behind (the errors reach the caller).
    """

    def __init__(
        self,
        out: str | os.PathLike[str],
        rows: dict[str, SlideResult] | None = None,
        *,
        interval: float = WRITE_INTERVAL,
    ) -> None:
        self.out = Path(out)
        self.rows = dict(rows or {})
        self.interval = interval
        self._written = -math.inf
        self._changed: dict[str, SlideResult] = {}

    def put(self, result: SlideResult) -> None:
        """Set a slide's row, writing the manifest if the interval has passed.

        Raises
        ------
        ManifestError
            The manifest cannot be written (see :meth:`flush`).
        """
        self.rows[result.slide_id] = result
        self._changed[result.slide_id] = result
        if time.monotonic() - self._written >= self.interval:
            self.flush()

    def flush(self) -> None:
        """Merge this run's changed rows into the manifest on disk, under the folder's lock.

        Nothing is written while no row is ``done``. Rows stay pending after a failed write
        and go with the next one.

        Raises
        ------
        ManifestError
            The lock or the manifest cannot be written (a full disk, a read-only folder).
        """
        import pandas as pd
        from filelock import FileLock, Timeout

        if not self._changed:
            return
        path = self.out / MANIFEST
        try:
            if not self.out.is_dir():
                if not any(r.status == "done" for r in self._changed.values()):
                    return
                self.out.mkdir(parents=True, exist_ok=True)
            with FileLock(self.out / LOCK, timeout=LOCK_TIMEOUT):
                merged = {**load_rows(self.out), **self._changed}
                if not any(r.status == "done" for r in merged.values()):
                    return
                frame = pd.DataFrame([dataclasses.asdict(r) for r in merged.values()])
                with atomic_path(path, overwrite=True) as tmp:
                    frame.to_parquet(tmp, index=False)
        except Timeout:
            raise ManifestError(
                f"cannot write the manifest {str(path)!r}: its lock {LOCK!r} was held for "
                f"{LOCK_TIMEOUT:g} s by another run"
            ) from None
        except OSError as exc:
            raise ManifestError(
                f"cannot write the manifest {str(path)!r}: {exc.strerror or exc}"
            ) from exc
        self.rows.update(merged)
        self._written = time.monotonic()
        self._changed.clear()
