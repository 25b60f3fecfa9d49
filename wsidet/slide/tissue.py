"""Tissue detection on a low-resolution image, and queries against the resulting mask.

Glass is bright and grey; stained tissue is coloured. The mask thresholds HSV saturation with
Otsu's method, clamped to a range measured on H&E: background glass sits near 0.01, the palest
tissue near 0.10. The clamp matters both ways: a slide that is all tissue has no glass mode for
Otsu to find (its threshold would cut lightly stained tissue away), and a blank slide has only
noise (an unclamped threshold would call half of it tissue).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

#: Default clamp of the saturation threshold (fractions of 1).
MIN_SATURATION = 0.04
MAX_SATURATION = 0.10


def saturation(rgb: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    """HSV saturation ``(max - min) / max`` of an RGB image.

    Parameters
    ----------
    rgb : ndarray, shape (h, w, 3), uint8

    Returns
    -------
    ndarray, shape (h, w), float32 in [0, 1]; 0 where the pixel is black.
    """
    rgb_f = rgb.astype(np.float32)
    hi = rgb_f.max(axis=-1)
    lo = rgb_f.min(axis=-1)
    return np.where(hi > 0, (hi - lo) / np.maximum(hi, 1.0), 0.0).astype(np.float32)


def saturation_threshold(
    sat: npt.NDArray[np.float32],
    min_saturation: float = MIN_SATURATION,
    max_saturation: float = MAX_SATURATION,
) -> float:
    """Otsu's threshold of a saturation image, clamped to ``[min_saturation, max_saturation]``.

    Parameters
    ----------
    sat : ndarray, shape (h, w), float in [0, 1]

    Returns
    -------
    float
    """
    from skimage.filters import threshold_otsu

    if sat.size == 0 or float(sat.max()) == float(sat.min()):
        otsu = min_saturation
    else:
        otsu = float(threshold_otsu(sat))
    return float(np.clip(otsu, min_saturation, max_saturation))


def tissue_from_rgb(
    rgb: npt.NDArray[np.uint8],
    *,
    min_saturation: float = MIN_SATURATION,
    max_saturation: float = MAX_SATURATION,
    min_area: int = 4,
    dilation: int = 2,
) -> npt.NDArray[np.bool_]:
    """Binary tissue mask of a low-resolution RGB image.

    Parameters
    ----------
    rgb : ndarray, shape (h, w, 3), uint8
        A thumbnail, typically 8-16 µm per pixel.
    min_saturation, max_saturation : float
        Clamp of the saturation threshold.
    min_area : int
        Connected components smaller than this (in mask pixels) are dropped as dust.
    dilation : int
        Grow the mask by this many pixels so nuclei at the tissue border are kept.

    Returns
    -------
    ndarray, shape (h, w), bool
    """
    sat = saturation(rgb)
    mask = sat > saturation_threshold(sat, min_saturation, max_saturation)
    if min_area > 1 and mask.any():
        labels, n = ndimage.label(mask)
        sizes = np.bincount(labels.ravel(), minlength=n + 1)
        keep = sizes >= min_area
        keep[0] = False
        mask = keep[labels]
    if dilation > 0 and mask.any():
        mask = ndimage.binary_dilation(mask, iterations=dilation)
    return mask


@dataclass(frozen=True, eq=False)
class TissueMask:
    """A tissue mask and its scale relative to level 0 of the slide.

    Parameters
    ----------
    mask : ndarray, shape (h, w), bool
        True on tissue.
    downsample : tuple of float
        Level-0 pixels per mask pixel, (rows, cols).
    """

    mask: npt.NDArray[np.bool_]
    downsample: tuple[float, float]

    @property
    def fraction(self) -> float:
        """Fraction of the slide covered by tissue."""
        return float(self.mask.mean()) if self.mask.size else 0.0

    def _integral(self) -> npt.NDArray[np.int64]:
        integral = np.zeros((self.mask.shape[0] + 1, self.mask.shape[1] + 1), np.int64)
        integral[1:, 1:] = self.mask.cumsum(0).cumsum(1)
        return integral

    def any_in_boxes(self, boxes_yx: npt.NDArray[np.float64]) -> npt.NDArray[np.bool_]:
        """Whether each level-0 box touches tissue.

        Parameters
        ----------
        boxes_yx : ndarray, shape (n, 4)
            ``(y0, x0, y1, x1)`` in level-0 pixels, half-open.

        Returns
        -------
        ndarray, shape (n,), bool
        """
        boxes = np.asarray(boxes_yx, np.float64).reshape(-1, 4)
        h, w = self.mask.shape
        dy, dx = self.downsample
        y0 = np.clip(np.floor(boxes[:, 0] / dy), 0, h).astype(np.int64)
        x0 = np.clip(np.floor(boxes[:, 1] / dx), 0, w).astype(np.int64)
        y1 = np.clip(np.ceil(boxes[:, 2] / dy), 0, h).astype(np.int64)
        x1 = np.clip(np.ceil(boxes[:, 3] / dx), 0, w).astype(np.int64)
        s = self._integral()
        counts = s[y1, x1] - s[y0, x1] - s[y1, x0] + s[y0, x0]
        return np.asarray(counts > 0)

    def contains(self, points_xy: npt.NDArray[np.float64]) -> npt.NDArray[np.bool_]:
        """Whether each level-0 point lies on tissue.

        Parameters
        ----------
        points_xy : ndarray, shape (n, 2)
            ``(x, y)`` in level-0 pixels.

        Returns
        -------
        ndarray, shape (n,), bool
        """
        pts = np.asarray(points_xy, np.float64).reshape(-1, 2)
        h, w = self.mask.shape
        cols = np.clip((pts[:, 0] / self.downsample[1]).astype(np.int64), 0, w - 1)
        rows = np.clip((pts[:, 1] / self.downsample[0]).astype(np.int64), 0, h - 1)
        return np.asarray(self.mask[rows, cols])
