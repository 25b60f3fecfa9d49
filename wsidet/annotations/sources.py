"""Annotated images and slides as sources: windows of pixels at a method's pixel size, with points.

A source is an image (PNG/TIFF, taken as being at the method's pixel size unless told
otherwise) or a slide read exactly as inference reads it (:meth:`Slide.scale_for_mpp` and the
same lazy readers), with its points mapped into the same working pixels. Training cuts its
patches from sources (:mod:`wsidet.train.dataset`); evaluation predicts on them
(:mod:`wsidet.evaluation.evaluate`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image as PILImage

from wsidet.annotations.files import SLIDE_SUFFIXES, Annotated, AnnotationError, read_annotations
from wsidet.methods.base import Method
from wsidet.slide.resample import resample_weights, resample_window, resampled_size
from wsidet.slide.stain import Reinhard, StainStats, stain_stats
from wsidet.slide.wsi import Scale, Slide, open_slide
from wsidet.tiling import pixel_of


class Source(Protocol):
    """An annotated image at the method's pixel size."""

    @property
    def key(self) -> str:
        """Identifier of the image (for records and split files)."""
        ...

    @property
    def shape(self) -> tuple[int, int]:
        """Size (rows, cols) in working pixels."""
        ...

    @property
    def points_yx(self) -> npt.NDArray[np.float64]:
        """Annotated centres in working-pixel indices, shape (n, 2)."""
        ...

    def read(self, y0: int, y1: int, x0: int, x1: int) -> npt.NDArray[np.uint8]:
        """Pixels ``[y0, y1) × [x0, x1)`` (inside the image), shape (h, w, 3)."""
        ...


@dataclass(frozen=True, eq=False)
class ImageSource:
    """An image held in memory."""

    key: str
    image: npt.NDArray[np.uint8]
    points: npt.NDArray[np.float64]

    @property
    def shape(self) -> tuple[int, int]:
        """Size (rows, cols)."""
        return self.image.shape[0], self.image.shape[1]

    @property
    def points_yx(self) -> npt.NDArray[np.float64]:
        """Annotated centres, shape (n, 2)."""
        return self.points

    def read(self, y0: int, y1: int, x0: int, x1: int) -> npt.NDArray[np.uint8]:
        """A window of the image."""
        return self.image[y0:y1, x0:x1]


@dataclass(frozen=True, eq=False)
class SlideSource:
    """A slide read lazily at a scale, with points in that scale's working pixels."""

    key: str
    slide: Slide
    scale: Scale
    points: npt.NDArray[np.float64]

    @property
    def shape(self) -> tuple[int, int]:
        """Working image size."""
        return self.scale.shape

    @property
    def points_yx(self) -> npt.NDArray[np.float64]:
        """Annotated centres in working pixels."""
        return self.points

    def read(self, y0: int, y1: int, x0: int, x1: int) -> npt.NDArray[np.uint8]:
        """A window read through the same reader as inference."""
        return self.slide.reader(self.scale).read(y0, y1, x0, x1)


def level0_to_working(points_yx: npt.NDArray[np.float64], scale: Scale) -> npt.NDArray[np.float64]:
    """Level-0 pixel indices -> working-pixel indices (the inverse of ``Scale.to_level0``)."""
    pts = np.asarray(points_yx, np.float64).reshape(-1, 2)
    return (pts + 0.5) / np.asarray(scale.downsample, np.float64) - 0.5


def _read_image(path: Path) -> npt.NDArray[np.uint8]:
    with PILImage.open(path) as im:
        return np.array(im.convert("RGB"), np.uint8)  # a writable copy (torch wants one)


@dataclass(frozen=True, eq=False)
class Window:
    """A box of another source: an annotated region of a slide or image.

    Points are those inside the box (an annotator marks the nuclei of the region, not the
    ones around it), shifted to the box's origin.
    """

    key: str
    source: Source
    box: tuple[int, int, int, int]  # (y0, x0, y1, x1), half-open, in working pixels

    @property
    def shape(self) -> tuple[int, int]:
        """Size of the box (rows, cols)."""
        y0, x0, y1, x1 = self.box
        return y1 - y0, x1 - x0

    @functools.cached_property
    def points_yx(self) -> npt.NDArray[np.float64]:
        """Annotated centres inside the box, in its pixels."""
        y0, x0, y1, x1 = self.box
        pts = self.source.points_yx - np.array([y0, x0], np.float64)
        pixel = pixel_of(pts)  # the tiling's ownership rule: a point on an edge is counted once
        inside = (pixel >= 0).all(axis=1) & (pixel < np.array([y1 - y0, x1 - x0])).all(axis=1)
        return pts[inside]

    def read(self, y0: int, y1: int, x0: int, x1: int) -> npt.NDArray[np.uint8]:
        """A window of the box."""
        oy, ox = self.box[:2]
        return self.source.read(y0 + oy, y1 + oy, x0 + ox, x1 + ox)


