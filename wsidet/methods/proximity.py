"""``proximity``: structured regression of proximity patches (Xie et al. 2015).

* **Targets**: the proximity mask ``M = 1 / (1 + α D)`` where ``D <= r`` (else 0), ``D`` the
  distance to the nearest annotated centre; r = 5, α = 0.8.
* **Network**: the paper's 49×49 patch CNN (C-M-C-M-C-F-F-F, 289 = 17×17 sigmoid outputs),
  evaluated fully convolutionally by fast scanning at patch stride ``ss`` (1 or 5) with the
  proximity patches fused by averaging (:mod:`wsidet.nets.patchcnn`).
* **Loss**: per patch ``½ Σ_j (y_j + λ)(y_j - o_j)²`` over the 289 outputs ``j`` that fall
  inside the image, λ = 0.3, averaged over the patches (every patch centre on the ``ss``-grid
  inside the training image).
* **Decoding**: local maxima of the fused proximity map above a threshold.

Deviations:

* The paper worked at 40×; wsidet runs the network at 0.5 µm/px (20×, CRCHisto's scale) with
  the paper's pixel geometry, so a patch sees twice the tissue.
* ``ss = 5`` by default (SR-5, which the paper found as accurate as SR-1 at a third of the time;
  set ``scan_stride=1`` for SR-1, 18× slower on CPU).
* He (Kaiming) initialisation of the ReLU layers and inputs centred as ``(x - 0.5) / 0.25``
  (the paper gives neither its initialisation nor an input normalisation). The network has no
  batch norm; with PyTorch's default initialisation and raw [0, 1] inputs the ReLU stack sat
  on a loss plateau for about 1000 training patches before learning anything, while with
  these it learns synthetic blobs in one epoch, and on CRCHisto fold 1 a 10-minute training
  run went from test F1 0.17 to 0.73.
* The last layer starts at a typical proximity (bias -4, sigmoid ≈ 0.02) rather than 0.5, so
  that the background error does not push every output into the sigmoid's flat tail.
* Patches near the border predict pixels outside the image, where the network sees a mirror of
  the image (reflect padding) but there is no target; the loss leaves those outputs out rather
  than asking for 0 there, which would teach the network to miss mirrored nuclei.
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


@register
@dataclasses.dataclass(frozen=True)
class Proximity(Method):
    """Structured regression with proximity patches.

    Parameters
    ----------
    mpp : float
    radius : float
        ``r``: proximity is 0 beyond this distance (pixels).
    alpha : float
        Decay ``α`` of ``1 / (1 + α D)``.
    lam : float
        ``λ`` of the weighted loss.
    scan_stride : int
        ``ss``: patch centres every ``ss`` pixels (also the network's stride).
    dropout : float
        On the hidden fully connected layers.
    threshold : float
        Minimum fused proximity of a peak.
    min_distance : int
        Peak separation minus one.
    """

    name: ClassVar[str] = "proximity"
    summary: ClassVar[str] = "Structured regression: 49x49 patch CNN, fused 17x17 proximity patches"
    paper: ClassVar[str] = "structured-regression-xie2015"
    decode_params: ClassVar[tuple[str, ...]] = ("threshold", "min_distance")

    mpp: float = 0.5
    radius: float = 5.0
    alpha: float = 0.8
    lam: float = 0.3
    scan_stride: int = 5
    dropout: float = 0.2
    threshold: float = 0.4
    min_distance: int = 3

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.radius <= 0 or self.alpha <= 0 or self.lam < 0:
            raise ParameterError(
                f"proximity: radius and alpha must be > 0 and lam >= 0, got "
                f"{self.radius}, {self.alpha}, {self.lam}"
            )
        if self.scan_stride < 1 or self.min_distance < 1:
            raise ParameterError("proximity: scan_stride and min_distance must be >= 1")

    @property
    def receptive_radius(self) -> int:
        """Input patch plus proximity patch half-widths (:func:`.geometry.patch_cnn`)."""
        return geometry.patch_cnn(self.scan_stride).receptive_radius

    @property
    def stride(self) -> int:
        """``scan_stride``: tiles must start on the grid of patch centres."""
        return geometry.patch_cnn(self.scan_stride).stride

    @property
    def decoder_radius(self) -> int:
        """Support of the peak decoder."""
        from wsidet.ops.support import support

        return support(self.min_distance)

    def build_network(self) -> torch.nn.Module:
        """:class:`~wsidet.nets.patchcnn.ProximityPatchCNN` at stride ``scan_stride``."""
        from wsidet.nets.patchcnn import ProximityPatchCNN

        return ProximityPatchCNN(self.scan_stride, dropout=self.dropout)

    def encode(
        self, points_yx: npt.NDArray[np.floating[Any]], shape: tuple[int, int]
    ) -> dict[str, npt.NDArray[np.float32]]:
        """``{"proximity": (1, H, W)}``: ``1 / (1 + α D)`` within ``r``."""
        from wsidet.ops.targets import nearest_distance

        dist, _ = nearest_distance(points_yx, shape, limit=self.radius + 1)
        prox = np.where(dist <= self.radius, 1.0 / (1.0 + self.alpha * dist), 0.0)
        return {"proximity": prox[None].astype(np.float32)}

    def loss(
        self, outputs: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor]
    ) -> torch.Tensor:
        """The paper's weighted squared error per proximity patch, averaged over patches.

        Parameters
        ----------
        outputs : mapping of str to Tensor
            The network's training-mode output ``"patches"``, shape (N, 289, gh, gw): the
            proximity patches of the centres ``(ss*i - c, ss*j - c)``.
        targets : mapping of str to Tensor
            ``"proximity"``, shape (N, 1, H, W), from :meth:`encode`.

        Returns
        -------
        Tensor, shape ()
            ``½ Σ_j (y_j + λ)(y_j - o_j)²`` summed over the outputs ``j`` of a patch that fall
            inside the image, averaged over the patches whose centre is inside the image.
        """
        import torch
        from torch.nn import functional as F

        from wsidet.nets.patchcnn import HALF_OUT, OUT, centre_offset

        patches = outputs["patches"].float()
        target = targets["proximity"]
        _, _, gh, gw = patches.shape
        h, w = target.shape[-2:]
        ss = self.scan_stride
        c = centre_offset(ss)
        # Target patch of the centre (ss*i - c, ss*j - c) starts at (ss*i - c - 8, ...): the
        # canvas of all patches, with image pixel 0 at index c + 8.
        pad = c + HALF_OUT
        canvas_h, canvas_w = (gh - 1) * ss + OUT, (gw - 1) * ss + OUT
        bottom, right = max(0, canvas_h - pad - h), max(0, canvas_w - pad - w)

        def patches_of(image: torch.Tensor) -> torch.Tensor:
            padded = F.pad(image, (pad, right, pad, bottom))[..., :canvas_h, :canvas_w]
            return F.unfold(padded, OUT, stride=ss).view(image.shape[0], OUT * OUT, gh, gw)

        want = patches_of(target)
        # Outputs for pixels outside the image have no target: the network sees a mirror of
        # the image there (reflect padding), so a zero target would teach it to miss mirrored
        # nuclei near every border. Only the pixels that exist enter the sum.
        valid = patches_of(torch.ones_like(target[:1]))
        centres_y = torch.arange(gh, device=patches.device) * ss - c
        centres_x = torch.arange(gw, device=patches.device) * ss - c
        inside = ((centres_y >= 0) & (centres_y < h))[:, None] & (
            (centres_x >= 0) & (centres_x < w)
        )[None, :]
        error = torch.where(valid > 0, (want + self.lam) * (want - patches) ** 2, 0.0)
        per_patch = 0.5 * error.sum(dim=1)  # (N, gh, gw)
        return per_patch[:, inside].mean()

    def _decode(self, outputs: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        from wsidet.ops.peaks import local_maxima

        return local_maxima(
            outputs["proximity"][0].float(),
            min_distance=self.min_distance,
            threshold=self.threshold,
        )
