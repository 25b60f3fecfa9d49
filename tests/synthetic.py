"""Synthetic H&E-like images with nuclei at known positions, for tests."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import numpy.typing as npt
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

#: Eosin-pink stroma (saturation 0.22, like CMU-1's paler tissue) and haematoxylin nuclei.
BACKGROUND = np.array([230, 180, 210], np.float32)
NUCLEUS = np.array([78, 52, 140], np.float32)
GLASS = np.array([245, 245, 245], np.float32)


def random_points(
    rng: np.random.Generator, shape: tuple[int, int], n: int, min_sep: float, margin: float
) -> npt.NDArray[np.float64]:
    """Up to ``n`` points (y, x) at least ``min_sep`` apart and ``margin`` from the border."""
    # One draw per try, as ever (so a seed keeps giving the same points), checked against all
    # accepted points at once.
    pts = np.empty((max(n, 0), 2), np.float64)
    h, w = shape
    count = tries = 0
    while count < n and tries < 50 * n:
        tries += 1
        p = rng.uniform([margin, margin], [h - margin, w - margin])
        d = pts[:count] - p
        if np.all(np.hypot(d[:, 0], d[:, 1]) >= min_sep):
            pts[count] = p
            count += 1
    return pts[:count].copy()


def blob_image(
    shape: tuple[int, int],
    points_yx: npt.NDArray[np.float64],
    radius: float,
    *,
    rng: np.random.Generator,
    noise: float = 4.0,
    background: npt.NDArray[np.float32] = BACKGROUND,
) -> npt.NDArray[np.uint8]:
    """RGB image of anti-aliased dark discs centred on ``points_yx`` (pixel centres integer).

    Parameters
    ----------
    shape : (rows, cols)
    points_yx : ndarray, shape (n, 2)
    radius : float
        Disc radius in pixels.
    """
    h, w = shape
    coverage = np.zeros((h, w), np.float32)
    r = int(np.ceil(radius)) + 2
    for y, x in points_yx:
        y0, y1 = max(0, int(y) - r), min(h, int(y) + r + 1)
        x0, x1 = max(0, int(x) - r), min(w, int(x) + r + 1)
        yy, xx = np.mgrid[y0:y1, x0:x1]
        d = np.hypot(yy - y, xx - x)
        coverage[y0:y1, x0:x1] = np.maximum(
            coverage[y0:y1, x0:x1], np.clip(radius + 0.5 - d, 0.0, 1.0)
        )
    image = background + coverage[..., None] * (NUCLEUS - background)
    image += rng.normal(0.0, noise, image.shape).astype(np.float32)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


# ---- hypothesis strategies: structure from drawn values, so that a failure shrinks ----------


def separated(points_yx: npt.ArrayLike, min_sep: float) -> npt.NDArray[np.float64]:
    """The points, in order, less each one closer than ``min_sep`` to one kept before it."""
    pts = np.asarray(points_yx, np.float64).reshape(-1, 2)
    keep = np.zeros(len(pts), bool)
    for i, p in enumerate(pts):
        kept = pts[keep]
        keep[i] = bool(np.all(np.hypot(kept[:, 0] - p[0], kept[:, 1] - p[1]) >= min_sep))
    return pts[keep]


def _value(draw: st.DrawFn, value: float | tuple[float, float]) -> float:
    """A fixed value, or one drawn from a (low, high) range."""
    if isinstance(value, tuple):
        return float(draw(st.floats(*value)))
    return float(value)


@st.composite
def point_lists(
    draw: st.DrawFn,
    shape: tuple[int, int],
    *,
    max_points: int,
    min_points: int = 0,
    margin: float = 0.0,
    step: float = 0.25,
) -> npt.NDArray[np.float64]:
    """Points (y, x) in ``[margin, size - margin)`` on a ``step`` px lattice, as drawn values.

    Coordinates are drawn as integers (multiples of ``step``): cheaper to draw than floats, so
    that a layout may hold hundreds of points, and they shrink towards the image's corner.
    """
    h, w = shape
    hi = [max(0, math.ceil((s - margin) / step) - 1) for s in (h, w)]
    lo = [min(math.ceil(margin / step), top) for top in hi]
    n = draw(st.integers(min_points, max(min_points, max_points)), label="n_points")
    cells = draw(
        st.lists(
            st.tuples(st.integers(lo[0], hi[0]), st.integers(lo[1], hi[1])),
            min_size=n,
            max_size=n,
        ),
        label="points",
    )
    return np.array(cells, np.float64).reshape(-1, 2) * step


@dataclasses.dataclass(frozen=True)
class BlobLayout:
    """Nuclei drawn by hypothesis: where they are, how large, and the seed of the pixel noise."""

    shape: tuple[int, int]
    points_yx: npt.NDArray[np.float64]
    radius: float
    noise_seed: int

    def image(self, noise: float = 4.0) -> npt.NDArray[np.uint8]:
        """The :func:`blob_image` of the layout (deterministic)."""
        rng = np.random.default_rng(self.noise_seed)
        return blob_image(self.shape, self.points_yx, self.radius, rng=rng, noise=noise)


@st.composite
def blob_layouts(
    draw: st.DrawFn,
    shape: tuple[int, int],
    *,
    max_points: int,
    min_points: int = 0,
    min_sep: float | tuple[float, float],
    radius: float | tuple[float, float],
    margin: float = 0.0,
) -> BlobLayout:
    """Drawn points at least ``min_sep`` apart (later ones too close to earlier ones are dropped),
    a drawn radius, and a drawn seed for the noise only; a fixed value or a (low, high) range
    for ``min_sep`` and ``radius``."""
    sep = _value(draw, min_sep)
    r = _value(draw, radius)
    pts = draw(point_lists(shape, max_points=max_points, min_points=min_points, margin=margin))
    seed = draw(st.integers(0, 2**16), label="noise_seed")
    return BlobLayout(shape, separated(pts, sep), r, seed)


@st.composite
def level_maps(
    draw: st.DrawFn, shape: tuple[int, int], levels: int, *, max_boxes: int = 8
) -> npt.NDArray[np.float32]:
    """Dense score maps of few distinct values (plateaus, ties everywhere), from drawn values.

    A drawn tile of up to 12 × 12 values repeated over the map (so every pixel varies, at the
    cost of a few dozen draws, where drawing every pixel of a large map would be slow), then
    drawn pixels (hypothesis' sparse arrays) and drawn rectangles (regions of every size,
    touching and overlapping) over it. Shrinks towards a constant map.
    """
    h, w = shape
    values = st.integers(0, levels - 1)
    tile_shape = st.tuples(st.integers(1, min(h, 12)), st.integers(1, min(w, 12)))
    tile = draw(hnp.arrays(np.int64, tile_shape, elements=values, fill=st.nothing()), label="tile")
    score = np.tile(tile, (-(-h // tile.shape[0]), -(-w // tile.shape[1])))[:h, :w]
    pixels = draw(hnp.arrays(np.int64, shape, elements=values, fill=st.just(-1)), label="pixels")
    score = np.where(pixels >= 0, pixels, score)
    boxes = st.tuples(
        st.integers(0, h - 1), st.integers(0, w - 1), st.integers(1, h), st.integers(1, w), values
    )
    for y, x, bh, bw, value in draw(st.lists(boxes, max_size=max_boxes), label="boxes"):
        score[y : y + bh, x : x + bw] = value
    return score.astype(np.float32)


@st.composite
def rgb_images(draw: st.DrawFn, shape: tuple[int, int]) -> npt.NDArray[np.uint8]:
    """uint8 RGB images from drawn values: a drawn colour pattern that varies at every pixel
    (a quadratic in y and x, modulo 256, per channel), plus drawn pixels over it."""
    h, w = shape
    coef = draw(
        hnp.arrays(np.int64, (6, 3), elements=st.integers(0, 255), fill=st.nothing()),
        label="pattern",
    )
    yy, xx = np.mgrid[0:h, 0:w]
    terms = np.stack([np.ones_like(yy), yy, xx, yy * yy, yy * xx, xx * xx], axis=-1)
    image = (terms @ coef) % 256
    extra = draw(hnp.arrays(np.int64, (h, w, 3), elements=st.integers(0, 255), fill=st.just(0)))
    return ((image + extra) % 256).astype(np.uint8)
