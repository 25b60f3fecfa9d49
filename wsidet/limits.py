"""The ranges user-facing numbers must lie in, and the memory a detection block needs.

A number out of range is refused before any work, with a message that names the argument,
the value, the range and why (a typo such as ``--mpp 40`` for "40×" would otherwise ask for
gigabytes). The library's own building blocks (``Grid``, ``Detector``) accept any workable
value, so tests can use tiny chunks; these checks guard what users type (the CLI, and
:func:`check_run_numbers` for API callers who want the same guard).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from wsidet.errors import ParameterError

if TYPE_CHECKING:
    from wsidet.methods.base import Method


@dataclass(frozen=True)
class Range:
    """An allowed closed interval and the reason for it."""

    low: float
    high: float
    why: str

    def check(self, name: str, value: float) -> float:
        """``value`` if finite and within the range.

        Raises
        ------
        ParameterError
        """
        if not (isinstance(value, int | float) and math.isfinite(value)):
            raise ParameterError(f"{name} must be a finite number, got {value!r}")
        if not self.low <= value <= self.high:
            raise ParameterError(
                f"{name} must be in [{self.low:g}, {self.high:g}], got {value:g}: {self.why}"
            )
        return value


#: Level-0 pixel size (µm/px) a slide can have.
MPP = Range(
    0.05, 20.0, "slides are scanned at about 0.1-10 µm/px (40x is about 0.25, 20x about 0.5)"
)
#: Dask chunk edge (working px).
CHUNK = Range(
    128, 16384, "chunks under 128 px are all halo and task overhead; larger ones need GBs each"
)
#: Model tile edge (working px).
TILE = Range(64, 8192, "smaller tiles are mostly margin (hours of wasted compute)")
#: Model tiles per forward pass.
BATCH = Range(1, 256, "a batch holds its tiles' activations at once")
#: Density grid cell edge (µm).
DENSITY_CELL = Range(5.0, 10_000.0, "cells of about one nucleus to a centimetre")
#: Most a method's scale may enlarge a slide (level pixels per working pixel >= 1/this):
#: a 0.5 µm/px model on a 2 µm/px scan sees 4x-enlarged, blurred nuclei already.
MAX_ENLARGEMENT = 4.0


def check_run_numbers(
    *,
    mpp: float | str | None = None,
    chunk: int | None = None,
    tile: int | None = None,
    batch_size: int | None = None,
) -> None:
    """Refuse out-of-range run settings (those given), naming the argument and the range.

    ``mpp`` may be ``"auto"`` (estimated per slide, :mod:`wsidet.slide.scale_check`).

    Raises
    ------
    ParameterError
    """
    if isinstance(mpp, str):
        if mpp != "auto":
            raise ParameterError(f"mpp must be a number or 'auto', got {mpp!r}")
    elif mpp is not None:
        MPP.check("mpp", mpp)
    for name, value, allowed in (
        ("chunk", chunk, CHUNK),
        ("tile", tile, TILE),
        ("batch_size", batch_size, BATCH),
    ):
        if value is not None:
            if not isinstance(value, int) or isinstance(value, bool):
                raise ParameterError(f"{name} must be a whole number, got {value!r}")
            allowed.check(name, value)


@dataclass(frozen=True)
class NetworkFootprint:
    """What a method's network holds per input pixel, from a shape-only pass.

    Attributes
    ----------
    map_channels : int
        Output channels over all maps (each a float32 map the size of the block).
    peak_values_per_px : float
        Largest input + output of any one layer, in values per input pixel.
    """

    map_channels: int
    peak_values_per_px: float


@functools.lru_cache(maxsize=16)
def network_footprint(method: Method) -> NetworkFootprint:
    """Measure a method's network on one small input (a fraction of a second on a CPU)."""
    import torch

    side = max(64, 4 * method.stride)
    network = method.build_network().eval()
    peak = 0

    def hook(module: torch.nn.Module, inputs: tuple[object, ...], output: object) -> None:
        nonlocal peak
        values = sum(t.numel() for t in (*inputs, output) if isinstance(t, torch.Tensor))
        peak = max(peak, values)

    handles = [m.register_forward_hook(hook) for m in network.modules() if not list(m.children())]
    try:
        with torch.inference_mode():
            outputs = network(torch.zeros((1, 3, side, side)))
    finally:
        for handle in handles:
            handle.remove()
    channels = sum(int(v.shape[1]) for v in outputs.values())
    return NetworkFootprint(channels, peak / side**2)


def block_bytes(
    method: Method, footprint: NetworkFootprint, *, chunk: int, tile: int, batch_size: int
) -> int:
    """Estimated bytes one block in flight needs (the basis of :func:`check_block_memory`).

    The block's pixels as uint8 and float32, its output maps and as much again for
    decoding, and one batch of model tiles: their inputs and twice the widest layer's
    activations (encoder features kept for a decoder's skip connections).
    """
    side = chunk + 2 * method.halo
    pixels = side * side
    margin = math.ceil(method.receptive_radius / method.stride) * method.stride
    tile_px = (min(tile, side) + 2 * margin) ** 2 * batch_size
    per_block = pixels * (3 + 4 * 3 + 2 * 4 * footprint.map_channels)
    per_tiles = tile_px * 4 * (3 + 2 * footprint.peak_values_per_px)
    return int(per_block + per_tiles)


def available_memory() -> int | None:
    """Bytes of memory this process could still get (None where unknown)."""
    try:
        import psutil
    except ImportError:  # pragma: no cover - distributed depends on psutil
        return None
    return int(psutil.virtual_memory().available)


def check_block_memory(
    method: Method, *, chunk: int, tile: int, batch_size: int, blocks_in_flight: int = 1
) -> int:
    """Refuse settings under which the blocks in flight would not fit in memory.

    Returns
    -------
    int
        The estimate, in bytes.

    Raises
    ------
    ParameterError
        The estimate exceeds the memory available now.
    """
    need = blocks_in_flight * block_bytes(
        method, network_footprint(method), chunk=chunk, tile=tile, batch_size=batch_size
    )
    have = available_memory()
    if have is not None and need > have:
        raise ParameterError(
            f"one block of {chunk} px (model tile {tile}, batch {batch_size}) needs about "
            f"{need / 2**30:.1f} GiB with {method.name!r}, but {have / 2**30:.1f} GiB are "
            "available; lower --chunk, --tile or --batch-size"
        )
    return need
