"""FCRN-A and FCRN-B (Xie, Noble & Zisserman 2015): fully convolutional density regressors.

Both map a normalised image to feature maps with conv-ReLU-max-pool, then restore the
resolution with bilinear upsampling + ReLU + convolution ("unConv"), and end with a 1×1
regression layer. Weights are initialised with an orthogonal basis as in the paper; there is no
batch norm and no dropout. The input is normalised (:class:`~wsidet.nets.blocks.LocalNorm`)
before it is zero-padded to the stride, so the padding never enters the local statistics.

FCRN-A follows the paper's layers: 3×3 kernels throughout, three poolings,
32-64-128-512(FC)-128-64-32 maps, 1.37 M parameters (the paper: "about 1.3 million"); its
encoder's receptive field is 38×38 pixels, the paper's figure.

FCRN-B is reconstructed from the paper's prose (its layer table is only in a figure):
max pooling after every two convolutions, maps doubling after each pooling up to 256 and kept
there, 5×5 kernels in some layers: conv 3×3×32, conv 3×3×64, pool, conv 3×3×128, conv 5×5×256,
pool, FC 3×3×256, unConv 5×5×256, unConv 3×3×256, 1×1 output: 3.73 M parameters (the paper:
"about 3.6 million").

Deviations:

* Every unConv ends with a ReLU after its convolution (upsampling, ReLU, convolution, ReLU;
  the paper's unConv is upsampling + ReLU + convolution), so features are rectified before the
  next bilinear upsampling as well as after it, and the 1×1 output layer reads rectified
  features. Kept so that weights trained with it stay valid.
* FCRN-B's encoder receptive field is 28×28 pixels, not the paper's "32×32" (computed the same
  way as FCRN-A's 38×38, which matches the paper). The figure that would settle which layers
  have 5×5 kernels is not in the text; a 5×5 kernel in the third convolution as well would
  give 32×32 at 3.86 M parameters, but that is a guess too, so the layers above are kept.
"""

from __future__ import annotations

import torch
from torch import nn

from wsidet.nets import geometry
from wsidet.nets.blocks import LocalNorm, pad_to_multiple

# The layer specifications are torch-free, so a method's halo can be read without torch.
from wsidet.nets.geometry import FCRN_A as FCRN_A
from wsidet.nets.geometry import FCRN_B as FCRN_B


class FCRN(nn.Module):
    """A fully convolutional regression network from a layer specification.

    Parameters
    ----------
    spec : sequence of (kind, kernel, channels)
        ``FCRN_A`` or ``FCRN_B``; kinds: ``"c"`` conv + ReLU, ``"p"`` 2×2 max pool (kernel and
        channels unused), ``"u"`` bilinear ×2 + ReLU + conv + ReLU.
    norm_window : int
        Window of the per-patch (here: sliding-window) normalisation; the paper trained on
        100×100 patches.

    Notes
    -----
    Input: RGB in [0, 1], (N, 3, H, W), any size. Output: ``{"density": (N, 1, H, W)}``.
    """

    def __init__(self, spec: tuple[tuple[str, int, int], ...], norm_window: int = 101) -> None:
        super().__init__()
        self.norm = LocalNorm(norm_window)
        layers: list[nn.Module] = []
        channels = 3
        self.receptive_radius, self.stride = geometry.fcrn(spec, norm_window)
        for kind, kernel, out in spec:
            if kind == "p":
                layers.append(nn.MaxPool2d(2))
            elif kind == "u":
                layers += [
                    nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                    nn.ReLU(),
                    nn.Conv2d(channels, out, kernel, padding=kernel // 2),
                    nn.ReLU(),
                ]
                channels = out
            else:
                layers += [nn.Conv2d(channels, out, kernel, padding=kernel // 2), nn.ReLU()]
                channels = out
        layers.append(nn.Conv2d(channels, 1, 1))
        self.body = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.orthogonal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """RGB (N, 3, H, W) -> ``{"density": (N, 1, H, W)}``."""
        # Normalise first: padding zeros in the window would skew the statistics of the
        # bottom/right pixels, which LocalNorm takes from the pixels present.
        x, (h, w) = pad_to_multiple(self.norm(x), self.stride)
        density = self.body(x)
        return {"density": density[..., :h, :w]}
