"""``detect_slide``: a slide in, one point per nucleus out, exactly once across seams.

The graph, per slide::

    LevelReader chunks ──dask overlap (halo from the method)──▶ blocks with halos
        ──one plain task per tissue block──▶ resident Detector ──▶ points it owns ──▶ concat

* Reading: chunks are aligned to the TIFF tiles and read by a picklable reader in whichever
  process runs the task (see :mod:`wsidet.slide.reader`).
* Overlap: ``dask.array.overlap.overlap`` with ``boundary="none"`` and ``allow_rechunk=False``
  (the grid already folded small edge chunks, so no silent rechunk breaks tile alignment).
  Block offsets come from the grid, not from ``block_info`` (dask #11349).
* Tissue: only blocks whose core touches tissue become tasks; a background chunk is read only
  when a tissue neighbour needs its edge.
* Ownership: a block keeps the points whose pixel lies in its half-open core.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from wsidet._version import __version__
from wsidet.errors import MppWarning
from wsidet.inference.detector import DEFAULT_TILE, Detections, DetectorSpec
from wsidet.inference.spec import ExecOptions, RunSpec
from wsidet.limits import check_block_memory
from wsidet.methods import DEFAULT_METHOD
from wsidet.methods.base import Method
from wsidet.output.metadata import RunInfo, ScaleInfo, SlideInfo, SlideMetadata
from wsidet.slide.regions import Regions
from wsidet.slide.stain import Reinhard, StainStats, slide_stain_stats
from wsidet.slide.wsi import Scale, Slide, open_slide
from wsidet.tiling import DEFAULT_CHUNK, Grid
from wsidet.weights import resolve_stain

if TYPE_CHECKING:
    import dask.array as da
    import geopandas as gpd

logger = logging.getLogger(__name__)

#: ``progress(done, total)``: model tiles in this process, chunks on a cluster.
Progress = Callable[[int, int], None]

_TASK_PREFIX = "wsidet-detect-"


def detect_block(
    block: npt.NDArray[np.uint8],
    grid: Grid,
    index: tuple[int, int],
    spec: DetectorSpec,
    stain: Reinhard | None = None,
    on_tiles: Callable[[int], None] | None = None,
) -> Detections:
    """Detect in one block (core + halo) and keep the points its core owns.

    Parameters
    ----------
    block : ndarray, shape (h, w, 3), uint8
        The window ``grid.block_box(index)`` of the working image.
    grid : Grid
    index : tuple of int
    spec : DetectorSpec
        Resolved to this process's resident detector.
    stain : Reinhard, optional
        The slide's colour normalisation (the same map for every block).
    on_tiles : callable, optional
        Progress by model tile (in-process schedulers only: it does not travel to workers).

    Returns
    -------
    Detections
        Points in global working-pixel indices, their scores, and the method's totals over
        the block's core.
    """
    y0, x0, y1, x1 = grid.block_box(index)
    if block.shape[:2] != (y1 - y0, x1 - x0):
        raise RuntimeError(
            f"block {index} has shape {block.shape[:2]}, expected {(y1 - y0, x1 - x0)}"
        )
    cy0, cx0, cy1, cx1 = grid.core_box(index)
    core = (cy0 - y0, cx0 - x0, cy1 - y0, cx1 - x0)
    found = spec.get().detect(block, core=core, stain=stain, on_tiles=on_tiles)
    points = found.points_yx + np.array([y0, x0], np.float64)
    keep = grid.owned(index, points)
    return Detections(points[keep], found.scores[keep], found.totals)


def block_tasks(
    image: da.Array,
    grid: Grid,
    spec: DetectorSpec,
    blocks: Iterable[tuple[int, int]] | None = None,
    stain: Reinhard | None = None,
    on_tiles: Callable[[int], None] | None = None,
) -> list[Any]:
    """One delayed :func:`detect_block` per block, over dask's overlap of ``image``.

    Parameters
    ----------
    image : dask.array.Array, shape (rows, cols, 3), uint8
        Chunked exactly as ``grid.chunks``.
    grid : Grid
    spec : DetectorSpec
    blocks : iterable of (i, j), optional
        Blocks to process (default: all).
    stain : Reinhard, optional
        Colour normalisation of every block.
    on_tiles : callable, optional
        Progress by model tile, for schedulers in this process (not part of the task keys).

    Returns
    -------
    list of dask.delayed.Delayed
        Each computes to a :class:`~wsidet.inference.detector.Detections` in global working pixels.
    """
    import dask.array as da
    from dask.base import tokenize
    from dask.delayed import delayed

    if image.chunks[:2] != grid.chunks or image.shape[:2] != grid.shape:
        raise ValueError(f"image chunks {image.chunks[:2]} do not match grid {grid.chunks}")
    dy, dx = grid.depth
    overlapped = (
        da.overlap.overlap(image, depth={0: dy, 1: dx, 2: 0}, boundary="none", allow_rechunk=False)
        if dy or dx
        else image
    )
    pieces = overlapped.to_delayed()
    selected = list(grid.indices()) if blocks is None else list(blocks)
    token = tokenize(image.name, grid, spec, stain)
    run = delayed(detect_block, pure=True)
    return [
        run(
            pieces[i, j, 0],
            grid,
            (i, j),
            spec,
            stain,
            on_tiles,
            dask_key_name=f"{_TASK_PREFIX}{token}-{i}-{j}",
        )
        for i, j in selected
    ]


def merge_detections(results: Sequence[Detections]) -> Detections:
    """Concatenate blocks' points and add up their totals."""
    totals: dict[str, float] = {}
    for r in results:
        for name, value in r.totals.items():
            totals[name] = totals.get(name, 0.0) + value
    if not results:
        return Detections(np.zeros((0, 2)), np.zeros(0, np.float32), totals)
    return Detections(
        np.concatenate([r.points_yx for r in results]).reshape(-1, 2),
        np.concatenate([r.scores for r in results]).astype(np.float32),
        totals,
    )


