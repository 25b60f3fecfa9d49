"""Numeric precision of inference and training: what ``auto`` means on each device.

=========  ==========================================================================
``auto``   CUDA: fp16 autocast. CPU: bf16 autocast where the CPU computes bf16 natively
           (AVX-512 BF16 or AMX), else fp32.
``fp32``   no autocast
``bf16``   bf16 autocast (on a CPU without native bf16 it is emulated: correct, ~4x slower)
``fp16``   fp16 autocast (on a CPU without native fp16 it is emulated: far slower)
=========  ==========================================================================

Autocast keeps reductions and the maps handed to decoding in fp32; the output maps are cast to
fp32 before they are stitched and decoded, so decoding is the same in every mode. On a CPU the
network also runs in the channels-last memory layout, whatever the precision (measured 1.66x on
VOCA's network, fp32, 2 AVX2 cores; results equal up to summation order).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Literal

from wsidet.errors import ParameterError

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

Precision = Literal["auto", "fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")
#: What ``auto`` resolves to where the device has no faster native format.
_AUTO_CUDA = "fp16"


def check_precision(precision: str) -> Precision:
    """``precision`` if it is one of :data:`PRECISIONS`.

    Raises
    ------
    ParameterError
    """
    if precision not in PRECISIONS:
        raise ParameterError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision  # type: ignore[return-value]


def native_cpu_formats() -> frozenset[str]:
    """Reduced-precision formats this CPU computes natively (as oneDNN reports them)."""
    import torch

    found = set()
    mkldnn = getattr(torch.ops, "mkldnn", None)
    for name, probe in (
        ("bf16", "_is_mkldnn_bf16_supported"),
        ("fp16", "_is_mkldnn_fp16_supported"),
    ):
        check = getattr(mkldnn, probe, None) if mkldnn is not None else None
        try:
            if check is not None and bool(check()):
                found.add(name)
        except RuntimeError:  # an op missing from this build
            continue
    return frozenset(found)


def resolve_precision(precision: str, device: torch.device) -> str:
    """The concrete format (``fp32``, ``bf16`` or ``fp16``) ``precision`` means on ``device``.

    Raises
    ------
    ParameterError
        An unknown name.
    """
    wanted = check_precision(precision)
    if device.type == "cuda":
        return _AUTO_CUDA if wanted == "auto" else wanted
    native = native_cpu_formats()
    if wanted == "auto":
        return "bf16" if "bf16" in native else "fp32"
    if wanted != "fp32" and wanted not in native:
        logger.warning(
            "%s on this CPU is emulated (no native support): correct but several times slower "
            "than fp32",
            wanted,
        )
    return wanted


def autocast_dtype(resolved: str) -> torch.dtype | None:
    """The autocast dtype of a resolved precision (None for fp32)."""
    import torch

    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[resolved]
