"""What each precision mode changes: CRCHisto F1 per VOCA fold and the sample slide's points.

With the shipped weights, every CRCHisto image is predicted whole in each precision; F1 at 6 px
(the weights' own threshold) is reported for each of the two folds of the VOCA split, and the
difference to fp32. On the sample slide, the points of each mode are matched to fp32's within
1 px: F1, and how many points appear, vanish or move. Writes
``benchmarks/results/precision.json``.

On a CPU without native bf16/fp16 those modes are emulated (correct, several times slower):
pass ``--precisions fp32,bf16`` to leave out fp16 there.

    python benchmarks/bench_precision.py --device cpu --precisions fp32,bf16
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "crchisto"
SAMPLE = ROOT / "examples" / "data" / "CMU-1-Small-Region.svs"
OUT = ROOT / "benchmarks" / "results" / "precision.json"


def main() -> None:
    from wsidet.inference.heap import configure_heap

    configure_heap()
    from wsidet.annotations.files import find_pairs
    from wsidet.annotations.sources import load_sources
    from wsidet.evaluation.evaluate import Predictions, evaluate_predictions, predict
    from wsidet.evaluation.metrics import match_points
    from wsidet.inference.detector import Detector
    from wsidet.inference.pipeline import detect_slide
    from wsidet.inference.precision import native_cpu_formats
    from wsidet.weights import resolve_method

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precisions", default="fp32,bf16,fp16")
    args = parser.parse_args()
    modes = [p.strip() for p in args.precisions.split(",")]
    if modes[0] != "fp32":
        modes = ["fp32", *[m for m in modes if m != "fp32"]]

    method, weights = resolve_method("voca")
    folds: dict[str, set[str]] = {}
    with open(DATA / "splits.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            folds.setdefault(f"fold{row['voca_fold']}", set()).add(row["image_id"])
    sources = [
        s
        for p in find_pairs(DATA / "images", DATA / "detection")
        for s in load_sources(p, method, one_based=True, image_mpp=0.5)
    ]
    result: dict[str, object] = {
        "method": method.name,
        "weights": str(weights.name) if weights else None,
        "device": args.device,
        "machine": platform.processor() or platform.machine(),
        "native_cpu_formats": sorted(native_cpu_formats()),
        "command": "python benchmarks/bench_precision.py "
        + " ".join(f"--{k} {v}" for k, v in vars(args).items()),
        "date": time.strftime("%Y-%m-%d"),
    }
    crchisto: dict[str, dict[str, object]] = {}
    sample_points: dict[str, np.ndarray] = {}
    for mode in modes:
        detector = Detector(method, weights=weights, device=args.device, precision=mode)
        started = time.perf_counter()
        predictions = predict(detector, sources)
        seconds = time.perf_counter() - started
        row: dict[str, object] = {"seconds": round(seconds, 1)}
        for fold, ids in sorted(folds.items()):
            index = [i for i, key in enumerate(predictions.keys) if key.removeprefix("img") in ids]
            subset = Predictions(
                [predictions.keys[i] for i in index],
                [predictions.maps[i] for i in index],
                [predictions.truths[i] for i in index],
            )
            s = evaluate_predictions(method, subset, radius=6.0).scores
            row[fold] = {"images": len(index), "precision": round(s.precision, 4),
                         "recall": round(s.recall, 4), "f1": round(s.f1, 4)}  # fmt: skip
        crchisto[mode] = row
        frame = detect_slide(SAMPLE, method, weights=weights, device=args.device, precision=mode)
        sample_points[mode] = frame[["x", "y"]].to_numpy()
        print(mode, json.dumps(row), len(frame), "points on the sample", flush=True)
    for row in crchisto.values():
        for fold in folds:
            ref = crchisto["fp32"][fold]["f1"]  # type: ignore[index]
            row[fold]["f1_change_vs_fp32"] = round(row[fold]["f1"] - ref, 4)  # type: ignore[index]
    sample = {}
    for mode, points in sample_points.items():
        reference = sample_points["fp32"]
        pairs, _ = match_points(points, reference, 1.0)
        sample[mode] = {
            "points": len(points),
            "f1_vs_fp32_1px": round(2 * len(pairs) / max(1, len(points) + len(reference)), 4),
            "only_in_this_mode": len(points) - len(pairs),
            "only_in_fp32": len(reference) - len(pairs),
        }
    result["crchisto_6px"] = crchisto
    result["sample_slide"] = sample
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
