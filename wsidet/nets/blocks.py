"""Layers shared by the detection networks.

Every activation is a module (not a functional call) so a network's structure is visible to
``print(net)``; every network accepts any input size and pads internally to its stride.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Zero-pad the bottom/right of (N, C, H, W) to multiples of ``multiple``.

    Returns
    -------
    padded : Tensor
    size : (H, W) of the input, to crop outputs back.
    """
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph))
    return x, (h, w)


class ConvBNAct(nn.Sequential):
    """``k×k`` convolution ("same" padding), optional batch norm, then an activation."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int = 3,
        *,
        stride: int = 1,
        act: type[nn.Module] | None = nn.ReLU,
        bn: bool = True,
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=not bn)
        ]
        if bn:
            layers.append(nn.BatchNorm2d(cout))
        if act is not None:
            layers.append(act())
        super().__init__(*layers)


class ResidualUnit(nn.Module):
    """``x + F(x)`` with F = convs (BN after each), activation after the sum (He et al. 2016).

    A 1×1 projection matches channels when they differ. Optional dropout after the convs.
    """

    def __init__(
        self,
        cin: int,
        cout: int,
        *,
        convs: int = 2,
        act: type[nn.Module] = nn.ELU,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(convs):
            last = i == convs - 1
            layers.append(
                ConvBNAct(cin if i == 0 else cout, cout, 3, act=None if last else act, bn=True)
            )
        if dropout:
            layers.append(nn.Dropout2d(dropout))
        self.body = nn.Sequential(*layers)
        self.skip = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1, bias=False)
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, cin, H, W) -> (N, cout, H, W)."""
        out: torch.Tensor = self.act(self.body(x) + self.skip(x))
        return out


class LocalNorm(nn.Module):
    """Normalise each pixel by the mean and standard deviation of a window around it.

    The fully convolutional form of "each patch is normalised by subtracting its own mean and
    dividing by its standard deviation" (FCRN): a training patch of ``window`` pixels is
    normalised by its own statistics, and at inference every pixel is normalised by those of the
    window centred on it, which does not depend on how an image is tiled. Windows are cut at
    the image border (statistics of the pixels present), per channel.

    Parameters
    ----------
    window : int
        Odd window edge in pixels.
    eps : float
        Added to the variance.
    """

    def __init__(self, window: int = 101, eps: float = 1e-4) -> None:
        super().__init__()
        if window < 1 or window % 2 == 0:
            raise ValueError(f"window must be a positive odd number, got {window}")
        self.window = window
        self.eps = eps

    @property
    def radius(self) -> int:
        """Half-width of the window."""
        return self.window // 2

    def _box_mean(self, x: torch.Tensor) -> torch.Tensor:
        # Separable means over the in-image part of the box, from cumulative sums: O(1) per
        # pixel (avg_pool2d with a 101 px window costs 100 operations per pixel), in float64
        # so the difference of two large sums loses nothing that matters in float32.
        out = x.double()
        for dim in (-2, -1):
            n = out.shape[dim]
            idx = torch.arange(n, device=x.device)
            hi = (idx + self.radius + 1).clamp(max=n)
            lo = (idx - self.radius).clamp(min=0)
            zero = torch.zeros_like(out.narrow(dim, 0, 1))
            cs = torch.cat([zero, out.cumsum(dim)], dim=dim)
            count = (hi - lo).double().view(-1, *([1] * (-dim - 1)))
            out = (cs.index_select(dim, hi) - cs.index_select(dim, lo)) / count
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, C, H, W), zero mean and unit variance locally."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            mean = self._box_mean(x)
            var = (self._box_mean(x.double() ** 2) - mean * mean).clamp(min=0.0)
            out: torch.Tensor = ((x.double() - mean) / torch.sqrt(var + self.eps)).to(x.dtype)
        return out
