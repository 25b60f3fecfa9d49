"""MicroNet (Xing et al. 2019): residual U-Net with multi-context aggregation, for proximity maps.

Four paths, as the paper describes them:

* downsampling: an input transition (one conv), then four residual blocks with a stride-2
  convolution between adjacent blocks; feature maps double when the size halves, except for
  the last block; dropout 0.5 in the last two blocks;
* upsampling: four residual blocks, with a stride-2 transposed convolution between them;
* concatenation: each upsampled output is concatenated with the downsampled output of the same
  size;
* multi-context aggregation: transposed convolutions bring the outputs of the deeper
  downsampling blocks straight to full resolution; they are concatenated with the last
  upsampling block and fed to the output transition (two convolutions), a sigmoid scaled by 5.

Batch norm after every (strided) convolution, ELU after every batch norm and residual sum
except the one noted below.

Deviations:

* The paper does not list its feature-map counts; we use 32-64-128-128 (CPU-trainable).
* A residual block is conv-BN-ELU-conv-BN, plus the shortcut, then ELU
  (:class:`~wsidet.nets.blocks.ResidualUnit`): the standard form of He et al. 2016, the
  residual paper MicroNet cites (its ref. 56), with no ELU between the second batch norm and
  the sum, where the paper's text puts an ELU after every batch norm.
* No input normalisation (the paper subtracts the mean and divides by the standard deviation
  "in each image channel"). The network starts with a convolution followed by batch norm,
  which removes any fixed per-channel offset of the input (a per-channel scale only
  reparametrises that convolution), so a fixed normalisation would be redundant. Statistics of
  each image, if that is what the paper used, would also remove its colour offset, but on a
  slide they would make a detection depend on where the chunks are cut; stain variation is
  left to training augmentation instead.
"""

from __future__ import annotations

import torch
from torch import nn

from wsidet.nets import geometry
from wsidet.nets.blocks import ConvBNAct, ResidualUnit, pad_to_multiple


class MicroNet(nn.Module):
    """The MicroNet regressor.

    Parameters
    ----------
    channels : tuple of int
        Feature maps of the four downsampling blocks.
    scale : float
        The output is ``scale * sigmoid(.)``, matching targets scaled by the same factor.

    Notes
    -----
    Input: RGB in [0, 1], (N, 3, H, W), any size. Output: ``{"proximity": (N, 1, H, W)}`` in
    ``(0, scale)``.
    """

    def __init__(self, channels: tuple[int, ...] = (32, 64, 128, 128), scale: float = 5.0) -> None:
        super().__init__()
        if len(channels) != 4:
            raise ValueError(f"MicroNet has four downsampling blocks, got channels={channels}")
        elu = nn.ELU
        self.scale = scale
        self.receptive_radius, self.stride = geometry.micronet(channels)
        self.transition = ConvBNAct(3, channels[0], 3, act=elu)
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        cin = channels[0]
        for i, c in enumerate(channels):
            if i > 0:
                self.downsample.append(ConvBNAct(cin, c, 3, stride=2, act=elu))
            dropout = 0.5 if i >= len(channels) - 2 else 0.0
            self.down.append(ResidualUnit(c if i > 0 else cin, c, act=elu, dropout=dropout))
            cin = c
        # The first upsampling block works at the deepest scale; three more follow upsamplings.
        self.bottom = ResidualUnit(cin, cin, act=elu)
        self.upsample = nn.ModuleList()
        self.up = nn.ModuleList()
        for i in range(len(channels) - 2, -1, -1):
            c = channels[i]
            self.upsample.append(nn.ConvTranspose2d(cin, c, 2, stride=2))
            self.up.append(ResidualUnit(2 * c, c, act=elu))
            cin = c
        # Multi-context: deeper downsampling outputs straight to full resolution.
        self.context = nn.ModuleList()
        for i in range(1, len(channels)):
            factor = 2**i
            self.context.append(nn.ConvTranspose2d(channels[i], channels[0], factor, stride=factor))
        self.head = nn.Sequential(
            ConvBNAct(channels[0] * len(channels), channels[0], 3, act=elu),
            nn.Conv2d(channels[0], 1, 1),
        )
        # Start the output near a typical target (scale · 0.02), not at scale / 2: from the
        # middle, the background error drives the sigmoid into saturation before nuclei are
        # learnt (as for the proximity patches).
        last = self.head[-1]
        if isinstance(last, nn.Conv2d) and last.bias is not None:
            nn.init.constant_(last.bias, -4.0)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """RGB (N, 3, H, W) -> ``{"proximity": (N, 1, H, W)}``."""
        x, (h, w) = pad_to_multiple(x, self.stride)
        feats = self.down[0](self.transition(x))
        skips = [feats]
        for down, block in zip(self.downsample, self.down[1:], strict=True):
            feats = block(down(feats))
            skips.append(feats)
        feats = self.bottom(feats)
        for upsample, block, skip in zip(self.upsample, self.up, reversed(skips[:-1]), strict=True):
            feats = block(torch.cat([upsample(feats), skip], dim=1))
        context = [up(s) for up, s in zip(self.context, skips[1:], strict=True)]
        logits = self.head(torch.cat([feats, *context], dim=1))
        return {"proximity": (self.scale * torch.sigmoid(logits))[..., :h, :w]}
