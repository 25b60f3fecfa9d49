"""FCRN-A and FCRN-B cell counting on the VGG synthetic cells, as in the FCRN paper (Table 1).

Protocol (Lempitsky & Zisserman 2010, followed by the paper): N = 32 training images drawn from
images 001-100, tested on 101-200; five draws, reporting the mean absolute count error and its
standard deviation over the draws ("five different draws of training and validation image
sets", the paper's Table 1). The size of the validation set is not given; each draw here takes
8 further images of 001-100 (disjoint from its 32) for early stopping on the validation count
error, and never looks at 101-200 before testing. The count of a test image is the integral of
the predicted density (/100).

Two stages, as the paper's: random 128² patches (cosine schedule under a CPU time budget per
draw, PLAN × --budget-scale, or with --converge until the validation count stops improving,
the rate dropping tenfold on plateaus), then ``--whole-image-epochs`` (default 8) on the whole
256² images at lr 1e-4, kept only if it beats the first stage on the validation images.
Targets mirror the dots at the image edges (``edges="reflect"``), so an image's target
integrates to its dot count (``docs/recipe-check.md`` has the diagnosis behind both).
Deviations: AdamW rather than the paper's SGD with momentum; 128 px patches rather than 100 px.

Results per draw go to ``OUT/METHOD/drawK/``; the summary to
``benchmarks/results/vgg_cells.json``. Finished draws are skipped on a rerun.

    python benchmarks/reproduce_vgg.py --out bench-out/vgg [--methods fcrn_a] [--draws 5]
        [--budget-scale 1.0 | --converge [--patience 15]] [--device cuda --batch-size 64]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from _budget import add_budget_args, budget

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "vgg_cells"
RESULTS = ROOT / "benchmarks" / "results" / "vgg_cells.json"

#: Minutes of training per draw on CPU (scaled by --budget-scale).
PLAN = {
    "fcrn_a": {"minutes": 8, "samples": 512},
    "fcrn_b": {"minutes": 12, "samples": 128},
}


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically: a results file is never left half-written."""
    from wsidet.output.files import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, overwrite=True) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")


PUBLISHED = {"fcrn_a": "2.9 ± 0.2", "fcrn_b": "3.3 ± 0.2"}
N_TRAIN, N_VAL = 32, 8


