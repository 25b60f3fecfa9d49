"""Per-method facts and speed: parameters, halo, network and decoding throughput, as JSON.

Each method's detector runs on one chunk of real tissue (the default 2048 px chunk plus the
method's halo, cut from the sample slide, mirrored where the slide is smaller) with untrained
weights: speed does not depend on the weights. Throughput counts the chunk's core pixels, as the
pipeline does: Mpx/s = 2048² / seconds.

    python benchmarks/bench_methods.py [--methods voca,mapde] [--device cuda] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "examples" / "data" / "CMU-1-Small-Region.svs"


def tissue_block(size: int) -> np.ndarray:
    """A ``size × size`` RGB block of real tissue (the sample slide, mirrored to fill)."""
    from wsidet.slide.wsi import open_slide

    slide = open_slide(SAMPLE)
    image = slide.read_region(0, 0, *slide.shape)
    h, w, _ = image.shape
    mirrored = np.pad(image, ((0, max(0, size - h)), (0, max(0, size - w)), (0, 0)), "symmetric")
    return np.ascontiguousarray(mirrored[:size, :size])


def main() -> None:
    import torch

    from wsidet.inference.detector import DEFAULT_TILE, Detector
    from wsidet.methods import get_method, list_methods
    from wsidet.tiling import DEFAULT_CHUNK

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(list_methods()))
    parser.add_argument("--device", default=None)
    parser.add_argument("--chunk", type=int, default=DEFAULT_CHUNK)
    parser.add_argument("--tile", type=int, default=DEFAULT_TILE)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()

    results = {}
    for name in args.methods.split(","):
        method = get_method(name)
        torch.manual_seed(0)
        network = method.build_network()
        detector = Detector(method, network=network, device=args.device, tile=args.tile)
        block = tissue_block(args.chunk + 2 * method.halo)
        sync = torch.cuda.synchronize if detector.device.type == "cuda" else (lambda: None)
        detector.predict(block)  # warm-up: allocator, kernel selection, FFT plans
        sync()
        net_times, dec_times, points = [], [], 0
        for _ in range(args.repeat):
            started = time.perf_counter()
            maps = detector.predict(block)
            sync()
            net_times.append(time.perf_counter() - started)
            started = time.perf_counter()
            found, _ = method.decode(maps)
            sync()
            dec_times.append(time.perf_counter() - started)
            points = len(found)
        core_mpx = args.chunk**2 / 1e6
        net_s, dec_s = statistics.median(net_times), statistics.median(dec_times)
        results[name] = {
            "parameters": sum(p.numel() for p in network.parameters()),
            "receptive_radius": method.receptive_radius,
            "decoder_radius": method.decoder_radius,
            "halo": method.halo,
            "stride": method.stride,
            "network_s": round(net_s, 3),
            "decoding_s": round(dec_s, 3),
            "network_mpx_per_s": round(core_mpx / net_s, 3),
            "decoding_mpx_per_s": round(core_mpx / dec_s, 3),
            "detector_mpx_per_s": round(core_mpx / (net_s + dec_s), 3),
            "points_untrained": points,
        }
        print(json.dumps({name: results[name]}), flush=True)
    device = detector.device
    print(
        json.dumps(
            {
                "device": str(device),
                "device_name": torch.cuda.get_device_name(device)
                if device.type == "cuda"
                else platform.machine(),
                "cpu_count": os.cpu_count(),
                "torch_threads": torch.get_num_threads(),
                "chunk": args.chunk,
                "tile": args.tile,
                "repeat": args.repeat,
                "date": time.strftime("%Y-%m-%d"),
                "methods": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
