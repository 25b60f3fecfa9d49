"""``fcrn_a``, ``fcrn_b``: fully convolutional regression networks (Xie, Noble & Zisserman 2015).

* **Targets**: a Gaussian (σ = 2) per annotated cell, each of unit mass, summed and multiplied
  by 100 ("without this, the peak value for a Gaussian with σ = 2 is only about 0.07").
* **Network**: FCRN-A or FCRN-B (:mod:`wsidet.nets.fcrn`), with the input normalised by its
  own mean and standard deviation (in a sliding 101-pixel window: the paper normalised each
  100×100 training patch by its own statistics, and a sliding window is the fully
  convolutional form of that, which does not depend on tiling).
* **Loss**: mean squared error between the output and the scaled density.
* **Decoding**: local maxima of the density; the **count** is the integral of the density
  (divided by 100), reported per chunk and per slide by the pipeline.

FCRN-A has the paper's layers; FCRN-B's are reconstructed from its prose (see
:mod:`wsidet.nets.fcrn`). FCRN-B keeps 256 feature maps at full resolution, so it is about five
times slower than FCRN-A.

Deviations (details in :mod:`wsidet.nets.fcrn`): each unConv has a ReLU after its convolution
as well (the paper's is upsampling + ReLU + convolution), kept so that trained weights stay
valid; FCRN-B's encoder sees 28×28 pixels rather than the paper's 32×32, because the figure
that fixes its 5×5 layers is not in the text and any layout giving 32×32 would be a guess; and
the normalisation is the sliding-window form of the paper's per-patch one (above).
"""

from __future__ import annotations

import dataclasses
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


@dataclasses.dataclass(frozen=True)
class _Fcrn(Method):
    """Density regression with an FCRN (shared by FCRN-A and FCRN-B).

    Parameters
    ----------
    mpp : float
    sigma : float
        Standard deviation of each cell's Gaussian, pixels.
    scale : float
        Density multiplier of the targets.
    norm_window : int
        Window of the per-patch normalisation (odd).
    threshold : float
        Minimum (scaled) density of a peak.
    min_distance : int
        Peak separation minus one.
    edges : str
        What a training target does with the mass of a dot's Gaussian that falls outside its
        image: ``"reflect"`` mirrors it back in (:func:`wsidet.ops.targets.reflect_at_edges`), so
        an image's target integrates to its number of dots, the count it is scored against;
        ``"cut"`` (the paper's, and wsidet's before) drops it, which made a perfect regressor
        undercount the VGG test images by 1.6 cells. Training only.
    """

    paper: ClassVar[str] = "fcrn-xie-noble-zisserman2015"
    decode_params: ClassVar[tuple[str, ...]] = ("threshold", "min_distance")
    architecture: ClassVar[str] = "A"

    mpp: float = 0.5
    sigma: float = 2.0
    scale: float = 100.0
    norm_window: int = 101
    threshold: float = 1.0
    min_distance: int = 3
    edges: str = "reflect"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.edges not in {"reflect", "cut"}:
            raise ParameterError(
                f"{self.name}: edges must be 'reflect' or 'cut', got {self.edges!r}"
            )
        if self.sigma <= 0 or self.scale <= 0:
            raise ParameterError(f"{self.name}: sigma and scale must be > 0")
        if self.norm_window < 1 or self.norm_window % 2 == 0:
            raise ParameterError(f"{self.name}: norm_window must be odd, got {self.norm_window}")
        if self.min_distance < 1:
            raise ParameterError(f"{self.name}: min_distance must be >= 1")

    @property
    def layer_spec(self) -> tuple[tuple[str, int, int], ...]:
        """The layer specification (:data:`~wsidet.nets.geometry.FCRN_A` or ``FCRN_B``)."""
        return geometry.FCRN_A if self.architecture == "A" else geometry.FCRN_B

    @property
    def receptive_radius(self) -> int:
        """The layers' reach plus the normalisation window's (:func:`.geometry.fcrn`)."""
        return geometry.fcrn(self.layer_spec, self.norm_window).receptive_radius

    @property
    def stride(self) -> int:
        """2 to the number of poolings."""
        return geometry.fcrn(self.layer_spec, self.norm_window).stride

    @property
    def decoder_radius(self) -> int:
        """Support of the peak decoder."""
        from wsidet.ops.support import support

        return support(self.min_distance)

    @property
    def targets_mirror_image_edges(self) -> bool:
        """True with ``edges="reflect"``."""
        return self.edges == "reflect"

    def build_network(self) -> torch.nn.Module:
        """:class:`~wsidet.nets.fcrn.FCRN`: ``{"density": (N, 1, H, W)}``."""
        from wsidet.nets.fcrn import FCRN

        return FCRN(self.layer_spec, norm_window=self.norm_window)

    def encode(
        self, points_yx: npt.NDArray[np.floating[Any]], shape: tuple[int, int]
    ) -> dict[str, npt.NDArray[np.float32]]:
        """``{"density": (1, H, W)}``: ``scale`` × the sum of unit-mass Gaussians."""
        from wsidet.ops.targets import gaussian_density

        density = gaussian_density(points_yx, shape, self.sigma)
        return {"density": (self.scale * density)[None].astype(np.float32)}

    def loss(
        self, outputs: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor]
    ) -> torch.Tensor:
        """Mean squared error."""
        from torch.nn import functional as F

        return F.mse_loss(outputs["density"].float(), targets["density"])

    def aggregate(self, outputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{"count": density / scale}``: its sum over a region is the region's cell count."""
        return {"count": outputs["density"][0].float() / self.scale}

    def _decode(self, outputs: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        from wsidet.ops.peaks import local_maxima

        return local_maxima(
            outputs["density"][0].float(),
            min_distance=self.min_distance,
            threshold=self.threshold,
        )


@register
@dataclasses.dataclass(frozen=True)
class FcrnA(_Fcrn):
    """FCRN-A: 3×3 kernels, three poolings, 1.37 M parameters."""

    name: ClassVar[str] = "fcrn_a"
    summary: ClassVar[str] = "FCRN-A: Gaussian density regression (3x3 kernels, 1.4M params)"
    architecture: ClassVar[str] = "A"


@register
@dataclasses.dataclass(frozen=True)
class FcrnB(_Fcrn):
    """FCRN-B: two convolutions per pooling, 5×5 kernels in some layers, 3.73 M parameters."""

    name: ClassVar[str] = "fcrn_b"
    summary: ClassVar[str] = "FCRN-B: Gaussian density regression (5x5 kernels, 3.7M params)"
    architecture: ClassVar[str] = "B"
