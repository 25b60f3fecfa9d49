"""``run_cohort``: many slides, one output folder, a manifest, and a run that can be resumed.

Per slide, the output folder holds ``SLIDE_ID.parquet`` (and other formats asked for) and
``manifest.parquet`` has one row: path, slide_id, status (``done`` / ``failed``), n_points,
seconds, error, wsidet version, method, weights hash, parameters, output. A rerun skips slides
whose output exists and was made with the same method, weights and parameters, and retries
failed ones; writes are atomic, so an interrupted run never leaves half a file.

Without a client, slides run one after another in this process (chunks on a thread pool).
With a ``distributed.Client``, each slide is planned by a task on any worker (opening it and
computing its tissue mask), then its chunks become plain tasks that read their own block and
run the worker's resident detector (one model per worker process, see
:class:`~wsidet.engine.DetectorSpec`). A lost worker only costs its tasks, which rerun
elsewhere with identical results. A slide that cannot be opened or read is recorded as failed
with a one-line reason and the others go on. With ``gpu_resource`` set, chunk tasks ask for
that worker resource at compute time (annotations in the graph would be lost to fusion).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wsidet._version import __version__
from wsidet.engine import DEFAULT_TILE
from wsidet.errors import OutputExistsError, WsidetError
from wsidet.io import atomic_path, output_paths, write_detections
from wsidet.methods.base import Method
from wsidet.pipeline import SlidePlan, detect_slide, plan_slide
from wsidet.slide import slide_id_for
from wsidet.tiling import DEFAULT_CHUNK

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

MANIFEST = "manifest.parquet"
#: File endings taken as slides when a folder is given.
SLIDE_ENDINGS = (".svs", ".tif", ".tiff", ".ndpi", ".scn", ".bif", ".ome.tif", ".ome.tiff")


class CohortError(WsidetError, ValueError):
    """The cohort itself is unusable (no slides, two slides with the same id)."""


@dataclass(frozen=True)
class SlideResult:
    """The outcome for one slide (a manifest row)."""

    path: str
    slide_id: str
    status: str  # "done" or "failed"
    n_points: int = 0
    seconds: float = 0.0
    error: str = ""
    method: str = ""
    weights_hash: str = ""
    params: str = ""
    output: str = ""
    processed_mpx: float = 0.0
    area_mm2: float = float("nan")
    totals: str = "{}"
    reused: bool = False
    version: str = __version__
    finished: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S"))


@dataclass(frozen=True)
class CohortSummary:
    """What a cohort run did."""

    results: list[SlideResult]
    seconds: float
    dashboard: str | None = None

    @property
    def done(self) -> int:
        """Slides with detections (computed now or reused)."""
        return sum(r.status == "done" for r in self.results)

    @property
    def failed(self) -> int:
        """Slides that could not be processed."""
        return sum(r.status == "failed" for r in self.results)

    @property
    def reused(self) -> int:
        """Slides skipped because their output was already there."""
        return sum(r.reused for r in self.results)

    @property
    def points(self) -> int:
        """Points over all done slides."""
        return sum(r.n_points for r in self.results if r.status == "done")

    @property
    def processed_mpx(self) -> float:
        """Working megapixels processed in this run (reused slides excluded)."""
        return sum(r.processed_mpx for r in self.results if not r.reused)


@dataclass(frozen=True)
class CohortProgress:
    """Callbacks a caller (the CLI) uses to show progress; the library never prints."""

    on_slide: Callable[[SlideResult, int, int], None] | None = None  # result, finished, total
    on_chunks: Callable[[int, int], None] | None = None  # done, total known so far
    on_dashboard: Callable[[str], None] | None = None


def find_slides(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Slides named directly, or found (non-recursively) in named folders, in order.

    Raises
    ------
    CohortError
        Nothing was found, or two slides share a ``slide_id`` (their outputs would collide).
    """
    found: list[Path] = []
    for item in paths:
        p = Path(item)
        if p.is_dir():
            found += sorted(
                f for f in p.iterdir() if f.is_file() and f.name.lower().endswith(SLIDE_ENDINGS)
            )
        else:
            found.append(p)  # a missing file fails later, as that slide's error
    unique = list(dict.fromkeys(found))
    if not unique:
        raise CohortError("no slides found in the paths given")
    ids: dict[str, Path] = {}
    for path in unique:
        slide_id = slide_id_for(path)
        if slide_id in ids:
            raise CohortError(f"two slides would write {slide_id!r}: {ids[slide_id]} and {path}")
        ids[slide_id] = path
    return unique