@dataclass(frozen=True, eq=False)
class NormalisedSource:
    """A source read with its colours mapped to a stain reference (Reinhard, in CIELAB).

    The map is the one inference applies to a whole image or slide (its own statistics to
    the reference), fixed per source, so every patch of an image gets the same colours.
    """

    source: Source
    normaliser: Reinhard

    @property
    def key(self) -> str:
        """The source's key."""
        return self.source.key

    @property
    def shape(self) -> tuple[int, int]:
        """The source's size."""
        return self.source.shape

    @property
    def points_yx(self) -> npt.NDArray[np.float64]:
        """The source's points."""
        return self.source.points_yx

    def read(self, y0: int, y1: int, x0: int, x1: int) -> npt.NDArray[np.uint8]:
        """A window, normalised."""
        window = self.source.read(y0, y1, x0, x1)
        if self.normaliser.identity:
            return window
        rgb = torch.from_numpy(np.ascontiguousarray(window)).permute(2, 0, 1).float() / 255.0
        out = self.normaliser(rgb).permute(1, 2, 0).mul(255.0).round().clamp(0, 255)
        normalised: npt.NDArray[np.uint8] = out.to(torch.uint8).numpy()
        return normalised


#: Edge of the central window a source's own stain statistics are measured on.
STATS_EDGE = 1024


