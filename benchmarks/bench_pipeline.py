"""Per-stage and end-to-end throughput of ``wsidet`` on one slide, printed as JSON.

Stages (each timed on its own, over the slide's tissue chunks, median of ``--repeat`` runs):

* ``read_decode``: reading and JPEG-decoding the tissue chunks (dask threads, no halos);
* ``network``: the detector's forward pass (model tiles, batching, stitching) on chunks;
* ``point_decoding``: turning the stitched maps into points;
* ``writing``: GeoParquet + GeoJSON of the slide's points;
* ``end_to_end``: ``detect_slide`` + writing, as ``wsidet run`` does it.

Megapixels are working-scale pixels of the chunk cores that hold tissue.

    python benchmarks/bench_pipeline.py examples/data/CMU-1-Small-Region.svs --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
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


def main() -> None:
    os.environ.setdefault("TIFFSLIDE_NUM_DECODE_THREADS", "1")
    import dask
    import torch

    from wsidet.engine import DetectorSpec
    from wsidet.io import write_detections
    from wsidet.methods import DEFAULT_METHOD
    from wsidet.pipeline import detect_slide, tissue_blocks
    from wsidet.slide import open_slide
    from wsidet.tiling import DEFAULT_CHUNK, Grid
    from wsidet.weights import resolve_method

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("slide", type=Path)
    parser.add_argument("--method", default=DEFAULT_METHOD)
    parser.add_argument("--weights")
    parser.add_argument("--device", default=None)
    parser.add_argument("--chunk", type=int, default=DEFAULT_CHUNK)
    parser.add_argument("--tile", type=int, default=1024)
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

    spec = DetectorSpec(
        method,
        weights=str(weights) if weights else None,
        device=args.device,
        tile=args.tile,
        batch_size=args.batch_size,
    )
    detector = spec.get()
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
    e2e = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.repeat):
            started = time.perf_counter()
            frame = detect_slide(
                slide,
                method,
                weights=weights,
                chunk=args.chunk,
                device=args.device,
                tile=args.tile,
                batch_size=args.batch_size,
            )
            write_detections(frame, Path(tmp) / str(k), formats=["parquet", "geojson"])
            e2e.append(time.perf_counter() - started)
        assert frame is not None
        write_s = _median_time(
            lambda: write_detections(
                frame, tempfile.mkdtemp(dir=tmp), formats=["parquet", "geojson"]
            ),
            args.repeat,
        )
    e2e_s = statistics.median(e2e)
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
        "end_to_end": {"seconds": round(e2e_s, 3), "mpx_per_s": round(tissue_mpx / e2e_s, 2)},
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "date": time.strftime("%Y-%m-%d"),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