def read_manifest(out: str | os.PathLike[str]) -> pd.DataFrame | None:
    """The manifest of an output folder, if there is one."""
    import pandas as pd

    path = Path(out) / MANIFEST
    return pd.read_parquet(path) if path.is_file() else None


def _write_manifest(out: Path, rows: dict[str, SlideResult]) -> None:
    import dataclasses

    import pandas as pd

    frame = pd.DataFrame([dataclasses.asdict(r) for r in rows.values()])
    with atomic_path(out / MANIFEST, overwrite=True) as tmp:
        frame.to_parquet(tmp, index=False)


def _params_text(method: Method) -> str:
    return json.dumps(method.params(), sort_keys=True)


def _reusable(path: Path, method: Method, weights_hash: str | None) -> bool:
    """Whether an existing output was made by the same method, weights and parameters."""
    import pyarrow.parquet as pq

    try:
        meta = json.loads(pq.read_schema(path).metadata[b"PANDAS_ATTRS"])["wsidet"]
    except (OSError, KeyError, ValueError, TypeError):
        return False
    return bool(
        meta.get("method") == method.name
        and meta.get("weights_hash") == weights_hash
        and json.dumps(meta.get("params"), sort_keys=True) == _params_text(method)
    )


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    if not isinstance(exc, WsidetError | OSError | ValueError):
        text = f"{type(exc).__name__}: {text}"
    return text.splitlines()[0]


