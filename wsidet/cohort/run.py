"""``run_cohort``: many slides, one output folder, a manifest, and a run that can be resumed.

Per slide, the output folder holds ``SLIDE_ID.parquet`` (and the other formats asked for);
``manifest.parquet`` has a row per slide (:class:`~wsidet.output.manifest.SlideResult`). A rerun
reuses a slide whose outputs carry this run's signature (same slide content, method,
parameters, weights, pixel size, tissue, stain, precision and regions settings;
:mod:`wsidet.cohort.resume`), writes formats missing beside them, retries failed slides,
and refuses to replace outputs of another run unless asked to. Writes are atomic, Parquet
last, so an interrupted run never leaves half a file nor a set of outputs that looks complete.

Without a client, slides run one after another in this process (chunks on a thread pool).
With a ``distributed.Client``, each slide is planned by a task on any worker (opening it and
computing its tissue mask), then its chunks become plain tasks that run the worker's resident
detector (one model per worker process, see
:class:`~wsidet.inference.detector.DetectorSpec`). A lost worker only costs its tasks, which
rerun elsewhere with identical results. A slide that cannot
be opened, read or written is recorded as failed with a one-line reason and the others go on.
With ``gpu_resource`` set, chunk tasks ask for that worker resource at compute time
(annotations in the graph would be lost to fusion).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wsidet.cohort.discover import CohortError, find_slides, keep_earlier_ids, slide_ids
from wsidet.cohort.resume import output_state, slide_fingerprint
from wsidet.errors import OutputExistsError, SlideNotFoundError, WsidetError
from wsidet.inference.detector import DEFAULT_TILE
from wsidet.inference.pipeline import SlidePlan, detect, plan_slide
from wsidet.inference.spec import ExecOptions, RunSpec
from wsidet.limits import DENSITY_CELL, check_block_memory, check_run_numbers
from wsidet.methods.base import Method
from wsidet.output.detections import (
    SIGNED_FORMATS,
    output_paths,
    read_detections,
    write_detections,
)
from wsidet.output.files import clean_stale_temporaries
from wsidet.output.manifest import (
    MANIFEST,
    ManifestError,
    ManifestWriter,
    SlideResult,
    load_rows,
    read_manifest,
)
from wsidet.output.metadata import SlideMetadata, read_parquet_metadata
from wsidet.slide.reader import check_slide_file
from wsidet.slide.stain import StainStats
from wsidet.tiling import DEFAULT_CHUNK

__all__ = [
    "MANIFEST",
    "CohortError",
    "CohortOptions",
    "CohortProgress",
    "CohortSummary",
    "SlideResult",
    "find_slides",
    "read_manifest",
    "run_cohort",
    "run_slides",
]

logger = logging.getLogger(__name__)

#: Slide ids that would collide with the folder's own files.
RESERVED_IDS = frozenset({Path(MANIFEST).stem})


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
    # done, total known so far: model tiles in this process, chunks on a cluster
    on_chunks: Callable[[int, int], None] | None = None
    on_dashboard: Callable[[str], None] | None = None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    if not isinstance(exc, WsidetError | OSError | ValueError):
        text = f"{type(exc).__name__}: {text}"
    return text.splitlines()[0]


def check_writable(out: Path) -> None:
    """Fail before any work if ``out`` cannot become a folder we can write in.

    Nothing is created: the folder appears with the first output.

    Raises
    ------
    CohortError
    """
    if out.exists() and not out.is_dir():
        raise CohortError(f"output {str(out)!r} exists and is not a folder")
    existing = out
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise CohortError(f"cannot write to {str(out)!r}: {str(existing)!r} is not writable")


def run_cohort(
    paths: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    method: Method | str | None = None,
    weights: str | os.PathLike[str] | None = None,
    client: Any = None,
    chunk: int = DEFAULT_CHUNK,
    device: str | None = None,
    tile: int = DEFAULT_TILE,
    batch_size: int | None = None,
    tissue: bool = True,
    mpp: float | str | None = None,
    stain: bool | StainStats | None = None,
    allow_pickle: bool = False,
    precision: str = "auto",
    formats: Sequence[str] = ("parquet",),
    overwrite: bool = False,
    gpu_resource: str | None = None,
    retries: int = 1,
    max_in_flight: int | None = None,
    progress: CohortProgress | None = None,
    raise_errors: bool = False,
    recursive: bool = False,
    cell_um: float | None = None,
) -> CohortSummary:
    """Detect nuclei in many slides, writing one output per slide and a manifest.

    Parameters
    ----------
    paths : sequence of path
        Slides and folders of slides.
    out : path
        Output folder (created when the first output is written).
    method : Method or str, optional
        A configured method, or a name resolved as :func:`wsidet.weights.resolve_method` does
        (default: wsidet's default method with its bundled weights).
    weights : path, optional
        Weights of a trainable method.
    client : distributed.Client, optional
        Where to compute; None: in this process.
    chunk, device, tile, batch_size, tissue, mpp, stain, allow_pickle, precision
        As for :func:`wsidet.detect_slide`; the numbers must lie in the ranges of
        :mod:`wsidet.limits`.
    formats : sequence of str
        Output formats. Parquet is always written: it carries the run's metadata and
        signature, which resuming reads.
    overwrite : bool
        Recompute slides whose outputs exist, replacing them.
    gpu_resource : str, optional
        Worker resource chunk tasks require (e.g. ``"GPU"``).
    retries : int
        Extra attempts for a task that raised (a worker lost is handled by dask regardless).
    max_in_flight : int, optional
        Slides being processed at once on a cluster (default: twice the workers).
    progress : CohortProgress, optional
    raise_errors : bool
        Raise a slide's error instead of recording it and going on (for debugging).
    cell_um : float, optional
        Cell edge of the density grid (formats ``density``, ``density.geojson``) in µm.
    recursive : bool
        Search folders' subfolders for slides too. Slides with the same file name get ids
        from their paths (:func:`wsidet.cohort.discover.slide_ids`).

    Returns
    -------
    CohortSummary

    Raises
    ------
    CohortError
        No slides, an output folder that cannot be written, or a GPU
        resource no worker has.
    ParameterError
        A number out of range, or one block would not fit in memory.
    WeightsError, DeviceError
        The method cannot run (checked once, before any slide).
    ManifestError
        The manifest could not be written at the end (the slides' outputs are written).
    """
    options = ExecOptions(chunk, tile, batch_size, device, allow_pickle)
    check_run_numbers(mpp=mpp)
    slides = find_slides(paths, recursive=recursive)
    check_writable(Path(out))
    run = RunSpec.resolve(
        method,
        weights,
        mpp=mpp,
        tissue=tissue,
        stain=stain,
        precision=precision,
        allow_pickle=allow_pickle,
    )
    settings = CohortOptions(
        tuple(formats), overwrite, gpu_resource, retries, max_in_flight, raise_errors, cell_um
    )
    return run_slides(slides, out, run, options, settings, client=client, progress=progress)


@dataclass(frozen=True)
class CohortOptions:
    """How a cohort run treats its output folder and its cluster; none of it changes points.

    Attributes
    ----------
    formats : tuple of str
        Output formats; Parquet is always written (it carries the signature resuming reads).
    overwrite : bool
        Recompute slides whose outputs exist, replacing them.
    gpu_resource : str, optional
        Worker resource chunk tasks require (e.g. ``"GPU"``).
    retries : int
        Extra attempts for a task that raised (a worker lost is handled by dask regardless).
    max_in_flight : int, optional
        Slides being processed at once on a cluster (default: twice the workers).
    raise_errors : bool
        Raise a slide's error instead of recording it and going on (for debugging).
    cell_um : float, optional
        Cell edge of the ``density`` formats' grid in µm (default 100).
    """

    formats: tuple[str, ...] = ("parquet",)
    overwrite: bool = False
    gpu_resource: str | None = None
    retries: int = 1
    max_in_flight: int | None = None
    raise_errors: bool = False
    cell_um: float | None = None

    def __post_init__(self) -> None:
        if self.cell_um is not None:
            DENSITY_CELL.check("cell_um", self.cell_um)

    @property
    def all_formats(self) -> list[str]:
        """``formats`` with Parquet first, each once."""
        return list(dict.fromkeys(["parquet", *self.formats]))


def run_slides(
    slides: Sequence[Path],
    out: str | os.PathLike[str],
    run: RunSpec,
    options: ExecOptions,
    settings: CohortOptions | None = None,
    *,
    client: Any = None,
    progress: CohortProgress | None = None,
) -> CohortSummary:
    """:func:`run_cohort` with its settings resolved (the slides found, the specs built).

    Parameters
    ----------
    slides : sequence of Path
        From :func:`find_slides`.
    out : path
        Output folder.
    run : RunSpec
        What decides the points (and so the resume key).
    options : ExecOptions
        How chunks are computed.
    settings : CohortOptions, optional
    client : distributed.Client, optional
        Where to compute; None: in this process.
    progress : CohortProgress, optional

    Returns
    -------
    CohortSummary

    Raises
    ------
    CohortError, ParameterError, WeightsError, DeviceError, ManifestError
        As :func:`run_cohort`.
    """
    started = time.perf_counter()
    settings = settings or CohortOptions()
    out_dir = Path(out)
    check_writable(out_dir)
    for stale in clean_stale_temporaries(out_dir):
        logger.info("removed %s, left by an interrupted run", stale)
    rows = load_rows(out_dir)
    earlier = {os.path.realpath(r.path): r.slide_id for r in rows.values() if r.path}
    record = _Record(
        out_dir, ManifestWriter(out_dir, rows), run.method.name, settings,
        progress or CohortProgress(), len(slides), keep_earlier_ids(slide_ids(slides), earlier),
    )  # fmt: skip
    try:
        todo = [path for path in slides if _needs_run(path, run, record)]
        if todo:
            _check_runnable(run, options, client, settings.gpu_resource)
        if client is None:
            _run_local(todo, run, options, record)
        elif todo:
            dashboard = getattr(client, "dashboard_link", None)
            if dashboard and record.progress.on_dashboard is not None:
                record.progress.on_dashboard(dashboard)
            _Window(client, run, options, settings, record).run(todo)
    except BaseException:
        with contextlib.suppress(ManifestError):  # the first error is the one to report
            record.manifest.flush()
        raise
    record.manifest.flush()
    _report(out_dir)
    order = {str(p): i for i, p in enumerate(slides)}
    record.finished.sort(key=lambda r: order.get(r.path, len(order)))
    return CohortSummary(
        record.finished,
        time.perf_counter() - started,
        getattr(client, "dashboard_link", None) if client is not None else None,
    )


@dataclass
class _Record:
    """Where each slide's outcome goes: its outputs, the manifest row, the caller's progress."""

    out: Path
    manifest: ManifestWriter
    method: str
    settings: CohortOptions
    progress: CohortProgress
    total: int
    ids: dict[Path, str]
    finished: list[SlideResult] = dataclasses.field(default_factory=list)
    signatures: dict[Path, dict[str, Any]] = dataclasses.field(default_factory=dict)

    def report(self, result: SlideResult, *, keep_row: bool = False) -> None:
        """Record a slide's result (``keep_row``: its old row still describes its outputs)."""
        if not (keep_row and result.slide_id in self.manifest.rows):
            try:
                self.manifest.put(result)
            except ManifestError as exc:
                # Outputs are the authority: go on; the rows are written with the next
                # slide's, and the last attempt's error reaches the caller.
                logger.info("%s; retrying after the next slide", exc)
        self.finished.append(result)
        if self.progress.on_slide is not None:
            self.progress.on_slide(result, len(self.finished), self.total)

    def failed(
        self, path: Path, exc: BaseException, seconds: float = 0.0, *, keep_row: bool = False
    ) -> None:
        """A slide that could not be done, with its error in one line."""
        if self.settings.raise_errors:
            raise exc
        logger.info("slide %s failed: %s", path, _one_line(exc))
        result = SlideResult(
            str(path), self.ids[path], "failed", seconds=seconds,
            error=_one_line(exc), method=self.method,
        )  # fmt: skip
        self.report(result, keep_row=keep_row)

    def done(self, path: Path, frame: Any, seconds: float) -> None:
        """Write a slide's detections (Parquet last: it marks the slide done) and its row."""
        meta = frame.attrs["wsidet"]
        meta["signature"] = self.signatures[path]
        formats = self.settings.all_formats
        signed = [f for f in formats[1:] if f in SIGNED_FORMATS]
        try:
            write_detections(frame, self.out, formats=[*signed, "parquet"], overwrite=True)
        except (OSError, ValueError) as exc:  # a full disk or a lost mount: this slide only
            self.failed(path, exc, seconds)
            return
        self.derived(path, frame, [f for f in formats if f not in SIGNED_FORMATS])
        self.report(_row(path, SlideMetadata.from_dict(meta), len(frame), seconds, reused=False))

    def derived(self, path: Path, frame: Any, formats: Sequence[str]) -> None:
        """Density, preview and region table: drawn from the points, never failing the slide.

        The preview reads the slide where it is now (``path``), not where the metadata says
        it was when the points were made.
        """
        for fmt in formats:
            try:
                slide = _slide_for_preview(path, frame) if fmt == "preview.png" else None
                write_detections(
                    frame, self.out, formats=[fmt], overwrite=True,
                    cell_um=self.settings.cell_um, slide=slide,
                )  # fmt: skip
            except (OSError, ValueError) as exc:
                logger.warning("%s: could not write its %s: %s", path, fmt, _one_line(exc))


def _slide_for_preview(path: Path, frame: Any) -> Any:
    from wsidet.slide.wsi import open_slide

    info = frame.attrs.get("wsidet", {}).get("slide", {})
    return open_slide(path, mpp=info.get("mpp")).with_id(info.get("slide_id") or path.stem)


def _needs_run(path: Path, run: RunSpec, record: _Record) -> bool:
    """Whether ``path`` must be computed; records it when it fails, conflicts or is reused."""
    slide_id = record.ids[path]
    if slide_id in RESERVED_IDS:
        record.failed(path, CohortError(f"slide id {slide_id!r} is reserved; rename {path}"))
        return False
    try:
        check_slide_file(path)
        fingerprint = slide_fingerprint(path)
    except (SlideNotFoundError, OSError) as exc:  # unreadable, a lost mount: this slide only
        record.failed(path, exc)
        return False
    signature = run.signature(fingerprint)
    record.signatures[path] = signature
    targets = output_paths(record.out, slide_id, record.settings.all_formats)
    state = output_state(targets, signature, overwrite=record.settings.overwrite)
    if state.action == "conflict":
        record.failed(path, OutputExistsError(state.reason), keep_row=True)
        return False
    if state.action == "reuse":
        try:
            meta, n_points = _complete(path, targets, state.missing, record)
        except (OSError, ValueError) as exc:
            record.failed(path, exc)
        else:
            record.report(_row(path, meta, n_points, 0.0, reused=True))
        return False
    return True


def _check_runnable(run: RunSpec, options: ExecOptions, client: Any, resource: str | None) -> None:
    """Method, weights and device problems concern every slide: fail once, before any."""
    from wsidet.weights import required_stain_reference

    if run.stain is True:
        required_stain_reference(run.weights, run.method.name, allow_pickle=options.allow_pickle)
    spec = run.detector(options)
    if client is None:
        spec.get()
    else:  # the driver may have no GPU: check the weights fit on its CPU
        dataclasses.replace(spec, device="cpu", precision="fp32").get()
        _check_resource(client, resource)
    check_block_memory(
        run.method, chunk=options.chunk, tile=options.tile, batch_size=spec.get_batch_size()
    )


def _row(
    path: Path, meta: SlideMetadata, n_points: int, seconds: float, *, reused: bool
) -> SlideResult:
    """A done slide's manifest row from its outputs' metadata."""

    def number(value: float | None) -> float:
        return float("nan") if value is None else float(value)

    return SlideResult(
        str(path),
        meta.slide.slide_id,
        "done",
        n_points=int(n_points),
        seconds=seconds,
        method=meta.method,
        weights_hash=meta.weights_hash or "",
        params=json.dumps(meta.params, sort_keys=True),
        output=f"{meta.slide.slide_id}.parquet",
        processed_mpx=float(meta.run.processed_mpx or 0.0),
        area_mm2=number(meta.run.processed_area_mm2),
        tissue_mm2=number(meta.run.tissue_area_mm2),
        totals=json.dumps(meta.totals),
        warnings=json.dumps(meta.warnings),
        signature=json.dumps(meta.signature, sort_keys=True),
        reused=reused,
    )


def _complete(
    path: Path, targets: dict[str, Path], missing: Sequence[str], record: _Record
) -> tuple[SlideMetadata, int]:
    """Metadata and point count of a done slide, writing ``missing`` formats first."""
    parquet = targets["parquet"]
    if missing:
        frame = read_detections(parquet)
        signed = [f for f in missing if f in SIGNED_FORMATS]
        if signed:
            write_detections(frame, parquet.parent, formats=signed)
        record.derived(path, frame, [f for f in missing if f not in SIGNED_FORMATS])
    meta, n_points = read_parquet_metadata(parquet)
    return SlideMetadata.from_dict(meta), n_points


def _report(out: Path) -> None:
    """Rewrite the folder's HTML report; the outputs and manifest matter more than it does."""
    from wsidet.output.report import write_report

    if not out.is_dir():
        return  # nothing was written (every slide failed before an output)
    try:
        write_report(out)
    except (OSError, ValueError) as exc:
        logger.warning("could not write the report of %s: %s", out, exc)


def _check_resource(client: Any, resource: str | None) -> None:
    """Chunk tasks asking for a resource no worker has would wait forever: refuse instead."""
    if resource is None:
        return
    workers = client.scheduler_info().get("workers", {}).values()
    if not any(w.get("resources", {}).get(resource) for w in workers):
        raise CohortError(f"no worker of the cluster offers the resource {resource!r}")


def _run_local(todo: Sequence[Path], run: RunSpec, options: ExecOptions, record: _Record) -> None:
    """Slides one after another in this process, chunks on dask's thread pool."""
    counts = {"earlier": 0, "this": 0}  # chunks: progress counts over the whole cohort
    on_chunks = record.progress.on_chunks

    def count(done: int, total: int) -> None:
        counts["this"] = total
        if on_chunks is not None:
            on_chunks(counts["earlier"] + done, counts["earlier"] + total)

    for path in todo:
        started = time.perf_counter()
        counts["this"] = 0
        try:
            frame = detect(path, run, options, progress=count, slide_id=record.ids[path])
        except Exception as exc:  # one bad slide must not stop the others
            record.failed(path, exc, time.perf_counter() - started)
            continue
        counts["earlier"] += counts["this"]
        record.done(path, frame, time.perf_counter() - started)


class _Window:
    """Slides on a cluster: planned on workers, their chunks run as plain tasks.

    At most ``max_in_flight`` slides are in progress at once, so a cohort of thousands does
    not put every slide's graph on the scheduler; a slide's futures are dropped with it.
    """

    def __init__(
        self,
        client: Any,
        run: RunSpec,
        options: ExecOptions,
        settings: CohortOptions,
        record: _Record,
    ) -> None:
        from distributed import as_completed

        self.client, self.run_spec, self.options = client, run, options
        self.retries, self.record = settings.retries, record
        self.resources = {settings.gpu_resource: 1} if settings.gpu_resource else None
        workers = max(1, len(client.nthreads()))
        self.window = settings.max_in_flight or max(2, 2 * workers)
        self.futures = as_completed()
        self.kind: dict[Any, tuple[str, Path]] = {}
        self.plans: dict[Path, SlidePlan] = {}
        self.chunks: dict[Path, list[Any]] = {}
        self.remaining: dict[Path, int] = {}
        self.started: dict[Path, float] = {}
        self.chunks_done = self.chunks_total = 0

    def run(self, todo: Sequence[Path]) -> None:
        """Process ``todo``, reporting each slide to the record as it finishes."""
        queue = list(todo)
        self._start(queue)
        for future in self.futures:
            what, path = self.kind.pop(future, ("stale", Path()))
            if what == "stale" or path not in self.started:
                continue  # a future of a slide that already failed
            if future.status == "error":
                self._give_up(path, future.exception())
            elif what == "plan":
                self._planned(path, future.result())
            else:
                self._chunk_done(path)
            on_chunks = self.record.progress.on_chunks
            if on_chunks is not None and what == "chunk":
                on_chunks(self.chunks_done, self.chunks_total)
            self._start(queue)

    def _start(self, queue: list[Path]) -> None:
        while queue and len(self.started) < self.window:
            path = queue.pop(0)
            self.started[path] = time.perf_counter()
            plan = self.client.submit(
                plan_slide, path, self.run_spec, self.options, self.record.ids[path],
                pure=False, retries=self.retries,
            )  # fmt: skip
            self.kind[plan] = ("plan", path)
            self.futures.add(plan)

    def _planned(self, path: Path, plan: SlidePlan) -> None:
        self.plans[path] = plan
        tasks = plan.tasks()
        if not tasks:  # no tissue: an empty result, not an error
            self._finish(path, [])
            return
        fs = self.client.compute(tasks, resources=self.resources, retries=self.retries)
        self.chunks[path] = fs
        self.remaining[path] = len(fs)
        self.chunks_total += len(fs)
        for f in fs:
            self.kind[f] = ("chunk", path)
            self.futures.add(f)

    def _chunk_done(self, path: Path) -> None:
        self.chunks_done += 1
        self.remaining[path] -= 1
        if self.remaining[path] == 0:
            try:
                results = self.client.gather(self.chunks.pop(path))
            except Exception as exc:  # a result lost with its worker after retries
                self._give_up(path, exc)
            else:
                self._finish(path, results)

    def _finish(self, path: Path, results: list[Any]) -> None:
        self.started.pop(path)
        self.remaining.pop(path, None)
        plan = self.plans.pop(path)
        # From the start of its planning on a worker: the time it waited for one is not its.
        seconds = max(0.0, time.time() - plan.started)
        try:
            frame = plan.finish(results, seconds)
        except Exception as exc:
            self.record.failed(path, exc, seconds)
            return
        self.record.done(path, frame, seconds)

    def _give_up(self, path: Path, exc: BaseException) -> None:
        for f in self.chunks.pop(path, []):
            f.cancel()
        self.plans.pop(path, None)
        self.remaining.pop(path, None)
        self.record.failed(path, exc, time.perf_counter() - self.started.pop(path))