def detect_array(
    image: da.Array,
    grid: Grid,
    spec: DetectorSpec,
    *,
    blocks: Iterable[tuple[int, int]] | None = None,
    progress: Progress | None = None,
    scheduler: Any = None,
) -> tuple[Detections, list[dict[str, float]]]:
    """Tiled detection over a dask image whose chunks are the grid's cores.

    Parameters
    ----------
    image : dask.array.Array, shape (rows, cols, 3), uint8
        Chunked exactly as ``grid.chunks``.
    grid : Grid
    spec : DetectorSpec
    blocks : iterable of (i, j), optional
        Blocks to process (default: all).
    progress : callable, optional
        ``progress(done, total)`` as blocks finish.
    scheduler : optional
        A dask scheduler name (``"threads"``, ``"sync"``, ``"processes"``) or a
        ``distributed.Client``; default threads.

    Returns
    -------
    Detections
        All points (working-pixel indices, in block order), scores, and totals summed over
        the blocks.
    list of dict
        The totals of each block, in the order of ``blocks``.
    """
    results: list[Detections] = _compute(
        block_tasks(image, grid, spec, blocks), scheduler, progress
    )
    return merge_detections(results), [r.totals for r in results]


def _compute(tasks: Sequence[Any], scheduler: Any, progress: Progress | None) -> list[Any]:
    """Compute delayed tasks in order, reporting progress on local or distributed schedulers."""
    from dask.base import compute

    total = len(tasks)
    if progress is not None:
        progress(0, total)
    if not tasks:
        return []
    if hasattr(scheduler, "compute") and hasattr(scheduler, "gather"):  # a distributed.Client
        from distributed import as_completed

        futures = scheduler.compute(list(tasks))
        for done, _ in enumerate(as_completed(futures), start=1):
            if progress is not None:
                progress(done, total)
        return list(scheduler.gather(futures))
    from dask.callbacks import Callback

    class _Counter(Callback):
        def __init__(self) -> None:
            super().__init__()  # type: ignore[no-untyped-call]
            self.done = 0

        def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
            if progress is not None and str(key).startswith(_TASK_PREFIX):
                self.done += 1
                progress(self.done, total)

    with _Counter():
        return list(compute(*tasks, scheduler=scheduler or "threads"))


