"""The structured-regression patch CNN (Xie et al. 2015), run fully convolutionally.

The paper's network maps a 49×49 RGB patch to a 17×17 "proximity patch" centred on it:
``C(6×6, 32) - M - C(3×3, 32) - M - C(3×3, 32) - F(1024) - F(1024) - F(289)``, ReLU everywhere but
a sigmoid on the last layer, dropout 0.2 on the fully connected layers.

Fast scanning: instead of cutting a patch at every pixel, the same weights run over the whole
image as a dilated network (pooling with stride 1; every later layer dilated by the product of
the pooling strides before it, and the fully connected layers as 8×8 and 1×1 convolutions). At
stride ``ss = 1`` this evaluates the patch network at every pixel in one pass and gives exactly
the patch-by-patch result. At ``ss > 1`` the cheap convolutions still run densely but the
fully connected layers (95% of the work) are evaluated only on the ``ss``-grid of patch centres
(a strided, dilated 8×8 convolution), as in the paper's SR-5. The proximity patches are then
fused by averaging: each pixel's value is the mean of the predictions that cover it
(``fold`` of the patches divided by ``fold`` of ones).

Patch centres sit on a grid anchored at image coordinate 0, so the result does not depend on
where an image is cut into tiles, as long as tiles start at multiples of ``ss``.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from wsidet.nets import geometry

# Patch sizes are torch-free, so a method's halo can be read without torch.
from wsidet.nets.geometry import HALF_IN as HALF_IN
from wsidet.nets.geometry import HALF_OUT as HALF_OUT
from wsidet.nets.geometry import OUT as OUT
from wsidet.nets.geometry import PATCH as PATCH


def centre_offset(scan_stride: int) -> int:
    """First patch centre, ``-c``: the multiple of ``ss`` that is at least 8 before pixel 0.

    Centres from ``-c`` on give every pixel its full set of covering proximity patches, on a
    grid anchored at image coordinate 0.
    """
    return math.ceil(HALF_OUT / scan_stride) * scan_stride


class ProximityPatchCNN(nn.Module):
    """The patch network with weights shaped for dense evaluation.

    Parameters
    ----------
    scan_stride : int
        ``ss``: patch centres are evaluated every ``ss`` pixels (1 or 5 in the paper).
    dropout : float
        Dropout after the two hidden fully connected layers (training only).

    Notes
    -----
    Input: RGB in [0, 1], (N, 3, H, W), any size, centred by :func:`centre` (the image is
    reflected at its border so that every pixel is covered by proximity patches). Output:
    ``{"proximity": (N, 1, H, W)}``, plus ``{"patches": (N, 289, h, w)}`` in training mode, the
    raw predictions of the patch centres ``(ss*i - c, ss*j - c)`` with
    ``c = self.centre_offset``, for the paper's patch loss.
    """

    def __init__(self, scan_stride: int = 1, dropout: float = 0.2) -> None:
        super().__init__()
        if scan_stride < 1:
            raise ValueError(f"scan_stride must be >= 1, got {scan_stride}")
        self.scan_stride = scan_stride
        # Tiles must start on the ss-grid of patch centres: the stride is scan_stride.
        self.receptive_radius, self.stride = geometry.patch_cnn(scan_stride)
        self.conv1 = nn.Conv2d(3, 32, 6)
        self.conv2 = nn.Conv2d(32, 32, 3, dilation=2)
        self.conv3 = nn.Conv2d(32, 32, 3, dilation=4)
        self.fc1 = nn.Conv2d(32, 1024, 8, dilation=4, stride=scan_stride)  # F(1024) on 8×8×32
        self.fc2 = nn.Conv2d(1024, 1024, 1)
        self.fc3 = nn.Conv2d(1024, OUT * OUT, 1)
        self.relu = nn.ReLU()
        self.drop = nn.Dropout(dropout)
        self.centre_offset = centre_offset(scan_stride)
        # Without batch norm, a plain ReLU stack trains only if activations keep their scale:
        # He initialisation, and inputs centred in ``features``. With PyTorch's default
        # (uniform, gain 1/3) and raw [0, 1] inputs, training sat on a plateau for ~1000
        # patches before learning anything, longer than a CPU budget on CRCHisto.
        for layer in (self.conv1, self.conv2, self.conv3, self.fc1, self.fc2):
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
        # Start every output at a typical proximity (~0.02, not sigmoid(0) = 0.5): from 0.5 the
        # background error drives all logits far below zero, where the sigmoid's gradient
        # vanishes and nuclei are never learnt (the network collapses to predicting 0).
        nn.init.normal_(self.fc3.weight, std=1e-3)
        for layer in (self.conv1, self.conv2, self.conv3, self.fc1, self.fc2, self.fc3):
            if layer.bias is not None:
                nn.init.constant_(layer.bias, -4.0 if layer is self.fc3 else 0.0)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Dense conv features: (N, 3, H, W) -> (N, 32, H - 20, W - 20)."""
        x = F.max_pool2d(self.relu(self.conv1(centre(x))), 2, stride=1)
        x = F.max_pool2d(self.relu(self.conv2(x)), 2, stride=1, dilation=2)
        out: torch.Tensor = self.relu(self.conv3(x))
        return out

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """Fully connected layers on the ``ss``-grid: (N, 32, h, w) -> (N, 289, h', w') logits."""
        x = self.drop(self.relu(self.fc1(features)))
        x = self.drop(self.relu(self.fc2(x)))
        out: torch.Tensor = self.fc3(x)
        return out

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """RGB (N, 3, H, W) -> ``{"proximity": (N, 1, H, W)}`` (+ ``"patches"`` in training)."""
        h, w = x.shape[-2:]
        ss, c = self.scan_stride, self.centre_offset
        # Centres from -c until the last one covers pixel h - 1 (reaches h - 1 + 8).
        grid_h = math.ceil((h - 1 + HALF_OUT + c) / ss) + 1
        grid_w = math.ceil((w - 1 + HALF_OUT + c) / ss) + 1
        pad_top = pad_left = c + HALF_IN
        pad_bottom = (grid_h - 1) * ss + PATCH - pad_top - h
        pad_right = (grid_w - 1) * ss + PATCH - pad_left - w
        padded = reflect_pad(x, (pad_left, pad_right, pad_top, pad_bottom))
        logits = self.head(self.features(padded))  # (N, 289, grid_h, grid_w)
        patches = torch.sigmoid(logits)
        canvas = ((grid_h - 1) * ss + OUT, (grid_w - 1) * ss + OUT)
        cols = patches.flatten(2)
        summed = F.fold(cols, canvas, OUT, stride=ss)
        counts = F.fold(torch.ones_like(cols[:1]), canvas, OUT, stride=ss)
        # Canvas index 0 is image coordinate -c - 8.
        off = c + HALF_OUT
        fused = (summed / counts)[..., off : off + h, off : off + w]
        out = {"proximity": fused}
        if self.training:
            out["patches"] = patches
        return out


