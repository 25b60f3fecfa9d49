"""Per-stage and end-to-end throughput of ``wsidet`` on one slide, printed as JSON.

Stages (each timed on its own, over the slide's tissue chunks, median of ``--repeat`` runs):

* ``read_decode``: reading and JPEG-decoding the tissue chunks (dask threads, no halos);
* ``network``: the detector's forward pass (model tiles, batching, stitching) on chunks;
* ``point_decoding``: turning the stitched maps into points;
* ``writing``: GeoParquet + GeoJSON of the slide's points;
* ``end_to_end``: ``detect_slide`` + writing, as ``wsidet run`` does it, with its user and
  system CPU seconds, minor page faults, and the pixels the network computed over the pixels
  the slide's chunks own (halos, model-tile margins and stride padding);
* ``cli``: the ``wsidet run`` program itself on the slide (fresh process: start-up included),
  wall, user and system seconds, page faults and peak resident memory;
* ``reference``: a fixed fp32 convolution stack (3 -> 32 -> 32 -> 32 -> 1 channels, 3x3, on a
  384 x 384 input) timed in the same process before and after, so that speeds measured on a
  noisy shared machine compare as ``ratio_to_reference``.

Megapixels are working-scale pixels of the chunk cores that hold tissue. ``--code DIR`` runs
another checkout of wsidet (e.g. an older commit in a git worktree) under the same benchmark.

    python benchmarks/bench_pipeline.py examples/data/CMU-1-Small-Region.svs --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def _median_time(fn: Any, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def reference_mpx_per_s(repeat: int = 5) -> float:
    """Mpx/s of a fixed fp32 convolution stack: the yardstick for this machine, now."""
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 32, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(32, 32, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(32, 32, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(32, 1, 3, padding=1),
    ).eval()
    x = torch.rand(1, 3, 384, 384)
    with torch.inference_mode():
        net(x)
        seconds = _median_time(lambda: net(x), repeat)
    return 384 * 384 / 1e6 / seconds


def _usage() -> tuple[float, float, int]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime, r.ru_minflt


def _peak_rss_mb(pid: int) -> float | None:
    """VmHWM of a running process (Linux): its own peak, unlike ``ru_maxrss``, which a child
    inherits from the process that forked it."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def cli_run(code: Path | None, slide: Path, extra: list[str]) -> dict[str, float]:
    """``wsidet run`` in a fresh process: wall, user, sys, faults, peak RSS, slide seconds.

    ``slide_seconds`` is the time the run reports for the slide (start-up excluded).
    """
    prefix = f"import sys; sys.path.insert(0, {str(code)!r}); " if code else ""
    entry = (
        "from wsidet.cli.main import entry as e; e()"
        if code is None or (code / "wsidet" / "heap.py").exists()
        else "from wsidet.cli.main import main as e; sys.exit(e())"
    )
    peak = 0.0
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        command = [sys.executable, "-c", f"{prefix}import sys; {entry}", "run", str(slide)]
        proc = subprocess.Popen(
            [*command, *extra, "--out", out, "-q"],
            stdout=subprocess.PIPE,
            text=True,
        )
        while proc.poll() is None:  # poll without reaping, so /proc/PID stays readable
            peak = max(peak, _peak_rss_mb(proc.pid) or 0.0)
            time.sleep(0.05)
        wall = time.perf_counter() - started
        stdout = proc.stdout.read() if proc.stdout else ""
    if proc.returncode != 0:
        raise RuntimeError(f"wsidet run failed with status {proc.returncode}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # "NAME: N nuclei | ... | 8.8 s | ..." -> the slide's own seconds
    fields = [f.strip() for f in stdout.strip().splitlines()[-1].split("|")]
    slide_seconds = next(float(f[:-2]) for f in fields if f.endswith(" s"))
    return {
        "seconds": round(wall, 2),
        "slide_seconds": slide_seconds,
        "user_s": round(after.ru_utime - before.ru_utime, 2),
        "sys_s": round(after.ru_stime - before.ru_stime, 2),
        "minor_faults": after.ru_minflt - before.ru_minflt,
        "peak_rss_mb": round(peak),
    }


def main() -> None:
    os.environ.setdefault("TIFFSLIDE_NUM_DECODE_THREADS", "1")
    code = None
    if "--code" in sys.argv:
        code = Path(sys.argv[sys.argv.index("--code") + 1]).resolve()
        sys.path.insert(0, str(code))
    import wsidet

    if code is not None and not Path(wsidet.__file__).is_relative_to(code):
        raise SystemExit(f"--code {code}: imported wsidet from {wsidet.__file__}")
    try:  # as `wsidet run` does, before any thread starts, where this version does it
        from wsidet.inference.heap import configure_heap

        configure_heap()
    except ImportError:
        pass
    # The reference's feature maps (19 MB) stay under glibc's mmap threshold after its
    # warm-up call, so the heap settings do not change its speed.
    reference_before = reference_mpx_per_s()
    import dask
    import torch

    from wsidet.inference.detector import DetectorSpec
    from wsidet.inference.pipeline import detect_slide, tissue_blocks
    from wsidet.methods import DEFAULT_METHOD
    from wsidet.output.detections import write_detections
    from wsidet.slide.wsi import open_slide
    from wsidet.tiling import DEFAULT_CHUNK, Grid
    from wsidet.weights import resolve_method

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("slide", type=Path)
    parser.add_argument("--method", default=DEFAULT_METHOD)
    parser.add_argument("--weights")
    parser.add_argument("--device", default=None)
    parser.add_argument("--chunk", type=int, default=DEFAULT_CHUNK)
    parser.add_argument("--tile", type=int, default=None, help="default: the version's own")
    parser.add_argument("--precision", default=None, help="auto, fp32, bf16, fp16 (new code)")
    parser.add_argument("--code", type=Path, help="another wsidet checkout to benchmark")
    parser.add_argument("--no-cli", action="store_true", help="skip the `wsidet run` timing")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--stage-chunks", type=int, default=8, help="chunks used for the network/decoding stages"
    )
    args = parser.parse_args()

    # As `wsidet run` does: a trainable method without --weights uses its bundled weights.
    method, weights = resolve_method(args.method, args.weights)
    slide = open_slide(args.slide)
    scale = slide.scale_for_mpp(method.mpp)
    grid = Grid.aligned(
        scale.shape, halo=method.halo, chunk=args.chunk, tile=scale.tile, align=method.stride
    )
    blocks = tissue_blocks(slide, scale, grid)
    image = slide.to_dask(scale, chunks=grid.chunks)
    pieces = image.to_delayed()
    tissue_mpx = sum((b[2] - b[0]) * (b[3] - b[1]) for b in map(grid.core_box, blocks)) / 1e6

    read_s = _median_time(
        lambda: dask.compute(*[pieces[i, j, 0] for i, j in blocks], scheduler="threads"),
        args.repeat,
    )

    from wsidet.inference.detector import DEFAULT_TILE

    tile = args.tile or DEFAULT_TILE
    options: dict[str, Any] = {"precision": args.precision} if args.precision else {}
    spec = DetectorSpec(
        method,
        weights=str(weights) if weights else None,
        device=args.device,
        tile=tile,
        batch_size=args.batch_size,
        **options,
    )
    detector = spec.get()
    computed = [0]

    def count(module: Any, inputs: tuple[Any, ...]) -> None:
        x = inputs[0]
        computed[0] += int(x.shape[0] * x.shape[-2] * x.shape[-1])

    detector.network.register_forward_pre_hook(count)
    sample = blocks[: args.stage_chunks]
    arrays = [
        np.asarray(image[slice(*grid.block_box(ix)[::2]), slice(*grid.block_box(ix)[1::2])])
        for ix in sample
    ]
    sample_mpx = sum(a.shape[0] * a.shape[1] for a in arrays) / 1e6

    def sync() -> None:
        if detector.device.type == "cuda":
            torch.cuda.synchronize()

    def network() -> list[Any]:
        out = [detector.predict(a) for a in arrays]
        sync()
        return out

    network()  # warm-up (allocator, oneDNN/cuDNN plans, FFT plans)
    net_s = _median_time(network, args.repeat)
    maps = network()

    def decoding() -> None:
        for m in maps:
            method.decode(m)
        sync()

    decoding()
    dec_s = _median_time(decoding, args.repeat)

    frame = None
    e2e, cpu = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.repeat):
            computed[0] = 0
            before = _usage()
            started = time.perf_counter()
            frame = detect_slide(
                slide,
                method,
                weights=weights,
                chunk=args.chunk,
                device=args.device,
                tile=tile,
                batch_size=args.batch_size,
                **options,
            )
            write_detections(frame, Path(tmp) / str(k), formats=["parquet", "geojson"])
            e2e.append(time.perf_counter() - started)
            cpu.append([b - a for a, b in zip(before, _usage(), strict=True)])
        assert frame is not None
        write_s = _median_time(
            lambda: write_detections(
                frame, tempfile.mkdtemp(dir=tmp), formats=["parquet", "geojson"]
            ),
            args.repeat,
        )
    e2e_s = statistics.median(e2e)
    reference = statistics.median([reference_before, reference_mpx_per_s()])
    owned_px = tissue_mpx * 1e6
    extra = ["--method", method.name, "--chunk", str(args.chunk)]
    if args.weights:
        extra += ["--weights", args.weights]
    if args.tile:
        extra += ["--tile", str(args.tile)]
    if args.precision:
        extra += ["--precision", args.precision]
    if args.device:
        extra += ["--device", args.device]
    cli = None if args.no_cli else [cli_run(code, args.slide, extra) for _ in range(args.repeat)]
    device = detector.device
    result = {
        "slide": str(args.slide),
        "slide_size": list(slide.shape),
        "method": method.name,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "chunk": args.chunk,
        "chunks_total": grid.n_blocks[0] * grid.n_blocks[1],
        "chunks_tissue": len(blocks),
        "tissue_mpx": round(tissue_mpx, 2),
        "points": len(frame),
        "repeat": args.repeat,
        "stages": {
            "read_decode": {
                "seconds": round(read_s, 3),
                "mpx_per_s": round(tissue_mpx / read_s, 2),
            },
            "network": {
                "seconds": round(net_s, 3),
                "mpx": round(sample_mpx, 2),
                "mpx_per_s": round(sample_mpx / net_s, 2),
            },
            "point_decoding": {
                "seconds": round(dec_s, 3),
                "mpx": round(sample_mpx, 2),
                "mpx_per_s": round(sample_mpx / dec_s, 2),
            },
            "writing": {
                "seconds": round(write_s, 3),
                "points_per_s": round(len(frame) / write_s) if write_s else None,
            },
        },
        "end_to_end": {
            "seconds": round(e2e_s, 3),
            "mpx_per_s": round(tissue_mpx / e2e_s, 3),
            "ratio_to_reference": round(tissue_mpx / e2e_s / reference, 4),
            "user_s": round(statistics.median(c[0] for c in cpu), 2),
            "sys_s": round(statistics.median(c[1] for c in cpu), 2),
            "minor_faults": int(statistics.median(c[2] for c in cpu)),
            "computed_over_owned": round(computed[0] / owned_px, 3),
        },
        "reference_mpx_per_s": round(reference, 3),
        "cli": None
        if cli is None
        else {
            key: statistics.median(run[key] for run in cli)
            for key in (
                "seconds",
                "slide_seconds",
                "user_s",
                "sys_s",
                "minor_faults",
                "peak_rss_mb",
            )
        },
        "cli_slide_mpx_per_s": None
        if cli is None
        else round(tissue_mpx / statistics.median(run["slide_seconds"] for run in cli), 3),
        "cli_ratio_to_reference": None
        if cli is None
        else round(
            tissue_mpx / statistics.median(run["slide_seconds"] for run in cli) / reference, 4
        ),
        "code": str(code) if code else "this checkout",
        "tile": tile,
        "precision": getattr(detector, "precision", "fp32 (fp16 on CUDA)"),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "date": time.strftime("%Y-%m-%d"),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