def run_cohort(
    paths: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    method: Method,
    weights: str | os.PathLike[str] | None = None,
    client: Any = None,
    chunk: int = DEFAULT_CHUNK,
    device: str | None = None,
    tile: int = DEFAULT_TILE,
    batch_size: int | None = None,
    tissue: bool = True,
    mpp: float | None = None,
    formats: Sequence[str] = ("parquet",),
    overwrite: bool = False,
    gpu_resource: str | None = None,
    retries: int = 1,
    max_in_flight: int | None = None,
    progress: CohortProgress | None = None,
    raise_errors: bool = False,
) -> CohortSummary:
    """Detect nuclei in many slides, writing one output per slide and a manifest.

    Parameters
    ----------
    paths : sequence of path
        Slides and folders of slides.
    out : path
        Output folder.
    method : Method
        Configured method (see :func:`wsidet.weights.resolve_method`).
    weights : path, optional
        Its weights (trainable methods).
    client : distributed.Client, optional
        Where to compute; None: in this process.
    chunk, device, tile, batch_size, tissue, mpp
        As for :func:`wsidet.detect_slide`.
    formats : sequence of str
        Output formats (``parquet`` is always written: resuming reads it).
    overwrite : bool
        Recompute slides whose outputs exist.
    gpu_resource : str, optional
        Worker resource chunk tasks require (e.g. ``"GPU"``).
    retries : int
        Extra attempts for a task that raised (a worker lost is handled by dask regardless).
    max_in_flight : int, optional
        Slides being processed at once on a cluster (default: twice the workers).
    progress : CohortProgress, optional
    raise_errors : bool
        Raise a slide's error instead of recording it and going on (for debugging).

    Returns
    -------
    CohortSummary
    """
    from wsidet.engine import weights_hash as hash_weights

    started = time.perf_counter()
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    slides = find_slides(paths)
    formats = list(dict.fromkeys(["parquet", *formats]))
    weights_path = os.fspath(weights) if weights is not None else None
    w_hash = hash_weights(weights_path) if weights_path else None
    progress = progress or CohortProgress()
    rows: dict[str, SlideResult] = {}
    manifest = read_manifest(out_dir)
    if manifest is not None:
        for rec in manifest.to_dict("records"):
            rows[str(rec["slide_id"])] = SlideResult(
                **{k: rec[k] for k in SlideResult.__dataclass_fields__ if k in rec}
            )
    todo: list[Path] = []
    finished: list[SlideResult] = []

    def record(result: SlideResult) -> None:
        rows[result.slide_id] = result
        finished.append(result)
        _write_manifest(out_dir, rows)
        if progress.on_slide is not None:
            progress.on_slide(result, len(finished), len(slides))

    for path in slides:
        slide_id = slide_id_for(path)
        targets = output_paths(out_dir, slide_id, formats)
        existing = [p for p in targets.values() if p.exists()]
        if existing and not overwrite:
            previous = rows.get(slide_id)
            if all(p.exists() for p in targets.values()) and _reusable(
                targets["parquet"], method, w_hash
            ):
                reused = SlideResult(
                    str(path),
                    slide_id,
                    "done",
                    n_points=int(previous.n_points)
                    if previous is not None
                    else _count(targets["parquet"]),
                    method=method.name,
                    weights_hash=w_hash or "",
                    params=_params_text(method),
                    output=targets["parquet"].name,
                    reused=True,
                )
                record(reused)
                continue
            record(
                SlideResult(
                    str(path),
                    slide_id,
                    "failed",
                    error=str(
                        OutputExistsError(
                            f"output exists from a different run: {str(existing[0])!r} "
                            "(use --overwrite to replace it)"
                        )
                    ),
                    method=method.name,
                )
            )
            continue
        todo.append(path)

    # Method, weights and device problems concern every slide: fail once, before any work.
    from wsidet.engine import DetectorSpec

    check = DetectorSpec(method, weights=weights_path, device=None if client else device)
    if client is None:
        check.get()
    else:  # the driver may have no GPU: check the weights fit on its CPU
        DetectorSpec(method, weights=weights_path, device="cpu").get()

    options = {
        "weights": weights_path,
        "mpp": mpp,
        "chunk": chunk,
        "device": device,
        "tile": tile,
        "batch_size": batch_size,
        "tissue": tissue,
    }

    def done(frame: Any, seconds: float) -> None:
        meta = frame.attrs["wsidet"]
        slide_id = meta["slide"]["slide_id"]
        write_detections(frame, out_dir, formats=formats, overwrite=True)
        area = meta["run"]["processed_area_mm2"]
        record(
            SlideResult(
                str(meta["slide"]["path"]),
                slide_id,
                "done",
                n_points=len(frame),
                seconds=seconds,
                method=method.name,
                weights_hash=w_hash or "",
                params=_params_text(method),
                output=f"{slide_id}.parquet",
                processed_mpx=meta["run"]["processed_mpx"],
                area_mm2=float("nan") if area is None else float(area),
                totals=json.dumps(meta["totals"]),
            )
        )

    def failed(path: Path, exc: BaseException, seconds: float) -> None:
        if raise_errors:
            raise exc
        slide_id = slide_id_for(path)
        logger.info("slide %s failed: %s", path, _one_line(exc))
        record(
            SlideResult(
                str(path),
                slide_id,
                "failed",
                seconds=seconds,
                error=_one_line(exc),
                method=method.name,
            )
        )

    if client is None:
        _run_local(todo, method, options, done, failed, progress)
    else:
        dashboard = getattr(client, "dashboard_link", None)
        if dashboard and progress.on_dashboard is not None:
            progress.on_dashboard(dashboard)
        _run_distributed(
            todo, method, options, client, done, failed, progress,
            gpu_resource=gpu_resource, retries=retries, max_in_flight=max_in_flight,
        )  # fmt: skip
    order = {str(p): i for i, p in enumerate(slides)}
    finished.sort(key=lambda r: order.get(r.path, len(order)))
    return CohortSummary(
        finished,
        time.perf_counter() - started,
        getattr(client, "dashboard_link", None) if client is not None else None,
    )


