"""Whole-slide images: levels, pixel size, lazy dask views at a requested scale, tissue mask.

``open_slide(path)`` returns a :class:`Slide`, a small picklable description of the file
(its path, levels and pixel size) that reads pixels only when asked: :meth:`Slide.to_dask`
builds a lazy array whose chunks are read by :class:`~wsidet.slide.reader.LevelReader` in whatever
process computes them.

Coordinates: arrays are (rows, cols); tiffslide's (x, y)/(width, height) are converted here and
nowhere else.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from wsidet.errors import (
    MppUnknownError,
    ParameterError,
    ScaleError,
    SlideCorruptError,
    SlideFormatError,
)
from wsidet.limits import MAX_ENLARGEMENT, MPP
from wsidet.slide.pyramid import downsample_mean
from wsidet.slide.reader import LevelReader, ReducedLevelReader, ResampledReader, open_slide_file
from wsidet.slide.resample import resampled_size
from wsidet.slide.tissue import TissueMask, tissue_from_rgb

if TYPE_CHECKING:
    import dask.array as da

logger = logging.getLogger(__name__)

#: A level whose pixel size is within this relative distance of the requested one is used as
#: is: resampling by 1.002 (0.499 vs 0.5 µm/px) would cost time and blur for nothing.
DEFAULT_MPP_TOLERANCE = 0.1
#: Pixel sizes outside this range (µm/px) are treated as missing: a TIFF written by an image
#: editor often says "72 dpi", which would be 353 µm/px.
_PLAUSIBLE_MPP = (1e-3, 100.0)
#: Fallback TIFF tile edge for stripped (untiled) images, used only to align chunks.
_DEFAULT_TILE = 256


@dataclass(frozen=True)
class Level:
    """One pyramid level.

    Parameters
    ----------
    index : int
        0 is full resolution.
    shape : tuple of int
        (rows, cols).
    downsample : tuple of float
        Level-0 pixels per level pixel, (rows, cols).
    tile : tuple of int
        TIFF tile size (rows, cols); chunks are aligned to it.
    reductions : tuple of int
        Factors (2, 4, 8) at which its JPEG tiles can be decoded smaller by libjpeg.
    """

    index: int
    shape: tuple[int, int]
    downsample: tuple[float, float]
    tile: tuple[int, int]
    reductions: tuple[int, ...] = ()


@dataclass(frozen=True)
class Scale:
    """The pixel grid a model reads: a level, shrunk by a remaining ``factor``.

    Parameters
    ----------
    level : Level
    factor : float
        Level pixels per working pixel (1.0: the level as is).
    mpp : float or None
        Micrometres per working pixel, if the slide's pixel size is known.
    reduce : int
        The level's JPEG tiles are decoded at ``1 / reduce`` of their size (one of
        ``level.reductions``) and the rest of ``factor`` resampled; 1: decoded whole.
    """

    level: Level
    factor: float
    mpp: float | None
    reduce: int = 1

    @property
    def shape(self) -> tuple[int, int]:
        """Working image size (rows, cols)."""
        h, w = self.level.shape
        if self.factor == 1.0:
            return h, w
        return resampled_size(h, self.factor), resampled_size(w, self.factor)

    @property
    def downsample(self) -> tuple[float, float]:
        """Level-0 pixels per working pixel, (rows, cols)."""
        dy, dx = self.level.downsample
        return dy * self.factor, dx * self.factor

    @property
    def tile(self) -> tuple[int, int]:
        """TIFF tile size in working pixels (rows, cols), for chunk alignment.

        Only where a tile is a whole number of working pixels do working-pixel chunk edges
        fall on tile edges; otherwise (e.g. 256 px tiles shrunk by 1.25) no alignment is
        possible and (1, 1) is returned, so chunks keep the size asked for instead of
        growing to a multiple of a rounded tile (and of the network's stride).
        """

        def edge(size: int) -> int:
            working = size / self.factor
            return round(working) if abs(working - round(working)) < 1e-9 else 1

        th, tw = self.level.tile
        return max(1, edge(th)), max(1, edge(tw))

    def to_level0(self, points_yx: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.float64]:
        """Map working-pixel indices to level-0 continuous coordinates.

        Parameters
        ----------
        points_yx : ndarray, shape (n, 2)
            (row, col) indices in the working image; pixel centres are integers.

        Returns
        -------
        ndarray, shape (n, 2), float64
            (y, x) in level-0 pixels, origin at the top-left corner of the top-left pixel,
            so pixel centres are at +0.5.
        """
        pts = np.asarray(points_yx, np.float64).reshape(-1, 2)
        return (pts + 0.5) * np.asarray(self.downsample, np.float64)


@dataclass(frozen=True)
class Slide:
    """A whole-slide image file and its pyramid; pixels are read lazily.

    Build with :func:`open_slide`. Instances are small and picklable.

    Parameters
    ----------
    path : pathlib.Path
    levels : tuple of Level
    mpp : float or None
        Level-0 micrometres per pixel.
    mpp_source : str
        Where ``mpp`` came from: ``"file"``, ``"override"``, ``"estimated"`` (from the size
        of its nuclei, :mod:`wsidet.slide.scale_check`) or ``"unknown"``.
    vendor : str
        Format detected by tiffslide (``aperio``, ``generic-tiff``, ...).
    name : str, optional
        The id to name outputs by, where the file name alone is not unique in a cohort
        (see :meth:`with_id`).
    backend : str
        What reads its pixels: ``tiffslide`` (tile by tile, the default) or ``openslide``
        (the fallback for what tiffslide cannot open, :mod:`wsidet.slide.openslide_reader`).
    """

    path: Path
    levels: tuple[Level, ...]
    mpp: float | None
    mpp_source: str
    vendor: str
    _tissue_cache: dict[tuple[Any, ...], TissueMask] = field(
        default_factory=dict, compare=False, repr=False
    )
    name: str | None = None
    backend: str = "tiffslide"

    @property
    def slide_id(self) -> str:
        """The id that names outputs: the file name without its extension(s) by default."""
        return self.name if self.name is not None else slide_id_for(self.path)

    def with_id(self, slide_id: str) -> Slide:
        """The same slide, its outputs named ``slide_id`` (two files of one name in a cohort)."""
        return dataclasses.replace(self, name=slide_id)

    @property
    def shape(self) -> tuple[int, int]:
        """Level-0 size (rows, cols)."""
        return self.levels[0].shape

    def scale_for_mpp(
        self,
        mpp: float,
        *,
        tolerance: float = DEFAULT_MPP_TOLERANCE,
        dct_reduce: bool = True,
    ) -> Scale:
        """The working scale for a model that expects ``mpp`` micrometres per pixel.

        The nearest level at least as fine as ``mpp`` is chosen and shrunk by the remaining
        factor; a level within ``tolerance`` (relative) of ``mpp`` is used as is. With
        ``dct_reduce``, a JPEG-tiled level decoded at 1/2, 1/4 or 1/8 by libjpeg counts as a
        level of its own: a 0.5 µm/px model on a 0.25 µm/px (40x) level decodes its tiles at
        half size instead of decoding every pixel and shrinking them.

        Parameters
        ----------
        mpp : float
            Micrometres per pixel the model expects.
        tolerance : float
            Relative tolerance under which no resampling is done.
        dct_reduce : bool
            Consider JPEG levels decoded at reduced size.

        Returns
        -------
        Scale

        Raises
        ------
        MppUnknownError
            The slide has no pixel size and none was given to :func:`open_slide`.
        ScaleError
            The slide is more than :data:`wsidet.limits.MAX_ENLARGEMENT` times coarser.
        """
        if not mpp > 0:
            raise ValueError(f"mpp must be > 0, got {mpp}")
        if self.mpp is None:
            raise MppUnknownError(
                f"slide {str(self.path)!r} has no pixel size in its metadata and the method "
                f"works at {mpp:g} µm/px; give the level-0 size with mpp= (CLI: --mpp)"
            )
        level_mpps = [self.mpp * (lv.downsample[0] + lv.downsample[1]) / 2 for lv in self.levels]
        # (level, reduction) pairs; the nearest at least as fine as requested (allowing the
        # tolerance), else level 0 as it is.
        options = [
            (i, r)
            for i, lv in enumerate(self.levels)
            for r in (1, *(lv.reductions if dct_reduce else ()))
            if level_mpps[i] * r <= mpp * (1 + tolerance)
        ]
        index, reduce = max(options, key=lambda o: (level_mpps[o[0]] * o[1], -o[1]), default=(0, 1))
        factor = mpp / level_mpps[index]
        if factor * MAX_ENLARGEMENT < 1.0:
            raise ScaleError(
                f"slide {str(self.path)!r} at {self.mpp:g} µm/px ({self.mpp_source}) is too "
                f"coarse for a model at {mpp:g} µm/px: it would be enlarged {1 / factor:.3g}x "
                f"(at most {MAX_ENLARGEMENT:g}x); check the pixel size (--mpp)"
            )
        if abs(factor / reduce - 1.0) <= tolerance:
            factor = float(reduce)
        return Scale(self.levels[index], factor, level_mpps[index] * factor, reduce)

    def scale_for_level(self, level: int = 0) -> Scale:
        """The working scale of a level read as is (no physical size needed)."""
        if not 0 <= level < len(self.levels):
            raise ValueError(f"level must be in [0, {len(self.levels) - 1}], got {level}")
        lv = self.levels[level]
        mpp = None if self.mpp is None else self.mpp * (lv.downsample[0] + lv.downsample[1]) / 2
        return Scale(lv, 1.0, mpp)

    def reader(self, scale: Scale) -> LevelReader | ReducedLevelReader | ResampledReader:
        """A picklable lazy array of the slide at ``scale``, shape (rows, cols, 3), uint8."""
        reduce = scale.reduce
        if reduce > 1:
            rest = scale.factor / reduce
            if abs(rest - 1.0) < 1e-9:
                return ReducedLevelReader(self.path, scale.level.index, reduce, scale.shape)
            reduced = ReducedLevelReader(self.path, scale.level.index, reduce)
            return ResampledReader(reduced, rest, scale.shape)
        source = self.level_reader(scale.level.index)
        if scale.factor == 1.0:
            return source
        return ResampledReader(source, scale.factor)

    def level_reader(self, level: int) -> LevelReader:
        """A picklable lazy array of one pyramid level, read by the slide's backend."""
        if self.backend == "openslide":
            from wsidet.slide.openslide_reader import OpenSlideLevelReader

            return OpenSlideLevelReader(self.path, level)  # type: ignore[return-value]
        return LevelReader(self.path, level)

    def to_dask(
        self,
        scale: Scale,
        chunks: int | tuple[int, int] | tuple[Sequence[int], Sequence[int]] = 2048,
    ) -> da.Array:
        """A lazy dask array of the slide at ``scale``.

        Parameters
        ----------
        scale : Scale
        chunks : int, (int, int) or (row chunk sizes, col chunk sizes)
            Chunking in working pixels (see :class:`wsidet.tiling.Grid` for tile-aligned ones).

        Returns
        -------
        dask.array.Array, shape (rows, cols, 3), uint8
        """
        import dask.array as da
        from dask.base import tokenize

        reader = self.reader(scale)
        if isinstance(chunks, int):
            chunk_spec: Any = (chunks, chunks, 3)
        elif isinstance(chunks[0], int) and isinstance(chunks[1], int):
            chunk_spec = (chunks[0], chunks[1], 3)
        else:
            chunk_spec = (tuple(chunks[0]), tuple(chunks[1]), (3,))
        st = os.stat(self.path)
        name = "wsidet-read-" + tokenize(
            str(self.path), st.st_size, st.st_mtime_ns, repr(reader), reader.shape, chunk_spec
        )
        array: da.Array = da.from_array(
            reader,
            chunks=chunk_spec,
            name=name,
            asarray=False,
            lock=False,
            fancy=False,
            meta=np.empty((0, 0, 0), np.uint8),
        )
        return array

    def read_region(self, y0: int, x0: int, height: int, width: int, *, level: int = 0) -> Any:
        """Read a window of a level, clipped to the level.

        Returns
        -------
        ndarray, shape (<= height, <= width, 3), uint8
        """
        h, w = self.levels[level].shape
        y1, x1 = min(h, y0 + height), min(w, x0 + width)
        return self.level_reader(level).read(max(0, y0), y1, max(0, x0), x1)

    def tissue_mask(self, *, mask_mpp: float = 8.0, **threshold_options: Any) -> TissueMask:
        """Tissue mask from a low-resolution level (cached per parameters).

        Parameters
        ----------
        mask_mpp : float
            Target micrometres per mask pixel (a 32× downsample is assumed when the slide's
            pixel size is unknown).
        **threshold_options
            Passed to :func:`wsidet.slide.tissue.tissue_from_rgb`.

        Returns
        -------
        TissueMask
        """
        key = (mask_mpp, tuple(sorted(threshold_options.items())))
        cached = self._tissue_cache.get(key)
        if cached is not None:
            return cached
        target = mask_mpp / self.mpp if self.mpp else 32.0
        usable = [lv for lv in self.levels if max(lv.downsample) <= target] or [self.levels[0]]
        level = max(usable, key=lambda lv: lv.downsample[0])
        k = max(1, math.floor(target / max(level.downsample)))
        st = os.stat(self.path)
        # Per process, not per Slide: the planner, the preview and `wsidet info` each open the
        # slide afresh, and the mask's level is read whole.
        mask = _tissue_mask(self.path, st.st_size, st.st_mtime_ns, self.backend, level, k, key[1])
        self._tissue_cache[key] = mask
        return mask

    def thumbnail(self, max_edge: int = 768) -> tuple[npt.NDArray[np.uint8], tuple[float, float]]:
        """The whole slide, its longer side at most ``max_edge`` pixels.

        Read from the coarsest level that is still at least that large, averaged in whole
        blocks (never from level 0 when a pyramid has a smaller level).

        Returns
        -------
        ndarray, shape (h, w, 3), uint8
        tuple of float
            Level-0 pixels per thumbnail pixel, (rows, cols).
        """
        from PIL import Image

        large = [lv for lv in self.levels if max(lv.shape) >= max_edge] or [self.levels[0]]
        level = max(large, key=lambda lv: lv.downsample[0])
        k = max(1, math.floor(max(level.shape) / max_edge))
        image = _block_mean(self, level, k)
        h, w = image.shape[:2]
        if max(h, w) > max_edge:
            scale = max_edge / max(h, w)
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            image = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BOX))
        h0, w0 = self.shape
        return image, (h0 / image.shape[0], w0 / image.shape[1])

    def with_mpp(self, mpp: float, source: str) -> Slide:
        """The same slide at another level-0 pixel size (``source``: where it comes from)."""
        MPP.check("mpp", mpp)
        return dataclasses.replace(self, mpp=float(mpp), mpp_source=source, _tissue_cache={})

    def info(self) -> dict[str, Any]:
        """A JSON-able summary: path, vendor, mpp and levels."""
        return {
            "path": str(self.path),
            "slide_id": self.slide_id,
            "vendor": self.vendor,
            "mpp": self.mpp,
            "mpp_source": self.mpp_source,
            "levels": [
                {
                    "level": lv.index,
                    "height": lv.shape[0],
                    "width": lv.shape[1],
                    "downsample": round((lv.downsample[0] + lv.downsample[1]) / 2, 4),
                    "tile": list(lv.tile),
                }
                for lv in self.levels
            ],
        }