def _level0_box(scale: Scale, box: tuple[int, int, int, int]) -> list[float]:
    """A working-pixel core box as level-0 ``[x0, y0, x1, y1]``."""
    dy, dx = scale.downsample
    y0, x0, y1, x1 = box
    return [x0 * dx, y0 * dy, x1 * dx, y1 * dy]


def _region_table(
    regions: Regions, slide: Slide, xy: npt.NDArray[np.float64]
) -> list[dict[str, Any]]:
    """Per region: its name, nuclei, area (mm², within the slide) and nuclei per mm².

    Each region counts every point inside it, so a region nested in another (a hotspot in a
    tumour) has its own count; the ``region`` column names only the first.
    """
    counts = regions.counts(xy)
    mpp = slide.mpp or float("nan")
    table = []
    for name, count, px in zip(
        regions.names, counts, regions.areas_px(slide.shape[1], slide.shape[0]), strict=True
    ):
        area = px * mpp**2 / 1e6
        table.append(
            {
                "region": name,
                "count": int(count),
                "area_mm2": area,
                "per_mm2": int(count) / area if area > 0 else float("nan"),
            }
        )
    return table


def region_blocks(
    regions: Regions, blocks: Sequence[tuple[int, int]], scale: Scale, grid: Grid
) -> list[tuple[int, int]]:
    """The ``blocks`` whose core touches one of ``regions`` (level-0 polygons)."""
    if not blocks:
        return []
    dy, dx = scale.downsample
    boxes = np.array([grid.core_box(ix) for ix in blocks], np.float64) * [dy, dx, dy, dx]
    hits = regions.any_in_boxes(boxes)
    return [ix for ix, hit in zip(blocks, hits, strict=True) if hit]


def tissue_blocks(slide: Slide, scale: Scale, grid: Grid) -> list[tuple[int, int]]:
    """Blocks whose core touches tissue (see :meth:`Slide.tissue_mask`)."""
    mask = slide.tissue_mask()
    boxes = grid.core_boxes().astype(np.float64)
    dy, dx = scale.downsample
    boxes *= np.array([dy, dx, dy, dx])
    hits = mask.any_in_boxes(boxes)
    return [ix for ix, hit in zip(grid.indices(), hits, strict=True) if hit]