def _count(path: Path) -> int:
    import pyarrow.parquet as pq

    return int(pq.read_metadata(path).num_rows)


def _run_local(
    todo: Sequence[Path],
    method: Method,
    options: dict[str, Any],
    done: Callable[..., None],
    failed: Callable[..., None],
    progress: CohortProgress,
) -> None:
    """Slides one after another in this process, chunks on dask's thread pool."""
    counts = {"earlier": 0, "this": 0}  # chunks: progress counts over the whole cohort

    def count(done: int, total: int) -> None:
        counts["this"] = total
        if progress.on_chunks is not None:
            progress.on_chunks(counts["earlier"] + done, counts["earlier"] + total)

    for path in todo:
        started = time.perf_counter()
        counts["this"] = 0
        try:
            frame = detect_slide(path, method, progress=count, **options)
        except Exception as exc:  # one bad slide must not stop the others
            failed(path, exc, time.perf_counter() - started)
            continue
        counts["earlier"] += counts["this"]
        done(frame, time.perf_counter() - started)


def _run_distributed(
    todo: Sequence[Path],
    method: Method,
    options: dict[str, Any],
    client: Any,
    done: Callable[..., None],
    failed: Callable[..., None],
    progress: CohortProgress,
    *,
    gpu_resource: str | None,
    retries: int,
    max_in_flight: int | None,
) -> None:
    """Plan slides on workers, then run their chunks as plain tasks; a window of slides at once."""
    from distributed import as_completed

    workers = max(1, len(client.nthreads()))
    window = max_in_flight or max(2, 2 * workers)
    queue = list(todo)
    futures = as_completed()
    kind: dict[Any, tuple[str, Path]] = {}
    plans: dict[Path, SlidePlan] = {}
    chunks: dict[Path, list[Any]] = {}
    remaining: dict[Path, int] = {}
    started: dict[Path, float] = {}
    chunks_done = chunks_total = 0
    resources = {gpu_resource: 1} if gpu_resource else None

    def start_next() -> None:
        while queue and len(started) < window:
            path = queue.pop(0)
            started[path] = time.perf_counter()
            plan = client.submit(plan_slide, path, method, pure=False, retries=retries, **options)
            kind[plan] = ("plan", path)
            futures.add(plan)

    def give_up(path: Path, exc: BaseException) -> None:
        for f in chunks.pop(path, []):
            f.cancel()
        plans.pop(path, None)
        remaining.pop(path, None)
        failed(path, exc, time.perf_counter() - started.pop(path))

    start_next()
    for future in futures:
        what, path = kind.pop(future, ("stale", Path()))
        if what == "stale" or path not in started:
            continue  # a future of a slide that already failed
        if future.status == "error":
            give_up(path, future.exception())
        elif what == "plan":
            plan = future.result()
            plans[path] = plan
            tasks = plan.tasks()
            if not tasks:  # no tissue: an empty result, not an error
                seconds = time.perf_counter() - started.pop(path)
                done(plans.pop(path).finish([], seconds), seconds)
            else:
                fs = client.compute(tasks, resources=resources, retries=retries)
                chunks[path] = fs
                remaining[path] = len(fs)
                chunks_total += len(fs)
                for f in fs:
                    kind[f] = ("chunk", path)
                    futures.add(f)
        else:
            chunks_done += 1
            remaining[path] -= 1
            if remaining[path] == 0:
                try:
                    results = client.gather(chunks.pop(path))
                    seconds = time.perf_counter() - started[path]
                    frame = plans.pop(path).finish(results, seconds)
                    del started[path], remaining[path]
                    done(frame, seconds)
                except Exception as exc:  # writing or gathering failed: this slide only
                    if path in started:
                        give_up(path, exc)
        if progress.on_chunks is not None and what == "chunk":
            progress.on_chunks(chunks_done, chunks_total)
        start_next()