def slide_id_for(path: str | os.PathLike[str]) -> str:
    """A slide's id: its file name without the extension (``.ome.tif`` counts as one)."""
    name = Path(path).name
    for suffix in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(path).stem


@functools.lru_cache(maxsize=16)
def _tissue_mask(
    path: Path,
    size: int,
    mtime_ns: int,
    backend: str,
    level: Level,
    k: int,
    options: tuple[tuple[str, Any], ...],
) -> TissueMask:
    """A slide file's tissue mask from ``level`` averaged in k×k blocks.

    ``size`` and ``mtime_ns`` are part of the key, so a file rewritten in place is read again.
    """
    reader: Any
    if backend == "openslide":
        from wsidet.slide.openslide_reader import OpenSlideLevelReader

        reader = OpenSlideLevelReader(path, level.index)
    else:
        reader = LevelReader(path, level.index)
    thumb = _block_mean_of(reader, level, k)
    return TissueMask(
        tissue_from_rgb(thumb, **dict(options)),
        (level.downsample[0] * k, level.downsample[1] * k),
    )


def _block_mean(slide: Slide, level: Level, k: int) -> npt.NDArray[np.uint8]:
    """Read a whole level in strips of whole k-blocks and average k×k blocks."""
    return _block_mean_of(slide.level_reader(level.index), level, k)