def run_draw(name: str, draw: int, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    from wsidet.annotations.files import find_pairs, select_fold
    from wsidet.annotations.sources import load_sources
    from wsidet.evaluation.evaluate import evaluate_predictions, predict
    from wsidet.inference.detector import Detector
    from wsidet.methods import get_method
    from wsidet.train.augment import Augment
    from wsidet.train.loop import TrainConfig, train
    from wsidet.weights import method_from_weights

    method = get_method(name)
    pairs = find_pairs(DATA / "images", DATA / "points")
    pool = select_fold(pairs, DATA / "splits.csv", "train_pool")
    test = select_fold(pairs, DATA / "splits.csv", "test")
    chosen = random.Random(draw).sample(pool, N_TRAIN + N_VAL)
    fit, val = chosen[:N_TRAIN], chosen[N_TRAIN:]

    def load(items: list[Any]) -> list[Any]:
        # Synthetic cells have no physical size: taken at the method's pixel size.
        return [s for p in items for s in load_sources(p, method, image_mpp=method.mpp)]

    plan = budget(args, minutes=PLAN[name]["minutes"], samples=PLAN[name]["samples"])
    config = TrainConfig(
        epochs=plan.epochs,
        samples_per_epoch=plan.samples,
        batch_size=plan.batch_size,
        patch=128,
        lr=1e-3,
        patience=plan.patience,
        schedule=plan.schedule,
        plateau_wait=plan.plateau_wait,
        seed=draw,
        device=args.device,
        # Fluorescence, not H&E: flips and intensity, no stain jitter.
        augment=Augment(hed=0.0, intensity=0.1),
        select_on="count",
        max_minutes=plan.max_minutes,
    )
    result = train(
        method,
        load(fit),
        load(val),
        config,
        out,
        resume=True,
        on_epoch=lambda log: print(f"  {name} draw {draw}: {log}", flush=True),
        data_record={"dataset": "VGG cells", "draw": draw, "train_keys": [p.key for p in fit]},
    )
    weights, minutes, epochs = result.weights, sum(h.seconds for h in result.history) / 60, 0
    if args.whole_image_epochs:
        # The paper's second stage: fine-tune on whole images (here 256², all 32 twice an
        # epoch), from the patch stage's best weights, at a tenth of the rate, untimed.
        whole = train(
            method,
            load(fit),
            load(val),
            dataclasses.replace(
                config,
                epochs=args.whole_image_epochs,
                samples_per_epoch=2 * N_TRAIN * max(1, plan.batch_size // 8),
                patch=256,
                lr=1e-4,
                max_minutes=None,
            ),
            out / "whole-image",
            resume=True,
            init_weights=result.weights,
            on_epoch=lambda log: print(f"  {name} draw {draw} whole: {log}", flush=True),
            data_record={"dataset": "VGG cells", "draw": draw, "stage": "whole images"},
        )
        # Its first epoch is always "better" than nothing: keep it only if it beats the
        # patch stage on the same validation images.
        if whole.best_score > result.best_score:
            weights = whole.weights
        minutes += sum(h.seconds for h in whole.history) / 60
        epochs = len(whole.history)
    trained = method_from_weights(weights, name)
    detector = Detector(trained, weights=weights, device=args.device)
    evaluation = evaluate_predictions(trained, predict(detector, load(test)), radius=6.0)
    summary = {
        "method": name,
        "draw": draw,
        "n_train": N_TRAIN,
        "count_mae": evaluation.count_mae,
        "train_minutes": minutes,
        "best_epoch": result.best_epoch,
        "epochs": len(result.history),
        "whole_image_epochs": epochs,
        "whole_image_kept": weights != result.weights,
        "budget": plan.describe(),
    }
    write_json(out / "summary.json", summary)
    return summary


def markdown_table(methods: dict[str, Any]) -> str:
    """The README's table, from the results (``--table`` rewrites it without training)."""
    lines = [
        "| method | wsidet | training per draw | epochs | hardware, date | paper (N = 32) |",
        "|---|---|---|---|---|---|",
    ]
    for name, m in methods.items():
        how = "to convergence" if m.get("converge") else f"budget ×{m.get('budget_scale', 1):g}"
        epochs = m.get("epochs")
        lines.append(
            f"| {name.upper().replace('_', '-')} | {m['mae_mean']:.1f} ± {m['mae_sd']:.1f} | "
            f"{np.mean(m['train_minutes']):.1f} min ({how}) | "
            f"{'—' if not epochs else f'{min(epochs)}–{max(epochs)}'} | "
            f"{m['hardware']}, {m['date']} | {m['published']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench-out/vgg"))
    parser.add_argument("--methods", default=",".join(PLAN))
    parser.add_argument("--draws", type=int, default=5)
    add_budget_args(parser, patience=15)
    parser.add_argument(
        "--whole-image-epochs",
        type=int,
        default=8,
        help="then fine-tune on whole images for up to N epochs (the paper's second stage; 0: "
        "skip)",
    )
    parser.add_argument("--device", default=None)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--table", action="store_true", help="only rewrite the Markdown table")
    args = parser.parse_args()
    if args.table:
        table = markdown_table(json.loads(args.results.read_text())["methods"])
        args.results.with_suffix(".md").write_text(table)
        print(table)
        return
    if not DATA.is_dir():
        sys.exit(f"VGG cells not found at {DATA}")
    device = "cuda" if torch.cuda.is_available() and args.device != "cpu" else "cpu"
    run = {
        "budget_scale": args.budget_scale,
        "hardware": torch.cuda.get_device_name(0)
        if device == "cuda"
        else f"CPU: {platform.machine()}, {torch.get_num_threads()} threads",
        "date": time.strftime("%Y-%m-%d"),
        "command": " ".join(["python", *sys.argv]),
    }
    previous = json.loads(args.results.read_text()) if args.results.is_file() else {}
    methods: dict[str, Any] = dict(previous.get("methods", {}))
    for name in args.methods.split(","):
        maes, minutes, epochs, budgets = [], [], [], []
        for draw in range(args.draws):
            out = args.out / name / f"draw{draw}"
            done = out / "summary.json"
            if done.is_file():
                summary = json.loads(done.read_text())
            else:
                out.mkdir(parents=True, exist_ok=True)
                summary = run_draw(name, draw, out, args)
            print(f"{name} draw {draw}: count MAE {summary['count_mae']:.2f}", flush=True)
            maes.append(summary["count_mae"])
            minutes.append(summary["train_minutes"])
            epochs.append(summary.get("epochs"))
            budgets.append(summary.get("budget"))
        methods[name] = {
            "mae_mean": float(np.mean(maes)),
            "mae_sd": float(np.std(maes, ddof=1)) if len(maes) > 1 else 0.0,
            "n_train": N_TRAIN,
            "draws": maes,
            "train_minutes": minutes,
            "epochs": epochs if all(e is not None for e in epochs) else None,
            # Each draw's own, not this call's flags (finished draws are skipped, not rerun).
            "budget": budgets[0] if len(set(budgets)) == 1 else budgets,
            "converge": all(b and "convergence" in b for b in budgets),
            "published": PUBLISHED[name],
            **run,
        }
    report = {
        "methods": methods,
        "protocol": (
            f"N = {N_TRAIN} training + {N_VAL} validation images drawn from 001-100 per draw "
            "(seeded by the draw number), tested on 101-200; count = integral of the density; "
            "mean absolute error per image, mean ± sd over draws"
        ),
        # The newest run's; each method has its own.
        **run,
    }
    write_json(args.results, report)
    args.results.with_suffix(".md").write_text(markdown_table(methods))
    print(json.dumps(methods, indent=2))


if __name__ == "__main__":
    main()