@dataclass(frozen=True, eq=False)
class SlidePlan:
    """What detecting in one slide involves, decided before any chunk is read.

    Picklable: a plan can be made on a dask worker and its tasks built anywhere.

    Attributes
    ----------
    slide : Slide
    run : RunSpec
        What decides the points.
    options : ExecOptions
        How they are computed.
    detector : DetectorSpec
        The resident detector's recipe (from ``run`` and ``options``).
    scale : Scale
        Where the method reads the slide.
    grid : Grid
        Chunks and halo at that scale.
    blocks : tuple of (i, j)
        The chunks to process (those on tissue).
    stain : Reinhard, optional
        The slide's colour normalisation to the training data's.
    mpp_estimate : float, optional
        Level-0 pixel size estimated from the slide's nuclei (:mod:`wsidet.slide.scale_check`),
        None when not estimated.
    warnings : tuple of str
        What looks wrong with this run before it starts (a pixel size far from the
        estimate); :meth:`finish` adds what the detections show (an implausible density).
    started : float
        ``time.time()`` when planning began, where it ran: a slide's time on a cluster counts
        from here, not from when it joined the queue.
    """

    slide: Slide
    run: RunSpec
    options: ExecOptions
    detector: DetectorSpec
    scale: Scale
    grid: Grid
    blocks: tuple[tuple[int, int], ...]
    stain: Reinhard | None = None
    mpp_estimate: float | None = None
    warnings: tuple[str, ...] = ()
    started: float = 0.0

    @property
    def method(self) -> Method:
        """The detection method."""
        return self.run.method

    def tasks(self, on_tiles: Callable[[int], None] | None = None) -> list[Any]:
        """One delayed detection per block (see :func:`block_tasks`)."""
        image = self.slide.to_dask(self.scale, chunks=self.grid.chunks)
        return block_tasks(image, self.grid, self.detector, self.blocks, self.stain, on_tiles)

    def tile_total(self) -> int:
        """Model tiles over all blocks, for progress (builds this process's detector)."""
        detector = self.detector.get()
        boxes = (self.grid.block_box(ix) for ix in self.blocks)
        return sum(detector.tile_count((y1 - y0, x1 - x0)) for y0, x0, y1, x1 in boxes)

    @property
    def processed_mpx(self) -> float:
        """Working megapixels of the blocks' cores."""
        boxes = map(self.grid.core_box, self.blocks)
        return float(sum((b[2] - b[0]) * (b[3] - b[1]) for b in boxes)) / 1e6

    def finish(self, results: Sequence[Detections], seconds: float) -> gpd.GeoDataFrame:
        """The slide's detections from its blocks' results (in ``blocks`` order).

        Maps points to level 0, drops those off tissue (and outside the run's regions, naming
        each point's region in a ``region`` column), and records the slide, method, scale,
        totals, per-region counts, timing and warnings in ``attrs["wsidet"]``
        (:class:`SlideMetadata`); each warning is also issued as an
        :class:`~wsidet.errors.MppWarning`.
        """
        import pandas as pd

        from wsidet.output.detections import detections_frame

        found = merge_detections(results)
        xy = self.scale.to_level0(found.points_yx)[:, ::-1]
        scores = found.scores
        if self.run.tissue and len(xy):
            on_tissue = self.slide.tissue_mask().contains(xy)
            xy, scores = xy[on_tissue], scores[on_tissue]
        regions, labels = self.run.regions, None
        if regions is not None:
            labels = regions.label(xy)
            xy, scores, labels = xy[labels >= 0], scores[labels >= 0], labels[labels >= 0]
        metadata = self.metadata(found.totals, [r.totals for r in results], len(xy), seconds)
        if regions is not None and labels is not None:
            table = _region_table(regions, self.slide, xy)
            metadata = dataclasses.replace(metadata, regions=table)
        frame = detections_frame(
            xy,
            scores,
            method=self.method.name,
            slide_id=self.slide.slide_id,
            metadata=metadata.to_dict(),
        )
        if regions is not None and labels is not None:
            names = [regions.names[i] for i in labels]
            frame["region"] = pd.Categorical(names, categories=list(dict.fromkeys(regions.names)))
        return frame

    def metadata(
        self,
        totals: dict[str, float],
        block_totals: Sequence[dict[str, float]],
        n_points: int,
        seconds: float,
    ) -> SlideMetadata:
        """What :meth:`finish` records, given the merged and per-block totals."""
        from wsidet.slide.scale_check import density_problem

        slide, scale, grid = self.slide, self.scale, self.grid
        cost = self._cost(seconds)
        notes = list(self.warnings)
        # Points inside drawn regions say nothing of the whole tissue's density.
        if cost.tissue_area_mm2 is not None and self.run.regions is None:
            problem = density_problem(n_points, cost.tissue_area_mm2)
            if problem is not None:
                warnings.warn(f"{slide.slide_id}: {problem}", MppWarning, stacklevel=3)
                notes.append(problem)
        stain = self.stain
        info = SlideInfo(
            path=str(slide.path),
            slide_id=slide.slide_id,
            mpp=slide.mpp,
            mpp_source=slide.mpp_source,
            mpp_estimate=self.mpp_estimate,
            height=slide.shape[0],
            width=slide.shape[1],
            vendor=slide.vendor,
        )
        where = ScaleInfo(
            level=scale.level.index,
            factor=scale.factor,
            mpp=scale.mpp,
            halo=grid.halo,
            chunks_total=grid.n_blocks[0] * grid.n_blocks[1],
            chunks_processed=len(self.blocks),
        )
        return SlideMetadata(
            version=__version__,
            slide=info,
            method=self.method.name,
            params=self.method.params(),
            precision=self.detector.precision,
            weights=self.detector.weights,
            weights_hash=self.run.weights_hash,
            stain=None
            if stain is None
            else {"slide": stain.source.as_dict(), "reference": stain.target.as_dict()},
            scale=where,
            totals=totals,
            chunk_totals=[
                {"box": _level0_box(scale, grid.core_box(ix)), **t}
                for ix, t in zip(self.blocks, block_totals, strict=True)
                if t
            ],
            run=cost,
            warnings=notes,
        )

    def _cost(self, seconds: float) -> RunInfo:
        """Time, pixels and area of the run (tissue area only with ``run.tissue``)."""
        slide, mpx = self.slide, self.processed_mpx
        fraction = slide.tissue_mask().fraction if self.run.tissue else None
        tissue_mm2 = (
            fraction * slide.shape[0] * slide.shape[1] * slide.mpp**2 / 1e6
            if fraction is not None and slide.mpp is not None
            else None
        )
        return RunInfo(
            seconds=seconds,
            processed_mpx=mpx,
            processed_area_mm2=mpx * self.scale.mpp**2 if self.scale.mpp is not None else None,
            tissue_fraction=fraction,
            tissue_area_mm2=tissue_mm2,
        )


