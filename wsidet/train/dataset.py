"""Training patches and their targets, cut from images or slides at the method's pixel size.

A source is an image (PNG/TIFF, taken as being at the method's pixel size unless told
otherwise) or a slide read exactly as inference reads it (:meth:`Slide.scale_for_mpp` and the
same lazy readers), with its points mapped into the same working pixels. :class:`PointDataset`
draws random patches, augments image and points together, and encodes the targets with
``method.encode``. Every patch is determined by ``(seed, epoch, index)``, so a run is
reproducible whatever the number of data-loading workers.
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

from wsidet.methods.base import Method
from wsidet.resample import resample_weights, resample_window, resampled_size
from wsidet.slide import Scale, Slide, open_slide
from wsidet.stain import Reinhard, StainStats, stain_stats
from wsidet.targets import reflect_at_edges
from wsidet.train.augment import Augment, dihedral
from wsidet.train.sources import SLIDE_SUFFIXES, Annotated, AnnotationError, read_annotations


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
        pixel = np.floor(pts + 0.5)
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
    an image or tile of that size or less, as :func:`wsidet.evaluate.predict` measures a
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
    :class:`~wsidet.slide.Slide` at the method's scale, exactly as inference reads them; their
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


class PointDataset(torch.utils.data.Dataset[tuple[torch.Tensor, dict[str, torch.Tensor]]]):
    """Random patches of annotated sources with their encoded targets.

    Parameters
    ----------
    sources : sequence of Source
    method : Method
        Encodes the targets.
    patch : int
        Patch edge in working pixels (sources smaller than that are reflected to fit).
    samples : int
        Patches per epoch.
    augment : Augment, optional
        None for no augmentation.
    seed : int
    weights : sequence of float, shape (len(sources),), optional
        Probability of drawing each source (normalised here); default: in proportion to
        area. :func:`mixture_weights` gives weights for several datasets.

    Notes
    -----
    Items are ``(image, targets)``: image float32 in [0, 1] of shape (3, patch, patch), targets a
    dict of float32 tensors of shape (C, patch, patch).
    """

    def __init__(
        self,
        sources: Sequence[Source],
        method: Method,
        *,
        patch: int = 128,
        samples: int = 512,
        augment: Augment | None = None,
        seed: int = 0,
        weights: Sequence[float] | None = None,
    ) -> None:
        if not sources:
            raise ValueError("PointDataset needs at least one source")
        if patch < 8 or samples < 1:
            raise ValueError(f"patch must be >= 8 and samples >= 1, got {patch}, {samples}")
        self.sources = list(sources)
        self.method = method
        self.patch = patch
        self.samples = samples
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        if weights is None:
            weights = [s.shape[0] * s.shape[1] for s in self.sources]
        w = np.asarray(weights, np.float64)
        if w.shape != (len(self.sources),) or not np.all(np.isfinite(w)) or (w < 0).any():
            raise ValueError("weights must be one finite, non-negative number per source")
        if not w.sum() > 0:
            raise ValueError("weights must not all be zero")
        self._weights = w / w.sum()

    def set_epoch(self, epoch: int) -> None:
        """Draw a new set of patches (call before each epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.samples

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        source = self.sources[int(rng.choice(len(self.sources), p=self._weights))]
        image, points = self._cut(source, rng)
        if self.augment is not None:
            if self.augment.flips:
                image, points = dihedral(image, points, int(rng.integers(8)))
            image = self.augment.colour(image, rng)
        targets = self.method.encode(points, (self.patch, self.patch))
        tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0
        return tensor, {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in targets.items()}

    def _cut(
        self, source: Source, rng: np.random.Generator
    ) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.float64]]:
        """A random patch (scale-jittered if asked) and the points near it, in patch pixels."""
        scale = 1.0
        if self.augment is not None and self.augment.scale > 0:
            scale = float(rng.uniform(1 - self.augment.scale, 1 + self.augment.scale))
        size = math.ceil(self.patch * scale)
        h, w = source.shape
        y0 = int(rng.integers(0, max(1, h - size + 1)))
        x0 = int(rng.integers(0, max(1, w - size + 1)))
        window = source.read(y0, min(h, y0 + size), x0, min(w, x0 + size))
        points = source.points_yx - np.array([y0, x0], np.float64)
        if self.method.targets_mirror_image_edges:
            # The image's edges in patch pixels. An axis padded past the image (a source
            # smaller than the patch) is left alone: its padding already repeats the points
            # with period 2n, and a reflection would land on those copies twice.
            rows, cols = window.shape[0] == size, window.shape[1] == size
            points = reflect_at_edges(
                points,
                -y0 - 0.5 if rows else None,
                h - y0 - 0.5 if rows else None,
                -x0 - 0.5 if cols else None,
                w - x0 - 0.5 if cols else None,
            )
        if window.shape[0] < size or window.shape[1] < size:
            # A source smaller than the patch is mirrored to fill it, its nuclei with it.
            points = _mirror_points(points, window.shape[:2], size)
            pad = ((0, size - window.shape[0]), (0, size - window.shape[1]), (0, 0))
            window = np.pad(window, pad, mode="symmetric")
        if scale != 1.0:
            _, _, wy = resample_weights(0, self.patch, scale, size)
            _, _, wx = resample_weights(0, self.patch, scale, size)
            window = resample_window(window, wy, wx)
            points = (points + 0.5) / scale - 0.5
        window = window[: self.patch, : self.patch]
        # Keep points whose influence can reach the patch (targets reach tens of pixels).
        margin = 64
        near = np.all((points > -margin) & (points < self.patch + margin), axis=1)
        return window, points[near]