def centre(x: torch.Tensor) -> torch.Tensor:
    """RGB in [0, 1] to roughly zero mean and unit spread: ``(x - 0.5) / 0.25``."""
    return (x - 0.5) / 0.25


def reflect_pad(x: torch.Tensor, pad: tuple[int, int, int, int]) -> torch.Tensor:
    """Reflect padding (left, right, top, bottom) of (N, C, H, W), also beyond the image size.

    ``F.pad(mode="reflect")`` needs pads smaller than the image; larger ones are done in steps,
    which continues the mirror pattern.
    """
    left, right, top, bottom = pad
    while left or right or top or bottom:
        h, w = x.shape[-2:]
        step = (min(left, w - 1), min(right, w - 1), min(top, h - 1), min(bottom, h - 1))
        if max(step) <= 0:  # a 1-pixel image cannot be reflected: replicate it
            return F.pad(x, (left, right, top, bottom), mode="replicate")
        x = F.pad(x, step, mode="reflect")
        left, right, top, bottom = (
            a - b for a, b in zip((left, right, top, bottom), step, strict=True)
        )
    return x


def patch_forward(net: ProximityPatchCNN, patches: torch.Tensor) -> torch.Tensor:
    """The paper's network on explicit 49×49 patches (slow reference; eval mode).

    Parameters
    ----------
    patches : Tensor, shape (B, 3, 49, 49)

    Returns
    -------
    Tensor, shape (B, 17, 17), proximity patches in [0, 1]
    """
    x = F.max_pool2d(net.relu(F.conv2d(centre(patches), net.conv1.weight, net.conv1.bias)), 2)
    x = F.max_pool2d(net.relu(F.conv2d(x, net.conv2.weight, net.conv2.bias)), 2)
    x = net.relu(F.conv2d(x, net.conv3.weight, net.conv3.bias)).flatten(1)  # (B, 2048)
    x = net.relu(F.linear(x, net.fc1.weight.flatten(1), net.fc1.bias))
    x = net.relu(F.linear(x, net.fc2.weight.flatten(1), net.fc2.bias))
    x = torch.sigmoid(F.linear(x, net.fc3.weight.flatten(1), net.fc3.bias))
    return x.view(-1, OUT, OUT)
