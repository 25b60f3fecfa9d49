"""Picklable, lazy array views of one slide level, for dask graphs that travel to workers.

A dask array built on an open slide cannot go to distributed workers (open file handles do not
pickle). :class:`LevelReader` keeps only ``(path, level)`` and reopens the slide once per
process (a small cache keyed by path, size and modification time, so a file replaced on disk is
reopened); its pixels are read tile by tile by :class:`wsidet.slide.tiff.LevelTiles`.
:class:`ResampledReader` adds the remaining scale factor between a level and the pixel size a
model wants.

Both expose ``shape``, ``dtype``, ``ndim`` and ``__getitem__`` with plain slices, which is what
``dask.array.from_array`` needs, and always return ``(rows, cols, 3)`` uint8 RGB.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from wsidet.errors import SlideCorruptError, SlideFormatError, SlideNotFoundError
from wsidet.slide.resample import resample_weights, resample_window, resampled_size
from wsidet.slide.tiff import LevelTiles

if TYPE_CHECKING:
    from tiffslide import TiffSlide

_OPEN_LOCK = threading.Lock()


class OpenSlideFile:
    """A slide opened in this process: tiffslide's parse, a descriptor and the level readers.

    Build with :func:`open_slide_file`; closed when dropped from the cache and collected.
    """

    def __init__(self, path: str, slide: TiffSlide, fd: int, size: int) -> None:
        self.path = path
        self.slide = slide
        self.size = size
        self._fd = fd
        self._levels: dict[int, LevelTiles] = {}
        self._lock = threading.Lock()

    def level(self, index: int) -> LevelTiles:
        """The tile reader of a pyramid level (its geometry checked on first use).

        Raises
        ------
        SlideFormatError
            The level's header does not fit the file (see :func:`wsidet.slide.tiff.check_level`).
        """
        with self._lock:
            tiles = self._levels.get(index)
            if tiles is None:
                series = self.slide.ts_tifffile.series[
                    int(self.slide.properties.get("tiffslide.series-index", 0))
                ]
                page = series.levels[index].keyframe
                tiles = LevelTiles(page, self._fd, self.size, f"{self.path!r} level {index}")
                self._levels[index] = tiles
            return tiles

    def __del__(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)


def file_problem(path: str | os.PathLike[str]) -> str | None:
    """Why ``path`` is not a regular file that can be opened, in a few words (None if it is).

    Never blocks: a FIFO is recognised by its type, not opened.
    """
    import errno
    import stat

    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "a symlink loop"
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return "not found" if not os.path.islink(path) else "a broken symlink"
        return exc.strerror or type(exc).__name__
    kinds = (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    )
    for test, what in kinds:
        if test(mode):
            return f"{what}, not a file"
    if not os.access(path, os.R_OK):
        return "not readable (permission denied)"
    return None


def check_slide_file(path: str | os.PathLike[str]) -> None:
    """Raise :class:`SlideNotFoundError` unless ``path`` is a regular, readable file.

    Never blocks: a FIFO is recognised by its type (:func:`file_problem`), not opened.
    """
    problem = file_problem(path)
    if problem == "not found":
        raise SlideNotFoundError(f"slide not found: {os.fspath(path)!r}")
    if problem is not None:
        raise SlideNotFoundError(f"slide cannot be opened: {os.fspath(path)!r} is {problem}")


def open_slide_file(path: str | os.PathLike[str]) -> OpenSlideFile:
    """Open a slide with tiffslide, reusing an open one in this process.

    Parameters
    ----------
    path : str or os.PathLike
        A local file.

    Returns
    -------
    OpenSlideFile

    Raises
    ------
    SlideNotFoundError
        The path does not exist or is not a file.
    SlideFormatError
        The file is not a TIFF-based slide tiffslide can parse.
    """
    path = os.fspath(path)
    check_slide_file(path)
    st = os.stat(path)
    with _OPEN_LOCK:
        return _open_cached(path, st.st_size, st.st_mtime_ns)


def open_tiffslide(path: str | os.PathLike[str]) -> TiffSlide:
    """The tiffslide view of a slide (see :func:`open_slide_file`)."""
    return open_slide_file(path).slide


@functools.lru_cache(maxsize=16)
def _open_cached(path: str, size: int, mtime_ns: int) -> OpenSlideFile:
    # size and mtime are part of the key so that a file rewritten in place is reopened.
    import tiffslide
    from tifffile import TiffFileError

    try:
        slide = tiffslide.TiffSlide(path)
        _ = slide.properties  # parse now: a malformed file must fail here, not mid-run
    except (IndexError, KeyError) as exc:
        # tifffile found a TIFF header but no usable image directory.
        raise SlideCorruptError(
            f"not a readable TIFF-based slide: {path!r} has no valid image directory "
            "(truncated or corrupt file?)"
        ) from exc
    except (TiffFileError, ValueError, NotImplementedError) as exc:
        raise SlideFormatError(
            f"not a readable TIFF-based slide (SVS, tiled TIFF, OME-TIFF): {path!r} ({exc})"
        ) from exc
    except OSError as exc:
        raise SlideFormatError(f"cannot open slide {path!r}: {exc}") from exc
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    except OSError as exc:
        raise SlideFormatError(f"cannot open slide {path!r}: {exc.strerror}") from exc
    return OpenSlideFile(path, slide, fd, size)


def _to_rgb(block: npt.NDArray[Any]) -> npt.NDArray[np.uint8]:
    """Normalise a (rows, cols, samples) level block to (rows, cols, 3) uint8 RGB."""
    if block.dtype != np.uint8:
        if block.dtype.kind == "u" and block.dtype.itemsize == 2:
            block = (block >> 8).astype(np.uint8)
        else:
            raise SlideFormatError(f"unsupported pixel type {block.dtype}; expected 8-bit RGB")
    channels = block.shape[-1]
    if channels == 1:
        return np.repeat(block, 3, axis=-1)
    if channels >= 3:
        # RGBA and extra samples: the first three channels are the colour image.
        return np.ascontiguousarray(block[..., :3])
    raise SlideFormatError(f"unsupported number of channels {channels}; expected 1, 3 or 4")


def _window(key: Any, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """Turn ``array[key]`` with unit-step slices into (y0, y1, x0, x1)."""
    if not isinstance(key, tuple):
        key = (key,)
    bounds = []
    for axis in range(2):
        k = key[axis] if axis < len(key) else slice(None)
        if not isinstance(k, slice):
            raise TypeError(f"only slices are supported, got {k!r}")
        start, stop, step = k.indices(shape[axis])
        if step != 1:
            raise TypeError(f"only unit-step slices are supported, got {k!r}")
        bounds.append((start, max(start, stop)))
    (y0, y1), (x0, x1) = bounds
    return y0, y1, x0, x1


class _WindowReader:
    """What ``dask.array.from_array`` needs: shape, dtype, ndim and slicing by windows."""

    dtype = np.dtype(np.uint8)
    ndim = 3
    shape: tuple[int, int, int]

    def __getitem__(self, key: Any) -> npt.NDArray[np.uint8]:
        return self.read(*_window(key, self.shape))

    def read(self, y0: int, y1: int, x0: int, x1: int) -> npt.NDArray[np.uint8]:
        """Rows ``[y0, y1)`` and columns ``[x0, x1)`` as (rows, cols, 3) uint8."""
        raise NotImplementedError


class LevelReader(_WindowReader):
    """Lazy ``(rows, cols, 3)`` uint8 view of one pyramid level of a slide.

    Parameters
    ----------
    path : str
        Slide file.
    level : int
        Pyramid level index (0 is full resolution).

    Notes
    -----
    Pickles as ``(path, level)``; the slide is opened on first read in each process.
    """

    def __init__(self, path: str | os.PathLike[str], level: int) -> None:
        self.path = os.fspath(path)
        self.level = int(level)
        slide = open_tiffslide(self.path)
        if not 0 <= self.level < slide.level_count:
            raise ValueError(
                f"level must be in [0, {slide.level_count - 1}] for {self.path!r}, got {level}"
            )
        width, height = slide.level_dimensions[self.level]
        self.shape: tuple[int, int, int] = (int(height), int(width), 3)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, self.level))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r}, level={self.level}, shape={self.shape})"

    def read(self, y0: int, y1: int, x0: int, x1: int) -> npt.NDArray[np.uint8]:
        """Read rows ``[y0, y1)`` and columns ``[x0, x1)`` of the level.

        Returns
        -------
        ndarray, shape (y1 - y0, x1 - x0, 3), uint8

        Raises
        ------
        SlideReadError
            The tiles cannot be read or decoded (truncated or corrupt file).
        """
        return _to_rgb(open_slide_file(self.path).level(self.level).read(y0, y1, x0, x1))


class ReducedLevelReader(_WindowReader):
    """Lazy view of a JPEG-tiled level decoded at ``1 / reduce`` of its size by libjpeg.

    Parameters
    ----------
    path : str
        Slide file.
    level : int
        Pyramid level index.
    reduce : int
        2, 4 or 8 (see :attr:`wsidet.slide.tiff.LevelTiles.reductions`).
    shape : (rows, cols), optional
        Size to present (at most the reduced level's, which is rounded up): the size the
        slide's :class:`~wsidet.slide.wsi.Scale` computes, so both ways of reading agree.

    Notes
    -----
    Pickles as ``(path, level, reduce, shape)``, like :class:`LevelReader`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        level: int,
        reduce: int,
        shape: tuple[int, int] | None = None,
    ) -> None:
        self.path = os.fspath(path)
        self.level = int(level)
        self.reduce = int(reduce)
        tiles = open_slide_file(self.path).level(self.level)
        if self.reduce not in tiles.reductions:
            raise ValueError(f"{tiles.where} cannot be decoded at 1/{reduce}")
        full = tiles.reduced_shape(self.reduce)
        rows, cols = full if shape is None else (min(shape[0], full[0]), min(shape[1], full[1]))
        self.shape: tuple[int, int, int] = (rows, cols, 3)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, self.level, self.reduce, self.shape[:2]))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r}, level={self.level}, reduce={self.reduce})"

    def read(self, y0: int, y1: int, x0: int, x1: int) -> npt.NDArray[np.uint8]:
        """Rows ``[y0, y1)`` and columns ``[x0, x1)`` of the reduced level.

        Returns
        -------
        ndarray, shape (y1 - y0, x1 - x0, 3), uint8
        """
        tiles = open_slide_file(self.path).level(self.level)
        y1, x1 = min(y1, self.shape[0]), min(x1, self.shape[1])
        return _to_rgb(tiles.read(y0, y1, x0, x1, reduce=self.reduce))


