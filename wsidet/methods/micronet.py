"""``micronet``: FCN regression of exponential proximity maps (Xing et al. 2019).

* **Targets**: ``y = (exp(α (1 - D/d)) - 1) / (exp(α) - 1)`` where ``D <= d`` (else 0), α = 3,
  ``d`` = 15 px at 40× scaled with the pixel size (7.5 px at 0.5 µm/px), multiplied by 5
  ("we scale the proximity values by a factor (i.e., 5) to facilitate training").
* **Network**: residual U-Net with concatenations and multi-context aggregation, ELU + batch
  norm, sigmoid output scaled by 5 (:mod:`wsidet.nets.micronet`).
* **Loss**: ``½ Σ (y + λ ȳ)(o - y)²`` normalised by the number of pixels, ȳ the image's mean
  target, λ = 5, averaged over the batch.
* **Decoding**: suppress values below ``ξ`` times the map's maximum, then local maxima.

Deviations:

* The paper's maximum is that of each 500×500 test image; on a slide it would make detections
  depend on where chunks are cut, so wsidet uses the largest value the map can take (the
  scale, 5): ``ξ · 5``.
* Network widths are not given in the paper (see :mod:`wsidet.nets.micronet`).
* Residual blocks have no ELU between their second batch norm and the sum (the standard form
  of He et al. 2016; the paper's text has an ELU after every batch norm).
* No per-channel mean/std normalisation of the input: batch norm after the first convolution
  absorbs any fixed one, and per-image statistics would tie detections to the chunking.

Only ``d`` follows ``mpp`` (it is given at 40×); every other pixel parameter stays in pixels.
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

#: The paper's magnification: d = 15 px at 40×, taken as 0.25 µm/px.
_MPP_40X = 0.25


@register
@dataclasses.dataclass(frozen=True)
class MicroNetMethod(Method):
    """MicroNet: exponential proximity regression.

    Parameters
    ----------
    mpp : float
    alpha : float
        Decay ``α``.
    d_40x : float
        Distance threshold ``d`` in pixels at 40×; scaled by ``0.25 / mpp``.
    scale : float
        Target and output scale.
    lam : float
        ``λ`` of the weighted loss.
    width : int
        Feature maps of the first block (32-64-128-128 for 32).
    xi : float
        ``ξ``: peaks below ``ξ * scale`` are suppressed.
    min_distance : int
        Peak separation minus one.
    """

    name: ClassVar[str] = "micronet"
    summary: ClassVar[str] = "MicroNet: residual U-Net regressing exponential proximity maps"
    paper: ClassVar[str] = "micronet-xing2019"
    decode_params: ClassVar[tuple[str, ...]] = ("xi", "min_distance")
    threshold_param: ClassVar[str] = "xi"

    mpp: float = 0.5
    alpha: float = 3.0
    d_40x: float = 15.0
    scale: float = 5.0
    lam: float = 5.0
    width: int = 32
    xi: float = 0.5
    min_distance: int = 3

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.alpha <= 0 or self.d_40x <= 0 or self.scale <= 0 or self.lam < 0:
            raise ParameterError("micronet: alpha, d_40x and scale must be > 0, lam >= 0")
        if not 0 <= self.xi <= 1:
            raise ParameterError(f"micronet: xi must be in [0, 1], got {self.xi}")
        if self.width < 1 or self.min_distance < 1:
            raise ParameterError("micronet: width and min_distance must be >= 1")

    def threshold_for_score(self, score: float) -> float:
        """Scores are map values; the threshold is ``xi * scale``."""
        return float(score) / self.scale

    def score_for_threshold(self, threshold: float) -> float:
        """``xi * scale``."""
        return float(threshold) * self.scale

    @property
    def d(self) -> float:
        """Distance threshold in pixels at this method's ``mpp``."""
        return self.d_40x * _MPP_40X / self.mpp

    @property
    def channels(self) -> tuple[int, ...]:
        """Feature maps of the four downsampling blocks: ``width`` doubling to ``4 * width``."""
        w = self.width
        return (w, 2 * w, 4 * w, 4 * w)

    @property
    def receptive_radius(self) -> int:
        """Computed from the layers (:func:`.geometry.micronet`)."""
        return geometry.micronet(self.channels).receptive_radius

    @property
    def stride(self) -> int:
        """2 to the number of downsamplings."""
        return geometry.micronet(self.channels).stride

    @property
    def decoder_radius(self) -> int:
        """Support of the peak decoder."""
        from wsidet.ops.support import support

        return support(self.min_distance)

    def build_network(self) -> torch.nn.Module:
        """:class:`~wsidet.nets.micronet.MicroNet`: ``{"proximity": (N, 1, H, W)}``."""
        from wsidet.nets.micronet import MicroNet

        return MicroNet(self.channels, scale=self.scale)

    def encode(
        self, points_yx: npt.NDArray[np.floating[Any]], shape: tuple[int, int]
    ) -> dict[str, npt.NDArray[np.float32]]:
        """``{"proximity": (1, H, W)}``: scaled exponential proximity."""
        from wsidet.ops.targets import nearest_distance

        dist, _ = nearest_distance(points_yx, shape, limit=self.d + 1)
        decay = (np.exp(self.alpha * (1.0 - dist / self.d)) - 1.0) / math.expm1(self.alpha)
        prox = np.where(dist <= self.d, decay, 0.0) * self.scale
        return {"proximity": prox[None].astype(np.float32)}

    def loss(
        self, outputs: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor]
    ) -> torch.Tensor:
        """Weighted squared error with per-image weight ``y + λ ȳ``, per pixel, batch mean."""
        o = outputs["proximity"].float()
        y = targets["proximity"]
        mean = y.mean(dim=(1, 2, 3), keepdim=True)
        return (0.5 * (y + self.lam * mean) * (o - y) ** 2).mean()

    def _decode(self, outputs: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        from wsidet.ops.peaks import local_maxima

        return local_maxima(
            outputs["proximity"][0].float(),
            min_distance=self.min_distance,
            threshold=self.xi * self.scale,
        )
