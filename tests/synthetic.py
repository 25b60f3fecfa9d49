"""Synthetic H&E-like images with nuclei at known positions, for tests."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

#: Eosin-pink stroma (saturation 0.22, like CMU-1's paler tissue) and haematoxylin nuclei.
BACKGROUND = np.array([230, 180, 210], np.float32)
NUCLEUS = np.array([78, 52, 140], np.float32)
GLASS = np.array([245, 245, 245], np.float32)


def random_points(
    rng: np.random.Generator, shape: tuple[int, int], n: int, min_sep: float, margin: float
) -> npt.NDArray[np.float64]:
    """Up to ``n`` points (y, x) at least ``min_sep`` apart and ``margin`` from the border."""
    pts: list[npt.NDArray[np.float64]] = []
    h, w = shape
    tries = 0
    while len(pts) < n and tries < 50 * n:
        tries += 1
        p = rng.uniform([margin, margin], [h - margin, w - margin])
        if all(np.hypot(*(p - q)) >= min_sep for q in pts):
            pts.append(p)
    return np.array(pts, np.float64).reshape(-1, 2)


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
