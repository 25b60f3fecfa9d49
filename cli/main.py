"""``wsidet`` command line: parses arguments, calls the library, prints.

Errors the user can fix are printed as one line (``wsidet: error: ...``) with exit status 1;
``--debug`` shows the traceback instead. Argument errors exit with status 2 (argparse).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from wsidet._version import __version__

EXIT_OK, EXIT_ERROR = 0, 1


def _parse_params(items: Sequence[str]) -> dict[str, str]:
    params = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"--param takes KEY=VALUE, got {item!r}")
        params[key.strip()] = value.strip()
    return params


def _formats(text: str) -> list[str]:
    from wsidet.io import FORMATS

    formats = [f.strip().lower() for f in text.split(",") if f.strip()]
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise argparse.ArgumentTypeError(
            f"--format takes a comma-separated list of {', '.join(FORMATS)}, got {text!r}"
        )
    return formats


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from wsidet.engine import DEFAULT_TILE
    from wsidet.methods import DEFAULT_METHOD
    from wsidet.tiling import DEFAULT_CHUNK

    parser = argparse.ArgumentParser(
        prog="wsidet", description="Whole-slide cell detection: one point per nucleus."
    )
    parser.add_argument("--version", action="version", version=f"wsidet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="detect nuclei in slides and write points")
    run.add_argument("slides", nargs="+", metavar="SLIDE", help="slide files (SVS, TIFF, OME-TIFF)")
    run.add_argument("--out", default=".", metavar="DIR", help="output folder (default: .)")
    run.add_argument("--method", default=DEFAULT_METHOD, help=f"default: {DEFAULT_METHOD}")
    run.add_argument("--weights", metavar="FILE", help="weights of a trained method")
    run.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a method parameter, e.g. --param threshold=0.3 (repeatable)",
    )
    run.add_argument("--mpp", type=_positive_float, help="level-0 µm/px, overriding the file")
    run.add_argument(
        "--chunk", type=_positive_int, default=DEFAULT_CHUNK, help=f"default: {DEFAULT_CHUNK}"
    )
    run.add_argument("--tile", type=_positive_int, default=DEFAULT_TILE, help="model tile edge")
    run.add_argument(
        "--batch-size", type=_positive_int, help="model tiles per forward pass (4 on GPU, 1 on CPU)"
    )
    run.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if available)")
    run.add_argument(
        "--format",
        type=_formats,
        default=["parquet", "geojson"],
        help="comma-separated: parquet, geojson, geojson.gz (default: parquet,geojson)",
    )
    run.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    run.add_argument(
        "--no-tissue", action="store_true", help="process every chunk, not only tissue"
    )
    run.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    run.add_argument("--debug", action="store_true", help="show tracebacks")

    methods = sub.add_parser("methods", help="list detection methods")
    methods.add_argument("--debug", action="store_true")

    info = sub.add_parser("info", help="levels, pixel size and tissue of a slide")
    info.add_argument("slide", metavar="SLIDE")
    info.add_argument("--mpp", type=_positive_float, help="level-0 µm/px, overriding the file")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.add_argument("--debug", action="store_true")
    return parser


def _summary(frame: Any, paths: dict[str, Path]) -> str:
    meta = frame.attrs["wsidet"]
    run = meta["run"]
    seconds = run["seconds"]
    area = run["processed_area_mm2"]
    area_text = f"{area:.2f} mm² tissue" if area is not None else f"{run['processed_mpx']:.1f} Mpx"
    rate = run["processed_mpx"] / seconds if seconds > 0 else float("inf")
    outputs = ", ".join(str(p) for p in paths.values())
    totals = "".join(f" | {name} {value:.1f}" for name, value in meta.get("totals", {}).items())
    return (
        f"{meta['slide']['slide_id']}: {len(frame)} nuclei{totals} | {area_text} processed | "
        f"{seconds:.1f} s | {rate:.1f} Mpx/s -> {outputs}"
    )


class _ChunkBar:
    """A tqdm bar over chunks, opened once the pipeline knows how many there are."""

    def __init__(self, name: str, *, disable: bool) -> None:
        self.name, self.disable = name, disable
        self.bar: Any = None

    def __call__(self, done: int, total: int) -> None:
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(
                total=total, unit="chunk", desc=self.name, disable=self.disable, leave=False
            )
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def cmd_run(args: argparse.Namespace) -> int:
    from wsidet.io import ensure_free, output_paths, write_detections
    from wsidet.methods import get_method
    from wsidet.pipeline import detect_slide
    from wsidet.slide import open_slide

    method = get_method(args.method, **_parse_params(args.param))
    # Import the heavy libraries now, so a slide's timing measures the slide, not start-up.
    import dask.array  # noqa: F401
    import geopandas  # noqa: F401
    import torch  # noqa: F401

    failures = 0
    for slide_path in args.slides:
        try:
            slide = open_slide(slide_path, mpp=args.mpp)
            if not args.overwrite:  # before any work, not after it
                ensure_free(list(output_paths(args.out, slide.slide_id, args.format).values()))
            progress = _ChunkBar(slide.slide_id, disable=args.quiet)
            try:
                frame = detect_slide(
                    slide,
                    method,
                    weights=args.weights,
                    chunk=args.chunk,
                    device=args.device,
                    tile=args.tile,
                    batch_size=args.batch_size,
                    tissue=not args.no_tissue,
                    progress=progress,
                )
            finally:
                progress.close()
            started = time.perf_counter()
            paths = write_detections(frame, args.out, formats=args.format, overwrite=args.overwrite)
            frame.attrs["wsidet"]["run"]["seconds"] += time.perf_counter() - started
            print(_summary(frame, paths))
        except Exception as exc:  # reported per slide so one bad slide does not stop the rest
            if args.debug:
                raise
            failures += 1
            _error(exc, context=slide_path if len(args.slides) > 1 else None)
    return EXIT_ERROR if failures else EXIT_OK


def cmd_methods(args: argparse.Namespace) -> int:
    from wsidet.methods import get_method, list_methods

    rows = []
    for name in list_methods():
        method = get_method(name)
        rows.append(
            (
                name,
                f"{method.mpp:g}",
                str(method.halo),
                "yes" if method.trainable else "no",
                type(method).summary,
            )
        )
    header = ("name", "µm/px", "halo", "trainable", "summary")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    for row in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(row[:4], widths, strict=True)), row[4])
    return EXIT_OK


def cmd_info(args: argparse.Namespace) -> int:
    from wsidet.slide import open_slide

    slide = open_slide(args.slide, mpp=args.mpp)
    info = slide.info()
    info["tissue_fraction"] = round(slide.tissue_mask().fraction, 4)
    if args.json:
        print(json.dumps(info, indent=2))
        return EXIT_OK
    mpp = f"{info['mpp']:.4g} µm/px ({info['mpp_source']})" if info["mpp"] else "unknown"
    print(f"slide    {info['path']}")
    print(f"format   {info['vendor']}")
    print(f"mpp      {mpp}")
    print(f"tissue   {100 * info['tissue_fraction']:.1f}% of the slide")
    print("level  height x width   downsample  tile")
    for lv in info["levels"]:
        size = f"{lv['height']} x {lv['width']}"
        tile = f"{lv['tile'][0]}x{lv['tile'][1]}"
        print(f"{lv['level']:>5}  {size:<16} {lv['downsample']:>10g}  {tile}")
    return EXIT_OK


def _error(exc: BaseException, context: str | None = None) -> None:
    from wsidet.errors import WsidetError

    message = str(exc) or type(exc).__name__
    if not isinstance(exc, WsidetError | OSError | ValueError):
        message = f"{type(exc).__name__}: {message} (run with --debug for the traceback)"
    prefix = f"{context}: " if context else ""
    print(f"wsidet: error: {prefix}{message}".splitlines()[0], file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    # JPEG tiles are decoded by dask's threads; more decoder threads per read oversubscribe.
    os.environ.setdefault("TIFFSLIDE_NUM_DECODE_THREADS", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="wsidet: %(levelname)s: %(message)s",
    )
    if not args.debug:
        # tifffile logs what it repairs or rejects; the error we raise already says it once.
        for noisy in ("tifffile", "tiffslide", "distributed", "numexpr"):
            logging.getLogger(noisy).setLevel(logging.ERROR)
    commands = {"run": cmd_run, "methods": cmd_methods, "info": cmd_info}
    try:
        return commands[args.command](args)
    except KeyboardInterrupt:
        print("wsidet: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        _error(exc)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