def normalise_sources(sources: Sequence[Source], reference: StainStats) -> list[Source]:
    """Each source with its colours normalised to ``reference`` from its own statistics.

    Statistics come from the central :data:`STATS_EDGE`-pixel window of each source (all of
    an image or tile of that size or less, as :func:`wsidet.evaluation.evaluate.predict` measures a
    test image); a source without stained tissue is left as it is.
    """
    out: list[Source] = []
    for source in sources:
        h, w = source.shape
        y0, x0 = max(0, (h - STATS_EDGE) // 2), max(0, (w - STATS_EDGE) // 2)
        crop = source.read(y0, min(h, y0 + STATS_EDGE), x0, min(w, x0 + STATS_EDGE))
        try:
            own = stain_stats([crop])
        except ValueError:  # glass only
            out.append(source)
            continue
        out.append(NormalisedSource(source, Reinhard(own, reference)))
    return out


#: Around the points of a slide without drawn regions, patches may reach this far (working px).
POINT_MARGIN = 64


def _boxes(
    regions: npt.NDArray[np.float64], shape: tuple[int, int]
) -> list[tuple[int, int, int, int]]:
    """Pixel-index boxes as whole pixels inside an image of ``shape``, empty ones dropped."""
    h, w = shape
    out = []
    for y0, x0, y1, x1 in regions:
        box = (
            max(0, math.floor(y0 + 0.5)),
            max(0, math.floor(x0 + 0.5)),
            min(h, math.ceil(y1 + 0.5)),
            min(w, math.ceil(x1 + 0.5)),
        )
        if box[2] > box[0] and box[3] > box[1]:
            out.append(box)
    return out


def plain_image_without_mpp(path: Path) -> AnnotationError:
    """The error for a PNG/JPEG whose pixel size was not given (it is never assumed)."""
    return AnnotationError(
        f"{path.name}: the pixel size of plain images must be given "
        "(image_mpp, --image-mpp; e.g. 0.25 at 40x, 0.5 at 20x)"
    )


def load_sources(
    item: Annotated,
    method: Method,
    *,
    one_based: bool = False,
    image_mpp: float | None = None,
) -> list[Source]:
    """The annotated areas of an image or slide, at ``method.mpp``, as training sources.

    TIFF-based files (SVS, TIFF, OME-TIFF) are read lazily through
    :class:`~wsidet.slide.wsi.Slide` at the method's scale, exactly as inference reads them; their
    pixel size is the file's (``image_mpp``, when given, must agree with it within 5 %), else
    ``image_mpp``. PNG/JPEG images are loaded into
    memory and resampled from ``image_mpp`` to the method's pixel size as slide chunks are.
    A pixel size is never assumed: an image whose size is not known is refused.

    Regions drawn in the annotation file (GeoJSON polygons, e.g. QuPath annotations) become
    one source each, so patches and evaluation stay where nuclei were marked. A slide without
    regions is limited to the box around its points (grown by :data:`POINT_MARGIN`): the rest
    of a slide is not annotated, and neither background nor unmarked nuclei. An image without
    regions is used whole.

    Raises
    ------
    AnnotationError
        The image's pixel size is unknown (a plain image without ``image_mpp``, a slide whose
        file states none), or the annotations mark nothing inside it.
    """
    notes = read_annotations(item.points, one_based=one_based)
    points, regions = notes.points_yx, notes.regions
    whole: Source
    if item.image.suffix.lower() in SLIDE_SUFFIXES:
        slide = open_slide(item.image)
        if slide.mpp is None:
            if image_mpp is None:
                raise AnnotationError(
                    f"{item.image.name} states no pixel size: give it (image_mpp, --image-mpp)"
                )
            slide = slide.with_mpp(image_mpp, "override")
        elif image_mpp is not None and abs(slide.mpp / image_mpp - 1) > 0.05:
            raise AnnotationError(
                f"{item.image.name} states {slide.mpp:.4g} µm/px but {image_mpp:g} was given "
                "for the images (--image-mpp, a dataset's mpp): which is it?"
            )
        scale = slide.scale_for_mpp(method.mpp)
        whole = SlideSource(item.key, slide, scale, level0_to_working(points, scale))
        corners = level0_to_working(regions.reshape(-1, 2), scale).reshape(-1, 4)
        if not len(corners) and len(points):
            pts = whole.points_yx
            corners = np.concatenate([pts.min(0) - POINT_MARGIN, pts.max(0) + POINT_MARGIN])
        boxes = _boxes(corners.reshape(-1, 4), whole.shape)
        if not boxes:
            raise AnnotationError(
                f"{str(item.points)!r} marks no point and no region inside {item.image.name}"
            )
    else:
        if image_mpp is None:
            raise plain_image_without_mpp(item.image)
        image = _read_image(item.image)
        factor = 1.0
        if abs(method.mpp / image_mpp - 1) > 1e-6:
            factor = method.mpp / image_mpp
            h, w = image.shape[:2]
            oh, ow = resampled_size(h, factor), resampled_size(w, factor)
            _, _, wy = resample_weights(0, oh, factor, h)
            _, _, wx = resample_weights(0, ow, factor, w)
            image = resample_window(image, wy, wx)
            points = (points + 0.5) / factor - 0.5
        whole = ImageSource(item.key, image, points)
        corners = (regions.reshape(-1, 2) + 0.5) / factor - 0.5
        boxes = _boxes(corners.reshape(-1, 4), whole.shape)
        if not len(regions):
            return [whole]
    if len(boxes) == 1 and boxes[0] == (0, 0, *whole.shape):
        return [whole]
    return [Window(f"{item.key}#{i}", whole, box) for i, box in enumerate(boxes)]


def load_source(
    item: Annotated,
    method: Method,
    *,
    one_based: bool = False,
    image_mpp: float | None = None,
) -> Source:
    """The one source of an image or slide (see :func:`load_sources`).

    Raises
    ------
    AnnotationError
        The file draws several regions (use :func:`load_sources`).
    """
    sources = load_sources(item, method, one_based=one_based, image_mpp=image_mpp)
    if len(sources) != 1:
        raise AnnotationError(
            f"{str(item.points)!r} has {len(sources)} regions; use load_sources()"
        )
    return sources[0]


def describe(sources: Sequence[Source]) -> dict[str, Any]:
    """A JSON-able record of what a model was trained on."""
    return {
        "sources": [s.key for s in sources],
        "points": int(sum(len(s.points_yx) for s in sources)),
        "pixels": int(sum(s.shape[0] * s.shape[1] for s in sources)),
    }