class ResampledReader(_WindowReader):
    """Lazy view of a level shrunk (or enlarged) by ``factor``, windows exact (see resample).

    Parameters
    ----------
    source : LevelReader or ReducedLevelReader
        The level read from.
    factor : float
        Source pixels per output pixel.
    shape : (rows, cols), optional
        Output size (default ``resampled_size`` of the source's); output pixel ``i`` is
        centred on source coordinate ``(i + 0.5) * factor`` either way.
    """

    def __init__(
        self,
        source: LevelReader | ReducedLevelReader,
        factor: float,
        shape: tuple[int, int] | None = None,
    ) -> None:
        if not factor > 0:
            raise ValueError(f"factor must be > 0, got {factor}")
        self.source = source
        self.factor = float(factor)
        h, w, _ = source.shape
        rows, cols = (
            (resampled_size(h, self.factor), resampled_size(w, self.factor))
            if shape is None
            else shape
        )
        self.shape: tuple[int, int, int] = (int(rows), int(cols), 3)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.source, self.factor, self.shape[:2]))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.source!r}, factor={self.factor})"

    def read(self, y0: int, y1: int, x0: int, x1: int) -> npt.NDArray[np.uint8]:
        """Read output rows ``[y0, y1)`` and columns ``[x0, x1)``.

        Returns
        -------
        ndarray, shape (y1 - y0, x1 - x0, 3), uint8
        """
        if y1 <= y0 or x1 <= x0:
            return np.zeros((max(0, y1 - y0), max(0, x1 - x0), 3), np.uint8)
        sh, sw, _ = self.source.shape
        sy0, sy1, wy = resample_weights(y0, y1, self.factor, sh)
        sx0, sx1, wx = resample_weights(x0, x1, self.factor, sw)
        return resample_window(self.source.read(sy0, sy1, sx0, sx1), wy, wx)
