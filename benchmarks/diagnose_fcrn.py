"""Why does FCRN-A miss the paper's count error on VGG cells? Learning curves, and the fixes.

Issue 16, item 1. One draw of the VGG protocol (32 training + 8 validation images from
001-100, seeded by ``--draw``; test 101-200), trained epoch by epoch until the validation count
error has not improved for ``--patience`` epochs, with the **training and test count MAE
recorded after every epoch** (``train(monitor=...)``: curves only, never used to choose
weights). Variants:

* ``baseline``: the recipe of ``reproduce_vgg.py`` (AdamW 1e-3, 128-px patches, 512 a
  epoch, RGB input), without its time budget;
* ``blue``: the same on the blue channel only (copied into R and G): the paper's input is one
  channel, and in RGB the near-empty R and G become noise after the per-window normalisation;
* ``whole``: ``baseline``'s best weights fine-tuned on whole 256² images at lr 1e-4, the
  paper's second stage ("fine-tune … with whole images");
* ``whole-reflect``: the same with targets whose Gaussians are mirrored back into the image at
  its edges (``fcrn_a`` ``edges="reflect"``, wsidet's default since this diagnosis), so an
  image's target integrates to its dot count; the other variants use the paper's cut-off edges.

Also written: the **target floor**, the count bias of a perfect regressor of the targets on the
test images (Gaussians cut off at the image border lose their outside mass), and per epoch the
mean signed test error. ``--report`` writes ``benchmarks/results/fcrn_diagnosis.json`` and the
curves ``benchmarks/results/fcrn_a-curves.png``.

    python benchmarks/diagnose_fcrn.py --variant baseline [--epochs 80] [--patience 15]
    python benchmarks/diagnose_fcrn.py --variant whole      # after baseline; whole-reflect
    python benchmarks/diagnose_fcrn.py --report     # needs matplotlib: pip install -e ".[bench]"
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from generalisation import hardware

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "vgg_cells"
RESULTS = ROOT / "benchmarks" / "results" / "fcrn_diagnosis.json"
CURVES = ROOT / "benchmarks" / "results" / "fcrn_a-curves.png"
PUBLISHED_MAE = 2.9
N_TRAIN, N_VAL = 32, 8


@dataclass(frozen=True, eq=False)
class BlueSource:
    """A source seen through its blue channel only (copied into all three)."""

    source: Any

    @property
    def key(self) -> str:
        return str(self.source.key)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.source.shape)  # type: ignore[return-value]

    @property
    def points_yx(self) -> npt.NDArray[np.float64]:
        return self.source.points_yx  # type: ignore[no-any-return]

    def read(self, y0: int, y1: int, x0: int, x1: int) -> npt.NDArray[np.uint8]:
        window = self.source.read(y0, y1, x0, x1)
        return np.repeat(window[..., 2:3], 3, axis=2)


def vgg_split(draw: int) -> tuple[list[Any], list[Any], list[Any]]:
    """Training, validation and test pairs of one draw (as ``reproduce_vgg.py``)."""
    from wsidet.annotations.files import find_pairs, select_fold

    pairs = find_pairs(DATA / "images", DATA / "points")
    pool = select_fold(pairs, DATA / "splits.csv", "train_pool")
    test = select_fold(pairs, DATA / "splits.csv", "test")
    chosen = random.Random(draw).sample(pool, N_TRAIN + N_VAL)
    return chosen[:N_TRAIN], chosen[N_TRAIN:], test


def target_floor(method: Any, sources: list[Any]) -> dict[str, float]:
    """Count error of a perfect regressor of the targets: what the border cuts off."""
    signed = []
    for s in sources:
        density = method.encode(s.points_yx, s.shape)["density"]
        signed.append(float(density.sum()) / method.scale - len(s.points_yx))
    return {"bias": float(np.mean(signed)), "mae": float(np.mean(np.abs(signed)))}


def run(args: argparse.Namespace) -> None:
    from wsidet.annotations.sources import load_sources
    from wsidet.methods import get_method
    from wsidet.train.augment import Augment
    from wsidet.train.loop import TrainConfig, train

    method = get_method(args.method, edges="reflect" if "reflect" in args.variant else "cut")
    fit, val, test = vgg_split(args.draw)

    def load(items: list[Any]) -> list[Any]:
        # Synthetic cells have no physical size: taken at the method's pixel size.
        out = [s for p in items for s in load_sources(p, method, image_mpp=method.mpp)]
        return [BlueSource(s) for s in out] if args.variant == "blue" else out

    train_sources, val_sources, test_sources = load(fit), load(val), load(test)
    init = None
    config = TrainConfig(
        epochs=args.epochs,
        samples_per_epoch=args.samples,
        batch_size=8,
        patch=128,
        lr=1e-3,
        patience=args.patience,
        seed=args.draw,
        device=args.device,
        augment=Augment(hed=0.0, intensity=0.1),
        select_on="count",
        precision=args.precision,
    )
    if args.variant.startswith("whole"):
        init = args.out / "baseline" / f"{method.name}.safetensors"
        if not init.is_file():
            sys.exit("run --variant baseline first: whole-image fine-tuning starts from it")
        # Two passes over the 32 whole images per epoch, as the paper's second stage.
        config = dataclasses.replace(config, patch=256, samples_per_epoch=64, lr=1e-4)
    if args.variant.endswith("ema"):
        config = dataclasses.replace(config, ema=0.95)
    out = args.out / args.variant
    start = time.perf_counter()

    def show(log: Any) -> None:
        m = log.monitor
        print(
            f"[{args.variant}] epoch {log.epoch:3d} loss {log.loss:8.3f} val MAE "
            f"{log.val_count_mae:5.2f} train MAE {m['train']['count_mae']:5.2f} test MAE "
            f"{m['test']['count_mae']:5.2f} (bias {m['test']['count_bias']:+5.2f}) "
            f"{log.seconds:.0f}+{log.monitor_seconds:.0f} s{' *' if log.improved else ''}",
            flush=True,
        )

    result = train(
        method,
        train_sources,
        val_sources,
        config,
        out,
        resume=True,
        init_weights=init,
        on_epoch=show,
        monitor={"train": train_sources, "test": test_sources},
        data_record={"dataset": "VGG cells", "draw": args.draw, "variant": args.variant},
    )
    summary = {
        "variant": args.variant,
        "method": method.name,
        "draw": args.draw,
        "best_epoch": result.best_epoch,
        "best": dataclasses.asdict(result.history[result.best_epoch]),
        "history": [dataclasses.asdict(h) for h in result.history],
        "train_minutes": sum(h.seconds for h in result.history) / 60,
        "wall_minutes_this_call": (time.perf_counter() - start) / 60,
        "target_floor_test_cut_edges": target_floor(method, test_sources),
        "target_floor_train_cut_edges": target_floor(method, train_sources),
        "hardware": hardware(args.device or "cpu"),
        "date": time.strftime("%Y-%m-%d"),
        "command": "python " + " ".join(sys.argv),
    }
    (out / "diagnosis.json").write_text(json.dumps(summary, indent=2) + "\n")


def report(args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {}
    for path in sorted(args.out.glob("*/diagnosis.json")):
        runs[path.parent.name] = json.loads(path.read_text())
    if not runs:
        sys.exit(f"nothing to report under {args.out}")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    draw = next(iter(runs.values()))["draw"]
    for name in ("baseline", "whole", "whole-reflect", "whole-reflect-ema", "blue"):
        if name not in runs:
            continue
        h = runs[name]["history"]
        # The whole-image stage continues the baseline's curve from its best epoch.
        whole = name.startswith("whole") and "baseline" in runs
        start = runs["baseline"]["best_epoch"] + 1 if whole else 0
        epochs = [start + r["epoch"] for r in h]
        for ax, key in zip(axes, ("test", "train"), strict=True):
            ax.plot(epochs, [r["monitor"][key]["count_mae"] for r in h], label=name)
    for ax, key in zip(axes, ("test (101-200)", "training (the 32 images)"), strict=True):
        ax.axhline(PUBLISHED_MAE, color="k", ls="--", lw=1, label="paper 2.9")
        ax.set_xlabel("epoch (512 patches of 128², or 64 whole images)")
        ax.set_ylabel("count MAE (cells per image)")
        ax.set_title(f"FCRN-A, VGG cells, draw {draw}: {key}")
        ax.set_ylim(0, None)
        ax.legend()
    fig.tight_layout()
    fig.savefig(CURVES, dpi=110)
    doc = {
        "question": "is FCRN-A's VGG count error training time or recipe? (issue 16)",
        "runs": {
            n: {k: v for k, v in r.items() if k != "history"}
            | {
                "curve": [
                    {
                        "epoch": e["epoch"],
                        "val_mae": round(e["val_count_mae"], 3),
                        "train_mae": round(e["monitor"]["train"]["count_mae"], 3),
                        "test_mae": round(e["monitor"]["test"]["count_mae"], 3),
                        "test_bias": round(e["monitor"]["test"]["count_bias"], 3),
                        "seconds": round(e["seconds"], 1),
                    }
                    for e in r["history"]
                ]
            }
            for n, r in runs.items()
        },
    }
    RESULTS.write_text(json.dumps(doc, indent=2) + "\n")
    for n, r in runs.items():
        best = r["best"]["monitor"]
        print(
            f"{n}: best epoch {r['best_epoch']} test MAE {best['test']['count_mae']:.2f} "
            f"(bias {best['test']['count_bias']:+.2f}) train MAE {best['train']['count_mae']:.2f}"
            f" floor {r['target_floor_test_cut_edges']['bias']:+.2f}, {r['train_minutes']:.1f} min"
        )
    print(f"wrote {RESULTS} and {CURVES}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--variant", choices=("baseline", "blue", "whole", "whole-reflect", "whole-reflect-ema")
    )
    parser.add_argument("--report", action="store_true")
    parser.add_argument("--method", default="fcrn_a", choices=("fcrn_a", "fcrn_b"))
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out" / "fcrn-diagnosis")
    parser.add_argument("--draw", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=80)
    parser.add_argument("--patience", type=int, default=15)
    parser.add_argument("--samples", type=int, default=512, help="patches per epoch")
    parser.add_argument("--device", default=None)
    parser.add_argument("--precision", default="auto")
    args = parser.parse_args()
    if not DATA.is_dir():
        sys.exit(f"VGG cells not found at {DATA}")
    if not (args.variant or args.report):
        parser.error("give --variant NAME to train, --report to write the results, or both")
    if args.variant:
        run(args)
    if args.report:
        report(args)


if __name__ == "__main__":
    main()
