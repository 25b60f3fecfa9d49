"""Argument types and parsing helpers shared by the CLI commands."""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from wsidet.limits import Range


PICKLE_HELP = (
    "also read weights from a torch pickle file (loading one can run code: only for files "
    "you trust)"
)


def parse_params(items: Sequence[str]) -> dict[str, str]:
    params = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--param takes KEY=VALUE, got {item!r}")
        params[key.strip()] = value.strip()
    return params


def formats_arg(text: str) -> list[str]:
    from wsidet.output.detections import FORMATS

    formats = [f.strip().lower() for f in text.split(",") if f.strip()]
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise argparse.ArgumentTypeError(
            f"--format takes a comma-separated list of {', '.join(FORMATS)}, got {text!r}"
        )
    return formats


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line on stderr (exit status 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def bounded(kind: type[int] | type[float], low: float, high: float, why: str = "") -> Any:
    """An argparse type: a finite ``kind`` number in ``[low, high]``; the message says why."""

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except (TypeError, ValueError, OverflowError):
            name = "a whole number" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"expected {name}, got {text!r}") from None
        if not math.isfinite(value) or not low <= value <= high:
            reason = f": {why}" if why else ""
            raise argparse.ArgumentTypeError(
                f"must be in [{low:g}, {high:g}], got {text!r}{reason}"
            )
        return value

    parse.__name__ = kind.__name__  # argparse names the type in some messages
    return parse


def limited(kind: type[int] | type[float], allowed: Range) -> Any:
    """An argparse type for one of the library's :class:`wsidet.limits.Range`."""
    return bounded(kind, allowed.low, allowed.high, allowed.why)


def mpp_or_auto(allowed: Range) -> Any:
    """An argparse type for ``--mpp``: a pixel size in ``allowed``, or ``auto``."""
    number = limited(float, allowed)

    def parse(text: str) -> float | str:
        if text.strip().lower() == "auto":
            return "auto"
        value: float = number(text)
        return value

    parse.__name__ = "mpp"
    return parse
