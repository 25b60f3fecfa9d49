"""Re-evaluate the weights shipped in the package on CRCHisto and print the table (CPU, < 10 min).

The shipped default was trained on all 100 CRCHisto images: 85 for gradient steps and 15 held
out to stop early and choose the decoding threshold. The table gives those 15 and all 100; neither
is an independent test (the cross-validated figures are in benchmarks/results/crchisto.json).
It checks that the shipped file reproduces what its record says, gives the held-out 15 again
with ``--stain-normalise`` (what Reinhard normalisation costs in domain), and reports the speed
on the bundled sample slide.

    python benchmarks/evaluate_shipped.py [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "crchisto"
SAMPLE = ROOT / "examples" / "data" / "CMU-1-Small-Region.svs"


def main() -> None:
    from wsidet.annotations.files import find_pairs
    from wsidet.annotations.sources import load_sources
    from wsidet.evaluation.evaluate import Predictions, evaluate_predictions, predict
    from wsidet.inference.detector import Detector
    from wsidet.inference.pipeline import detect_slide
    from wsidet.weights import (
        bundled_methods,
        bundled_weights,
        method_from_weights,
        required_stain_reference,
    )

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    rows = {}
    for name in bundled_methods():
        weights = bundled_weights(name)
        assert weights is not None
        method = method_from_weights(weights, name)
        record = json.loads(weights.with_suffix(".json").read_text())
        started = time.perf_counter()
        detector = Detector(method, weights=weights, device=args.device)
        sources = [
            s
            for p in find_pairs(DATA / "images", DATA / "detection")
            for s in load_sources(p, method, one_based=True, image_mpp=0.5)
        ]
        predictions = predict(detector, sources)
        held_out = set(record["data"]["validation"]["sources"])
        subsets = {
            "validation_images": [i for i, k in enumerate(predictions.keys) if k in held_out],
            "all_crchisto_images": list(range(len(predictions.keys))),
        }
        held_sources = [s for s in sources if s.key in held_out]
        normalised = predict(detector, held_sources, stain=required_stain_reference(weights, name))
        chosen_sets = {
            subset: Predictions(
                [predictions.keys[i] for i in index],
                [predictions.maps[i] for i in index],
                [predictions.truths[i] for i in index],
            )
            for subset, index in subsets.items()
        }
        chosen_sets["validation_images_stain_normalised"] = normalised
        tables: dict[str, dict[str, dict[str, float]]] = {}
        for subset, chosen in chosen_sets.items():
            tables[subset] = {}
            for radius in (6.0, 8.0):
                s = evaluate_predictions(method, chosen, radius=radius).scores
                tables[subset][f"{radius:g}px"] = {
                    "precision": round(s.precision, 4),
                    "recall": round(s.recall, 4),
                    "f1": round(s.f1, 4),
                    "loc_median_px": round(s.loc_median, 2),
                }
        frame = detect_slide(SAMPLE, method, weights=weights, device=args.device)
        run = frame.attrs["wsidet"]["run"]
        rows[name] = {
            "images": {subset: len(chosen.keys) for subset, chosen in chosen_sets.items()},
            **tables,
            "threshold": record.get("threshold"),
            "sample_slide": {
                "nuclei": len(frame),
                "seconds": round(run["seconds"], 2),
                "mpx_per_s": round(run["processed_mpx"] / run["seconds"], 3),
            },
            "minutes": round((time.perf_counter() - started) / 60, 2),
        }
        scores = "  ".join(
            f"{subset} {r}: P {v['precision']:.3f} R {v['recall']:.3f} F1 {v['f1']:.3f}"
            for subset, table in tables.items()
            for r, v in table.items()
        )
        speed = rows[name]["sample_slide"]["mpx_per_s"]
        print(f"{name}: {scores}  | sample slide {len(frame)} nuclei, {speed} Mpx/s")
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
