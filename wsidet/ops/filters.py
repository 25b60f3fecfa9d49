"""Convolution with fixed kernels, for any device and with autograd.

oneDNN's direct convolution with few channels and a large kernel is slow on CPU: a 1→1 channel
11×11 ``conv2d`` on a 2368² map takes 3 s. Two replacements, both equal to scipy's
``convolve(x, kernel, mode="same")`` (zero padding, odd kernels centred):

* :func:`convolve_same` by FFT (0.08 s there), zero-padded by the kernel size so nothing wraps
  around. For large dense kernels (LoG's 37×37). Its rounding (~1e-6 relative) depends on the
  transform size, so a pixel's value differs in the last bits between a chunk and a whole image.
* :func:`convolve_taps`, a sum of shifted copies over the kernel's non-zero taps (0.33 s for
  MapDe's 69-tap cone). Every pixel sums the same terms in the same order whatever the image
  size, so chunks and whole images agree bit for bit. For small or sparse kernels.
"""

from __future__ import annotations

import torch


def fft_size(n: int) -> int:
    """Smallest integer >= n with no prime factor above 5 (fast FFT lengths)."""
    while True:
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1


def padded_shape(height: int, width: int, kernel: tuple[int, int]) -> tuple[int, int]:
    """FFT size for a linear (non-circular) convolution of an image with a kernel."""
    return fft_size(height + kernel[0] - 1), fft_size(width + kernel[1] - 1)


def kernel_spectrum(kernels: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """``rfft2`` of kernels (..., kh, kw) at an FFT ``shape`` (reuse it for many images)."""
    spectrum: torch.Tensor = torch.fft.rfft2(kernels.float(), s=shape)
    return spectrum


def convolve_same(
    x: torch.Tensor,
    kernels: torch.Tensor,
    *,
    spectrum: torch.Tensor | None = None,
) -> torch.Tensor:
    """True 2-D convolution with zero padding, output the size of ``x``.

    Parameters
    ----------
    x : Tensor, shape (..., H, W)
    kernels : Tensor, shape (..., kh, kw)
        Odd sizes; broadcast against ``x``'s leading dimensions.
    spectrum : Tensor, optional
        ``kernel_spectrum(kernels, padded_shape(H, W, (kh, kw)))``, if already computed.

    Returns
    -------
    Tensor, shape (broadcast leading dims, H, W), float32 (or float64 for float64 input)
    """
    kh, kw = kernels.shape[-2:]
    if kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(f"kernels must have odd sides, got {(kh, kw)}")
    h, w = x.shape[-2:]
    shape = padded_shape(h, w, (kh, kw))
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    # FFTs in full precision even under autocast: half-precision FFTs need power-of-two sizes.
    with torch.autocast(device_type=x.device.type, enabled=False):
        if spectrum is None or dtype == torch.float64:
            spectrum = torch.fft.rfft2(kernels.to(dtype), s=shape)
        full: torch.Tensor = torch.fft.irfft2(
            torch.fft.rfft2(x.to(dtype), s=shape) * spectrum, s=shape
        )
    return full[..., kh // 2 : kh // 2 + h, kw // 2 : kw // 2 + w]


def convolve_taps(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """True 2-D convolution with zero padding as a sum over the kernel's non-zero taps.

    Parameters
    ----------
    x : Tensor, shape (..., H, W)
    kernel : Tensor, shape (kh, kw), odd sides

    Returns
    -------
    Tensor, shape (..., H, W)
    """
    kh, kw = kernel.shape
    if kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(f"kernel must have odd sides, got {(kh, kw)}")
    h, w = x.shape[-2:]
    ry, rx = kh // 2, kw // 2
    padded = torch.nn.functional.pad(x, (rx, rx, ry, ry))
    flipped = kernel.flip(0, 1).to(x.dtype)  # convolution = correlation with the flipped kernel
    out = torch.zeros_like(x)
    for dy, dx in torch.nonzero(flipped).tolist():
        out = out + flipped[dy, dx] * padded[..., dy : dy + h, dx : dx + w]
    return out
