"""``voca``: vector oriented confidence accumulation (Xie et al. 2019).

* **Targets**: a confidence disc (1 where the nearest centre is closer than r = 12), the
  localisation vector from each disc pixel to its nearest centre (dy, dx), and the weight of
  contribution, the number of centres closer than r.
* **Network**: residual encoder-decoder with three heads: sigmoid, identity, ReLU
  (:mod:`wsidet.nets.voca`).
* **Loss**: binary cross-entropy weighted by the inverse class frequencies of the batch, plus
  λ1 × smooth-L1 of the vectors on the disc pixels (summed over dy and dx) and λ2 × smooth-L1 of
  the weights; λ1 = λ2 = 1.
* **Decoding**: every pixel adds ``wt × conf`` to the pixel its vector points at (a scatter-add
  on the device), non-maximum suppression with a 4-pixel distance, and the score of a detection
  is the sum of the accumulator within 2 pixels.

Deviations:

* The paper normalises the scores of each image to [0, 1]; that makes a score depend on the
  rest of the image (and on tiling), so wsidet keeps raw sums and expresses the threshold as a
  fraction of a full disc, ``threshold × π r²`` (what one isolated, perfectly predicted nucleus
  accumulates).
* Non-maximum suppression uses a square window: a peak must be the maximum of the accumulator
  within ``nms_distance`` pixels along each axis (Chebyshev distance), where the paper's
  distance threshold is presumably Euclidean. Square windows are separable (two 1-D running
  maxima, cheap on any device, see :mod:`wsidet.ops.peaks`); the difference is that two peaks up
  to ``nms_distance · √2`` (5.7 px) apart along a diagonal are merged too.
* Addition: a detection's position is the weighted centroid of the accumulator within
  ``score_radius`` of its peak (the window its score sums), not the peak pixel. Vectors are
  rounded to whole pixels when accumulating, and the centroid recovers a sub-pixel position
  from how the votes spread; it moves a point by at most ``score_radius``.
* The network has a stem convolution, 2×2 rather than 3×3 transposed convolutions, and no
  dataset mean/std input normalisation (batch norm after the first convolution absorbs it);
  reasons in :mod:`wsidet.nets.voca`.
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


@register
@dataclasses.dataclass(frozen=True)
class Voca(Method):
    """VOCA: confidence, localisation vector and weight, accumulated.

    Parameters
    ----------
    mpp : float
    radius : float
        ``r``: disc radius of the confidence target (pixels).
    lam_loc, lam_wt : float
        ``λ1``, ``λ2``.
    width : int
        Feature maps of the first encoder block (32-64-128-256 for 32).
    nms_distance : int
        Non-maximum suppression distance on the accumulator.
    score_radius : int
        A detection's score sums the accumulator within this distance.
    threshold : float
        Minimum score as a fraction of ``π r²``.
    """

    name: ClassVar[str] = "voca"
    summary: ClassVar[str] = "VOCA: confidence + localisation vector + weight, accumulated"
    paper: ClassVar[str] = "voca-xie2019"
    decode_params: ClassVar[tuple[str, ...]] = ("nms_distance", "score_radius", "threshold")

    mpp: float = 0.5
    radius: float = 12.0
    lam_loc: float = 1.0
    lam_wt: float = 1.0
    width: int = 32
    nms_distance: int = 4
    score_radius: int = 2
    threshold: float = 0.3

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.radius <= 0 or self.lam_loc < 0 or self.lam_wt < 0:
            raise ParameterError("voca: radius must be > 0 and the loss weights >= 0")
        if self.width < 1 or self.nms_distance < 1 or self.score_radius < 0:
            raise ParameterError("voca: width, nms_distance >= 1 and score_radius >= 0")

    def threshold_for_score(self, score: float) -> float:
        """Scores are accumulated sums; the threshold is a fraction of ``π r²``."""
        return float(score) / (math.pi * self.radius**2)

    def score_for_threshold(self, threshold: float) -> float:
        """``threshold × π r²``."""
        return float(threshold) * math.pi * self.radius**2

    @property
    def max_shift(self) -> int:
        """Vectors are clamped to this many pixels per axis when accumulating."""
        return math.ceil(self.radius) + 1

    @property
    def channels(self) -> tuple[int, ...]:
        """Feature maps of the four encoder blocks: ``width`` doubling to ``8 * width``."""
        w = self.width
        return (w, 2 * w, 4 * w, 8 * w)

    @property
    def receptive_radius(self) -> int:
        """Computed from the layers (:func:`.geometry.voca`)."""
        return geometry.voca(self.channels).receptive_radius

    @property
    def stride(self) -> int:
        """2 to the number of encoder blocks (each downsamples)."""
        return geometry.voca(self.channels).stride

    @property
    def decoder_radius(self) -> int:
        """Map context one decoded point reads, measured from the pixel the point falls in.

        Deciding a peak reads the accumulator within ``support(nms_distance)`` (its window and
        tie-breaking), its score and centroid within ``score_radius``; each accumulator pixel
        reads the maps within ``max_shift``. The centroid moves the point up to
        ``score_radius`` from its peak, and a block keeps the points whose pixel (not whose
        peak) lies in its core, so that shift adds on top.
        """
        from wsidet.ops.support import support

        reads = max(support(self.nms_distance), self.score_radius)
        return self.score_radius + self.max_shift + reads

    def build_network(self) -> torch.nn.Module:
        """:class:`~wsidet.nets.voca.VocaNet`: conf, loc, wt maps."""
        from wsidet.nets.voca import VocaNet

        return VocaNet(self.channels)

    def encode(
        self, points_yx: npt.NDArray[np.floating[Any]], shape: tuple[int, int]
    ) -> dict[str, npt.NDArray[np.float32]]:
        """``{"conf": (1, H, W), "loc": (2, H, W), "wt": (1, H, W)}``."""
        from wsidet.ops.targets import count_within, nearest_distance

        pts = np.asarray(points_yx, np.float64).reshape(-1, 2)
        dist, nearest = nearest_distance(pts, shape, limit=self.radius + 1)
        conf = dist < self.radius
        loc = np.zeros((2, *shape), np.float32)
        if conf.any():
            yy, xx = np.nonzero(conf)
            target = pts[nearest[conf]]
            loc[0, yy, xx] = target[:, 0] - yy
            loc[1, yy, xx] = target[:, 1] - xx
        return {
            "conf": conf[None].astype(np.float32),
            "loc": loc,
            "wt": count_within(pts, shape, self.radius)[None],
        }

    def loss(
        self, outputs: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor]
    ) -> torch.Tensor:
        """``L_conf + λ1 L_loc + λ2 L_wt``."""
        import torch
        from torch.nn import functional as F

        conf, loc, wt = (outputs[k].float() for k in ("conf", "loc", "wt"))
        t_conf, t_loc, t_wt = targets["conf"], targets["loc"], targets["wt"]
        positive = t_conf.mean().clamp(1e-6, 1 - 1e-6)
        # Inverse class frequencies, normalised so a balanced batch has weights 1.
        weight = torch.where(t_conf > 0.5, 0.5 / positive, 0.5 / (1 - positive))
        l_conf = F.binary_cross_entropy(conf.clamp(1e-7, 1 - 1e-7), t_conf, weight=weight)
        fg = t_conf > 0.5
        if bool(fg.any()):
            per_axis = F.smooth_l1_loss(loc, t_loc, reduction="none").sum(dim=1, keepdim=True)
            l_loc = per_axis[fg].mean()
        else:
            l_loc = loc.sum() * 0.0
        l_wt = F.smooth_l1_loss(wt, t_wt)
        return l_conf + self.lam_loc * l_loc + self.lam_wt * l_wt

    def _decode(self, outputs: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        import torch
        from torch.nn import functional as F

        from wsidet.ops.accumulate import accumulate
        from wsidet.ops.peaks import local_maxima

        acc = accumulate(
            outputs["conf"][0], outputs["loc"], outputs["wt"][0], max_shift=self.max_shift
        )
        peaks, _ = local_maxima(acc, min_distance=self.nms_distance, threshold=0.0, refine=False)
        r = self.score_radius
        yy, xx = torch.meshgrid(
            torch.arange(-r, r + 1, device=acc.device),
            torch.arange(-r, r + 1, device=acc.device),
            indexing="ij",
        )
        disc = ((yy**2 + xx**2) <= r * r).float()
        # Score and weighted centroid of the accumulator within score_radius of each peak.
        padded = F.pad(acc[None, None], (r, r, r, r))[0, 0]
        iy, ix = peaks[:, 0].long(), peaks[:, 1].long()
        rows = iy[:, None, None] + (yy + r)[None]
        cols = ix[:, None, None] + (xx + r)[None]
        window = padded[rows, cols] * disc  # (n, 2r+1, 2r+1)
        scores = window.sum(dim=(1, 2))
        safe = scores.clamp(min=1e-12)[:, None]
        offset = (
            torch.stack([(window * yy).sum(dim=(1, 2)), (window * xx).sum(dim=(1, 2))], dim=1)
            / safe
        )
        keep = scores > self.threshold * math.pi * self.radius**2
        return (peaks + offset)[keep], scores[keep]
