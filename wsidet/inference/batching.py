"""One batching queue in front of a resident network, shared by every chunk task of a process.

Model tiles from all of a worker's threads run in full batches, and each tile's maps go back to
the task that sent it. On a GPU a forward pass of one 1280 px tile leaves most of the device
idle, and chunk tasks run in several threads of a worker, each with its own block.
:class:`TileBatcher` gathers their tiles (by shape, since a batch is one tensor), runs a batch
as soon as ``batch_size`` tiles of one shape are waiting, or after ``linger`` seconds with
fewer, on one thread that owns the network, and resolves each caller's future with its own
tile's slice of the outputs.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

Forward = Callable[["torch.Tensor"], Mapping[str, "torch.Tensor"]]


@dataclass(eq=False)
class _Request:
    tile: torch.Tensor  # (3, h, w)
    future: Future[dict[str, torch.Tensor]] = field(default_factory=Future)


class TileBatcher:
    """Run model tiles from many threads in batches of up to ``batch_size`` tiles.

    Parameters
    ----------
    forward : callable
        ``forward(batch)`` with ``batch`` of shape (n, 3, h, w) returns maps of shape
        (n, C, h, w); called on the batcher's thread only.
    batch_size : int
        Tiles per forward pass.
    linger : float
        Seconds to wait for more tiles before running a partial batch.
    """

    def __init__(self, forward: Forward, batch_size: int, *, linger: float = 0.005) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self._forward = forward
        self.batch_size = batch_size
        self.linger = linger
        self._queue: queue.Queue[_Request | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="wsidet-batcher", daemon=True)
        self._closed = False
        #: Number of tiles in each batch run so far (for tests and benchmarks).
        self.batches: list[int] = []
        self._thread.start()

    def submit(self, tile: torch.Tensor) -> Future[dict[str, torch.Tensor]]:
        """Queue one tile of shape (3, h, w); its future resolves to maps of (C, h, w).

        Raises
        ------
        RuntimeError
            The batcher is closed.
        """
        if self._closed:
            raise RuntimeError("the tile batcher is closed")
        request = _Request(tile)
        self._queue.put(request)
        return request.future

    def close(self) -> None:
        """Run what is queued, then stop the thread."""
        if not self._closed:
            self._closed = True
            self._queue.put(None)
            self._thread.join()

    def _loop(self) -> None:
        pending: dict[tuple[int, ...], list[_Request]] = {}
        while True:
            try:
                request = self._queue.get(timeout=self.linger if pending else None)
            except queue.Empty:  # nothing new for a while: run the fullest partial batch
                shape = max(pending, key=lambda s: len(pending[s]))
                self._run(pending.pop(shape))
                continue
            if request is None:
                for group in pending.values():
                    for start in range(0, len(group), self.batch_size):
                        self._run(group[start : start + self.batch_size])
                return
            group = pending.setdefault(tuple(request.tile.shape), [])
            group.append(request)
            if len(group) == self.batch_size:
                self._run(pending.pop(tuple(request.tile.shape)))

    def _run(self, group: list[_Request]) -> None:
        import torch

        try:
            outputs = self._forward(torch.stack([r.tile for r in group]))
        except BaseException as exc:  # every caller of the batch learns why
            for r in group:
                r.future.set_exception(exc)
            return
        self.batches.append(len(group))
        for k, r in enumerate(group):
            r.future.set_result({name: maps[k] for name, maps in outputs.items()})


def run_tiles(batcher: TileBatcher | None, forward: Forward, tiles: list[Any]) -> list[Any]:
    """Each tile's maps, through ``batcher`` when there is one, else one forward per tile."""
    if batcher is None:
        return [{name: maps[0] for name, maps in forward(tile[None]).items()} for tile in tiles]
    futures = [batcher.submit(tile) for tile in tiles]
    return [f.result() for f in futures]
