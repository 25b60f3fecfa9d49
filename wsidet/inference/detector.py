"""The detector: one resident model per process, batched tiles, decoding on the device.

A :class:`Detector` builds its method's network once, loads weights, moves it to the device and
keeps it there. ``detect(image)`` cuts the image into model tiles (each grown by the network's
receptive radius), runs them in batches (in the precision asked for,
:mod:`wsidet.inference.precision`),
stitches the output maps on the device and decodes points there, so only points come back to
the host.

Tasks on dask workers do not carry a model: they carry a :class:`DetectorSpec` (a small,
hashable, picklable recipe) and call ``spec.get()``, which returns this process's detector for
that recipe, building it on first use. A lost worker therefore costs only its tasks, which rerun
elsewhere and build the model there once (dask's ``Actor`` would fail every call instead).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import math
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from wsidet.errors import DeviceError, WeightsError
from wsidet.inference.batching import TileBatcher, run_tiles
from wsidet.inference.precision import autocast_dtype, resolve_precision
from wsidet.methods.base import Method
from wsidet.weights.files import read_weights

if TYPE_CHECKING:
    import torch

    from wsidet.slide.stain import Reinhard

logger = logging.getLogger(__name__)

#: Default model tile edge (core, before the receptive-radius margin), in working pixels: a
#: 2048 px chunk with its halo splits into 2 x 2 tiles. Measured on VOCA (2 AVX2 cores, fp32):
#: 1280 px tiles took 4.9 s per 2272 x 2444 block and 1.55 GB peak, 1024 px tiles 6.3 s
#: (more margin), one 2272 x 2444 tile 8.1 s and 3.3 GB (cache misses, page faults).
DEFAULT_TILE = 1280
#: Tiles per forward pass when none is given: batching feeds a GPU, on a CPU it only costs
#: memory (4 U-Net tiles of 1250² px are several GB) for no speed.
DEFAULT_BATCH_SIZE = {"cuda": 4, "cpu": 1}
#: Decoded points are rounded to this fraction of a pixel, so that float noise from different
#: block sizes cannot move a point across a seam (see ``wsidet.tiling``).
QUANTUM = 1.0 / 256.0


def resolve_device(device: str | None = None) -> torch.device:
    """The torch device to run on: CUDA if available when ``device`` is None.

    Raises
    ------
    DeviceError
        A CUDA device was asked for and none is available, or the name is not a device.
    """
    import torch

    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in {"cpu", "cuda"} or (dev.type == "cpu" and dev.index):
        raise DeviceError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError("device 'cuda' was requested but no CUDA device is available")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(
                f"device {device!r} does not exist ({torch.cuda.device_count()} CUDA devices)"
            )
    return dev


def weights_hash(path: str | os.PathLike[str] | None) -> str | None:
    """``sha256:`` + the first 16 hex digits of a weights file's SHA-256 (None for none)."""
    if path is None:
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()[:16]


