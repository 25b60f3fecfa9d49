"""Reading a 40x slide for a 0.5 µm/px model: JPEG tiles decoded at half size vs decoded whole.

On a slide whose nearest level is about twice as fine as the model's scale, wsidet decodes the
JPEG tiles at 1/2 with libjpeg's scaled inverse DCT (``Slide.scale_for_mpp(dct_reduce=True)``,
the default) instead of decoding every pixel and shrinking them (``dct_reduce=False``). This
prints, as JSON: the read stage (all chunks, dask threads, median of ``--repeat``), the
detections of each (bundled VOCA) against the slide's annotated points within 3 µm, and the two
point sets against each other within one working pixel.

    python benchmarks/make_monuseg_slide.py --out bench-out/monuseg-40x.tif
    python benchmarks/bench_read_scale.py bench-out/monuseg-40x.tif --repeat 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np


def main() -> None:
    from wsidet.inference.heap import configure_heap

    configure_heap()
    import dask.array as da
    import pandas as pd

    from wsidet.evaluation.metrics import match_points
    from wsidet.inference.detector import DetectorSpec
    from wsidet.inference.pipeline import detect_array
    from wsidet.slide.wsi import open_slide
    from wsidet.tiling import Grid
    from wsidet.weights import resolve_method

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("slide", type=Path)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    method, weights = resolve_method("voca")
    slide = open_slide(args.slide)
    truth = pd.read_csv(args.slide.with_suffix(".points.csv"))[["x", "y"]].to_numpy()
    spec = DetectorSpec(method, weights=str(weights), device="cpu")
    result: dict[str, object] = {"slide": str(args.slide), "level0_mpp": slide.mpp}
    points: dict[bool, np.ndarray] = {}
    for reduce in (True, False):
        scale = slide.scale_for_mpp(method.mpp, dct_reduce=reduce)
        grid = Grid.aligned(scale.shape, halo=method.halo, chunk=2048, tile=scale.tile)
        reader = slide.reader(scale)
        image = da.from_array(reader, chunks=(*grid.chunks, (3,)), asarray=False)
        image.compute(scheduler="threads")  # warm-up: open the file, fill the caches
        seconds = []
        for _ in range(args.repeat):
            started = time.perf_counter()
            image.compute(scheduler="threads")
            seconds.append(time.perf_counter() - started)
        found, _ = detect_array(image, grid, spec)
        xy = scale.to_level0(found.points_yx)[:, ::-1]
        radius = 3.0 / slide.mpp  # 3 µm in level-0 pixels
        pairs, _ = match_points(xy, truth, radius)
        tp = len(pairs)
        precision, recall = tp / max(1, len(xy)), tp / max(1, len(truth))
        result["dct_reduced" if reduce else "decoded_whole"] = {
            "reader": repr(reader),
            "working_shape": list(scale.shape),
            "working_mpp": scale.mpp,
            "read_seconds": round(statistics.median(seconds), 3),
            "read_mpx_per_s": round(
                scale.shape[0] * scale.shape[1] / 1e6 / statistics.median(seconds), 1
            ),
            "points": len(xy),
            "vs_annotations_3um": {
                "precision": round(precision, 4),
                "recall": round(recall, 4),
                "f1": round(2 * precision * recall / max(1e-12, precision + recall), 4),
            },
        }
        points[reduce] = xy
    a, b = points[True], points[False]
    pairs, _ = match_points(a, b, 0.5 / slide.mpp)  # 0.5 µm: one working pixel
    result["between_the_two"] = {
        "f1_within_1_working_px": round(2 * len(pairs) / max(1, len(a) + len(b)), 4),
    }
    result["date"] = time.strftime("%Y-%m-%d")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
