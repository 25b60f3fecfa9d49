"""Does the detector know tissue it has never seen? Leave-one-dataset-out, CRCHisto CV.

Three annotated H&E sources (``../shared/data``), each resampled to the method's 0.5 µm/px:

* ``crchisto``: 100 colorectal images, 20×, stated 0.5 µm/px (UHCW);
* ``monuseg``: the 13 MoNuSeg training images with nucleus centroids, 7 organs, 40×, 0.252;
* ``consep``: CoNSeP tiles (colorectal, UHCW), 40×, taken as 0.25 µm/px (twice CRCHisto's
  resolution, as its 40× to CRCHisto's 20×; nucleus size alone cannot tell 0.25 from 0.30, see
  ``benchmarks/RESULTS.md``); train folder for training (tiles of one original image held out
  together), test folder for testing.

Experiments (each trains with the generalist recipe: VOCA, :meth:`Augment.domain_shift`,
datasets drawn with equal shares, 15 % of every training dataset held out for early stopping
and the decoding threshold; tested once with the threshold chosen there, never on test data):

* ``lodo-crchisto``, ``lodo-monuseg``, ``lodo-consep``: train on the other two, test zero-shot on
  the one left out;
* ``cv-fold1``, ``cv-fold2``: CRCHisto 2-fold (VOCA split): train on the other CRCHisto fold plus
  MoNuSeg and CoNSeP, test on fold k;
* ``generalist``: all three (CRCHisto all 100, MoNuSeg 13, CoNSeP train): the shipped
  default; tested on the CoNSeP test folder (in-distribution).
* ``shipped``: no training, the CRCHisto-only weights shipped before, on every test set
  (the "before").

Every test is run without and with stain normalisation (``--stain-normalise``) and scored at
3 µm (6 px at 0.5 µm/px). Experiments named ``NAME-sn`` train the same on stain-normalised
colours (each image mapped to the training data's reference from its own statistics, as
inference does; ``TrainConfig.stain_normalise``). A run whose weights exist is not
retrained; training resumes from its ``state.pt``. ``--report`` writes
``benchmarks/results/generalisation.json`` (and the README's table, ``generalisation.md``) from
what has been evaluated so far, each row with its minutes, hardware, date and command.

    python benchmarks/generalisation.py --out bench-out/generalisation --run generalist \
        --minutes 35
    python benchmarks/generalisation.py --out bench-out/generalisation --device cuda \
        --batch-size 64 --minutes 6 --run generalist   # one GPU, <= 8 min
    python benchmarks/generalisation.py --out bench-out/generalisation --report
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results" / "generalisation.json"
RADIUS_UM = 3.0
#: The CRCHisto-only VOCA weights shipped before the generalist (the "before", and the start
#: of fine-tuning where CRCHisto is among the training data).
CRCHISTO_WEIGHTS = ROOT / "wsidet" / "weights" / "voca-crchisto.safetensors"


def datasets(data: Path) -> dict[str, Any]:
    from wsidet.train.collection import AnnotatedSet

    crc = {
        "images": data / "crchisto/images",
        "points": data / "crchisto/detection",
        "mpp": 0.5,
        "one_based": True,
    }
    split = data / "crchisto/splits.csv"
    return {
        "crchisto": AnnotatedSet("crchisto", **crc),
        "crchisto-fold1": AnnotatedSet("crchisto-fold1", **crc, split=split, fold="1"),
        "crchisto-fold2": AnnotatedSet("crchisto-fold2", **crc, split=split, fold="2"),
        "monuseg": AnnotatedSet(
            "monuseg", data / "monuseg/images", data / "monuseg/points", mpp=0.252
        ),
        "consep": AnnotatedSet(
            "consep",
            data / "consep/images/train",
            data / "consep/points/train",
            mpp=0.25,
            group="^train_[0-9]+",  # 16 overlapping tiles per original image: held out together
        ),
        "consep-test": AnnotatedSet(
            "consep-test", data / "consep/images/test", data / "consep/points/test", mpp=0.25
        ),
    }


@dataclass(frozen=True)
class Experiment:
    train: tuple[str, ...]
    test: tuple[str, ...]
    #: Where training starts: None from scratch, "bundled" the shipped CRCHisto weights (only
    #: where no test image trained them), or another experiment's weights (trained first).
    init: str | None
    normalise: bool = False  # train on stain-normalised colours (the weights then ask for it)


EXPERIMENTS = {
    "shipped": Experiment((), ("crchisto", "monuseg", "consep-test"), "bundled"),
    "lodo-monuseg": Experiment(("crchisto", "consep"), ("monuseg",), "bundled"),
    "lodo-consep": Experiment(("crchisto", "monuseg"), ("consep-test",), "bundled"),
    "lodo-crchisto": Experiment(("monuseg", "consep"), ("crchisto",), None),
    # lodo-crchisto never saw CRCHisto, so the folds may start from it without a leak.
    "cv-fold1": Experiment(
        ("crchisto-fold2", "monuseg", "consep"), ("crchisto-fold1",), "lodo-crchisto"
    ),
    "cv-fold2": Experiment(
        ("crchisto-fold1", "monuseg", "consep"), ("crchisto-fold2",), "lodo-crchisto"
    ),
    "generalist": Experiment(("crchisto", "monuseg", "consep"), ("consep-test",), "bundled"),
}
#: Rows that are not test figures, said in the table.
NOT_TESTS = {
    ("shipped", "crchisto"): "85 of these 100 images trained it: not a test",
    ("generalist", "consep-test"): "in distribution: CoNSeP train trained it",
    ("generalist-sn", "consep-test"): "in distribution: CoNSeP train trained it",
}

# The same, trained on stain-normalised colours ("-sn"): tested as they are and normalised.
EXPERIMENTS.update(
    {
        f"{name}-sn": Experiment(
            e.train, e.test, e.init if e.init in (None, "bundled") else f"{e.init}-sn", True
        )
        for name, e in list(EXPERIMENTS.items())
        if e.train
    }
)


def hardware(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(0)
    model = platform.processor() or platform.machine()
    try:
        info = Path("/proc/cpuinfo").read_text()
        model = next(x.split(":", 1)[1].strip() for x in info.splitlines() if "model name" in x)
        model += " (AVX-512)" if "avx512f" in info else " (AVX2)" if "avx2" in info else ""
    except (OSError, StopIteration):
        pass
    return f"{model}, {torch.get_num_threads()} threads (CPU)"


def initial_weights(exp: Experiment, args: argparse.Namespace) -> Path | None:
    if exp.init is None:
        return None
    if exp.init == "bundled":
        return CRCHISTO_WEIGHTS
    weights = args.out / exp.init / "voca.safetensors"
    if not (args.out / exp.init / "voca.json").is_file():
        raise SystemExit(f"run {exp.init} first: it is where this experiment starts")
    return weights


def train_one(name: str, exp: Experiment, args: argparse.Namespace, sets: dict[str, Any]) -> Path:
    from wsidet.methods import get_method
    from wsidet.train.augment import Augment
    from wsidet.train.collection import load_sets
    from wsidet.train.loop import TrainConfig, train
    from wsidet.weights import method_from_weights

    out = args.out / name
    weights = out / "voca.safetensors"
    record = out / "voca.json"
    if record.is_file() and not args.resume_finished:
        return weights
    init = initial_weights(exp, args)
    method = method_from_weights(init, "voca") if init is not None else get_method("voca", width=32)
    data = load_sets([sets[s] for s in exp.train], method, val_fraction=0.15, seed=args.seed)
    config = TrainConfig(
        epochs=args.epochs,
        # A bigger batch (a GPU) keeps the steps per epoch: the patience means the same.
        samples_per_epoch=args.samples * max(1, args.batch_size // 8),
        batch_size=args.batch_size,
        patch=128,
        lr=args.lr if init is None else args.lr / 3,
        patience=args.patience,
        seed=args.seed,
        device=args.device,
        augment=Augment.domain_shift(),
        radius=RADIUS_UM / method.mpp,
        max_minutes=None if args.converge else args.minutes,
        schedule="plateau" if args.converge else "cosine",
        plateau_wait=max(1, args.patience // 3),
        precision=args.precision,
        stain_normalise=exp.normalise,
    )
    print(f"[{name}] training on {', '.join(exp.train)} -> {out}", flush=True)

    def show(log: Any) -> None:
        print(
            f"[{name}] epoch {log.epoch:3d} lr {log.lr:.2e} loss {log.loss:.4f} "
            f"val F1 {log.val_f1:.4f} (P {log.val_precision:.3f} R {log.val_recall:.3f}) "
            f"{log.seconds:.0f} s{' *' if log.improved else ''}",
            flush=True,
        )

    train(
        method,
        data.train,
        data.validation,
        config,
        out,
        resume=True,
        init_weights=init,
        on_epoch=show,
        data_record={**data.record, "command": " ".join(sys.argv)},
        train_weights=data.weights,
    )
    return weights


def evaluate_one(
    name: str, exp: Experiment, weights: Path, args: argparse.Namespace, sets: dict[str, Any]
) -> dict[str, Any]:
    from wsidet.evaluation.evaluate import evaluate_predictions, predict
    from wsidet.inference.detector import Detector
    from wsidet.weights import method_from_weights, stain_reference

    method = method_from_weights(weights, "voca")
    detector = Detector(method, weights=weights, device=args.device, precision=args.precision)
    reference = stain_reference(weights)
    radius = RADIUS_UM / method.mpp
    rows: dict[str, Any] = {}
    for test in exp.test:
        sources = sets[test].load(method, sets[test].pairs())
        for stain in (False, True):
            start = time.perf_counter()
            predictions = predict(detector, sources, stain=reference if stain else None)
            result = evaluate_predictions(method, predictions, radius=radius)
            s = result.scores
            key = f"{test}{' +stain' if stain else ''}"
            rows[key] = {
                "precision": round(s.precision, 4),
                "recall": round(s.recall, 4),
                "f1": round(s.f1, 4),
                "count_mae": round(result.count_mae, 2),
                "images": len(sources),
                "seconds": round(time.perf_counter() - start, 1),
            }
            print(f"[{name}] {key}: P {s.precision:.4f} R {s.recall:.4f} F1 {s.f1:.4f}", flush=True)
    return rows


def report(args: argparse.Namespace) -> None:
    rows = {}
    for name in EXPERIMENTS:
        path = args.out / name / "evaluation.json"
        if path.is_file():
            rows[name] = json.loads(path.read_text())
    doc = {
        "protocol": __doc__.split("\n\n")[1:4] if __doc__ else None,
        "radius_um": RADIUS_UM,
        "experiments": {
            n: {"train": list(e.train), "test": list(e.test), "init": e.init or "scratch"}
            for n, e in EXPERIMENTS.items()
        },
        "results": rows,
    }
    RESULTS.write_text(json.dumps(doc, indent=2) + "\n")
    table = markdown_table(rows)
    RESULTS.with_suffix(".md").write_text(table)
    print(table)
    print(f"wrote {RESULTS} and {RESULTS.with_suffix('.md')} ({len(rows)} experiments)")


def markdown_table(rows: dict[str, Any]) -> str:
    """The README's table: one line per experiment and test set, without and with stain
    normalisation, P / R / F1 at 3 µm, training minutes and hardware."""
    lines = [
        "| experiment | trained on | tested on | P / R / F1 | with --stain-normalise | training |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        exp = EXPERIMENTS[name]
        results = row["results"]
        for test in exp.test:
            plain, stain = results.get(test), results.get(f"{test} +stain")
            if plain is None:
                continue

            def prf(r: dict[str, float] | None) -> str:
                if r is None:
                    return "—"
                return f"{r['precision']:.3f} / {r['recall']:.3f} / **{r['f1']:.3f}**"

            start = {None: "from scratch", "bundled": "from the CRCHisto weights"}.get(
                exp.init, f"from {exp.init}"
            )
            trained = f"{', '.join(exp.train)} ({start})" if exp.train else "CRCHisto only"
            minutes = row.get("training_minutes") or 0.0
            budget = f"{minutes:.0f} min, {row['hardware']}" if exp.train else "—"
            caveat = NOT_TESTS.get((name, test))
            where = f"{test} ({caveat})" if caveat else test
            lines.append(
                f"| {name} | {trained} | {where} | {prf(plain)} | {prf(stain)} | {budget} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out" / "generalisation")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--run", action="append", choices=list(EXPERIMENTS), default=[])
    parser.add_argument("--report", action="store_true")
    parser.add_argument("--minutes", type=float, default=40.0, help="training budget per run")
    parser.add_argument(
        "--converge", action="store_true", help="no time budget: stop on the patience"
    )
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument(
        "--samples", type=int, default=2048, help="patches per epoch at batch 8 (scaled with it)"
    )
    parser.add_argument("--patience", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=8, help="32-64 on a GPU")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="auto")
    parser.add_argument(
        "--resume-finished", action="store_true", help="continue runs that already finished"
    )
    args = parser.parse_args()
    from wsidet.inference.heap import configure_heap

    configure_heap()
    sets = datasets(args.data)
    for name in args.run:
        exp = EXPERIMENTS[name]
        start = time.perf_counter()
        weights = CRCHISTO_WEIGHTS if not exp.train else train_one(name, exp, args, sets)
        train_record = weights.with_suffix(".json")
        minutes = json.loads(train_record.read_text()).get("minutes") if exp.train else 0.0
        rows = evaluate_one(name, exp, weights, args, sets)
        (args.out / name).mkdir(parents=True, exist_ok=True)
        (args.out / name / "evaluation.json").write_text(
            json.dumps(
                {
                    "results": rows,
                    "training_minutes": minutes,
                    "hardware": hardware(args.device),
                    "date": time.strftime("%Y-%m-%d"),
                    "command": "python " + " ".join(sys.argv),
                    "wall_minutes_this_call": round((time.perf_counter() - start) / 60, 1),
                },
                indent=2,
            )
        )
    if args.report:
        report(args)


if __name__ == "__main__":
    main()