def load_weights(
    network: torch.nn.Module,
    path: str | os.PathLike[str],
    method: Method,
    *,
    allow_pickle: bool = False,
) -> None:
    """Load a weights file into ``network``, checking that it belongs to ``method``.

    ``allow_pickle`` also reads torch pickle files (see :mod:`wsidet.weights.files`).

    Raises
    ------
    WeightsError
        The method takes no weights, the file names another method, or its tensors do not
        fit the network (missing, unexpected or differently shaped).
    """
    if not method.trainable:
        raise WeightsError(
            f"method {method.name!r} has no trainable parameters and takes no weights "
            f"(got {os.fspath(path)!r})"
        )
    tensors, meta = read_weights(path, allow_pickle=allow_pickle)
    owner = meta.get("wsidet.method")
    if owner is not None and owner != method.name:
        raise WeightsError(
            f"weights {os.fspath(path)!r} were trained for method {owner!r}, not {method.name!r}"
        )
    expected = network.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    shared = set(expected) & set(tensors)
    wrong = sorted(k for k in shared if tuple(expected[k].shape) != tuple(tensors[k].shape))
    if missing or unexpected or wrong:
        parts = []
        problems = (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
        for label, keys in problems:
            if keys:
                parts.append(f"{len(keys)} {label} (e.g. {keys[0]!r})")
        raise WeightsError(
            f"weights {os.fspath(path)!r} do not match method {method.name!r}: " + ", ".join(parts)
        )
    network.load_state_dict(tensors, strict=True)


@dataclass(frozen=True)
class Detections:
    """What a detector returns for one image.

    Attributes
    ----------
    points_yx : ndarray, shape (n, 2), float64
    scores : ndarray, shape (n,), float32
    totals : dict of str to float
        Sums of the method's aggregate maps (e.g. ``{"count": 412.7}`` for FCRN).
    """

    points_yx: npt.NDArray[np.float64]
    scores: npt.NDArray[np.float32]
    totals: dict[str, float]


def maps_shape(maps: Mapping[str, torch.Tensor]) -> tuple[int, int]:
    """(H, W) of a dict of (C, H, W) maps."""
    first = next(iter(maps.values()))
    return int(first.shape[-2]), int(first.shape[-1])


def _axis_windows(
    length: int, core: int, margin: int, stride: int = 1
) -> list[tuple[int, int, int, int]]:
    """Model tiles along one axis: (core_start, core_stop, input_start, input_stop).

    The axis is split into as few tiles as ``core`` allows, of equal size (rounded up to
    ``stride``, so every tile starts on the stride grid): a 2160 px block with 1024 px tiles
    becomes 3 tiles of 720, not 1024 + 1024 + 112, whose last one would be mostly margin.
    """
    n = max(1, math.ceil(length / core))
    even = math.ceil(math.ceil(length / n) / stride) * stride
    out = []
    for start in range(0, length, even):
        stop = min(length, start + even)
        out.append((start, stop, max(0, start - margin), min(length, stop + margin)))
    return out


class Detector:
    """A method's network resident on a device, turning RGB images into points.

    Parameters
    ----------
    method : Method
    weights : path, optional
        Weights for a trainable method (safetensors or a torch state dict).
    device : str, optional
        ``"cpu"``, ``"cuda"``, ``"cuda:N"``; default CUDA when available.
    tile : int
        Model tile edge in pixels (rounded to the method's stride); larger tiles waste less on
        margins, smaller ones need less memory.
    batch_size : int, optional
        Tiles per forward pass (default 4 on CUDA, 1 on CPU).
    precision : str
        ``auto``, ``fp32``, ``bf16`` or ``fp16`` (see :mod:`wsidet.inference.precision`).
    network : torch.nn.Module, optional
        Use this network instead of building one (tests, training loops); it is used as it
        is (a network built here from weights is prepared for inference: batch norms
        folded, in-place activations, channels-last on a CPU).
    allow_pickle : bool
        Also read weights from torch pickle files (they can run code when loaded).
    share_batches : bool, optional
        Run model tiles of every thread's blocks through one :class:`~wsidet.inference.batching.
        TileBatcher` (full batches from all chunk tasks of the process); default on CUDA. On
        a CPU one block at a time uses every core instead.

    Raises
    ------
    WeightsError
        A trainable method got no weights (and no network), or the weights do not match.
    DeviceError
        The device is not available.
    """

    def __init__(
        self,
        method: Method,
        *,
        weights: str | os.PathLike[str] | None = None,
        device: str | None = None,
        tile: int = DEFAULT_TILE,
        batch_size: int | None = None,
        precision: str = "auto",
        network: torch.nn.Module | None = None,
        allow_pickle: bool = False,
        share_batches: bool | None = None,
    ) -> None:
        import torch

        from wsidet.nets.inference import prepare_for_inference

        if tile < 1 or (batch_size is not None and batch_size < 1):
            raise ValueError(f"tile and batch_size must be >= 1, got {tile}, {batch_size}")
        self.method = method
        self.device = resolve_device(device)
        if batch_size is None:
            batch_size = DEFAULT_BATCH_SIZE.get(self.device.type, 1)
        self.precision = resolve_precision(precision, self.device)
        self.channels_last = self.device.type == "cpu"
        if network is None:
            network = method.build_network()
            if weights is not None:
                load_weights(network, weights, method, allow_pickle=allow_pickle)
            elif method.trainable:
                raise WeightsError(
                    f"method {method.name!r} needs trained weights; pass weights= "
                    "(CLI: --weights FILE)"
                )
            network = prepare_for_inference(network, channels_last=self.channels_last)
        else:
            if weights is not None:
                load_weights(network, weights, method, allow_pickle=allow_pickle)
            self.channels_last = False  # a caller's network keeps its own layout
        self.network = network.to(self.device).eval()
        self.batch_size = int(batch_size)
        #: Input pixels the network has computed (model tiles with their margins and stride
        #: padding), for the benchmarks' computed/owned ratio.
        self.computed_pixels = 0
        if share_batches is None:
            share_batches = self.device.type == "cuda"
        self._batcher = TileBatcher(self._forward, self.batch_size) if share_batches else None
        stride = method.stride
        self.tile = max(stride, math.ceil(tile / stride) * stride)
        self.margin = math.ceil(method.receptive_radius / stride) * stride
        # One forward at a time per device: on CPU torch already uses every core, on GPU
        # concurrent batches only compete for memory. Reading and ownership run outside it.
        self._lock = threading.Lock()
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True

    def __repr__(self) -> str:
        return (
            f"Detector({self.method.name!r}, device={str(self.device)!r}, tile={self.tile}, "
            f"batch_size={self.batch_size}, precision={self.precision!r})"
        )

    def tile_count(self, shape: tuple[int, int]) -> int:
        """Model tiles :meth:`predict` cuts an image of ``shape`` (rows, cols) into."""
        stride = self.method.stride
        rows = _axis_windows(shape[0], self.tile, self.margin, stride)
        cols = _axis_windows(shape[1], self.tile, self.margin, stride)
        return len(rows) * len(cols)

    def predict(
        self,
        image: npt.NDArray[np.uint8] | torch.Tensor,
        *,
        stain: Reinhard | None = None,
        on_tiles: Callable[[int], None] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Network output maps of a whole image, stitched from model tiles.

        Parameters
        ----------
        image : ndarray or Tensor, shape (H, W, 3), uint8
        stain : Reinhard, optional
            Colour normalisation applied first (pixel by pixel, on the device).
        on_tiles : callable, optional
            Called with the number of model tiles each forward pass finished (progress).

        Returns
        -------
        dict of str to Tensor, each (C, H, W) float32 on the detector's device
        """
        import torch

        x = self._to_tensor(image)  # (3, H, W) float in [0, 1] on the device
        if stain is not None:
            x = stain(x)
        _, height, width = x.shape
        stride = self.method.stride
        windows = [
            (ry, rx)
            for ry in _axis_windows(height, self.tile, self.margin, stride)
            for rx in _axis_windows(width, self.tile, self.margin, stride)
        ]
        tiles = []
        for ry, rx in windows:
            tile = x[:, ry[2] : ry[3], rx[2] : rx[3]]
            # Zero-pad at the far edges to a multiple of the stride; input starts are already
            # multiples of it, so every block sees the same pooling phase.
            ph, pw = (-tile.shape[1]) % stride, (-tile.shape[2]) % stride
            tiles.append(torch.nn.functional.pad(tile, (0, pw, 0, ph)) if ph or pw else tile)
        if self._batcher is not None:
            results = run_tiles(self._batcher, self._forward, tiles)
            if on_tiles is not None:
                on_tiles(len(tiles))
        else:
            results = self._run_grouped(tiles, on_tiles)
        canvas: dict[str, torch.Tensor] = {}
        for (ry, rx), maps in zip(windows, results, strict=True):
            oy, ox = ry[0] - ry[2], rx[0] - rx[2]
            for name, tile_maps in maps.items():
                if name not in canvas:
                    canvas[name] = torch.empty(
                        (tile_maps.shape[0], height, width), dtype=torch.float32, device=x.device
                    )
                canvas[name][:, ry[0] : ry[1], rx[0] : rx[1]] = tile_maps[
                    :, oy : oy + ry[1] - ry[0], ox : ox + rx[1] - rx[0]
                ].float()
        return canvas

    def _forward(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        """The network on a batch (n, 3, h, w), in this detector's precision and layout."""
        import torch

        dtype = autocast_dtype(self.precision)
        autocast = torch.autocast(
            device_type=self.device.type, dtype=dtype or torch.float32, enabled=dtype is not None
        )
        with torch.inference_mode(), autocast:
            if self.channels_last:
                batch = batch.contiguous(memory_format=torch.channels_last)
            self.computed_pixels += batch.shape[0] * batch.shape[2] * batch.shape[3]
            outputs: dict[str, torch.Tensor] = self.network(batch)
            return outputs

    def _run_grouped(
        self, tiles: list[torch.Tensor], on_tiles: Callable[[int], None] | None = None
    ) -> list[dict[str, torch.Tensor]]:
        """Each tile's maps, tiles of one shape run together in batches of ``batch_size``."""
        import torch

        groups: dict[tuple[int, ...], list[int]] = {}
        for i, tile in enumerate(tiles):
            groups.setdefault(tuple(tile.shape), []).append(i)
        results: list[dict[str, torch.Tensor]] = [{} for _ in tiles]
        for members in groups.values():
            for b in range(0, len(members), self.batch_size):
                batch = members[b : b + self.batch_size]
                outputs = self._forward(torch.stack([tiles[i] for i in batch]))
                for k, i in enumerate(batch):
                    results[i] = {name: maps[k] for name, maps in outputs.items()}
                if on_tiles is not None:
                    on_tiles(len(batch))
        return results

    def detect(
        self,
        image: npt.NDArray[np.uint8] | torch.Tensor,
        *,
        core: tuple[int, int, int, int] | None = None,
        stain: Reinhard | None = None,
        on_tiles: Callable[[int], None] | None = None,
        **decode_params: Any,
    ) -> Detections:
        """Points of nuclei in an image, and the method's per-region totals.

        Parameters
        ----------
        image : ndarray or Tensor, shape (H, W, 3), uint8
        core : (y0, x0, y1, x1), optional
            Region of ``image`` over which ``totals`` are summed (default: all of it).
        stain : Reinhard, optional
            Colour normalisation applied before the network.
        on_tiles : callable, optional
            Progress: called with the number of model tiles each forward pass finished.
        **decode_params
            Overrides of the method's decode parameters.

        Returns
        -------
        Detections
            Points in pixel indices of ``image`` (pixel centres are integers), rounded to
            ``QUANTUM``, their scores, and the sums of :meth:`Method.aggregate` over ``core``.
        """
        # One forward at a time on the CPU (torch already uses every core); with a batcher,
        # blocks of several threads share batches instead.
        with self._lock if self._batcher is None else contextlib.nullcontext():
            maps = self.predict(image, stain=stain, on_tiles=on_tiles)
            points, scores = self.method.decode(maps, **decode_params)
            y0, x0, y1, x1 = core if core is not None else (0, 0, *maps_shape(maps))
            totals = {
                name: float(value[y0:y1, x0:x1].sum())
                for name, value in self.method.aggregate(maps).items()
            }
            pts = points.detach().cpu().numpy().astype(np.float64)
            return Detections(
                np.round(pts / QUANTUM) * QUANTUM,
                scores.detach().float().cpu().numpy(),
                totals,
            )

    def _to_tensor(self, image: npt.NDArray[np.uint8] | torch.Tensor) -> torch.Tensor:
        import torch

        if isinstance(image, np.ndarray):
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise ValueError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
            if not image.flags.writeable:  # torch.from_numpy warns on read-only arrays
                image = image.copy()
            tensor = torch.from_numpy(np.ascontiguousarray(image))
        else:
            tensor = image
        # Move as uint8 (4x less traffic than float), convert on the device; from pinned
        # memory the copy runs asynchronously, beside the batcher's forward passes.
        if self.device.type == "cuda" and tensor.device.type == "cpu":
            tensor = tensor.pin_memory()
        tensor = tensor.to(self.device, non_blocking=True).permute(2, 0, 1)
        return tensor.float().div_(255.0)


@dataclass(frozen=True)
class DetectorSpec:
    """A picklable recipe for a :class:`Detector`; ``get()`` returns this process's instance.

    Parameters mirror :class:`Detector`. ``weights`` is kept as a string path; its size and
    modification time are part of the cache key so a replaced file is reloaded.
    """

    method: Method
    weights: str | None = None
    device: str | None = None
    tile: int = DEFAULT_TILE
    batch_size: int | None = None
    precision: str = "auto"
    allow_pickle: bool = False

    def get(self) -> Detector:
        """The resident detector for this spec in the current process (built on first use).

        Threads of a dask worker asking at once wait for the one that builds it: a process
        holds one model per spec, not one per thread that arrived before it was cached.
        """
        stamp = None
        if self.weights is not None and os.path.isfile(self.weights):
            st = os.stat(self.weights)
            stamp = (st.st_size, st.st_mtime_ns)
        with _RESIDENT_LOCK:
            return _resident_detector(self, stamp)

    def get_batch_size(self) -> int:
        """Tiles per forward pass the detector will use (the default of its device type)."""
        if self.batch_size is not None:
            return self.batch_size
        import torch

        # Not resolve_device: a cohort's driver may plan for GPUs it does not have itself.
        if self.device is None:
            kind = "cuda" if torch.cuda.is_available() else "cpu"
        else:
            kind = self.device.split(":")[0]
        return DEFAULT_BATCH_SIZE.get(kind, 1)

    @property
    def weights_hash(self) -> str | None:
        """Content hash of the weights file (None without weights)."""
        return weights_hash(self.weights) if self.weights else None


_RESIDENT_LOCK = threading.Lock()


@functools.lru_cache(maxsize=4)
def _resident_detector(spec: DetectorSpec, stamp: tuple[int, int] | None) -> Detector:
    logger.info("loading %s on %s", spec.method.name, spec.device or "auto")
    return Detector(
        spec.method,
        weights=Path(spec.weights) if spec.weights else None,
        device=spec.device,
        tile=spec.tile,
        batch_size=spec.batch_size,
        precision=spec.precision,
        allow_pickle=spec.allow_pickle,
    )


def clear_resident_detectors() -> None:
    """Drop this process's cached detectors (frees their device memory)."""
    with _RESIDENT_LOCK:
        _resident_detector.cache_clear()
