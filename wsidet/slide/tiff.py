"""Windows of one TIFF pyramid level, read tile by tile: checked geometry, one error per failure.

tiffslide parses a slide's metadata and finds its pyramid; the pixels of a level are read here,
straight from the file: the tiles (or strips) a window touches are read with ``os.pread`` and
decoded by tifffile's own segment decoder, one after another in the calling thread. Compared
with reading through tiffslide's zarr store this

* raises exactly once when a tile cannot be read (zarr 3's asynchronous store left a dozen
  "Task exception was never retrieved" tracebacks behind a truncated slide's first error);
* starts no event-loop thread, and holds no lock while reading (``pread`` has no shared file
  position), so dask threads read in parallel;
* checks a level's geometry before anything is read (:func:`check_level`): a header that
  claims more tiles than the file holds, tiles past the end of the file, or far more pixels
  than the file could encode fail at once instead of hanging on a terabyte-sized read;
* decodes JPEG tiles at 1/2, 1/4 or 1/8 of their size when asked (``reduce``): libjpeg's
  scaled inverse DCT skips the high frequencies a shrunk image would average away, so a
  0.5 µm/px model reading a 0.25 µm/px level decodes a quarter of the pixels instead of all of
  them and shrinking them afterwards.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from wsidet.errors import SlideCorruptError, SlideFormatError, SlideReadError

if TYPE_CHECKING:
    from tifffile import TiffPage

#: TIFF compression codes of JPEG tiles, and the reductions libjpeg decodes directly.
JPEG_CODES = frozenset({6, 7, 34892, 33007})
REDUCTIONS = (8, 4, 2)
#: Largest ratio of a level's decoded bytes to the whole file's size that a slide may claim.
#: JPEG at scanner quality compresses tissue 10-20×, blank glass a few hundred ×; a level that
#: would decode to more than this many times the file is a forged header (or a decompression
#: bomb), and reading it would take hours.
MAX_EXPANSION = 10_000


@dataclass(frozen=True)
class SegmentLayout:
    """Where a level's pixels are stored: a grid of equal segments (tiles or strips).

    Parameters
    ----------
    shape : tuple of int
        Level size (rows, cols).
    segment : tuple of int
        Segment size (rows, cols); strips span the whole width.
    planes : int
        Separately stored sample planes (3 for planar RGB, else 1).
    samples : int
        Samples per pixel.
    """

    shape: tuple[int, int]
    segment: tuple[int, int]
    planes: int
    samples: int

    @property
    def grid(self) -> tuple[int, int]:
        """Segments along rows and along cols."""
        return (
            math.ceil(self.shape[0] / self.segment[0]),
            math.ceil(self.shape[1] / self.segment[1]),
        )

    @property
    def n_segments(self) -> int:
        """Segments the level must have in the file."""
        ny, nx = self.grid
        return self.planes * ny * nx

    def indices(self, y0: int, y1: int, x0: int, x1: int) -> list[int]:
        """Linear indices (TIFF order: plane, row, col) of the segments a window touches."""
        (sy, sx), (ny, nx) = self.segment, self.grid
        rows = range(y0 // sy, min(ny, -(-y1 // sy)))
        cols = range(x0 // sx, min(nx, -(-x1 // sx)))
        return [(p * ny + r) * nx + c for p in range(self.planes) for r in rows for c in cols]


def page_layout(page: TiffPage) -> SegmentLayout:
    """The segment layout a TIFF page declares.

    Raises
    ------
    SlideFormatError
        A volume (depth > 1) or a page without pixels.
    """
    height, width = int(page.imagelength), int(page.imagewidth)
    if height < 1 or width < 1 or int(getattr(page, "imagedepth", 1)) != 1:
        raise SlideFormatError(f"unsupported image geometry {page.shaped}")
    samples = int(page.samplesperpixel)
    planes = samples if int(page.planarconfig) == 2 and samples > 1 else 1
    if page.is_tiled:
        segment = (int(page.tilelength), int(page.tilewidth))
    else:
        rows = int(page.rowsperstrip) or height
        segment = (min(rows, height), width)
    if min(segment) < 1:
        raise SlideFormatError(f"invalid tile size {segment}")
    return SegmentLayout((height, width), segment, planes, samples)


def check_level(page: TiffPage, file_size: int, where: str) -> SegmentLayout:
    """Validate a level's header against the file before reading it.

    Parameters
    ----------
    page : tifffile.TiffPage
        The level's first page (its keyframe).
    file_size : int
        Bytes in the file.
    where : str
        The slide and level, for messages.

    Returns
    -------
    SegmentLayout

    Raises
    ------
    SlideCorruptError
        The header claims more segments than the file lists, segments lie past the end of the
        file (a truncated file), or the level would decode to more than :data:`MAX_EXPANSION`
        times the file's size.
    """
    layout = page_layout(page)
    offsets, counts = page.dataoffsets, page.databytecounts
    h, w = layout.shape
    if len(offsets) != layout.n_segments or len(counts) != layout.n_segments:
        raise SlideCorruptError(
            f"not a readable slide: {where}: the header claims {h} x {w} px in "
            f"{layout.n_segments} tiles of {layout.segment[0]} x {layout.segment[1]}, but the "
            f"file lists {len(offsets)} (corrupt or forged header)"
        )
    if len(offsets):
        ends = np.asarray(offsets, np.int64) + np.asarray(counts, np.int64)
        if int(ends.max()) > file_size:
            raise SlideCorruptError(
                f"cannot read {where}: tile data runs to byte {int(ends.max())} but the file has "
                f"{file_size} bytes (truncated file?)"
            )
    decoded = h * w * layout.samples * int(np.dtype(page.dtype).itemsize)
    if decoded > MAX_EXPANSION * max(file_size, 1):
        raise SlideCorruptError(
            f"not a readable slide: {where}: the header claims {h} x {w} px "
            f"({decoded / 1e9:.3g} GB decoded) in a file of {file_size} bytes, over "
            f"{MAX_EXPANSION}x expansion (forged header?)"
        )
    return layout


class LevelTiles:
    """Reads windows of one level straight from its segments.

    Parameters
    ----------
    page : tifffile.TiffPage
        The level's keyframe (holds the offsets, byte counts and decoder).
    fd : int
        A file descriptor of the slide open for reading (shared; ``pread`` needs no lock).
    file_size : int
    where : str
        The slide and level, for messages.

    Raises
    ------
    SlideFormatError
        See :func:`check_level`.
    """

    def __init__(self, page: TiffPage, fd: int, file_size: int, where: str) -> None:
        self.layout = check_level(page, file_size, where)
        self.where = where
        self.dtype = np.dtype(page.dtype)
        self._page = page
        self._fd = fd
        self._offsets = page.dataoffsets
        self._counts = page.databytecounts
        self._decode = page.decode
        self._decode_args: dict[str, Any] = {"_fullsize": bool(page.is_tiled)}
        self._jpeg = page.compression in JPEG_CODES
        if self._jpeg:
            self._decode_args.update(jpegtables=page.jpegtables, jpegheader=page.jpegheader)
        self._tables = page.jpegtables if self._jpeg else None
        # Aperio writes RGB (not YCbCr) JPEG tiles: libjpeg must be told, as tifffile does.
        self._jpeg_mode = "RGB" if int(page.photometric) == 2 else ""
        self.reductions = tuple(
            r
            for r in REDUCTIONS
            if self._jpeg
            and page.is_tiled
            and layout_ok(self.layout, r)
            and self.dtype == np.uint8
            and self.layout.samples == 3
        )

    def reduced_shape(self, reduce: int) -> tuple[int, int]:
        """Level size (rows, cols) when decoded at ``1 / reduce`` of its size."""
        h, w = self.layout.shape
        return -(-h // reduce), -(-w // reduce)

    def read(self, y0: int, y1: int, x0: int, x1: int, *, reduce: int = 1) -> npt.NDArray[Any]:
        """Rows ``[y0, y1)`` and columns ``[x0, x1)``, clipped to the level.

        Parameters
        ----------
        y0, y1, x0, x1 : int
            The window, in pixels of the level decoded at ``1 / reduce`` of its size.
        reduce : int
            1, or one of :attr:`reductions` (JPEG tiles decoded smaller by libjpeg).

        Returns
        -------
        ndarray, shape (rows, cols, samples)
            Missing (sparse) segments read as 0.

        Raises
        ------
        SlideReadError
            A segment cannot be read or decoded (corrupt data).
        ValueError
            ``reduce`` is not available for this level.
        """
        if reduce != 1 and reduce not in self.reductions:
            raise ValueError(f"{self.where} cannot be decoded at 1/{reduce} (JPEG tiles only)")
        layout = self.layout
        h, w = self.reduced_shape(reduce)
        y0, x0 = max(0, y0), max(0, x0)
        y1, x1 = max(y0, min(h, y1)), max(x0, min(w, x1))
        per_plane = layout.samples // layout.planes
        out = np.zeros((layout.planes, y1 - y0, x1 - x0, per_plane), self.dtype)
        if y1 > y0 and x1 > x0:
            full = (y0 * reduce, y1 * reduce, x0 * reduce, x1 * reduce)
            for index in layout.indices(*full):
                self._paste(index, out, y0, y1, x0, x1, reduce)
        if layout.planes > 1:
            planar: npt.NDArray[Any] = np.moveaxis(out[..., 0], 0, -1)
            return np.ascontiguousarray(planar)
        first: npt.NDArray[Any] = out[0]
        return first

    def _paste(
        self,
        index: int,
        out: npt.NDArray[Any],
        y0: int,
        y1: int,
        x0: int,
        x1: int,
        reduce: int = 1,
    ) -> None:
        count = int(self._counts[index])
        if count == 0 or int(self._offsets[index]) == 0:
            return  # sparse: never written
        try:
            data = os.pread(self._fd, count, int(self._offsets[index]))
            if len(data) != count:
                raise EOFError(f"{len(data)} of {count} bytes")
            if reduce == 1:
                segment, (plane, _, sy, sx, _), _ = self._decode(data, index, **self._decode_args)
            else:
                segment, plane, sy, sx = self._decode_reduced(data, index, reduce)
        except Exception as exc:  # codecs raise many types; each means unreadable data
            raise SlideReadError(
                f"cannot read {self.where}: tile {index} is corrupt ({type(exc).__name__}: "
                f"{str(exc).strip() or 'no detail'})"
            ) from exc
        array = np.asarray(segment)
        seg = array.reshape(-1, *array.shape[-3:])[0]  # (rows, cols, samples)
        ty0, tx0 = max(y0, sy), max(x0, sx)
        ty1, tx1 = min(y1, sy + seg.shape[0]), min(x1, sx + seg.shape[1])
        if ty1 > ty0 and tx1 > tx0:
            out[plane, ty0 - y0 : ty1 - y0, tx0 - x0 : tx1 - x0] = seg[
                ty0 - sy : ty1 - sy, tx0 - sx : tx1 - sx
            ]

    def _decode_reduced(
        self, data: bytes, index: int, reduce: int
    ) -> tuple[npt.NDArray[np.uint8], int, int, int]:
        """One JPEG tile decoded at ``1 / reduce``: (pixels, plane, row, col in the reduction)."""
        import io

        from PIL import Image

        # A TIFF JPEG tile is an abbreviated stream: its tables live in the JPEGTables tag.
        stream = self._tables[:-2] + data[2:] if self._tables else data
        image = Image.open(io.BytesIO(stream))
        if self._jpeg_mode:
            image.tile = [_with_jpeg_mode(t, self._jpeg_mode) for t in image.tile]
        (th, tw), (_, nx) = self.layout.segment, self.layout.grid
        image.draft("RGB", (tw // reduce, th // reduce))
        pixels = np.asarray(image.convert("RGB"))
        if pixels.shape[:2] != (th // reduce, tw // reduce):
            raise ValueError(f"decoded {pixels.shape[:2]} at 1/{reduce}, not a scaled tile")
        row, col = divmod(index % (self.layout.grid[0] * nx), nx)
        return pixels, 0, row * th // reduce, col * tw // reduce


def _with_jpeg_mode(tile: Any, mode: str) -> Any:
    """A Pillow decoder tile whose JPEG colour space is ``mode`` (its raw mode kept)."""
    rawmode = tile[3][0] if isinstance(tile[3], tuple) else tile[3]
    return type(tile)(*tile[:3], (rawmode, mode))


def layout_ok(layout: SegmentLayout, reduce: int) -> bool:
    """Whether a tiled layout decodes at ``1 / reduce`` on a whole-pixel grid."""
    th, tw = layout.segment
    return layout.planes == 1 and th % reduce == 0 and tw % reduce == 0
