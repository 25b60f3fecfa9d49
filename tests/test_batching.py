"""The batching queue: every tile's maps come back to its own caller, in full batches."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from wsidet.inference.batching import TileBatcher, run_tiles


def fake_network(batch: torch.Tensor) -> dict[str, torch.Tensor]:
    """Maps that identify their tile: the tile's own values, summed over channels, and 2x."""
    time.sleep(0.001)  # a forward takes a while: other threads' tiles queue up meanwhile
    total = batch.sum(dim=1, keepdim=True)
    return {"a": total, "b": torch.cat([total, 2 * total], dim=1)}


def tile_of(caller: int, index: int, shape: tuple[int, int]) -> torch.Tensor:
    """A tile whose every pixel says who sent it."""
    return torch.full((3, *shape), float(caller * 1000 + index))


@settings(max_examples=25, deadline=None)
@given(
    blocks=st.lists(
        st.lists(st.sampled_from([(16, 16), (16, 24), (32, 16)]), min_size=1, max_size=6),
        min_size=1,
        max_size=5,
    ),
    batch_size=st.integers(1, 4),
    delays=st.lists(st.floats(0.0, 0.003), min_size=5, max_size=5),
)
def test_every_tile_comes_back_to_its_own_caller(blocks, batch_size, delays) -> None:
    """Threads (chunk tasks) submit blocks of tiles of mixed shapes, in any interleaving."""
    batcher = TileBatcher(fake_network, batch_size, linger=0.002)
    got: dict[int, list[dict[str, torch.Tensor]]] = {}

    def task(caller: int, shapes: list[tuple[int, int]]) -> None:
        time.sleep(delays[caller])
        tiles = [tile_of(caller, i, shape) for i, shape in enumerate(shapes)]
        got[caller] = run_tiles(batcher, fake_network, tiles)

    threads = [threading.Thread(target=task, args=(c, b)) for c, b in enumerate(blocks)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    batcher.close()
    for caller, shapes in enumerate(blocks):
        assert len(got[caller]) == len(shapes)
        for i, (shape, maps) in enumerate(zip(shapes, got[caller], strict=True)):
            expected = 3.0 * (caller * 1000 + i)
            assert maps["a"].shape == (1, *shape) and maps["b"].shape == (2, *shape)
            assert torch.all(maps["a"] == expected) and torch.all(maps["b"][1] == 2 * expected)
    assert sum(batcher.batches) == sum(len(b) for b in blocks)
    assert max(batcher.batches) <= batch_size


def test_full_batches_form_across_callers_and_errors_reach_each_caller() -> None:
    batcher = TileBatcher(fake_network, 4, linger=1.0)
    futures = [batcher.submit(tile_of(c, 0, (16, 16))) for c in range(8)]
    assert [f.result(timeout=10)["a"][0, 0, 0].item() for f in futures] == [
        3.0 * c * 1000 for c in range(8)
    ]
    assert batcher.batches == [4, 4]  # full batches, no waiting for the linger
    batcher.close()
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit(tile_of(0, 0, (16, 16)))

    def broken(batch: torch.Tensor) -> dict[str, torch.Tensor]:
        raise FloatingPointError("the network failed")

    failing = TileBatcher(broken, 2, linger=0.001)
    futures = [failing.submit(tile_of(c, 0, (8, 8))) for c in range(3)]
    for future in futures:
        with pytest.raises(FloatingPointError, match="the network failed"):
            future.result(timeout=10)
    failing.close()


def test_a_detector_sharing_batches_finds_what_it_finds_alone() -> None:
    """Blocks of three threads through one batcher == each block on its own (CPU here)."""
    import numpy as np

    from tests.synthetic import blob_image, random_points
    from wsidet.inference.detector import Detector
    from wsidet.methods import get_method

    method = get_method("voca", width=4, threshold=0.0)
    torch.manual_seed(0)
    network = method.build_network().eval()
    alone = Detector(method, network=network, device="cpu", tile=64, share_batches=False)
    shared = Detector(
        method, network=network, device="cpu", tile=64, batch_size=3, share_batches=True
    )
    rng = np.random.default_rng(3)
    images = [
        blob_image(shape, random_points(rng, shape, 20, 12, 4), 5.0, rng=rng)
        for shape in ((160, 200), (130, 150), (200, 96))
    ]
    expected = [alone.detect(image) for image in images]
    got: dict[int, object] = {}
    threads = [
        threading.Thread(target=lambda i=i: got.__setitem__(i, shared.detect(images[i])))
        for i in range(len(images))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, want in enumerate(expected):
        found = got[i]
        assert np.array_equal(found.points_yx, want.points_yx)  # type: ignore[attr-defined]
        assert np.allclose(found.scores, want.scores, rtol=1e-5)  # type: ignore[attr-defined]
    assert max(shared._batcher.batches) > 1  # type: ignore[union-attr]
