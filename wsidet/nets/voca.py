"""The VOCA network (Xie et al. 2019): residual encoder-decoder with three task heads.

Four encoding and four decoding blocks, each a residual unit; down- and upsampling happen
inside every block by a 3×3 convolution / a transposed convolution at stride 2 (no pooling,
"to retain location information"). Encoder features are added to the decoder features of the same
size (the FCN-style "rich features in the decoding part"). Three 1×1 convolutions produce the
task maps: confidence (sigmoid), localisation vector (identity, 2 channels: dy, dx) and weight of
contribution (ReLU).

Deviations (kept: the bundled weights in :mod:`wsidet.weights` were trained with this network):

* Feature-map counts are not in the paper; we use 32-64-128-256 with batch norm.
* Upsampling is a 2×2 transposed convolution at stride 2, not the paper's 3×3. A 2×2 kernel
  at stride 2 writes each output pixel from exactly one input pixel (``p // 2``), so the
  kernel's footprints tile the output without overlap; a 3×3 kernel at stride 2 covers
  alternate rows and columns once and twice, the uneven overlap that makes checkerboard
  artefacts. (Both are local, so tiled detection would be exact either way.)
* A stem convolution (3×3, ``channels[0] // 2`` maps, batch norm, ReLU) comes before the first
  encoding block: it gives the residual units features rather than RGB, and its output is the
  full-resolution encoder feature added to the last decoding block.
* No input normalisation (the paper subtracts the training set's mean and divides by its
  standard deviation): the stem convolution is followed by batch norm, which removes any fixed
  per-channel offset of the input, and a per-channel scale is only a reparametrisation of the
  stem's weights; so that normalisation would change only the zero padding at image borders
  and the stem's effective learning rate. Without it the weights depend on no statistic of a
  training set.
"""

from __future__ import annotations

import torch
from torch import nn

from wsidet.nets import geometry
from wsidet.nets.blocks import ConvBNAct, ResidualUnit, pad_to_multiple


class VocaNet(nn.Module):
    """Residual encoder-decoder with confidence, localisation and weight heads.

    Notes
    -----
    Input: RGB in [0, 1], (N, 3, H, W), any size. Output: ``{"conf": (N, 1, H, W) in (0, 1),
    "loc": (N, 2, H, W) (dy, dx in pixels), "wt": (N, 1, H, W) >= 0}``.
    """

    def __init__(self, channels: tuple[int, ...] = (32, 64, 128, 256)) -> None:
        super().__init__()
        self.receptive_radius, self.stride = geometry.voca(channels)
        self.stem = ConvBNAct(3, channels[0] // 2, 3)
        self.encoder = nn.ModuleList()
        cin = channels[0] // 2
        for c in channels:
            self.encoder.append(
                nn.Sequential(
                    ResidualUnit(cin, c, convs=1, act=nn.ReLU), ConvBNAct(c, c, 3, stride=2)
                )
            )
            cin = c
        self.decoder = nn.ModuleList()
        for c in (*reversed(channels[:-1]), channels[0] // 2):
            self.decoder.append(
                nn.Sequential(
                    ResidualUnit(cin, cin, convs=1, act=nn.ReLU),
                    nn.ConvTranspose2d(cin, c, 2, stride=2),
                    nn.BatchNorm2d(c),
                    nn.ReLU(),
                )
            )
            cin = c
        self.conf = nn.Conv2d(cin, 1, 1)
        self.loc = nn.Conv2d(cin, 2, 1)
        self.wt = nn.Conv2d(cin, 1, 1)
        # Start the weight head at 1 (an isolated nucleus's pixels): with a zero or negative
        # start the ReLU hides the head's gradient and nothing accumulates.
        if self.wt.bias is not None:
            nn.init.constant_(self.wt.bias, 1.0)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """RGB (N, 3, H, W) -> conf, loc, wt maps at (H, W)."""
        x, (h, w) = pad_to_multiple(x, self.stride)
        feats = self.stem(x)
        skips = [feats]
        for block in self.encoder:
            feats = block(feats)
            skips.append(feats)
        skips.pop()  # the deepest output is the decoder's input, not a skip
        for block, skip in zip(self.decoder, reversed(skips), strict=True):
            feats = block(feats) + skip
        crop = (..., slice(0, h), slice(0, w))
        return {
            "conf": torch.sigmoid(self.conf(feats))[crop],
            "loc": self.loc(feats)[crop],
            "wt": self.relu(self.wt(feats))[crop],
        }
