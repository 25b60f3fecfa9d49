"""The MapDe network (Raza et al. 2018): a Micro-Net-like U-Net wrapped by a fixed mapping filter.

Micro-Net (Raza et al. 2019) is a U-Net whose encoder also sees the input image resized to
every scale; MapDe replaces its last activation by a ReLU (the L-1 feature map must be
non-negative) and convolves it with the fixed, non-trainable mapping filter ``f``. The filter is
a buffer, not a parameter: it moves with the network and is never trained or saved as weights.

Deviations:

* Five levels of 32-64-128-256-256 feature maps (four poolings, stride 16) with batch norm,
  instead of Micro-Net's wider, tanh, batch-norm-free layers and its auxiliary outputs, so
  that the network trains on one GPU (or a CPU) in minutes rather than days.
* The paper's L-1 map is Micro-Net's last layer with a ReLU instead of tanh; here that layer
  is a 1×1 convolution of the U-Net's last feature maps to one map, then the ReLU. The paper
  does not give that layer's kernel; 1×1 adds no receptive field.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from wsidet.nets import geometry
from wsidet.nets.blocks import ConvBNAct, pad_to_multiple
from wsidet.ops.filters import convolve_taps


def mapping_filter(radius: int = 5) -> npt.NDArray[np.float32]:
    """``f = max((r - dist) / r, 0)`` on a ``(2r + 1)²`` grid (the paper: r = 5, 11×11).

    Returns
    -------
    ndarray, shape (2r + 1, 2r + 1), float32, 1 at the centre
    """
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    cone: npt.NDArray[np.float32] = np.maximum((radius - np.hypot(yy, xx)) / radius, 0.0).astype(
        np.float32
    )
    return cone


class MicroNetUNet(nn.Module):
    """U-Net with the input image injected at every encoder scale (Micro-Net's multi-scale input).

    Parameters
    ----------
    channels : tuple of int
        Feature maps per level; the last is the bottleneck (``len - 1`` poolings).

    Notes
    -----
    (N, 3, H, W) with H, W multiples of ``2 ** (len(channels) - 1)`` -> (N, channels[0], H, W).
    """

    def __init__(self, channels: tuple[int, ...] = (32, 64, 128, 256, 256)) -> None:
        super().__init__()
        levels = len(channels)
        self.receptive_radius, self.stride = geometry.micronet_unet(channels)
        self.enc = nn.ModuleList()
        self.inject = nn.ModuleList()
        cin = 3
        for i, c in enumerate(channels):
            injected = 0
            if i > 0:
                injected = c // 2
                self.inject.append(ConvBNAct(3, injected, 3))
            self.enc.append(nn.Sequential(ConvBNAct(cin + injected, c), ConvBNAct(c, c)))
            cin = c
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for i in range(levels - 2, -1, -1):
            c = channels[i]
            self.up.append(nn.ConvTranspose2d(cin, c, 2, stride=2))
            self.dec.append(nn.Sequential(ConvBNAct(2 * c, c), ConvBNAct(c, c)))
            cin = c
        self.pool = nn.MaxPool2d(2)
        self.shrink = nn.AvgPool2d(2)  # the input image at the next scale
        self.out_channels = cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, channels[0], H, W)."""
        skips = []
        feats = x
        image = x
        for i, block in enumerate(self.enc):
            if i > 0:
                feats = self.pool(feats)
                image = self.shrink(image)
                feats = torch.cat([feats, self.inject[i - 1](image)], dim=1)
            feats = block(feats)
            skips.append(feats)
        for up, block, skip in zip(self.up, self.dec, reversed(skips[:-1]), strict=True):
            feats = block(torch.cat([up(feats), skip], dim=1))
        return feats


class MapDeNet(nn.Module):
    """Micro-Net-like U-Net -> 1×1 conv -> ReLU (L-1) -> fixed mapping filter -> ReLU.

    Parameters
    ----------
    radius : int
        Mapping filter radius ``r``.

    Notes
    -----
    Input: RGB in [0, 1], (N, 3, H, W), any size. Output: ``{"logits": (N, 1, H, W)}``, the
    non-negative map trained with weighted cross-entropy on logits (as the paper's TensorFlow
    implementation, whose outputs on CRCHisto reach the hundreds).
    """

    mapping: torch.Tensor

    def __init__(
        self, radius: int = 5, channels: tuple[int, ...] = (32, 64, 128, 256, 256)
    ) -> None:
        super().__init__()
        self.backbone = MicroNetUNet(channels)
        self.last = nn.Conv2d(self.backbone.out_channels, 1, 1)
        self.relu = nn.ReLU()
        f = torch.from_numpy(mapping_filter(radius))[None, None]
        self.register_buffer("mapping", f, persistent=False)
        self.receptive_radius, self.stride = geometry.mapde(radius, channels)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """RGB (N, 3, H, W) -> ``{"logits": (N, 1, H, W)}``."""
        x, (h, w) = pad_to_multiple(x, self.stride)
        dots = self.relu(self.last(self.backbone(x)))[..., :h, :w]
        # As a sum over the cone's taps: a 1-channel 11×11 conv2d is ten times slower in oneDNN,
        # and an FFT would differ in the last bits between a chunk and a whole image.
        logits = self.relu(convolve_taps(dots, self.mapping[0, 0]))
        return {"logits": logits}
