"""Chunking of a working image into cores with halos, and ownership of points across seams.

A :class:`Grid` splits a (rows, cols) image into chunks ("cores"), dask-style. Each block a
detector sees is its core grown by ``halo`` pixels into the neighbouring cores (not beyond the
image: the image border is treated the same way in a tiled and a whole-image pass). A point is
kept by exactly one block: the one whose half-open core contains the pixel the point falls in.

Chunks are aligned to the TIFF tile grid (a chunk never splits a tile, so no tile is decoded
twice), and to the network's stride (block origins are multiples of it, so pooling networks
see the same pixel phase in every block). An edge chunk smaller than the halo is folded into
its neighbour, because a neighbour narrower than the halo cannot supply it (dask's
``allow_rechunk`` would instead rechunk silently and break the tile alignment); so is an edge
chunk under a quarter of the chunk size, which would cost a task for a sliver.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from wsidet.errors import GridError

#: Default chunk edge in working pixels: chunks the size of one TIFF tile are dominated by task
#: overhead, chunks much larger than 4096 px waste memory on halos that are mostly background.
DEFAULT_CHUNK = 2048

Box = tuple[int, int, int, int]


def _axis_chunks(length: int, size: int, minimum: int) -> tuple[int, ...]:
    """Split ``length`` into chunks of ``size``, folding a last chunk under ``minimum``."""
    n_full, rest = divmod(length, size)
    chunks = [size] * n_full
    if rest:
        if chunks and rest < minimum:
            chunks[-1] += rest
        else:
            chunks.append(rest)
    return tuple(chunks) if chunks else (length,)


def pixel_of(points_yx: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.int64]:
    """The pixel holding each point: the one rule every ownership decision uses.

    Pixel centres are integers, so pixel ``i`` spans ``[i - 0.5, i + 0.5)``: a point exactly
    between two pixels belongs to the later one.

    Parameters
    ----------
    points_yx : ndarray, shape (n, 2)
        Points in pixel indices.

    Returns
    -------
    ndarray, shape (n, 2), int64
    """
    return np.floor(np.asarray(points_yx, np.float64).reshape(-1, 2) + 0.5).astype(np.int64)


@dataclass(frozen=True)
class Grid:
    """Cores of a tiled image and the halo around them.

    Parameters
    ----------
    shape : tuple of int
        Image size (rows, cols).
    chunks : tuple of tuple of int
        Core sizes along rows and along cols (dask's ``chunks`` convention).
    halo : int
        Pixels of context each block takes from its neighbours on every side.

    Raises
    ------
    GridError
        The chunks do not cover the shape, or a chunk on an axis with several chunks is
        narrower than the halo.
    """

    shape: tuple[int, int]
    chunks: tuple[tuple[int, ...], tuple[int, ...]]
    halo: int

    def __post_init__(self) -> None:
        if self.halo < 0:
            raise GridError(f"halo must be >= 0, got {self.halo}")
        for axis, (length, sizes) in enumerate(zip(self.shape, self.chunks, strict=True)):
            if length < 1:
                raise GridError(f"image size must be >= 1 on every axis, got shape {self.shape}")
            if sum(sizes) != length or min(sizes) < 1:
                raise GridError(f"chunks {sizes} on axis {axis} do not partition {length} px")
            if len(sizes) > 1 and min(sizes) < self.halo:
                raise GridError(
                    f"chunk of {min(sizes)} px on axis {axis} is narrower than the halo of "
                    f"{self.halo} px; use larger chunks"
                )

    @classmethod
    def aligned(
        cls,
        shape: tuple[int, int],
        *,
        halo: int,
        chunk: int = DEFAULT_CHUNK,
        tile: tuple[int, int] = (1, 1),
        align: int = 1,
    ) -> Grid:
        """Chunks of about ``chunk`` px, multiples of the tile and of ``align``.

        Parameters
        ----------
        shape : tuple of int
            Image size (rows, cols).
        halo : int
            Required context; rounded up to a multiple of ``align``.
        chunk : int
            Wanted chunk edge in pixels.
        tile : tuple of int
            TIFF tile size (rows, cols) in working pixels.
        align : int
            Block origins must be multiples of this (the network's total stride).

        Returns
        -------
        Grid
        """
        if not isinstance(chunk, int) or chunk < 1:
            raise GridError(f"chunk must be a positive number of pixels, got {chunk!r}")
        if align < 1 or min(tile) < 1:
            raise GridError(f"tile and align must be >= 1, got tile={tile}, align={align}")
        halo = math.ceil(halo / align) * align
        axes = []
        for length, t in zip(shape, tile, strict=True):
            unit = math.lcm(t, align)
            size = max(unit, round(chunk / unit) * unit, math.ceil(max(halo, 1) / unit) * unit)
            # Fold a tail under a quarter chunk too: a sliver costs a task and two halos.
            axes.append(_axis_chunks(length, size, max(halo, size // 4)))
        return cls((int(shape[0]), int(shape[1])), (axes[0], axes[1]), halo)

    @classmethod
    def from_chunks(
        cls, shape: tuple[int, int], chunks: tuple[Sequence[int], Sequence[int]], halo: int
    ) -> Grid:
        """A grid with explicit core sizes (validated)."""
        return cls(
            (int(shape[0]), int(shape[1])),
            (tuple(int(c) for c in chunks[0]), tuple(int(c) for c in chunks[1])),
            int(halo),
        )

    @property
    def n_blocks(self) -> tuple[int, int]:
        """Number of cores along rows and cols."""
        return len(self.chunks[0]), len(self.chunks[1])

    @property
    def depth(self) -> tuple[int, int]:
        """Overlap depth per axis for dask (0 on an axis with a single chunk)."""
        return tuple(self.halo if len(c) > 1 else 0 for c in self.chunks)  # type: ignore[return-value]

    def _starts(self, axis: int) -> npt.NDArray[np.int64]:
        return np.concatenate([[0], np.cumsum(self.chunks[axis])]).astype(np.int64)

    def indices(self) -> Iterator[tuple[int, int]]:
        """All block indices (i, j) in row-major order."""
        ny, nx = self.n_blocks
        for i in range(ny):
            for j in range(nx):
                yield i, j

    def core_box(self, index: tuple[int, int]) -> Box:
        """Half-open core ``(y0, x0, y1, x1)`` of block ``index``."""
        ys, xs = self._starts(0), self._starts(1)
        i, j = index
        return int(ys[i]), int(xs[j]), int(ys[i + 1]), int(xs[j + 1])

    def block_box(self, index: tuple[int, int]) -> Box:
        """Core of block ``index`` grown by the halo into existing neighbours.

        This is exactly the window ``dask.array.overlap.overlap(..., boundary="none")``
        gives the block.
        """
        y0, x0, y1, x1 = self.core_box(index)
        (ny, nx), (dy, dx) = self.n_blocks, self.depth
        i, j = index
        return (
            y0 - (dy if i > 0 else 0),
            x0 - (dx if j > 0 else 0),
            y1 + (dy if i < ny - 1 else 0),
            x1 + (dx if j < nx - 1 else 0),
        )

    def core_boxes(self) -> npt.NDArray[np.int64]:
        """All cores as an array of ``(y0, x0, y1, x1)``, shape (n_blocks, 4), row-major."""
        return np.array([self.core_box(ix) for ix in self.indices()], np.int64).reshape(-1, 4)

    def owner(self, points_yx: npt.NDArray[np.floating]) -> npt.NDArray[np.int64]:
        """Index ``(i, j)`` of the block that owns each point.

        Parameters
        ----------
        points_yx : ndarray, shape (n, 2)
            Points in working-pixel indices (pixel centres are integers).

        Returns
        -------
        ndarray, shape (n, 2), int64
        """
        pixel = pixel_of(points_yx)
        out = np.empty_like(pixel)
        for axis in range(2):
            starts = self._starts(axis)[1:-1]
            out[:, axis] = np.searchsorted(starts, pixel[:, axis], side="right")
        return out

    def owned(
        self, index: tuple[int, int], points_yx: npt.NDArray[np.floating]
    ) -> npt.NDArray[np.bool_]:
        """Whether block ``index`` owns each point (its pixel lies in the half-open core).

        Parameters
        ----------
        index : tuple of int
        points_yx : ndarray, shape (n, 2)
            Points in global working-pixel indices.

        Returns
        -------
        ndarray, shape (n,), bool
        """
        y0, x0, y1, x1 = self.core_box(index)
        pixel = pixel_of(points_yx)
        return np.asarray(
            (pixel[:, 0] >= y0) & (pixel[:, 0] < y1) & (pixel[:, 1] >= x0) & (pixel[:, 1] < x1)
        )
