"""Fixed (non-trainable) network layers: stain separation and Laplacian-of-Gaussian filtering.

Everything is registered as buffers, not parameters, so these modules have no weights to train
or load, move with ``.to(device)`` and run in half precision under autocast like any network.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from wsidet.nets import geometry
from wsidet.ops.colour import HED_FROM_RGB
from wsidet.ops.filters import convolve_same, kernel_spectrum, padded_shape


class Haematoxylin(nn.Module):
    """Haematoxylin concentration by colour deconvolution (Ruifrok & Johnston 2001).

    Input RGB in [0, 1] of shape (N, 3, H, W); output (N, 1, H, W), >= 0, large on nuclei.
    White glass maps to 0, so zero padding at image borders means "glass".
    """

    weight: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        # Negated so that log(I) (<= 0) times it gives the positive optical density.
        weight = -torch.tensor(HED_FROM_RGB[:, 0], dtype=torch.float32).view(1, 3, 1, 1)
        self.register_buffer("weight", weight)

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) RGB in [0, 1] -> (N, 1, H, W) haematoxylin optical density."""
        # Beer-Lambert optical density; 1/255 keeps black pixels finite. A weighted sum, not a
        # 1x1 conv2d: oneDNN's 3->1 channel convolution is 2.5x slower on CPU.
        log_rgb = torch.log(rgb.float().clamp(min=1.0 / 255.0))
        return (log_rgb * self.weight).sum(dim=1, keepdim=True).clamp(min=0.0)


def gaussian_kernels(sigma: float, radius: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sampled 1-D Gaussian and its second derivative on ``[-radius, radius]``.

    Returns
    -------
    g, g2 : Tensor, shape (2 * radius + 1,), float32
        ``g`` sums to 1; ``g2`` sums to 0 and has second moment 2 (a discrete d²/dt²).
    """
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-0.5 * (t / sigma) ** 2)
    g = g / g.sum()
    g2 = (t**2 / sigma**4 - 1.0 / sigma**2) * g
    g2 = g2 - g2.mean()
    g2 = g2 * (2.0 / (g2 * t**2).sum())
    return g.float(), g2.float()


class LaplacianOfGaussian(nn.Module):
    """Scale-normalised, negated LoG ``-σ²∇²G_σ``, maximum over several σ.

    Bright blobs of radius about ``σ√2`` give positive peaks at their centres. The kernels are
    sampled separably (∇²G = G''(y)G(x) + G(y)G''(x)) and applied by FFT
    (:mod:`wsidet.ops.filters`), equal to ``conv2d`` with ``padding=radius`` to float32
    rounding: on a 2200² block that is 0.3 s instead of 6 s for separable ``conv2d`` on CPU.

    Parameters
    ----------
    sigmas : tuple of float
        Scales in pixels.
    truncate : float
        Kernels extend ``ceil(truncate * σ)`` pixels each side.
    """

    kernels: torch.Tensor

    def __init__(self, sigmas: tuple[float, ...], truncate: float = 4.0) -> None:
        super().__init__()
        self.radius = geometry.log_filter(sigmas, truncate).receptive_radius
        kernels = []
        for s in sigmas:
            g, g2 = gaussian_kernels(s, self.radius)
            kernels.append(-(s**2) * (torch.outer(g2, g) + torch.outer(g, g2)))
        self.register_buffer("kernels", torch.stack(kernels)[None])  # (1, S, k, k)
        self._spectra: dict[tuple[Any, ...], torch.Tensor] = {}

    def _spectrum(self, shape: tuple[int, int], device: torch.device) -> torch.Tensor:
        # A few tile shapes recur; their kernel spectra are worth keeping (bounded anyway).
        key = (shape, device)
        spectrum = self._spectra.get(key)
        if spectrum is None:
            spectrum = kernel_spectrum(self.kernels.to(device), shape)
            if len(self._spectra) >= 8:
                self._spectra.clear()
            self._spectra[key] = spectrum
        return spectrum

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, H, W) -> (N, 1, H, W)."""
        k = 2 * self.radius + 1
        shape = padded_shape(x.shape[-2], x.shape[-1], (k, k))
        # The kernels are symmetric, so convolution and correlation agree.
        response = convolve_same(x, self.kernels, spectrum=self._spectrum(shape, x.device))
        out: torch.Tensor = response.amax(dim=1, keepdim=True)
        return out