def _block_mean_of(reader: Any, level: Level, k: int) -> npt.NDArray[np.uint8]:
    h, w = level.shape
    # Strips of whole k-blocks bound memory to about 64 Mpx of the level at a time.
    strip = max(1, (64_000_000 // max(1, w)) // k) * k
    return np.concatenate(
        [downsample_mean(reader.read(y0, min(h, y0 + strip), 0, w), k) for y0 in range(0, h, strip)]
    )


def _mpp_from_ome(tf: Any) -> float | None:
    """PhysicalSizeX of the first OME image, in µm, if present."""
    xml = getattr(tf, "ome_metadata", None)
    if not xml:
        return None
    match = re.search(r"<Pixels\b[^>]*>", xml)
    if not match:
        return None
    tag = match.group(0)
    size = re.search(r'PhysicalSizeX="([^"]+)"', tag)
    if not size:
        return None
    unit = re.search(r'PhysicalSizeXUnit="([^"]+)"', tag)
    scale = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}.get(
        unit.group(1) if unit else "µm"
    )
    if scale is None:
        return None
    return float(size.group(1)) * scale


def _plausible(mpp: float | None) -> float | None:
    if mpp is None or not math.isfinite(mpp):
        return None
    lo, hi = _PLAUSIBLE_MPP
    if not lo <= mpp <= hi:
        logger.warning("ignoring implausible pixel size %.4g µm/px in slide metadata", mpp)
        return None
    return mpp


def open_slide(
    path: str | os.PathLike[str], *, mpp: float | None = None, backend: str = "auto"
) -> Slide:
    """Open a whole-slide image: SVS, tiled pyramidal TIFF, OME-TIFF; others through OpenSlide.

    Parameters
    ----------
    path : str or os.PathLike
        A local file.
    mpp : float, optional
        Level-0 micrometres per pixel; overrides the file's value (needed when it has none).
    backend : str
        ``auto``: tiffslide, and OpenSlide (when installed) for a file tiffslide refuses but
        OpenSlide recognises (MIRAX, Hamamatsu VMS, Leica SCN, Ventana BIF, ...);
        ``tiffslide`` or ``openslide``: only that one.

    Returns
    -------
    Slide

    Raises
    ------
    SlideNotFoundError
        The path does not exist or is not a file.
    SlideFormatError
        No backend can read the file (the message says which were tried).
    ParameterError
        ``mpp`` is outside :data:`wsidet.limits.MPP`, or ``backend`` is unknown.
    """
    from wsidet.slide import openslide_reader

    if backend not in ("auto", "tiffslide", "openslide"):
        raise ParameterError(f"backend must be auto, tiffslide or openslide, got {backend!r}")
    if mpp is not None:
        MPP.check("mpp", mpp)
    if backend == "openslide":
        return _open_openslide(path, mpp)
    try:
        return _open_tiffslide(path, mpp)
    except SlideCorruptError:
        raise  # a damaged TIFF is reported, not read around by another library
    except SlideFormatError as refused:
        if backend == "auto" and openslide_reader.detect_format(path) is not None:
            try:
                return _open_openslide(path, mpp)
            except SlideFormatError:
                # A truncated SVS is one OpenSlide recognises but cannot read either:
                # tiffslide's error says what is wrong in the user's terms.
                raise refused from None
        if backend == "auto" and not openslide_reader.available():
            raise SlideFormatError(
                f"{refused} (OpenSlide, which reads more formats, is not installed: "
                "pip install openslide-python openslide-bin)"
            ) from None
        raise


def _mean_mpp(mpp_x: Any, mpp_y: Any) -> float | None:
    """A slide's pixel size from its x and y properties (either may be missing)."""
    if mpp_x is None:
        return None
    return float(mpp_x) if mpp_y is None else (float(mpp_x) + float(mpp_y)) / 2


def _mpp_and_source(file_mpp: float | None, mpp: float | None) -> tuple[float | None, str]:
    if mpp is not None:
        return float(mpp), "override"
    if file_mpp is not None:
        return file_mpp, "file"
    return None, "unknown"


def _open_openslide(path: str | os.PathLike[str], mpp: float | None) -> Slide:
    """A slide read through OpenSlide (see :mod:`wsidet.slide.openslide_reader`)."""
    from wsidet.slide import openslide_reader
    from wsidet.slide.reader import check_slide_file

    check_slide_file(path)
    if not openslide_reader.available():
        raise SlideFormatError(
            "OpenSlide is not installed (pip install openslide-python openslide-bin)"
        )
    osr = openslide_reader.open_openslide(path)
    props = osr.properties
    levels = []
    for i, ((w, h), ds) in enumerate(zip(osr.level_dimensions, osr.level_downsamples, strict=True)):
        th = int(props.get(f"openslide.level[{i}].tile-height") or _DEFAULT_TILE)
        tw = int(props.get(f"openslide.level[{i}].tile-width") or _DEFAULT_TILE)
        h0, w0 = osr.level_dimensions[0][1], osr.level_dimensions[0][0]
        levels.append(Level(i, (int(h), int(w)), (h0 / h, w0 / w), (th, tw)))
        del ds  # OpenSlide's own downsample is a mean of both axes; ours are per axis
    file_mpp = _plausible(_mean_mpp(props.get("openslide.mpp-x"), props.get("openslide.mpp-y")))
    final_mpp, source = _mpp_and_source(file_mpp, mpp)
    return Slide(
        path=Path(os.fspath(path)),
        levels=tuple(levels),
        mpp=final_mpp,
        mpp_source=source,
        vendor=str(props.get("openslide.vendor") or openslide_reader.detect_format(path)),
        backend="openslide",
    )


def _open_tiffslide(path: str | os.PathLike[str], mpp: float | None) -> Slide:
    """A TIFF-based slide read tile by tile (tiffslide's parse, :mod:`wsidet.slide.tiff`)."""
    handle = open_slide_file(path)
    ts = handle.slide
    props = ts.properties
    try:
        dims = ts.level_dimensions
        downsamples_src = [(dims[0][1] / h, dims[0][0] / w) for (w, h) in dims]
    except (KeyError, ZeroDivisionError) as exc:
        raise SlideFormatError(f"cannot read the pyramid of {os.fspath(path)!r}: {exc}") from exc
    for i, (w, h) in enumerate(dims):
        # Every level's header against the file, before anything is read: a forged or
        # truncated one fails here in one line instead of hanging a read.
        if handle.level(i).layout.shape != (int(h), int(w)):
            raise SlideFormatError(
                f"cannot read the pyramid of {os.fspath(path)!r}: level {i} is "
                f"{handle.level(i).layout.shape} px in its tiles but {h} x {w} in its metadata"
            )
    levels = []
    for i, ((w, h), ds) in enumerate(zip(dims, downsamples_src, strict=True)):
        th = props.get(f"tiffslide.level[{i}].tile-height") or _DEFAULT_TILE
        tw = props.get(f"tiffslide.level[{i}].tile-width") or _DEFAULT_TILE
        reductions = handle.level(i).reductions
        levels.append(
            Level(i, (int(h), int(w)), (float(ds[0]), float(ds[1])), (th, tw), reductions)
        )

    file_mpp: float | None = None
    mpp_x, mpp_y = props.get("tiffslide.mpp-x"), props.get("tiffslide.mpp-y")
    if mpp_x is not None:
        file_mpp = _mean_mpp(mpp_x, mpp_y)
    elif ts.ts_tifffile.is_ome:
        file_mpp = _mpp_from_ome(ts.ts_tifffile)
    file_mpp = _plausible(file_mpp)

    final_mpp, source = _mpp_and_source(file_mpp, mpp)
    return Slide(
        path=Path(os.fspath(path)),
        levels=tuple(levels),
        mpp=final_mpp,
        mpp_source=source,
        vendor=str(
            props.get("tiffslide.vendor")
            or ("ome-tiff" if ts.ts_tifffile.is_ome else "generic-tiff")
        ),
    )
