"""``wsidet`` command line: parses arguments, calls the library, prints.

Errors the user can fix are printed as one line (``wsidet: error: ...``) with exit status 1;
``--debug`` shows the traceback instead. Argument errors exit with status 2 (argparse).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from wsidet._version import __version__

from .args import (
    PICKLE_HELP,
    OneLineParser,
    bounded,
    formats_arg,
    limited,
    mpp_or_auto,
    parse_params,
)
from .training import add_parsers as add_training_parsers
from .training import cmd_evaluate, cmd_train

EXIT_OK, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 130


def build_parser() -> argparse.ArgumentParser:
    from wsidet import limits
    from wsidet.cohort.defaults import DEFAULT_DASHBOARD
    from wsidet.inference.detector import DEFAULT_TILE
    from wsidet.inference.precision import PRECISIONS
    from wsidet.methods import DEFAULT_METHOD
    from wsidet.tiling import DEFAULT_CHUNK

    parser = OneLineParser(
        prog="wsidet", description="Whole-slide cell detection: one point per nucleus."
    )
    mpp_help = (
        f"level-0 µm/px, overriding the file ({limits.MPP.low:g}-{limits.MPP.high:g}; "
        "40x is about 0.25, 20x about 0.5), or 'auto': the file's where the slide's nuclei "
        "agree with it, else estimated from them"
    )
    parser.add_argument("--version", action="version", version=f"wsidet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="detect nuclei in slides and write points")
    run.add_argument(
        "slides", nargs="+", metavar="SLIDE_OR_DIR", help="slides (SVS, TIFF, OME-TIFF) or folders"
    )
    run.add_argument("--out", default=".", metavar="DIR", help="output folder (default: .)")
    run.add_argument(
        "--method",
        help=f"detection method (default: the one --weights were made for, else {DEFAULT_METHOD})",
    )
    run.add_argument("--weights", metavar="FILE", help="weights of a trained method")
    run.add_argument("--allow-pickle", action="store_true", help=PICKLE_HELP)
    run.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a method parameter, e.g. --param threshold=0.3 (repeatable)",
    )
    run.add_argument("--mpp", type=mpp_or_auto(limits.MPP), help=mpp_help)
    run.add_argument(
        "--chunk",
        type=limited(int, limits.CHUNK),
        default=DEFAULT_CHUNK,
        help=f"dask chunk edge in working pixels, aligned to the TIFF tiles "
        f"(default: {DEFAULT_CHUNK})",
    )
    run.add_argument(
        "--tile",
        type=limited(int, limits.TILE),
        default=DEFAULT_TILE,
        help=f"model tile edge in pixels: smaller needs less memory (default: {DEFAULT_TILE})",
    )
    run.add_argument(
        "--batch-size",
        type=limited(int, limits.BATCH),
        help="model tiles per forward pass (4 on GPU, 1 on CPU)",
    )
    run.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if available)")
    run.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="network arithmetic: auto (fp16 on CUDA; bf16 on CPUs that compute it natively, "
        "else fp32), fp32, bf16 or fp16",
    )
    run.add_argument(
        "--format",
        type=formats_arg,
        default=["parquet", "geojson", "density", "preview.png"],
        help="comma-separated: parquet, geojson, geojson.gz (the points), density, "
        "density.geojson (nuclei per grid cell, GeoParquet or QuPath tiles), preview.png (a QC "
        "picture) (default: parquet,geojson,density,preview.png); parquet is always written "
        "(resuming reads it)",
    )
    run.add_argument(
        "--no-preview",
        action="store_true",
        help="do not draw the QC picture (SLIDE.preview.png: thumbnail, tissue outline, "
        "density, three fields with the points)",
    )
    run.add_argument(
        "--density-cell",
        type=limited(float, limits.DENSITY_CELL),
        default=None,
        metavar="UM",
        help="edge of the density grid's cells in µm (default: 100)",
    )
    run.add_argument(
        "--regions",
        type=Path,
        metavar="FILE",
        help="detect only inside these polygons (QuPath annotations exported as GeoJSON, or "
        "any polygons in level-0 pixels, GeoJSON or GeoParquet); adds a region column and "
        "SLIDE.regions.csv (nuclei, area and nuclei per mm² of each region)",
    )
    run.add_argument(
        "-r",
        "--recursive",
        action="store_true",
        help="also search the folders' subfolders for slides (one folder per case); slides "
        "sharing a file name are named by their paths (site1__slide, site2__slide)",
    )
    run.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    run.add_argument(
        "--no-tissue", action="store_true", help="process every chunk, not only tissue"
    )
    run.add_argument(
        "--stain-normalise",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="map each slide's colours to those the weights were trained on (Reinhard); "
        "default: as the weights ask (weights trained on normalised colours normalise)",
    )
    run.add_argument(
        "--cluster",
        default="auto",
        help="none (this process), local (a cluster on this machine), or tcp://HOST:PORT "
        "(default: local for several slides, else none)",
    )
    run.add_argument("--workers", type=bounded(int, 1, 1024), help="local cluster worker processes")
    run.add_argument("--threads-per-worker", type=bounded(int, 1, 1024))
    run.add_argument(
        "--dashboard-address",
        default=DEFAULT_DASHBOARD,
        metavar="HOST:PORT",
        help=f"where a local cluster's dashboard listens (default: {DEFAULT_DASHBOARD}, this "
        "machine only; 0.0.0.0:8787 opens it to the network)",
    )
    run.add_argument(
        "--gpus",
        type=bounded(int, 0, 1024),
        help="GPUs on a local cluster, one worker each (default: all CUDA devices present)",
    )
    run.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    run.add_argument("--debug", action="store_true", help="show tracebacks")

    methods = sub.add_parser("methods", help="list detection methods")
    methods.add_argument("--debug", action="store_true")

    info = sub.add_parser("info", help="levels, pixel size and tissue of a slide")
    info.add_argument("slide", metavar="SLIDE")
    info.add_argument(
        "--mpp",
        type=limited(float, limits.MPP),
        help=f"level-0 µm/px, overriding the file ({limits.MPP.low:g}-{limits.MPP.high:g})",
    )
    info.add_argument("--json", action="store_true", help="print JSON")
    info.add_argument("--debug", action="store_true")

    preview = sub.add_parser(
        "preview", help="draw the QC picture of existing results (SLIDE.preview.png)"
    )
    preview.add_argument("results", metavar="RESULTS", help="an output folder or a .parquet file")
    preview.add_argument(
        "slide",
        metavar="SLIDE",
        nargs="?",
        help="the slide, if it is no longer where the results say (one .parquet file only)",
    )
    preview.add_argument("--debug", action="store_true")

    report = sub.add_parser(
        "report", help="write an output folder's HTML report again (RESULTS/report.html)"
    )
    report.add_argument("results", metavar="RESULTS", help="an output folder")
    report.add_argument("--debug", action="store_true")

    add_training_parsers(sub)
    return parser


class _Bars:
    """A bar over slides (when there are several) and one over chunks; lines printed above them."""

    def __init__(self, slides: int, *, quiet: bool, unit: str = "tile") -> None:
        from tqdm import tqdm

        # Bars redraw with carriage returns: only on a terminal, never into a log file.
        self.quiet = quiet or not sys.stderr.isatty()
        self.slides = tqdm(total=slides, unit="slide", disable=self.quiet or slides < 2, position=0)
        self.unit = unit  # model tiles in this process, chunks on a cluster
        self.chunks: Any = None  # opened when the first work is known

    def on_chunks(self, done: int, total: int) -> None:
        from tqdm import tqdm

        if self.chunks is None:
            if total == 0:
                return
            self.chunks = tqdm(
                total=total, unit=self.unit, disable=self.quiet, position=1, leave=False
            )
        if total != self.chunks.total:
            self.chunks.total = total
            self.chunks.refresh()
        self.chunks.update(done - self.chunks.n)

    def write(self, line: str, *, error: bool = False) -> None:
        from tqdm import tqdm

        tqdm.write(line, file=sys.stderr if error else sys.stdout)

    def close(self) -> None:
        if self.chunks is not None:
            self.chunks.close()
        self.slides.close()


def _slide_line(result: Any, outputs: Sequence[Any]) -> str:
    files = ", ".join(str(p) for p in outputs)
    totals = "".join(f" | {k} {v:.1f}" for k, v in json.loads(result.totals).items())
    if result.reused:
        return f"{result.slide_id}: {result.n_points} nuclei{totals} | already done -> {files}"
    tissue = result.tissue_mm2
    area = f"{tissue:.2f} mm² tissue" if tissue == tissue else f"{result.processed_mpx:.1f} Mpx"
    rate = result.processed_mpx / result.seconds if result.seconds > 0 else 0.0
    return (
        f"{result.slide_id}: {result.n_points} nuclei{totals} | {area} | "
        f"{result.seconds:.1f} s | {rate:.1f} Mpx/s -> {files}"
    )


def _gpus(args: argparse.Namespace, cluster: str) -> int:
    """GPUs for a local cluster: as asked, else every CUDA device unless the CPU is asked for."""
    if args.gpus is not None or cluster != "local":
        return int(args.gpus or 0)
    if args.device is not None and args.device.startswith("cpu"):
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def cmd_run(args: argparse.Namespace) -> int:
    from wsidet.cohort.cluster import close_client, start_client
    from wsidet.cohort.run import CohortOptions, CohortProgress, find_slides, run_slides
    from wsidet.inference.spec import ExecOptions, RunSpec
    from wsidet.slide.regions import read_regions

    run = RunSpec.resolve(
        args.method,
        args.weights,
        mpp=args.mpp,
        tissue=not args.no_tissue,
        stain=args.stain_normalise,
        precision=args.precision,
        allow_pickle=args.allow_pickle,
        params=parse_params(args.param),
        regions=read_regions(args.regions) if args.regions else None,
    )
    slides = find_slides(args.slides, recursive=args.recursive)
    if args.regions and len(slides) > 1:
        raise ValueError(
            f"--regions draws on one slide's pixels; {len(slides)} slides were given "
            "(run them one at a time, each with its own regions file)"
        )
    if "regions.csv" in args.format and not args.regions:
        raise ValueError("--format regions.csv needs --regions FILE")
    # Import the heavy libraries now, so a slide's timing measures the slide, not start-up.
    import dask.array  # noqa: F401
    import geopandas  # noqa: F401
    import torch  # noqa: F401

    from wsidet.output.detections import output_paths

    cluster = args.cluster
    if cluster == "auto":
        cluster = "local" if len(slides) > 1 or args.workers or args.gpus else "none"
    gpus = _gpus(args, cluster)
    client, gpu_resource = None, None
    if cluster != "none":
        client, gpu_resource = start_client(
            cluster,
            workers=args.workers,
            threads_per_worker=args.threads_per_worker,
            gpus=gpus,
            dashboard_address=args.dashboard_address,
        )
    # With regions, each slide's per-region table is written beside its points.
    formats = (*args.format, *(["regions.csv"] if args.regions else []))
    if args.no_preview:
        formats = tuple(f for f in formats if f != "preview.png")
    bars = _Bars(len(slides), quiet=args.quiet, unit="tile" if client is None else "chunk")
    several = len(slides) > 1

    def on_slide(result: Any, finished: int, total: int) -> None:
        bars.slides.update(1)
        if result.status == "done":
            outputs = output_paths(args.out, result.slide_id, ["parquet", *formats])
            bars.write(_slide_line(result, list(outputs.values())))
            for warning in json.loads(result.warnings or "[]"):
                bars.write(f"wsidet: warning: {result.slide_id}: {warning}", error=True)
        else:
            prefix = f"{result.path}: " if several else ""
            bars.write(f"wsidet: error: {prefix}{result.error}", error=True)

    def on_dashboard(link: str) -> None:
        bars.write(f"dask dashboard: {link}", error=True)  # stdout is for results

    try:
        summary = run_slides(
            slides,
            args.out,
            run,
            ExecOptions(
                chunk=args.chunk,
                tile=args.tile,
                batch_size=args.batch_size,
                device=args.device or ("cuda" if gpus else None),
                allow_pickle=args.allow_pickle,
            ),
            CohortOptions(
                formats=formats,
                cell_um=args.density_cell,
                overwrite=args.overwrite,
                gpu_resource=gpu_resource,
                raise_errors=args.debug,
            ),
            client=client,
            progress=CohortProgress(on_slide, bars.on_chunks, on_dashboard),
        )
    finally:
        bars.close()
        if client is not None:
            close_client(client)
    if several:
        rate = summary.processed_mpx / summary.seconds if summary.seconds > 0 else 0.0
        print(
            f"{len(summary.results)} slides: {summary.done} done ({summary.reused} already), "
            f"{summary.failed} failed | {summary.points} nuclei | {summary.seconds:.1f} s | "
            f"{rate:.1f} Mpx/s -> {args.out} (report: {Path(args.out) / 'report.html'})"
        )
    return EXIT_ERROR if summary.failed else EXIT_OK


def cmd_methods(args: argparse.Namespace) -> int:
    # Torch-free: a method's halo is computed from its parameters, no network is built.
    from wsidet.methods import DEFAULT_METHOD, get_method, list_methods

    bundled = set(list_methods(pretrained=True))
    rows = []
    for name in list_methods():
        method = get_method(name)
        if not method.trainable:
            weights = "none needed"
        elif name in bundled:
            weights = "bundled"
        else:
            weights = "--weights FILE"
        rows.append(
            (
                f"{name} *" if name == DEFAULT_METHOD else name,
                f"{method.mpp:g}",
                str(method.halo),
                weights,
                type(method).summary,
            )
        )
    header = ("name", "µm/px", "halo", "weights", "summary")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    for row in [header, *rows]:
        print(*(c.ljust(w) for c, w in zip(row[:4], widths, strict=True)), row[4], sep="  ")
    print(f"* the default: `wsidet run` uses {DEFAULT_METHOD} unless given --method or --weights")
    return EXIT_OK


def cmd_info(args: argparse.Namespace) -> int:
    from wsidet.slide.scale_check import estimate_slide_mpp, mpp_disagreement
    from wsidet.slide.wsi import open_slide

    slide = open_slide(args.slide, mpp=args.mpp)
    info = slide.info()
    info["tissue_fraction"] = round(slide.tissue_mask().fraction, 4)
    estimate = estimate_slide_mpp(slide)
    info["mpp_estimate"] = round(estimate.mpp, 4) if estimate.mpp == estimate.mpp else None
    known = estimate.mpp == estimate.mpp  # not nan
    info["mpp_estimate_spread"] = round(estimate.spread, 2) if known else None
    warning = mpp_disagreement(slide.mpp, estimate, "the") if slide.mpp else None
    if args.json:
        print(json.dumps(info, indent=2))
        return EXIT_OK
    mpp = f"{info['mpp']:.4g} µm/px ({info['mpp_source']})" if info["mpp"] else "unknown"
    print(f"slide    {info['path']}")
    print(f"format   {info['vendor']}")
    print(f"mpp      {mpp}")
    guess = (
        f"{info['mpp_estimate']:.2g} µm/px from the size of its nuclei "
        f"({estimate.windows} tissue windows)"
        if info["mpp_estimate"]
        else "none (no nucleus-like structure found)"
    )
    print(f"estimate {guess}")
    if warning:
        print(f"wsidet: warning: {warning}", file=sys.stderr)
    print(f"tissue   {100 * info['tissue_fraction']:.1f}% of the slide")
    print("level  height x width   downsample  tile")
    for lv in info["levels"]:
        size = f"{lv['height']} x {lv['width']}"
        tile = f"{lv['tile'][0]}x{lv['tile'][1]}"
        print(f"{lv['level']:>5}  {size:<16} {lv['downsample']:>10g}  {tile}")
    return EXIT_OK


def cmd_preview(args: argparse.Namespace) -> int:
    from wsidet.output.detections import detection_files, read_detections
    from wsidet.output.preview import write_preview
    from wsidet.slide.wsi import open_slide

    results = Path(args.results)
    if results.is_dir() and args.slide:
        raise ValueError("a SLIDE goes with one .parquet file, not with a folder")
    files = detection_files(results)[0] if results.is_dir() else [results]
    if not files:
        raise ValueError(f"no detections in {str(results)!r}")
    status = EXIT_OK
    for file in files:
        frame = read_detections(file)
        slide = None
        if args.slide:
            info = frame.attrs.get("wsidet", {}).get("slide", {})
            slide = open_slide(args.slide, mpp=info.get("mpp")).with_id(info["slide_id"])
        target = file.with_name(file.name.removesuffix(".parquet") + ".preview.png")
        try:
            write_preview(frame, target, slide=slide, overwrite=True)
        except Exception as exc:  # one slide moved away must not stop the others
            _error(exc, str(file))
            status = EXIT_ERROR
            continue
        print(target)
    return status


def cmd_report(args: argparse.Namespace) -> int:
    from wsidet.output.manifest import MANIFEST
    from wsidet.output.report import write_report

    if not (Path(args.results) / MANIFEST).is_file():
        raise ValueError(f"{args.results!r} has no {MANIFEST}: not a wsidet output folder")
    print(write_report(args.results))
    return EXIT_OK


def _error(exc: BaseException, context: str | None = None) -> None:
    from wsidet.errors import WsidetError

    message = str(exc) or type(exc).__name__
    if not isinstance(exc, WsidetError | OSError | ValueError):
        message = f"{type(exc).__name__}: {message} (run with --debug for the traceback)"
    prefix = f"{context}: " if context else ""
    print(f"wsidet: error: {prefix}{message}".splitlines()[0], file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    from wsidet.inference.heap import configure_heap

    # JPEG tiles are decoded by dask's threads; more decoder threads per read oversubscribe.
    os.environ.setdefault("TIFFSLIDE_NUM_DECODE_THREADS", "1")
    # Before any thread starts: feature maps freed by one model tile serve the next.
    configure_heap()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.debug:
        # Worker processes write to our stderr, and distributed sets up their logging (and,
        # when imported, this process's) from dask's config. A failed task is a slide's
        # failure, which we report in one line; distributed would add its own ERROR report
        # and traceback, tifffile its warnings about what it repairs or rejects.
        levels = {"DISTRIBUTED": "critical", "TIFFFILE": "error", "TIFFSLIDE": "error"}
        for name, level in levels.items():
            os.environ.setdefault(f"DASK_LOGGING__{name}", level)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="wsidet: %(levelname)s: %(message)s",
    )
    # Each slide's line is followed by its warnings (from its result, which also carries
    # those of slides run on a cluster): the library's warnings would say it twice.
    from wsidet.errors import MppWarning

    warnings.simplefilter("ignore", MppWarning)
    if not args.debug:
        # tifffile logs what it repairs or rejects; the error we raise already says it once.
        for noisy in ("tifffile", "tiffslide", "distributed", "numexpr"):
            logging.getLogger(noisy).setLevel(logging.CRITICAL)
    commands = {
        "run": cmd_run,
        "methods": cmd_methods,
        "info": cmd_info,
        "preview": cmd_preview,
        "report": cmd_report,
        "train": cmd_train,
        "evaluate": cmd_evaluate,
    }
    try:
        return commands[args.command](args)
    except KeyboardInterrupt:
        print("wsidet: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        if args.debug:
            raise
        _error(exc)
        return EXIT_ERROR


class Stopped(BaseException):
    """SIGINT or SIGTERM arrived: unwind (temporary files are removed), then leave."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _leave_now(signum: int, frame: Any) -> None:
    # A second signal while unwinding: the user means it.
    os._exit(128 + signum)


def _stop(signum: int, frame: Any) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _leave_now)
    raise Stopped(signum)


def entry(argv: Sequence[str] | None = None) -> NoReturn:
    """The ``wsidet`` program: :func:`main`, stopping promptly on Ctrl-C and SIGTERM.

    The first signal unwinds the main thread (a write in progress removes its temporary
    file, a cluster is closed), prints one line and exits with 130 (SIGINT) or 143
    (SIGTERM) without waiting for threads still inside a model tile; a second one exits
    at once.
    """
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _stop)
    try:
        code = main(argv)
    except Stopped as stop:
        word = "interrupted" if stop.signum == signal.SIGINT else "terminated"
        print(f"wsidet: {word}", file=sys.stderr)
        code = 128 + stop.signum
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    # Worker threads of dask's pool may be inside a model tile; they hold nothing to save.
    os._exit(code)


if __name__ == "__main__":
    entry()