def plan_slide(
    slide: Slide | str | os.PathLike[str],
    run: RunSpec,
    options: ExecOptions | None = None,
    slide_id: str | None = None,
) -> SlidePlan:
    """Open a slide, choose its scale and chunks, and find the chunks on tissue.

    Reads only the slide's metadata, a low-resolution level (for the tissue mask) and, with
    stain normalisation, a few windows of tissue. ``slide_id`` names the outputs instead of
    the file name (a cohort with two files of one name).

    Raises
    ------
    ParameterError
        One block would not fit in the memory available (see :mod:`wsidet.limits`).
    MppUnknownError
        The slide has no pixel size and none was given (the message names the estimate).
    """
    from wsidet.slide.scale_check import resolve_mpp

    started = time.time()
    options = options or ExecOptions()
    method = run.method
    numeric = None if isinstance(run.mpp, str) else run.mpp
    if not isinstance(slide, Slide):
        slide = open_slide(slide, mpp=numeric)
    elif numeric is not None:
        slide = slide.with_mpp(numeric, "override")
    if slide_id is not None:
        slide = slide.with_id(slide_id)
    slide, estimate, notes = resolve_mpp(slide, run.mpp, check=options.check_mpp)
    for note in notes:
        warnings.warn(f"{slide.slide_id}: {note}", MppWarning, stacklevel=2)
    detector = run.detector(options)
    check_block_memory(
        method, chunk=options.chunk, tile=options.tile, batch_size=detector.get_batch_size()
    )
    scale = slide.scale_for_mpp(method.mpp)
    grid = Grid.aligned(
        scale.shape, halo=method.halo, chunk=options.chunk, tile=scale.tile, align=method.stride
    )
    blocks = tissue_blocks(slide, scale, grid) if run.tissue else list(grid.indices())
    if run.regions is not None:
        blocks = region_blocks(run.regions, blocks, scale, grid)
    normaliser = None
    reference = resolve_stain(
        run.stain, detector.weights, method.name, allow_pickle=options.allow_pickle
    )
    if reference is not None:
        normaliser = Reinhard(slide_stain_stats(slide, scale), reference)
    return SlidePlan(
        slide,
        run,
        options,
        detector,
        scale,
        grid,
        tuple(blocks),
        normaliser,
        estimate.mpp if estimate is not None and estimate.mpp == estimate.mpp else None,
        notes,
        started,
    )


def detect(
    slide: Slide | str | os.PathLike[str],
    run: RunSpec,
    options: ExecOptions | None = None,
    *,
    progress: Progress | None = None,
    scheduler: Any = None,
    slide_id: str | None = None,
) -> gpd.GeoDataFrame:
    """:func:`detect_slide` with its settings already resolved (see :mod:`wsidet.inference.spec`).

    Parameters
    ----------
    slide : Slide or path
    run : RunSpec
    options : ExecOptions, optional
    progress : callable, optional
        ``progress(done, total)``: over model tiles in this process, over chunks on a
        ``distributed.Client``.
    scheduler : optional
        Dask scheduler name or ``distributed.Client`` (default: threads in this process).
    slide_id : str, optional
        Names the outputs instead of the file name.

    Returns
    -------
    geopandas.GeoDataFrame
    """
    started = time.perf_counter()
    plan = plan_slide(slide, run, options, slide_id)
    if not hasattr(scheduler, "gather"):  # in this process: fail fast on weights and device
        plan.detector.get()
    in_threads = scheduler in (None, "threads", "sync", "synchronous", "single-threaded")
    if not in_threads:  # a distributed.Client or processes: the counter cannot travel
        results = _compute(plan.tasks(), scheduler, progress)
    else:
        tiles = _TileProgress(plan.tile_total(), progress) if progress is not None else None
        results = _compute(plan.tasks(tiles), scheduler, None)
    return plan.finish(results, time.perf_counter() - started)


