"""Training patches and their targets, cut from annotated sources at the method's pixel size.

:class:`PointDataset` draws random patches of the sources (:mod:`wsidet.annotations.sources`),
augments image and points together, and encodes the targets with ``method.encode``. Every
patch is determined by ``(seed, epoch, index)``, so a run is reproducible whatever the number
of data-loading workers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import torch

from wsidet.annotations.sources import Source
from wsidet.methods.base import Method
from wsidet.ops.targets import reflect_at_edges
from wsidet.slide.resample import resample_weights, resample_window
from wsidet.train.augment import Augment, dihedral


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
