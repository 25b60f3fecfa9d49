"""``mapde``: Map and Deconvolve (Raza et al. 2018, ``mapde-raza2018``).

* **Targets**: dot annotations convolved with the mapping filter ``f = max((r - dist) / r, 0)``
  (r = 5, 11×11), clipped to 1 where cones overlap (cross-entropy needs labels in [0, 1]).
* **Network**: a Micro-Net-like U-Net whose last feature map (ReLU, "L-1") is convolved with
  the fixed, non-trainable ``f`` (:class:`wsidet.nets.mapde.MapDeNet`).
* **Loss**: weighted cross-entropy with the network output as logits and positive weight 1000,
  as in the paper (TensorFlow's ``weighted_cross_entropy_with_logits``). Its minimiser is
  ``logit(y) + log(1000)``: the output keeps the cone's shape on a logit scale.
* **Decoding** (``mode="deconv"``, the paper's): Lucy–Richardson deconvolution of the output
  with ``f`` (normalised to unit sum; 2 iterations), threshold, centroids of the regions.
  ``mode="peak"`` is MapDe-Peak: local maxima of the output.

Deviations: a narrower U-Net than Micro-Net (``width`` 32: 32-64-128-256-256 maps, batch
norm; its L-1 layer a 1×1 convolution to one map, a kernel the paper does not give; see
:mod:`wsidet.nets.mapde`), so that it trains in hours rather than days; and region labels that
spread at most ``max_region`` pixels so decoding stays local to a chunk (exactly connected
components for regions smaller than that; see :mod:`wsidet.ops.deconv`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import numpy.typing as npt

from wsidet.errors import ParameterError
from wsidet.methods._registry import register
from wsidet.methods.base import Method
from wsidet.nets import geometry

if TYPE_CHECKING:
    import torch

#: Largest ideal logit (a label of 1 has an infinite minimiser).
_LOGIT_CAP = 20.0


@register
@dataclasses.dataclass(frozen=True)
class MapDe(Method):
    """MapDe: cone-mapped labels, fixed mapping filter, Lucy–Richardson decoding.

    Parameters
    ----------
    mpp : float
        µm/px (the paper works at 20×).
    radius : int
        Mapping filter radius ``r`` in pixels.
    pos_weight : float
        Positive weight of the cross-entropy.
    width : int
        Feature maps of the first U-Net level (doubling to ``8 * width``).
    mode : str
        ``"deconv"`` (Lucy–Richardson + region centroids) or ``"peak"`` (local maxima).
    iterations : int
        Lucy–Richardson iterations.
    threshold : float
        On the deconvolved map (``deconv``) or on the output (``peak``).
    max_region : int
        Steps a region label may spread (``deconv``); larger components are decoded by peaks.
    min_distance : int
        Peak separation minus one (``peak``, and large components in ``deconv``).
    """

    name: ClassVar[str] = "mapde"
    summary: ClassVar[str] = "MapDe: cone-mapped labels, fixed mapping filter, Lucy-Richardson"
    paper: ClassVar[str] = "mapde-raza2018"
    decode_params: ClassVar[tuple[str, ...]] = (
        "mode", "iterations", "threshold", "max_region", "min_distance"
    )  # fmt: skip

    mpp: float = 0.5
    radius: int = 5
    pos_weight: float = 1000.0
    width: int = 32
    mode: str = "deconv"
    iterations: int = 2
    threshold: float = 8.0
    max_region: int = 6
    min_distance: int = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mode not in {"deconv", "peak"}:
            raise ParameterError(f"mapde: mode must be 'deconv' or 'peak', got {self.mode!r}")
        for key in ("radius", "width", "iterations", "max_region", "min_distance"):
            if getattr(self, key) < 1:
                raise ParameterError(f"mapde: {key} must be >= 1, got {getattr(self, key)}")
        if self.pos_weight <= 0:
            raise ParameterError(f"mapde: pos_weight must be > 0, got {self.pos_weight}")

    @property
    def threshold_filters_scores(self) -> bool:
        """Peak mode filters scores; in deconv mode the threshold shapes the regions."""
        return self.mode == "peak"

    @property
    def channels(self) -> tuple[int, ...]:
        """Feature maps per U-Net level: ``width`` doubling to ``8 * width``, five levels."""
        w = self.width
        return (w, 2 * w, 4 * w, 8 * w, 8 * w)

    @property
    def receptive_radius(self) -> int:
        """The U-Net's reach plus the mapping filter's (:func:`.geometry.mapde`)."""
        return geometry.mapde(self.radius, self.channels).receptive_radius

    @property
    def stride(self) -> int:
        """2 to the number of U-Net poolings."""
        return geometry.mapde(self.radius, self.channels).stride

    @property
    def decoder_radius(self) -> int:
        """Lucy–Richardson support plus the centroid decoder's (deconv), or the peak support."""
        from wsidet.ops.support import centroid_support, deconv_support, support

        if self.mode == "peak":
            return support(self.min_distance)
        return deconv_support(self.radius, self.iterations) + centroid_support(
            self.max_region, self.min_distance
        )

    def build_network(self) -> torch.nn.Module:
        """:class:`~wsidet.nets.mapde.MapDeNet`: ``{"logits": (N, 1, H, W)}``."""
        from wsidet.nets.mapde import MapDeNet

        return MapDeNet(self.radius, channels=self.channels)

    def encode(
        self, points_yx: npt.NDArray[np.floating[Any]], shape: tuple[int, int]
    ) -> dict[str, npt.NDArray[np.float32]]:
        """``{"labels": (1, H, W)}``: dots convolved with ``f``, clipped to [0, 1]."""
        from scipy import ndimage

        from wsidet.nets.mapde import mapping_filter
        from wsidet.ops.targets import dot_image

        r = self.radius
        pts = np.asarray(points_yx, np.float64).reshape(-1, 2) + r  # include cones from outside
        dots = dot_image(pts, (shape[0] + 2 * r, shape[1] + 2 * r))
        cones = ndimage.convolve(dots, mapping_filter(r), mode="constant")[r:-r, r:-r]
        return {"labels": np.clip(cones, 0.0, 1.0)[None].astype(np.float32)}

    def ideal_outputs(self, targets: Mapping[str, Any]) -> dict[str, Any]:
        """``{"logits": logit(y) + log(pos_weight)}``, clipped to [0, 20] like the ReLU output."""
        y = np.clip(np.asarray(targets["labels"], np.float64), 1e-12, 1.0 - 1e-9)
        logits = np.log(y) - np.log1p(-y) + math.log(self.pos_weight)
        return {"logits": np.clip(logits, 0.0, _LOGIT_CAP).astype(np.float32)}

    def loss(
        self, outputs: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor]
    ) -> torch.Tensor:
        """Weighted cross-entropy on logits, mean over pixels."""
        import torch
        from torch.nn import functional as F

        logits = outputs["logits"].float()
        weight = torch.tensor(self.pos_weight, device=logits.device)
        return F.binary_cross_entropy_with_logits(logits, targets["labels"], pos_weight=weight)

    def _decode(self, outputs: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        from wsidet.nets.mapde import mapping_filter
        from wsidet.ops.deconv import region_centroids, richardson_lucy
        from wsidet.ops.peaks import local_maxima

        out = outputs["logits"][0].float().clamp(min=0.0)
        if self.mode == "peak":
            return local_maxima(out, min_distance=self.min_distance, threshold=self.threshold)
        psf = torch.from_numpy(mapping_filter(self.radius)).to(out.device)
        deconvolved = richardson_lucy(out, psf / psf.sum(), self.iterations)
        return region_centroids(
            deconvolved,
            self.threshold,
            max_extent=self.max_region,
            min_distance=self.min_distance,
        )
