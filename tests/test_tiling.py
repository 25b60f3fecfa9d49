from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsidet.errors import GridError
from wsidet.tiling import Grid


def test_aligned_chunks_are_tile_multiples() -> None:
    grid = Grid.aligned((2967, 2220), halo=26, chunk=2048, tile=(240, 240))
    assert grid.chunks == ((2160, 807), (2220,))  # 60 px tail folded, 807 px kept
    assert all(c % 240 == 0 for c in grid.chunks[0][:-1])
    assert grid.depth == (26, 0)


def test_small_tail_is_folded_into_neighbour() -> None:
    grid = Grid.aligned((1000, 530), halo=20, chunk=256, tile=(256, 256))
    assert grid.chunks[0] == (256, 256, 256, 232)
    assert grid.chunks[1] == (256, 274)  # an 18 px tail is narrower than the halo


def test_halo_and_chunks_respect_stride() -> None:
    grid = Grid.aligned((500, 500), halo=21, chunk=100, tile=(48, 48), align=16)
    assert grid.halo == 32
    assert all(c % 48 == 0 and c % 16 == 0 for c in grid.chunks[0][:-1])


@pytest.mark.parametrize(
    ("shape", "chunks", "halo"),
    [
        ((10, 10), ((5, 4), (10,)), 0),
        ((10, 10), ((5, 5), (10,)), 6),
        ((10, 10), ((10,), (0, 10)), 0),
    ],
)
def test_invalid_grids_are_rejected(shape, chunks, halo) -> None:
    with pytest.raises(GridError):
        Grid.from_chunks(shape, chunks, halo)


def test_invalid_chunk_size() -> None:
    with pytest.raises(GridError, match="chunk"):
        Grid.aligned((10, 10), halo=1, chunk=0)


@st.composite
def grids(draw: st.DrawFn) -> Grid:
    halo = draw(st.integers(0, 6))
    axes = []
    for _ in range(2):
        sizes = draw(st.lists(st.integers(max(1, halo), 20), min_size=1, max_size=4))
        axes.append(tuple(sizes))
    shape = (sum(axes[0]), sum(axes[1]))
    return Grid.from_chunks(shape, (axes[0], axes[1]), halo)


@settings(max_examples=60)
@given(grid=grids(), data=st.data())
def test_every_point_has_exactly_one_owner(grid: Grid, data: st.DataObject) -> None:
    h, w = grid.shape
    coords = st.floats(-0.499, 0.499)
    pts = np.array(
        [
            (
                data.draw(st.integers(0, h - 1)) + data.draw(coords),
                data.draw(st.integers(0, w - 1)) + data.draw(coords),
            )
            for _ in range(20)
        ]
    )
    owners = np.zeros(len(pts), int)
    for index in grid.indices():
        owned = grid.owned(index, pts)
        owners += owned
        np.testing.assert_array_equal(np.all(grid.owner(pts)[owned] == index, axis=1), True)
    np.testing.assert_array_equal(owners, 1)


@settings(max_examples=40)
@given(grid=grids())
def test_block_box_is_the_dask_overlap_window(grid: Grid) -> None:
    image = np.arange(grid.shape[0] * grid.shape[1]).reshape(grid.shape)
    array = da.from_array(image, chunks=grid.chunks)
    dy, dx = grid.depth
    overlapped = da.overlap.overlap(
        array, depth={0: dy, 1: dx}, boundary="none", allow_rechunk=False
    )
    blocks = overlapped.to_delayed()
    for i, j in grid.indices():
        y0, x0, y1, x1 = grid.block_box((i, j))
        np.testing.assert_array_equal(blocks[i, j].compute(), image[y0:y1, x0:x1])