class _TileProgress:
    """Counts model tiles finished by the chunk tasks of this process's threads."""

    def __init__(self, total: int, progress: Progress) -> None:
        self.total, self.done, self.progress = total, 0, progress
        self._lock = threading.Lock()
        progress(0, total)

    def __call__(self, tiles: int) -> None:
        with self._lock:
            self.done += tiles
            done = self.done
        self.progress(done, self.total)


def detect_slide(
    slide: Slide | str | os.PathLike[str],
    method: str | Method = DEFAULT_METHOD,
    *,
    weights: str | os.PathLike[str] | None = None,
    mpp: float | str | None = None,
    chunk: int = DEFAULT_CHUNK,
    device: str | None = None,
    tile: int = DEFAULT_TILE,
    batch_size: int | None = None,
    tissue: bool = True,
    stain: bool | StainStats | None = None,
    allow_pickle: bool = False,
    precision: str = "auto",
    check_mpp: bool = True,
    progress: Progress | None = None,
    scheduler: Any = None,
) -> gpd.GeoDataFrame:
    """Detect every nucleus in a slide.

    Parameters
    ----------
    slide : Slide or path
    method : str or Method
        A registered name (see :func:`wsidet.list_methods`) or a configured method. A name
        with ``weights`` takes the parameters stored in the weights; a trainable method named
        without weights uses its bundled weights when wsidet ships some.
    weights : path, optional
        Weights of a trainable method.
    mpp : float or "auto", optional
        Level-0 µm/px, overriding the file; ``"auto"``: the file's where the slide's
        nuclei agree with it (within 1.5×), else estimated from them
        (:mod:`wsidet.slide.scale_check`).
    chunk : int
        Dask chunk edge in working pixels (aligned to the TIFF tiles).
    device : str, optional
        ``cpu``, ``cuda`` or ``cuda:N``; default CUDA when available.
    tile : int
        Model tile edge.
    batch_size : int, optional
        Tiles per forward pass (default 4 on CUDA, 1 on CPU).
    tissue : bool
        Skip chunks without tissue and drop points off tissue.
    stain : bool, StainStats or None
        Normalise the slide's colours (Reinhard, per slide) to those of the data the weights
        were trained on (True), or to given statistics, before detection; None (the default):
        as the weights ask (those trained on normalised colours do,
        :func:`wsidet.weights.normalises_stain`).
    allow_pickle : bool
        Accept weights in a torch pickle file (loading one can run code).
    precision : str
        ``auto``, ``fp32``, ``bf16`` or ``fp16`` (see :mod:`wsidet.inference.precision`).
    check_mpp : bool
        Estimate the pixel size from the slide's nuclei (a few windows read, about a second)
        and warn (:class:`~wsidet.errors.MppWarning`, and ``attrs["wsidet"]["warnings"]``)
        when the one used is more than 1.5× off; the density of the detections on tissue is
        checked either way (with ``tissue``).
    progress : callable, optional
        ``progress(done, total)``: over model tiles in this process, over chunks on a
        ``distributed.Client``.
    scheduler : optional
        Dask scheduler name or ``distributed.Client`` (default: threads in this process).

    Returns
    -------
    geopandas.GeoDataFrame
        One Point per nucleus in level-0 pixels (schema in :mod:`wsidet.output.detections`);
        run and slide metadata in ``attrs["wsidet"]``.
    """
    run = RunSpec.resolve(
        method,
        weights,
        mpp=mpp,
        tissue=tissue,
        stain=stain,
        precision=precision,
        allow_pickle=allow_pickle,
    )
    options = ExecOptions(chunk, tile, batch_size, device, allow_pickle, check_mpp)
    return detect(slide, run, options, progress=progress, scheduler=scheduler)
