"""One node, one slide: the CPU decode bound, the network bound and end to end, as JSON.

(a) ``decode``: the slide's tissue chunks read and decoded at the model's scale with every CPU
    core (dask threads), nothing else: how fast the node can feed a detector.
(b) ``network``: the resident detector on full batches of model tiles already on the device
    (the blocks are read once, beforehand): how fast the device computes.
(c) ``end_to_end``: ``detect_slide`` as ``wsidet run`` runs it (chunk tasks on every core,
    tiles of all blocks through the shared batching queue on CUDA, decoding on the device).

It prints ``efficiency`` = (c) / min(a, b): the issue's target is >= 0.7 on a GPU node. The
slide defaults to a synthetic 40x one of 40k x 40k px (made on first use with
``make_synthetic_slide.py``, a few minutes on 16 cores). Name the GPU next to any figure.

    python benchmarks/bench_gpu.py --device cuda                  # on a GPU node
    python benchmarks/bench_gpu.py SLIDE --device cpu --method log  # a dry run anywhere
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SLIDE = ROOT / "bench-out" / "synthetic-40k-40x.tif"


def main() -> None:
    from wsidet.inference.heap import configure_heap

    configure_heap()
    import dask
    import numpy as np
    import torch

    from wsidet.inference.detector import DetectorSpec
    from wsidet.inference.pipeline import detect_slide, tissue_blocks
    from wsidet.slide.wsi import open_slide
    from wsidet.tiling import DEFAULT_CHUNK, Grid
    from wsidet.weights import resolve_method

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("slide", type=Path, nargs="?", default=DEFAULT_SLIDE)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--method", default="voca")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--chunk", type=int, default=DEFAULT_CHUNK)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--network-blocks", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()

    if not args.slide.exists():
        if args.slide != DEFAULT_SLIDE:
            raise SystemExit(f"no slide at {args.slide}")
        subprocess.run(
            [sys.executable, str(ROOT / "benchmarks" / "make_synthetic_slide.py"),
             "--size", "40000", "--mpp", "0.25", "--out", str(args.slide)],
            check=True,
        )  # fmt: skip
    method, weights = resolve_method(args.method)
    slide = open_slide(args.slide)
    scale = slide.scale_for_mpp(method.mpp)
    grid = Grid.aligned(
        scale.shape, halo=method.halo, chunk=args.chunk, tile=scale.tile, align=method.stride
    )
    blocks = tissue_blocks(slide, scale, grid)
    owned_mpx = sum((b[2] - b[0]) * (b[3] - b[1]) for b in map(grid.core_box, blocks)) / 1e6
    image = slide.to_dask(scale, chunks=grid.chunks)
    pieces = image.to_delayed()

    def timed(fn: object, repeat: int) -> float:
        times = []
        for _ in range(repeat):
            started = time.perf_counter()
            fn()  # type: ignore[operator]
            times.append(time.perf_counter() - started)
        return statistics.median(times)

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    decode_s = timed(
        lambda: dask.compute(
            *[pieces[i, j, 0] for i, j in blocks], scheduler="threads", num_workers=cores
        ),
        args.repeat,
    )
    spec = DetectorSpec(
        method, weights=str(weights) if weights else None, device=args.device,
        batch_size=args.batch_size, precision=args.precision,
    )  # fmt: skip
    detector = spec.get()
    sample = blocks[: args.network_blocks]
    arrays = [
        np.asarray(image[slice(*grid.block_box(ix)[::2]), slice(*grid.block_box(ix)[1::2])])
        for ix in sample
    ]
    on_device = [torch.from_numpy(a).to(detector.device) for a in arrays]
    sample_mpx = sum((b[2] - b[0]) * (b[3] - b[1]) for b in map(grid.core_box, sample)) / 1e6

    def network() -> None:
        for block in on_device:
            detector.predict(block)
        if detector.device.type == "cuda":
            torch.cuda.synchronize()

    network()  # warm-up: cuDNN plans, allocator
    network_s = timed(network, args.repeat)
    end_s = timed(
        lambda: detect_slide(
            slide, method, weights=weights, chunk=args.chunk, device=args.device,
            batch_size=args.batch_size, precision=args.precision,
        ),
        args.repeat,
    )  # fmt: skip
    decode_rate, network_rate = owned_mpx / decode_s, sample_mpx / network_s
    end_rate = owned_mpx / end_s
    device = detector.device
    result = {
        "slide": str(args.slide),
        "working_shape": list(scale.shape),
        "reduce": scale.reduce,
        "owned_mpx": round(owned_mpx, 1),
        "method": method.name,
        "precision": detector.precision,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "cpu_cores": cores,
        "decode_mpx_per_s": round(decode_rate, 2),
        "network_mpx_per_s": round(network_rate, 2),
        "end_to_end_mpx_per_s": round(end_rate, 2),
        "end_to_end_seconds": round(end_s, 1),
        "efficiency": round(end_rate / min(decode_rate, network_rate), 3),
        "bound": "decode" if decode_rate < network_rate else "network",
        "date": time.strftime("%Y-%m-%d"),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
