"""The reproduction scripts' plumbing (issue 16): the one-command plan and the budgets."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

from _budget import add_budget_args, budget  # noqa: E402


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_budget_args(parser, patience=12)
    return parser.parse_args(argv)


def test_a_budget_is_minutes_or_convergence_and_keeps_steps_per_epoch() -> None:
    timed = budget(parse(["--budget-scale", "2"]), minutes=25, samples=1024)
    assert (timed.max_minutes, timed.patience, timed.samples, timed.batch_size) == (50, 12, 1024, 8)
    converge = budget(parse(["--converge", "--batch-size", "64"]), minutes=25, samples=1024)
    assert converge.max_minutes is None and converge.samples == 8 * 1024
    assert (timed.schedule, converge.schedule, converge.plateau_wait) == ("cosine", "plateau", 4)
    assert "to convergence (lr /10 after 4 flat epochs, patience 12" in converge.describe()
    with pytest.raises(SystemExit):
        budget(parse(["--patience", "0"]), minutes=1, samples=8)


def test_the_dry_run_lists_every_step_with_its_cost() -> None:
    import reproduce_all

    out = subprocess.run(
        [sys.executable, str(BENCH / "reproduce_all.py"), "--dry-run"],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout
    for step in reproduce_all.STEPS:
        row = next(line for line in out.splitlines() if line.startswith(step.name))
        runs, epochs, tflop = row[len(step.name) :].split()[:3]
        assert int(runs) == step.runs and int(epochs) == step.epochs
        assert (float(tflop) > 0) == step.method_trains
    # Each step's command, and a total with the GPU estimate's assumption named.
    assert out.count("--converge") >= len(reproduce_all.STEPS) - 1
    assert re.search(r"GPU [0-9.]+ min at an assumed 100 TFLOP/s", out)
