"""Retrain every table (VGG counts, CRCHisto 2-fold, generalisation) and the shipped default.

One command for a GPU (issue 16, item 4)::

    python benchmarks/reproduce_all.py --device cuda            # every step, to convergence
    python benchmarks/reproduce_all.py --dry-run                # the steps and their cost
    python benchmarks/reproduce_all.py --calibrate              # measure this CPU's speeds

Each step is one call of a reproduction script (``reproduce_vgg.py``,
``reproduce_crchisto.py``, ``generalisation.py``), trained with ``--converge`` (early stopping
on a stated patience, at most ``--max-epochs``); finished runs are skipped, so the command
resumes. On a GPU the batch is 64 (the patches per epoch scale with it, the steps per epoch do
not); on a CPU 8.

**Cost estimates** (``--dry-run``): per step, ``runs × epochs × (patches × training FLOPs per
patch + validation pixels × forward FLOPs per pixel)``. FLOPs are counted (torch's
``FlopCounterMode``, forward ×3 for a training step). Epochs are the plan's expected epochs to
convergence (:data:`STEPS`, from the curves measured so far; the cap is what bounds a run).
Seconds on this CPU come from ``--calibrate`` (training steps and validation passes timed per
method, ``benchmarks/results/train_speed.json``); on a GPU from an **assumed** sustained rate
(``--gpu-tflops``, default 100 TFLOP/s, about a tenth of an H100/H200's dense bf16 peak, since
these small convolutional networks do not fill it): an estimate until a GPU run measures it.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
SPEEDS = HERE / "results" / "train_speed.json"
PATCH = 128
#: Validation images per epoch and their size in pixels at the method's scale.
CRCHISTO_VAL = 13 * 500 * 500  # 15 % of a 50-image fold
VGG_VAL = 8 * 256 * 256
GEN_VAL = 40 * 500 * 500  # 15 % of each source, about 10 Mpx in all
#: VGG's whole-image stage: 8 epochs of 64 images of 256², each four 128² patches.
WHOLE_IMAGE_STAGE = 8 * 64 * 4


@dataclass(frozen=True)
class Step:
    """One call of a reproduction script.

    ``runs`` trainings of ``method``, each expected to take ``epochs`` epochs of ``samples``
    patches (at batch 8; scaled with the batch) and a validation pass over ``val_pixels``.
    """

    name: str
    script: str
    args: tuple[str, ...]
    method: str
    runs: int
    samples: int
    epochs: int
    val_pixels: int
    table: str
    #: The method's parameters as the step trains it (e.g. width), for the FLOP count.
    params: tuple[tuple[str, int], ...] = ()
    #: Further 128²-patch equivalents per run after the epochs (VGG's whole-image stage).
    extra_patches: int = 0

    @property
    def method_trains(self) -> bool:
        """Whether the step trains a network (``log`` only sweeps its threshold)."""
        return self.samples > 0

    def command(self, device: str, batch: int, out: Path) -> list[str]:
        """The script's command line."""
        common = ["--out", str(out / self.table), "--device", device, "--batch-size", str(batch)]
        if self.script == "wsidet train":  # the CLI trains until its patience without --minutes
            per_epoch = str(max(self.samples, self.samples * batch // 8))
            cli = [sys.executable, "-m", "wsidet.cli", "train"]
            return [*cli, *self.args, *common, "--samples-per-epoch", per_epoch]
        return [sys.executable, str(HERE / self.script), *self.args, *common, "--converge"]


GENERALISATION_RUNS = (
    *("lodo-monuseg", "lodo-consep", "lodo-crchisto", "cv-fold1", "cv-fold2"),
    *("generalist", "shipped"),
)
#: The shipped default's recipe (``benchmarks/ship_default.py``), minus what the step adds.
DEFAULT_RECIPE = (
    *("--method", "voca", "--param", "width=32", "--one-based", "--image-mpp", "0.5"),
    *("--seed", "0"),
    *("--images", str(ROOT.parent / "shared/data/crchisto/images")),
    *("--points", str(ROOT.parent / "shared/data/crchisto/detection")),
    *("--patience", "12", "--epochs", "400", "--schedule", "plateau", "--plateau-wait", "4"),
)


def _crchisto(method: str, samples: int, epochs: int) -> Step:
    import reproduce_crchisto

    params = tuple(reproduce_crchisto.PLAN[method]["params"].items())
    return Step(
        f"crchisto/{method}",
        "reproduce_crchisto.py",
        ("--methods", method),
        method,
        2,
        samples,
        epochs,
        CRCHISTO_VAL,
        "crchisto",
        params,
    )


#: The plan. Expected epochs: where a curve was measured (FCRN-A's diagnosis, VOCA's shipped
#: run, the generalisation runs) about best epoch + patience; elsewhere the patience plus the
#: best epoch of the time-budgeted runs, which stopped early, so these are low guesses.
STEPS: tuple[Step, ...] = (
    Step(
        "vgg/fcrn_a",
        "reproduce_vgg.py",
        ("--methods", "fcrn_a"),
        "fcrn_a",
        5,
        512,
        40,
        VGG_VAL,
        "vgg",
        extra_patches=WHOLE_IMAGE_STAGE,
    ),
    Step(
        "vgg/fcrn_b",
        "reproduce_vgg.py",
        ("--methods", "fcrn_b"),
        "fcrn_b",
        5,
        128,
        40,
        VGG_VAL,
        "vgg",
        extra_patches=WHOLE_IMAGE_STAGE,
    ),
    _crchisto("voca", 2048, 25),
    _crchisto("mapde", 1024, 40),  # 256 patches of 256², as many pixels as 1024 of 128²
    _crchisto("micronet", 1024, 40),
    _crchisto("proximity", 512, 40),
    _crchisto("fcrn_a", 1024, 30),
    _crchisto("fcrn_b", 256, 30),
    _crchisto("log", 0, 0),
    Step(
        "generalisation (lodo x3, cv x2, generalist)",
        "generalisation.py",
        (*(a for r in GENERALISATION_RUNS for a in ("--run", r)), "--report"),
        "voca",
        6,
        2048,
        25,
        GEN_VAL,
        "generalisation",
    ),
    # The shipped default's recipe (``benchmarks/ship_default.py``); shipping it stays a
    # decision made after reading its figures, so this step only trains.
    Step(
        "default (voca on all of CRCHisto)",
        "wsidet train",
        DEFAULT_RECIPE,
        "voca",
        1,
        2048,
        25,
        CRCHISTO_VAL,
        "default-voca",
    ),
)


def flops(method: str, params: tuple[tuple[str, int], ...] = ()) -> tuple[float, float]:
    """(training FLOPs per 128² patch, forward FLOPs per pixel) of ``method``'s network."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from wsidet.methods import get_method

    network = get_method(method, **dict(params)).build_network().eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        network(torch.zeros(1, 3, PATCH, PATCH))
    forward = float(counter.get_total_flops())
    # Backward costs about twice the forward (gradients of inputs and of weights).
    return 3 * forward, forward / PATCH**2


def calibrate(methods: dict[str, tuple[tuple[str, int], ...]], steps: int = 3) -> dict[str, Any]:
    """Seconds per training step (batch 8 of 128²) and per validation megapixel, per method,
    timed on this machine (after one warm-up step)."""
    import numpy as np
    import torch

    from wsidet.inference.detector import Detector
    from wsidet.methods import get_method

    speeds = {}
    for name, params in methods.items():
        method = get_method(name, **dict(params))
        if not method.trainable:
            continue
        network = method.build_network().to(memory_format=torch.channels_last)
        optimizer = torch.optim.AdamW(network.parameters(), lr=1e-4)
        images = torch.rand(8, 3, PATCH, PATCH).contiguous(memory_format=torch.channels_last)
        points = np.array([[32.0, 40.0], [90.0, 70.0]])
        target = method.encode(points, (PATCH, PATCH))
        targets = {k: torch.from_numpy(v)[None].repeat(8, 1, 1, 1) for k, v in target.items()}
        times = []
        for i in range(steps + 1):
            start = time.perf_counter()
            optimizer.zero_grad()
            method.loss(network(images), targets).backward()
            optimizer.step()
            if i:
                times.append(time.perf_counter() - start)
        detector = Detector(method, network=network.eval(), device="cpu")
        image = np.random.default_rng(0).integers(0, 255, (512, 512, 3), np.uint8)
        detector.predict(image)
        start = time.perf_counter()
        detector.predict(image)
        speeds[name] = {
            "seconds_per_step": float(np.median(times)),
            "seconds_per_val_mpx": (time.perf_counter() - start) / (512 * 512 / 1e6),
        }
    return speeds


def estimate(step: Step, speeds: dict[str, Any], gpu_tflops: float, batch: int) -> dict[str, Any]:
    """The step's FLOPs, CPU hours (if calibrated) and GPU minutes (assumed rate)."""
    if not step.method_trains:  # a threshold sweep over the training fold
        return {"tflop": 0.0, "cpu_hours": 0.0, "gpu_minutes": 0.0}
    train_flops, val_flops_px = flops(step.method, step.params)
    samples = step.samples * max(1, batch // 8)
    total = step.runs * step.epochs * (samples * train_flops + step.val_pixels * val_flops_px)
    total += step.runs * step.extra_patches * train_flops
    cpu_hours = None
    if step.method in speeds:
        s = speeds[step.method]
        per_epoch = step.samples / 8 * s["seconds_per_step"]
        per_epoch += step.val_pixels / 1e6 * s["seconds_per_val_mpx"]
        extra = step.extra_patches / 8 * s["seconds_per_step"]
        cpu_hours = step.runs * (step.epochs * per_epoch + extra) / 3600
    return {
        "tflop": total / 1e12,
        "cpu_hours": cpu_hours,
        "gpu_minutes": total / (gpu_tflops * 1e12) / 60,
    }


def dry_run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every step with its command and estimated cost (nothing is trained)."""
    speeds = json.loads(SPEEDS.read_text())["methods"] if SPEEDS.is_file() else {}
    rows = []
    for step in STEPS:
        cost = estimate(step, speeds, args.gpu_tflops, args.gpu_batch)
        rows.append(
            {
                "step": step.name,
                "runs": step.runs,
                "expected_epochs": step.epochs,
                "command": " ".join(step.command("cuda", args.gpu_batch, args.out)[1:]),
                **cost,
            }
        )
    return rows


def print_plan(rows: list[dict[str, Any]], gpu_tflops: float) -> None:
    def fmt(x: float | None, spec: str) -> str:
        return "not calibrated" if x is None else format(x, spec)

    # The CPU plan trains batches of 8; the GPU plan batches of 64 with 8x the patches an epoch.
    print(f"{'':46} {'':>4} {'':>6} {'GPU plan':>8} {'CPU plan':>8} {'GPU plan':>8}")
    print(f"{'step':46} {'runs':>4} {'epochs':>6} {'TFLOP':>8} {'CPU h':>8} {'GPU min':>8}")
    for r in rows:
        print(
            f"{r['step']:46} {r['runs']:>4} {r['expected_epochs']:>6} {r['tflop']:>8.0f} "
            f"{fmt(r['cpu_hours'], '8.1f'):>8} {r['gpu_minutes']:>8.2f}"
        )
        print(f"    python {r['command']}")
    cpu = [r["cpu_hours"] for r in rows if r["cpu_hours"] is not None]
    print(
        f"total: {sum(r['tflop'] for r in rows):.0f} TFLOP; this CPU {sum(cpu):.1f} h "
        f"({len(cpu)} of {len(rows)} steps calibrated); GPU "
        f"{sum(r['gpu_minutes'] for r in rows):.1f} min at an assumed {gpu_tflops:g} TFLOP/s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="list the steps and their cost")
    parser.add_argument("--calibrate", action="store_true", help="time this CPU's steps")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out" / "reproduce-all")
    parser.add_argument("--gpu-tflops", type=float, default=100.0)
    parser.add_argument("--gpu-batch", type=int, default=64)
    parser.add_argument("--only", action="append", default=[], help="steps whose name starts so")
    args = parser.parse_args()
    if args.calibrate:
        import torch

        methods = {s.method: s.params for s in STEPS}
        doc = {
            "methods": calibrate(methods),
            "hardware": f"{platform.machine()}, {torch.get_num_threads()} threads (CPU)",
            "date": time.strftime("%Y-%m-%d"),
            "command": "python " + " ".join(sys.argv),
        }
        SPEEDS.write_text(json.dumps(doc, indent=2) + "\n")
        print(json.dumps(doc, indent=2))
    if args.dry_run:
        print_plan(dry_run(args), args.gpu_tflops)
        return
    if args.calibrate:
        return
    batch = args.gpu_batch if args.device.startswith("cuda") else 8
    for step in STEPS:
        if args.only and not any(step.name.startswith(o) for o in args.only):
            continue
        command = step.command(args.device, batch, args.out)
        print(f"== {step.name}: {' '.join(command[1:])}", flush=True)
        start = time.perf_counter()
        subprocess.run(command, check=True, cwd=ROOT)
        print(f"== {step.name}: {(time.perf_counter() - start) / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
