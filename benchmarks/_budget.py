"""How long a reproduction script trains: a CPU time budget, or to convergence (issue 16).

Shared by ``reproduce_vgg.py``, ``reproduce_crchisto.py`` and ``generalisation.py``:

* default: each run stops at its CPU minute budget (times ``--budget-scale``), or earlier by
  early stopping;
* ``--converge``: no time budget; the learning rate drops tenfold after every
  ``--patience``/3 epochs without a better validation score (``schedule="plateau"``), and a run
  stops when it has not improved for ``--patience`` epochs (or at ``--max-epochs``).
  Resumable like any run, so a CPU run may take several sessions.

``--batch-size`` above 8 (a GPU) scales the patches per epoch with it, so an epoch keeps its
number of optimiser steps and the patience means the same.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

#: The batch size the CPU plans were written for.
BASE_BATCH = 8


@dataclass(frozen=True)
class Budget:
    """The stopping rule and batch shape of one training run."""

    max_minutes: float | None
    epochs: int
    patience: int
    batch_size: int
    samples: int
    schedule: str
    plateau_wait: int

    def describe(self) -> str:
        """One phrase for the results' rows."""
        limit = (
            f"to convergence (lr /10 after {self.plateau_wait} flat epochs, patience "
            f"{self.patience}, at most {self.epochs} epochs)"
            if self.max_minutes is None
            else f"{self.max_minutes:g} min budget (patience {self.patience})"
        )
        return f"{limit}, {self.samples} patches/epoch, batch {self.batch_size}"


def add_budget_args(parser: argparse.ArgumentParser, *, patience: int) -> None:
    """The options of :func:`budget`."""
    parser.add_argument("--budget-scale", type=float, default=1.0, help="times the CPU minutes")
    parser.add_argument(
        "--converge", action="store_true", help="no time budget: stop on the patience"
    )
    parser.add_argument("--patience", type=int, default=patience)
    parser.add_argument("--max-epochs", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=BASE_BATCH, help="32-64 on a GPU")


def budget(args: argparse.Namespace, *, minutes: float, samples: int) -> Budget:
    """The :class:`Budget` of a run planned at ``minutes`` CPU minutes and ``samples`` patches
    per epoch of batch :data:`BASE_BATCH`."""
    if args.batch_size < 1 or args.patience < 1 or args.max_epochs < 1:
        raise SystemExit("--batch-size, --patience and --max-epochs must be >= 1")
    return Budget(
        max_minutes=None if args.converge else minutes * args.budget_scale,
        epochs=args.max_epochs,
        patience=args.patience,
        batch_size=args.batch_size,
        samples=max(samples, samples * args.batch_size // BASE_BATCH),
        schedule="plateau" if args.converge else "cosine",
        plateau_wait=max(1, args.patience // 3),
    )
