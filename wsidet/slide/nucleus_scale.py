"""The pixel size an H&E image must have, from the size of its nuclei.

Nuclei are the dark, roughly round haematoxylin blobs of every H&E image, and their size in
micrometres varies far less across tissues than a wrong pixel size does (a 20× slide read as
40× is off by 2). The scale-normalised Laplacian of Gaussian of a disc of radius ``r`` peaks at
``σ = r / √2`` (Lindeberg 1998). The σ at which the energy of the positive responses of an
image's haematoxylin density peaks (its *characteristic scale*), times the pixel size, is
about constant over H&E: :data:`NUCLEUS_SIGMA_UM`, measured on images of known pixel size
(CRCHisto at 0.5 µm/px, MoNuSeg at 0.25 µm/px; ``benchmarks/nucleus_scale.py`` measures it and
checks it on other images and slides). Dividing it by the σ measured in pixels estimates the
pixel size. The energy is dominated by nuclei, which are the darkest, densest blobs; choosing
per pixel instead (the σ of each dark pixel's largest response) was tried and is far noisier:
chromatin texture and clusters of nuclei pull single pixels to either end of the range.

Pure functions on arrays: a slide's windows are chosen by the caller
(:func:`wsidet.slide.scale_check.estimate_slide_mpp`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

#: Characteristic σ (µm) of H&E haematoxylin density (see the module docstring): median 1.44
#: over the 100 CRCHisto images, 1.96 over the 30 MoNuSeg images (``benchmarks/nucleus_scale.py``,
#: ``benchmarks/results/nucleus_scale.json``); their geometric mean. Tissues differ by about
#: ±15 % around it, which bounds what the estimate can tell: a 2× error, not a 10 % one.
NUCLEUS_SIGMA_UM = 1.68

#: Blob scales tried (pixels): σ from 1 to 16 in quarter octaves. The peak must fall inside,
#: which covers pixel sizes from about 0.1 to 1.6 µm/px (5× below 40x to 3× above 10x).
SIGMAS_PX = tuple(2.0 ** (k / 4) for k in range(0, 17))

#: Mirrored border added before the Fourier transform (pixels).
FFT_PAD = 32

#: Least peak energy (haematoxylin OD², mean over the window) of a window with nuclei: the
#: weakest of the CRCHisto, MoNuSeg and CMU-1 windows measured peaks at 1.5e-3, glass at 2e-5
#: and smoothed grey noise at 1.2e-4. Windows below say nothing about scale.
MIN_ENERGY = 3e-4


@dataclass(frozen=True)
class ScaleEstimate:
    """A pixel size estimated from nucleus size.

    Attributes
    ----------
    mpp : float
        Estimated µm per pixel of the image measured (nan when too few windows show nuclei).
    sigma_px : float
        Characteristic σ in pixels of all windows pooled.
    windows : int
        Windows (images) whose σ was inside the range.
    spread : float
        Largest over smallest σ of single windows (1 for one window): near 1.3 on a slide
        of H&E tissue; much larger means some windows have no clear nuclei.
    """

    mpp: float
    sigma_px: float
    windows: int
    spread: float

    def disagrees(self, mpp: float, factor: float = 1.5) -> bool:
        """Whether ``mpp`` is more than ``factor`` times off this estimate (either way)."""
        if not (math.isfinite(self.mpp) and self.mpp > 0 and mpp > 0):
            return False
        ratio = mpp / self.mpp
        return ratio > factor or ratio < 1.0 / factor


def haematoxylin_density(rgb: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    """Haematoxylin optical density (Ruifrok & Johnston), shape (h, w), >= 0.

    Parameters
    ----------
    rgb : ndarray, shape (h, w, 3), uint8
    """
    from wsidet.ops.colour import HED_FROM_RGB

    od = -np.log(np.maximum(rgb.astype(np.float32), 1.0) / 255.0)
    density: npt.NDArray[np.float32] = np.maximum(
        od @ HED_FROM_RGB[:, 0].astype(np.float32), 0.0
    ).astype(np.float32)
    return density


def blob_response(
    density: npt.NDArray[np.float32], sigmas: tuple[float, ...] = SIGMAS_PX
) -> npt.NDArray[np.float32]:
    """Scale-normalised ``-σ² ∇²G_σ`` of a density image, shape (len(sigmas), h, w).

    Computed in the Fourier domain, where the filter is ``σ² |ω|² exp(-σ² |ω|² / 2)``: one
    forward transform and one inverse per σ, whatever σ (a spatial LoG at σ = 16 needs a
    129-tap kernel). The image is mirrored at its borders by :data:`FFT_PAD` pixels so that
    the transform's wrap-around does not make edges look like blobs.
    """
    from scipy import fft

    h, w = density.shape
    pad = min(FFT_PAD, h - 1, w - 1)
    padded = np.pad(density.astype(np.float32), pad, mode="reflect")
    shape = padded.shape
    spectrum = fft.rfft2(padded, workers=1)
    wy = (2 * np.pi * fft.fftfreq(shape[0])).astype(np.float32)[:, None]
    wx = (2 * np.pi * fft.rfftfreq(shape[1])).astype(np.float32)[None, :]
    w2 = wy**2 + wx**2
    out = np.empty((len(sigmas), h, w), np.float32)
    for i, sigma in enumerate(sigmas):
        s2 = np.float32(sigma * sigma)
        response = fft.irfft2(spectrum * (s2 * w2 * np.exp(-0.5 * s2 * w2)), s=shape, workers=1)
        out[i] = response[pad : pad + h, pad : pad + w]
    return out


def peak_sigmas(
    response: npt.NDArray[np.float32], sigmas: tuple[float, ...] = SIGMAS_PX
) -> npt.NDArray[np.float64]:
    """σ of the largest response along scale at each position, refined in log σ.

    Parameters
    ----------
    response : ndarray, shape (s, n)
        Responses at ``len(sigmas)`` scales for ``n`` positions.
    sigmas : tuple of float
        Quarter-octave (or any geometric) series of scales.

    Returns
    -------
    ndarray, shape (n,)
        The peak σ, nan where it is the smallest or largest σ tried (outside the range).
    """
    s, n = response.shape
    k = np.argmax(response, axis=0)
    inner = (k > 0) & (k < s - 1)
    kk = np.clip(k, 1, s - 2)
    cols = np.arange(n)
    a, b, c = (response[kk + d, cols].astype(np.float64) for d in (-1, 0, 1))
    denominator = a - 2 * b + c
    offset = np.where(denominator < 0, 0.5 * (a - c) / np.where(denominator < 0, denominator, 1), 0)
    step = math.log2(sigmas[1] / sigmas[0])
    log_s = np.log2(np.asarray(sigmas))[kk] + step * np.clip(offset, -0.5, 0.5)
    return np.where(inner, 2.0**log_s, np.nan)


def blob_sigmas(
    rgb: npt.NDArray[np.uint8],
    points_yx: npt.NDArray[np.float64],
    *,
    sigmas: tuple[float, ...] = SIGMAS_PX,
) -> npt.NDArray[np.float64]:
    """The σ (pixels) at which the haematoxylin blob at each annotated centre responds most.

    For measuring annotated data (how large its nuclei are in pixels), not for estimating
    an unannotated image's scale (:func:`estimate_mpp`).

    Parameters
    ----------
    rgb : ndarray, shape (h, w, 3), uint8
    points_yx : ndarray, shape (n, 2)
        Nucleus centres (pixel indices).
    sigmas : tuple of float

    Returns
    -------
    ndarray, shape (m,)
        One σ per centre inside the image; centres peaking at the smallest or largest σ
        tried are left out (their blob is outside the range).
    """
    response = blob_response(haematoxylin_density(rgb), sigmas)
    h, w = response.shape[1:]
    yx = np.rint(np.asarray(points_yx, np.float64).reshape(-1, 2)).astype(np.int64)
    inside = (yx >= 0).all(axis=1) & (yx[:, 0] < h) & (yx[:, 1] < w)
    found = peak_sigmas(response[:, yx[inside, 0], yx[inside, 1]], sigmas)
    return found[np.isfinite(found)]


def scale_energy(
    rgb: npt.NDArray[np.uint8], sigmas: tuple[float, ...] = SIGMAS_PX
) -> npt.NDArray[np.float64]:
    """Mean squared positive blob response of an image at each σ, shape (len(sigmas),).

    Windows of one slide are pooled by adding their energies.
    """
    response = blob_response(haematoxylin_density(rgb), sigmas)
    np.maximum(response, 0.0, out=response)
    energy: npt.NDArray[np.float64] = (response.astype(np.float64) ** 2).mean(axis=(1, 2))
    return energy


def characteristic_sigma(
    energy: npt.NDArray[np.float64], sigmas: tuple[float, ...] = SIGMAS_PX
) -> float:
    """The σ (pixels) where an energy profile peaks.

    nan at either end of the range, and where the peak is below :data:`MIN_ENERGY` (no
    nuclei: glass, blur, noise).
    """
    profile = np.asarray(energy, np.float64)
    if not profile.size or profile.max() < MIN_ENERGY:
        return math.nan
    return float(peak_sigmas(profile.astype(np.float32).reshape(-1, 1), sigmas)[0])


def estimate_from_energies(
    energies: list[npt.NDArray[np.float64]],
    sigmas: tuple[float, ...] = SIGMAS_PX,
    *,
    min_windows: int = 1,
) -> ScaleEstimate:
    """A :class:`ScaleEstimate` from the energy profiles of one or more windows.

    Windows without nuclei or peaking at either end of the σ range are left out; with fewer
    than ``min_windows`` left, there is no estimate (``mpp`` nan).
    """
    if not energies:
        return ScaleEstimate(math.nan, math.nan, 0, math.nan)
    # The median window, not the pooled energy: one window of dense lymphocytes or of a
    # large-scale pattern has many times the energy of the others and would decide alone.
    each = [characteristic_sigma(e, sigmas) for e in energies]
    finite = [v for v in each if math.isfinite(v)]
    if len(finite) < max(1, min_windows):
        return ScaleEstimate(math.nan, math.nan, len(finite), math.nan)
    sigma = float(np.median(finite))
    return ScaleEstimate(NUCLEUS_SIGMA_UM / sigma, sigma, len(finite), max(finite) / min(finite))


def estimate_mpp(rgb: npt.NDArray[np.uint8]) -> ScaleEstimate:
    """Estimate the pixel size of an H&E image (or tissue window) from its nuclei.

    Parameters
    ----------
    rgb : ndarray, shape (h, w, 3), uint8
        At least 32 pixels a side (128 or more to be useful); nuclei should fill a good part
        of it.
    """
    return estimate_from_energies([scale_energy(rgb)])
