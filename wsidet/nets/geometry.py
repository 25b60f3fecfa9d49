"""Receptive radius and stride of each network, from its configuration alone (no torch).

One pure function per architecture takes the configuration its network takes and returns a
:class:`Geometry`. The networks in :mod:`wsidet.nets` set their ``receptive_radius`` and
``stride`` from these same functions, and the methods compute their halo from them, so reading a
method's halo builds no network and imports no torch. The functions walk the layers with
:class:`~wsidet.nets.receptive.Reach` in the order the networks apply them; the tests check the
result against the real layers (perturbing the input beyond the radius changes nothing, and a
linearised probe finds no smaller radius).

Layer specifications and patch sizes live here too, so they can be read without torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

from wsidet.nets.receptive import Reach

# (kind, kernel, out_channels): "c" conv+ReLU, "p" 2×2 max pool, "u" bilinear ×2 + ReLU + conv
# + ReLU (see wsidet.nets.fcrn).
FCRN_A = (
    ("c", 3, 32), ("p", 2, 0),
    ("c", 3, 64), ("p", 2, 0),
    ("c", 3, 128), ("p", 2, 0),
    ("c", 3, 512),
    ("u", 3, 128), ("u", 3, 64), ("u", 3, 32),
)  # fmt: skip
FCRN_B = (
    ("c", 3, 32), ("c", 3, 64), ("p", 2, 0),
    ("c", 3, 128), ("c", 5, 256), ("p", 2, 0),
    ("c", 3, 256),
    ("u", 5, 256), ("u", 3, 256),
)  # fmt: skip

#: Input patch and proximity patch edges of the structured-regression patch CNN.
PATCH, OUT = 49, 17
HALF_IN, HALF_OUT = PATCH // 2, OUT // 2


class Geometry(NamedTuple):
    """What tiling needs to know about a network.

    Parameters
    ----------
    receptive_radius : int
        Pixels of input context on each side that one output pixel uses.
    stride : int
        Input sizes and block origins must be multiples of this (the network's downsampling).
    """

    receptive_radius: int
    stride: int


def fcrn(spec: Sequence[tuple[str, int, int]], norm_window: int = 101) -> Geometry:
    """FCRN (:class:`~wsidet.nets.fcrn.FCRN`): its layers plus the normalisation window.

    Parameters
    ----------
    spec : sequence of (kind, kernel, channels)
        :data:`FCRN_A` or :data:`FCRN_B`.
    norm_window : int
        Window edge of the local normalisation in front of the layers.
    """
    reach, stride = Reach(), 1
    for kind, kernel, _ in spec:
        if kind == "p":
            reach, stride = reach.pool(2, 2), 2 * stride
        elif kind == "u":
            reach = reach.up(2).conv(kernel)
        else:
            reach = reach.conv(kernel)
    return Geometry(reach.pixels + norm_window // 2, stride)


def micronet(channels: Sequence[int]) -> Geometry:
    """MicroNet (:class:`~wsidet.nets.micronet.MicroNet`), one downsampling block per channel.

    The input transition, residual blocks (two 3×3 convolutions) with stride-2 convolutions
    between them, the upsampling blocks with their concatenated skips, and the multi-context
    transposed convolutions from every deeper block into the output transition.
    """
    levels = len(channels)
    reach = Reach().conv(3)
    down = []
    for i in range(levels):
        if i > 0:
            reach = reach.conv(3, stride=2)
        reach = reach.conv(3).conv(3)
        down.append(reach)
    reach = reach.conv(3).conv(3)  # the bottom block
    for i in range(levels - 2, -1, -1):
        reach = reach.up(2, kernel=2).union(down[i]).conv(3).conv(3)
    context = [down[i].up(2**i, kernel=2**i) for i in range(1, levels)]
    return Geometry(reach.union(*context).conv(3).pixels, 2 ** (levels - 1))


def micronet_unet(channels: Sequence[int]) -> Geometry:
    """MapDe's U-Net (:class:`~wsidet.nets.mapde.MicroNetUNet`), one level per channel.

    Each level below the first pools the features and concatenates a 3×3 convolution of the
    input image average-pooled to that scale.
    """
    levels = len(channels)
    reach, image = Reach(), Reach()
    skips = []
    for i in range(levels):
        if i > 0:
            image = image.pool(2, 2)
            reach = reach.pool(2, 2).union(image.conv(3))
        reach = reach.conv(3).conv(3)
        skips.append(reach)
    for i in range(levels - 2, -1, -1):
        reach = reach.up(2, kernel=2).union(skips[i]).conv(3).conv(3)
    return Geometry(reach.pixels, 2 ** (levels - 1))


def mapde(radius: int, channels: Sequence[int]) -> Geometry:
    """MapDe (:class:`~wsidet.nets.mapde.MapDeNet`): the U-Net, then the mapping filter.

    Parameters
    ----------
    radius : int
        Radius of the fixed mapping filter applied to the U-Net's output.
    channels : sequence of int
        Feature maps per U-Net level.
    """
    unet = micronet_unet(channels)
    return Geometry(unet.receptive_radius + radius, unet.stride)


def voca(channels: Sequence[int]) -> Geometry:
    """VOCA (:class:`~wsidet.nets.voca.VocaNet`), one encoding block per channel.

    A stem convolution; encoding blocks of a 3×3 residual convolution then a stride-2 3×3
    convolution; decoding blocks of a 3×3 residual convolution then a 2×2 transposed
    convolution, each summed with the encoder's features of its size.
    """
    reach = Reach().conv(3)
    skips = [reach]
    for _ in channels:
        reach = reach.conv(3).conv(3, stride=2)
        skips.append(reach)
    skips.pop()  # the deepest output is the decoder's input, not a skip
    while skips:
        reach = reach.conv(3).up(2, kernel=2).union(skips.pop())
    return Geometry(reach.pixels, 2 ** len(channels))


def patch_cnn(scan_stride: int) -> Geometry:
    """The proximity patch CNN (:class:`~wsidet.nets.patchcnn.ProximityPatchCNN`).

    A pixel's value fuses the proximity patches (``OUT`` wide) covering it, each predicted from
    the input patch (``PATCH`` wide) around its centre; patch centres lie on the ``scan_stride``
    grid, so tiles must start on it.
    """
    return Geometry(HALF_IN + HALF_OUT, scan_stride)


def log_filter(sigmas: Sequence[float], truncate: float) -> Geometry:
    """Haematoxylin then LoG (:class:`~wsidet.nets.fixed.LaplacianOfGaussian`).

    Colour deconvolution is per pixel; the LoG kernels extend ``ceil(truncate * σ)`` pixels
    each side, the widest σ setting the radius.
    """
    return Geometry(max(math.ceil(truncate * s) for s in sigmas), 1)
