"""``run_cohort``: many slides, one output folder, a manifest, and a run that can be resumed.

Per slide, the output folder holds ``SLIDE_ID.parquet`` (and the other formats asked for);
``manifest.parquet`` has a row per slide (:class:`~wsidet.output.manifest.SlideResult`). A rerun
reuses a slide whose outputs carry this run's signature (same slide content, method,
parameters, weights, pixel size and tissue setting; :mod:`wsidet.cohort.resume`), writes formats
missing beside them, retries failed slides, and refuses to replace outputs of another run
unless asked to. Writes are atomic, Parquet last, so an interrupted run never leaves half a
file nor a set of outputs that looks complete.

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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wsidet.cohort.resume import output_state, run_signature, slide_fingerprint
from wsidet.errors import OutputExistsError, SlideNotFoundError, WsidetError
from wsidet.inference.detector import DEFAULT_TILE
from wsidet.inference.pipeline import SlidePlan, detect_slide, plan_slide
from wsidet.inference.precision import check_precision
from wsidet.limits import check_block_memory, check_run_numbers
from wsidet.methods.base import Method
from wsidet.output.detections import output_paths, read_detections, write_detections
from wsidet.output.files import clean_stale_temporaries
from wsidet.output.manifest import (
    MANIFEST,
    ManifestError,
    ManifestWriter,
    SlideResult,
    load_rows,
    read_manifest,
)
from wsidet.slide.reader import check_slide_file
from wsidet.slide.stain import StainStats
from wsidet.slide.wsi import slide_id_for
from wsidet.tiling import DEFAULT_CHUNK

__all__ = [
    "MANIFEST",
    "CohortError",
    "CohortProgress",
    "CohortSummary",
    "SlideResult",
    "find_slides",
    "read_manifest",
    "run_cohort",
]

logger = logging.getLogger(__name__)

#: File endings taken as slides when a folder is given.
SLIDE_ENDINGS = (".svs", ".tif", ".tiff", ".ndpi", ".scn", ".bif", ".ome.tif", ".ome.tiff")
#: Slide ids that would collide with the folder's own files.
RESERVED_IDS = frozenset({Path(MANIFEST).stem})


class CohortError(WsidetError, ValueError):
    """The cohort itself is unusable (no slides, two slides with the same id, no output)."""


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

    A file named twice (also under different spellings of its path) counts once. Entries
    that cannot be slides (a symlink loop, a FIFO, a device, a broken link) are kept: each
    then fails as its own slide, with the reason, while the others run.

    Raises
    ------
    CohortError
        Nothing was found, or two slides share a ``slide_id`` (their outputs would collide).
    """
    found: list[Path] = []
    for item in paths:
        p = Path(item)
        if p.is_dir():
            try:
                entries = sorted(p.iterdir())
            except OSError:
                found.append(p)  # fails as a slide, saying why
                continue
            found += [
                f for f in entries if f.name.lower().endswith(SLIDE_ENDINGS) and not f.is_dir()
            ]
        else:
            found.append(p)  # a missing or unreadable file fails later, as that slide's error
    seen: set[str] = set()
    unique: list[Path] = []
    for p in found:
        real = os.path.realpath(p)  # unlike Path.resolve, never raises on a symlink loop
        if real not in seen:
            seen.add(real)
            unique.append(p)
    if not unique:
        raise CohortError("no slides found in the paths given")
    ids: dict[str, Path] = {}
    for path in unique:
        slide_id = slide_id_for(path)
        if slide_id in ids:
            raise CohortError(f"two slides would write {slide_id!r}: {ids[slide_id]} and {path}")
        ids[slide_id] = path
    return unique


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

    Returns
    -------
    CohortSummary

    Raises
    ------
    CohortError
        No slides, colliding slide ids, an output folder that cannot be written, or a GPU
        resource no worker has.
    ParameterError
        A number out of range, or one block would not fit in memory.
    WeightsError, DeviceError
        The method cannot run (checked once, before any slide).
    ManifestError
        The manifest could not be written at the end (the slides' outputs are written).
    """
    from wsidet.inference.detector import DetectorSpec
    from wsidet.inference.detector import weights_hash as hash_weights
    from wsidet.weights import normalises_stain, required_stain_reference, resolve_method

    started = time.perf_counter()
    out_dir = Path(out)
    check_run_numbers(mpp=mpp, chunk=chunk, tile=tile, batch_size=batch_size)
    slides = find_slides(paths)
    check_writable(out_dir)
    if not isinstance(method, Method):
        method, resolved = resolve_method(method, weights, allow_pickle=allow_pickle)
        weights = resolved if weights is None else weights
    formats = list(dict.fromkeys(["parquet", *formats]))
    weights_path = os.fspath(weights) if weights is not None else None
    w_hash = hash_weights(weights_path) if weights_path else None
    if stain is None:  # as the weights ask; the signature records what is done
        stain = normalises_stain(weights_path, allow_pickle=allow_pickle)
    progress = progress or CohortProgress()
    for stale in clean_stale_temporaries(out_dir):
        logger.info("removed %s, left by an interrupted run", stale)
    manifest = ManifestWriter(out_dir, load_rows(out_dir))
    finished: list[SlideResult] = []
    signatures: dict[Path, dict[str, Any]] = {}

    def report(result: SlideResult, *, keep_row: bool = False) -> None:
        # keep_row: the folder's row still describes its outputs (a refused slide).
        if not (keep_row and result.slide_id in manifest.rows):
            try:
                manifest.put(result)
            except ManifestError as exc:
                # Outputs are the authority: go on; the rows are written with the next
                # slide's, and the last attempt's error reaches the caller.
                logger.info("%s; retrying after the next slide", exc)
        finished.append(result)
        if progress.on_slide is not None:
            progress.on_slide(result, len(finished), len(slides))

    def failed(path: Path, exc: BaseException, seconds: float = 0.0, **row: Any) -> None:
        if raise_errors:
            raise exc
        logger.info("slide %s failed: %s", path, _one_line(exc))
        result = SlideResult(
            str(path), slide_id_for(path), "failed", seconds=seconds,
            error=_one_line(exc), method=method.name,
        )  # fmt: skip
        report(result, **row)

    def done(path: Path, frame: Any, seconds: float) -> None:
        meta = frame.attrs["wsidet"]
        meta["signature"] = signatures[path]
        try:
            # Parquet last: its presence with this signature is what marks a slide done.
            write_detections(frame, out_dir, formats=[*formats[1:], "parquet"], overwrite=True)
        except (OSError, ValueError) as exc:  # a full disk or a lost mount: this slide only
            failed(path, exc, seconds)
            return
        report(_row(path, meta, len(frame), seconds, reused=False))

    todo: list[Path] = []
    try:
        for path in slides:
            slide_id = slide_id_for(path)
            if slide_id in RESERVED_IDS:
                failed(path, CohortError(f"slide id {slide_id!r} is reserved; rename {path}"))
                continue
            try:
                check_slide_file(path)
            except SlideNotFoundError as exc:
                failed(path, exc)
                continue
            try:
                fingerprint = slide_fingerprint(path)
            except OSError as exc:  # unreadable (permissions, a lost mount): this slide only
                failed(path, exc)
                continue
            signature = run_signature(
                fingerprint, method, w_hash, mpp=mpp, tissue=tissue,
                stain=stain.as_dict() if isinstance(stain, StainStats) else bool(stain),
                precision=precision,
            )  # fmt: skip
            signatures[path] = signature
            targets = output_paths(out_dir, slide_id, formats)
            state = output_state(targets, signature, overwrite=overwrite)
            if state.action == "conflict":
                failed(path, OutputExistsError(state.reason), keep_row=True)
            elif state.action == "reuse":
                try:
                    meta = _complete(targets, state.missing)
                except (OSError, ValueError) as exc:
                    failed(path, exc)
                    continue
                report(_row(path, meta, meta["n_points"], 0.0, reused=True))
            else:
                todo.append(path)

        if todo:
            # Method, weights and device problems concern every slide: fail once, first.
            if stain is True:
                required_stain_reference(weights_path, method.name, allow_pickle=allow_pickle)
            spec = DetectorSpec(
                method,
                weights=weights_path,
                device=device,
                tile=tile,
                batch_size=batch_size,
                allow_pickle=allow_pickle,
                precision=check_precision(precision),
            )
            if client is None:
                spec.get()
            else:  # the driver may have no GPU: check the weights fit on its CPU
                dataclasses.replace(spec, device="cpu", precision="fp32").get()
                _check_resource(client, gpu_resource)
            check_block_memory(
                method,
                chunk=chunk,
                tile=tile,
                batch_size=batch_size or spec.get_batch_size(),
            )
        options = {
            "weights": weights_path,
            "mpp": mpp,
            "chunk": chunk,
            "device": device,
            "tile": tile,
            "batch_size": batch_size,
            "tissue": tissue,
            "stain": stain,
            "allow_pickle": allow_pickle,
            "precision": precision,
        }
        if client is None:
            _run_local(todo, method, options, done, failed, progress)
        elif todo:
            dashboard = getattr(client, "dashboard_link", None)
            if dashboard and progress.on_dashboard is not None:
                progress.on_dashboard(dashboard)
            _run_distributed(
                todo, method, options, client, done, failed, progress,
                gpu_resource=gpu_resource, retries=retries, max_in_flight=max_in_flight,
            )  # fmt: skip
    except BaseException:
        with contextlib.suppress(ManifestError):  # the first error is the one to report
            manifest.flush()
        raise
    manifest.flush()
    order = {str(p): i for i, p in enumerate(slides)}
    finished.sort(key=lambda r: order.get(r.path, len(order)))
    return CohortSummary(
        finished,
        time.perf_counter() - started,
        getattr(client, "dashboard_link", None) if client is not None else None,
    )


def _row(
    path: Path, meta: dict[str, Any], n_points: int, seconds: float, *, reused: bool
) -> SlideResult:
    """A done slide's manifest row from its outputs' metadata."""
    run = meta.get("run", {})

    def number(key: str) -> float:
        value = run.get(key)
        return float("nan") if value is None else float(value)

    return SlideResult(
        str(path),
        meta["slide"]["slide_id"],
        "done",
        n_points=int(n_points),
        seconds=seconds,
        method=meta["method"],
        weights_hash=meta.get("weights_hash") or "",
        params=json.dumps(meta["params"], sort_keys=True),
        output=f"{meta['slide']['slide_id']}.parquet",
        processed_mpx=float(run.get("processed_mpx") or 0.0),
        area_mm2=number("processed_area_mm2"),
        tissue_mm2=number("tissue_area_mm2"),
        totals=json.dumps(meta.get("totals", {})),
        warnings=json.dumps(meta.get("warnings") or []),
        signature=json.dumps(meta.get("signature"), sort_keys=True),
        reused=reused,
    )


def _complete(targets: dict[str, Path], missing: Sequence[str]) -> dict[str, Any]:
    """Metadata of a done slide (plus its point count), writing ``missing`` formats first."""
    import pyarrow.parquet as pq

    parquet = targets["parquet"]
    if missing:
        frame = read_detections(parquet)
        for fmt in missing:
            write_detections(frame, parquet.parent, formats=[fmt])
    meta: dict[str, Any] = json.loads(pq.read_schema(parquet).metadata[b"PANDAS_ATTRS"])["wsidet"]
    meta["n_points"] = pq.read_metadata(parquet).num_rows
    return meta


def _check_resource(client: Any, resource: str | None) -> None:
    """Chunk tasks asking for a resource no worker has would wait forever: refuse instead."""
    if resource is None:
        return
    workers = client.scheduler_info().get("workers", {}).values()
    if not any(w.get("resources", {}).get(resource) for w in workers):
        raise CohortError(f"no worker of the cluster offers the resource {resource!r}")


def _run_local(
    todo: Sequence[Path],
    method: Method,
    options: dict[str, Any],
    done: Callable[[Path, Any, float], None],
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
        done(path, frame, time.perf_counter() - started)


def _run_distributed(
    todo: Sequence[Path],
    method: Method,
    options: dict[str, Any],
    client: Any,
    done: Callable[[Path, Any, float], None],
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

    def finish(path: Path, results: list[Any]) -> None:
        seconds = time.perf_counter() - started.pop(path)
        remaining.pop(path, None)
        try:
            frame = plans.pop(path).finish(results, seconds)
        except Exception as exc:
            failed(path, exc, seconds)
            return
        done(path, frame, seconds)

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
                finish(path, [])
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
                except Exception as exc:  # a result lost with its worker after retries
                    give_up(path, exc)
                else:
                    finish(path, results)
        if progress.on_chunks is not None and what == "chunk":
            progress.on_chunks(chunks_done, chunks_total)
        start_next()