def mixture_weights(
    groups: Sequence[Sequence[Source]], shares: Sequence[float]
) -> npt.NDArray[np.float64]:
    """Drawing probabilities for the sources of several datasets, concatenated in order.

    Each dataset is drawn with probability proportional to its share, and within a dataset
    each source in proportion to its area, so a dataset of many small tiles is not drawn more
    often than one of a few large images.

    Parameters
    ----------
    groups : sequence of sequence of Source
        The sources of each dataset.
    shares : sequence of float, shape (len(groups),)
        Relative weight of each dataset (> 0).

    Returns
    -------
    ndarray, shape (sum of len(group),)
        Sums to 1.
    """
    if len(groups) != len(shares):
        raise ValueError(f"{len(groups)} datasets but {len(shares)} shares")
    total = float(sum(shares))
    if any(not (s > 0 and math.isfinite(s)) for s in shares) or not total > 0:
        raise ValueError(f"dataset shares must be finite and > 0, got {list(shares)}")
    parts = []
    for group, share in zip(groups, shares, strict=True):
        if not group:
            raise ValueError("a dataset has no source")
        areas = np.array([s.shape[0] * s.shape[1] for s in group], np.float64)
        parts.append(areas / areas.sum() * share / total)
    return np.concatenate(parts)


def _mirror_points(
    points: npt.NDArray[np.float64], shape: tuple[int, int], size: int
) -> npt.NDArray[np.float64]:
    """The points of a window and their copies in its symmetric padding up to ``size``.

    ``np.pad(mode="symmetric")`` repeats an axis of length ``n`` with period ``2 n``, every
    other copy mirrored (index ``i`` there shows ``2 n - 1 - i``); copies just past ``size``
    are kept because their targets reach into the patch.
    """
    for axis, n in enumerate(shape):
        if n >= size:
            continue
        copies = []
        for k in range(math.ceil(size / (2 * n)) + 1):
            shifted, mirrored = points.copy(), points.copy()
            shifted[:, axis] += 2 * n * k
            mirrored[:, axis] = 2 * n * (k + 1) - 1 - points[:, axis]
            copies += [shifted, mirrored]
        points = np.concatenate(copies)
    return points


def collate(
    batch: Sequence[tuple[torch.Tensor, dict[str, torch.Tensor]]],
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Stack images and each target into batches."""
    images = torch.stack([b[0] for b in batch])
    keys = batch[0][1].keys()
    return images, {k: torch.stack([b[1][k] for b in batch]) for k in keys}


def describe(sources: Sequence[Source]) -> dict[str, Any]:
    """A JSON-able record of what a model was trained on."""
    return {
        "sources": [s.key for s in sources],
        "points": int(sum(len(s.points_yx) for s in sources)),
        "pixels": int(sum(s.shape[0] * s.shape[1] for s in sources)),
    }
