"""The OpenSlide fallback: slides tiffslide cannot open (MIRAX ``.mrxs``, ``.vms``, ``.scn``, ...).

tiffslide reads TIFF-based slides tile by tile and is the default; what it refuses is tried with
OpenSlide (``pip install openslide-python openslide-bin``, optional). The reader here has the same
shape as :class:`wsidet.slide.reader.LevelReader`: it pickles as ``(path, level)`` and opens
the slide once per process, so a dask graph built on it travels to workers alike.

OpenSlide addresses windows by their level-0 corner; a level-``k`` window starting at
``(y, x)`` is asked for at ``(y, x) * downsample``. Where a level's downsample is a whole
number (every generic TIFF and SVS pyramid here) this reads exactly the level's own pixels;
tested against tiffslide on files both can read.
"""

from __future__ import annotations

import functools
import os
import threading
from typing import Any

import numpy as np
import numpy.typing as npt

from wsidet.errors import SlideFormatError, SlideReadError

_LOCK = threading.Lock()


def available() -> bool:
    """Whether OpenSlide (the Python binding and its library) can be loaded."""
    try:
        import openslide  # noqa: F401
    except (ImportError, OSError):  # the binding without its shared library raises OSError
        return False
    return True


def detect_format(path: str | os.PathLike[str]) -> str | None:
    """OpenSlide's name for the file's format (``aperio``, ``mirax``, ...), None if it has none."""
    if not available():
        return None
    import openslide

    try:
        fmt: str | None = openslide.OpenSlide.detect_format(os.fspath(path))
    except (openslide.OpenSlideError, OSError):
        return None
    return fmt


@functools.lru_cache(maxsize=16)
def _open_cached(path: str, size: int, mtime_ns: int) -> Any:
    import openslide

    try:
        return openslide.OpenSlide(path)
    except (openslide.OpenSlideError, OSError) as exc:
        raise SlideFormatError(f"OpenSlide cannot open {path!r}: {exc}") from None


def open_openslide(path: str | os.PathLike[str]) -> Any:
    """The ``openslide.OpenSlide`` of ``path`` in this process (cached; reopened if changed)."""
    p = os.fspath(path)
    st = os.stat(p)
    with _LOCK:
        return _open_cached(p, st.st_size, st.st_mtime_ns)


class OpenSlideLevelReader:
    """Lazy ``(rows, cols, 3)`` uint8 view of one level of a slide, read through OpenSlide.

    Parameters
    ----------
    path : str
        Slide file.
    level : int
        Pyramid level (0 is full resolution).

    Notes
    -----
    Pickles as ``(path, level)``. Transparent pixels (outside the scanned area) read as white,
    as glass.
    """

    dtype = np.dtype(np.uint8)
    ndim = 3

    def __init__(self, path: str | os.PathLike[str], level: int) -> None:
        self.path = os.fspath(path)
        self.level = int(level)
        slide = open_openslide(self.path)
        if not 0 <= self.level < slide.level_count:
            raise ValueError(
                f"level must be in [0, {slide.level_count - 1}] for {self.path!r}, got {level}"
            )
        width, height = slide.level_dimensions[self.level]
        self.shape: tuple[int, int, int] = (int(height), int(width), 3)
        self.downsample = float(slide.level_downsamples[self.level])

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, self.level))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r}, level={self.level}, shape={self.shape})"

    def __getitem__(self, key: Any) -> npt.NDArray[np.uint8]:
        from wsidet.slide.reader import _window

        return self.read(*_window(key, self.shape))

    def read(self, y0: int, y1: int, x0: int, x1: int) -> npt.NDArray[np.uint8]:
        """Rows ``[y0, y1)`` and columns ``[x0, x1)`` of the level.

        Raises
        ------
        SlideReadError
            OpenSlide could not read the window.
        """
        import openslide

        h, w = max(0, y1 - y0), max(0, x1 - x0)
        if h == 0 or w == 0:
            return np.zeros((h, w, 3), np.uint8)
        corner = (round(x0 * self.downsample), round(y0 * self.downsample))
        try:
            rgba = np.asarray(open_openslide(self.path).read_region(corner, self.level, (w, h)))
        except openslide.OpenSlideError as exc:
            where = f"{self.path!r} at level {self.level}"
            raise SlideReadError(f"cannot read {where}: {exc}") from None
        # read_region gives premultiplied-alpha RGBA: composite onto white (glass).
        alpha = rgba[..., 3:4].astype(np.uint16)
        rgb = rgba[..., :3].astype(np.uint16) + (255 - alpha)
        out: npt.NDArray[np.uint8] = np.minimum(rgb, 255).astype(np.uint8)
        return out
