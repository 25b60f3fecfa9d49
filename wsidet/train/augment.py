"""Augmentations of an image patch and its points, as pure numpy functions.

Geometry moves the points with the pixels (so targets are encoded after augmenting); colour
changes only the pixels. Randomness comes from the ``numpy.random.Generator`` passed in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from wsidet.ops.colour import HED_FROM_RGB, RGB_FROM_HED

Image = npt.NDArray[np.uint8]
Points = npt.NDArray[np.float64]


def dihedral(image: Image, points_yx: Points, k: int) -> tuple[Image, Points]:
    """One of the 8 flips/90° rotations of a square patch, applied to image and points.

    Parameters
    ----------
    image : ndarray, shape (s, s, 3)
    points_yx : ndarray, shape (n, 2)
        Pixel indices (pixel centres are integers).
    k : int
        0-3: rotate by ``k × 90°``; 4-7: transpose first, then rotate by ``(k - 4) × 90°``.

    Returns
    -------
    image, points_yx
    """
    size = image.shape[0]
    if image.shape[1] != size:
        raise ValueError(f"dihedral needs a square patch, got {image.shape[:2]}")
    pts = np.asarray(points_yx, np.float64).reshape(-1, 2).copy()
    if k >= 4:
        image = image.transpose(1, 0, 2)
        pts = pts[:, ::-1].copy()
    for _ in range(k % 4):
        # np.rot90 (counter-clockwise): new (y, x) = (size - 1 - x, y).
        image = np.rot90(image)
        pts = np.stack([size - 1 - pts[:, 1], pts[:, 0]], axis=1)
    return np.ascontiguousarray(image), pts


def hed_jitter(
    image: Image, rng: np.random.Generator, *, scale: float = 0.05, shift: float = 0.05
) -> Image:
    """Perturb each stain's concentration (Tellez et al. 2018): ``c' = c (1 + a) + b``.

    Parameters
    ----------
    image : ndarray, shape (h, w, 3), uint8
    scale, shift : float
        ``a ~ U(-scale, scale)``, ``b ~ U(-shift, shift)`` per stain (H, E, DAB).
    """
    od = -np.log((image.astype(np.float32) + 1.0) / 256.0)
    stains = od @ HED_FROM_RGB.astype(np.float32)
    a = rng.uniform(-scale, scale, 3).astype(np.float32)
    b = rng.uniform(-shift, shift, 3).astype(np.float32)
    od = (stains * (1 + a) + b) @ RGB_FROM_HED.astype(np.float32)
    out = 256.0 * np.exp(-od) - 1.0
    jittered: Image = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return jittered


def brightness_contrast(
    image: Image, rng: np.random.Generator, *, brightness: float = 0.1, contrast: float = 0.1
) -> Image:
    """``(x - mean) · c + mean + b`` with ``c ~ U(1 ± contrast)``, ``b ~ U(± brightness · 255)``."""
    x = image.astype(np.float32)
    mean = x.mean()
    c = rng.uniform(1 - contrast, 1 + contrast)
    b = rng.uniform(-brightness, brightness) * 255
    adjusted: Image = np.clip(np.rint((x - mean) * c + mean + b), 0, 255).astype(np.uint8)
    return adjusted


def gamma(image: Image, rng: np.random.Generator, *, amplitude: float = 0.2) -> Image:
    """``255 (x / 255) ** γ`` with ``log γ ~ U(± amplitude)``: darker or paler mid-tones."""
    g = float(np.exp(rng.uniform(-amplitude, amplitude)))
    table = np.clip(np.rint(255.0 * (np.arange(256) / 255.0) ** g), 0, 255).astype(np.uint8)
    out: Image = table[image]
    return out


def blur(image: Image, rng: np.random.Generator, *, max_sigma: float = 1.0) -> Image:
    """Gaussian blur with ``σ ~ U(0, max_sigma)`` pixels (an out-of-focus scan)."""
    from scipy import ndimage

    sigma = float(rng.uniform(0.0, max_sigma))
    if sigma < 0.1:
        return image
    smooth = ndimage.gaussian_filter(image.astype(np.float32), (sigma, sigma, 0), mode="reflect")
    out: Image = np.clip(np.rint(smooth), 0, 255).astype(np.uint8)
    return out


def jpeg(image: Image, rng: np.random.Generator, *, min_quality: int = 40) -> Image:
    """Encode and decode as JPEG at a quality ``~ U(min_quality, 95)`` (scanner compression)."""
    import io

    from PIL import Image as PILImage

    quality = int(rng.integers(min_quality, 96))
    buffer = io.BytesIO()
    PILImage.fromarray(np.ascontiguousarray(image)).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with PILImage.open(buffer) as decoded:
        out: Image = np.array(decoded.convert("RGB"), np.uint8)
    return out


@dataclass(frozen=True)
class Augment:
    """Which augmentations to apply (each drawn per patch).

    Attributes
    ----------
    flips : bool
        A random one of the 8 dihedral transforms.
    hed : float
        HED jitter amplitude (0 to disable).
    intensity : float
        Brightness/contrast amplitude (0 to disable).
    scale : float
        Scale jitter: patches are cut ``s`` times larger or smaller and resampled,
        ``s ~ U(1 ± scale)`` (0 to disable).
    gamma : float
        Gamma jitter amplitude in log γ (0 to disable).
    blur : float
        Largest Gaussian blur σ in pixels (0 to disable).
    jpeg : int
        Lowest JPEG quality of a re-compression, drawn per patch (0 to disable).
    """

    flips: bool = True
    hed: float = 0.05
    intensity: float = 0.1
    scale: float = 0.0
    gamma: float = 0.0
    blur: float = 0.0
    jpeg: int = 0

    def __post_init__(self) -> None:
        if min(self.hed, self.intensity, self.scale, self.gamma, self.blur) < 0:
            raise ValueError("augmentation amplitudes must be >= 0")
        if not 0.0 <= self.scale < 1.0:
            raise ValueError(f"scale jitter must be in [0, 1), got {self.scale}")
        if self.jpeg and not 1 <= self.jpeg <= 95:
            raise ValueError(f"jpeg quality must be in 1-95 (0: off), got {self.jpeg}")

    @classmethod
    def domain_shift(cls) -> Augment:
        """The generalist's: strong stain, intensity, gamma, blur, JPEG and ±25 % scale jitter.

        Stain jitter ±10 % (between Tellez et al.'s "HED-light" and "HED-strong"), blur up
        to 1 px σ and JPEG down to quality 40 cover what differs between scanners and labs
        in the three training sources; scale jitter of ±25 % covers pixel sizes that files
        state as 0.25 or 0.5 µm/px but are 0.22-0.27 or 0.45-0.55.
        """
        return cls(hed=0.1, intensity=0.15, scale=0.25, gamma=0.25, blur=1.0, jpeg=40)

    def colour(self, image: Image, rng: np.random.Generator) -> Image:
        """Apply the colour augmentations."""
        if self.hed > 0:
            image = hed_jitter(image, rng, scale=self.hed, shift=self.hed)
        if self.intensity > 0:
            image = brightness_contrast(
                image, rng, brightness=self.intensity, contrast=self.intensity
            )
        if self.gamma > 0:
            image = gamma(image, rng, amplitude=self.gamma)
        if self.blur > 0:
            image = blur(image, rng, max_sigma=self.blur)
        if self.jpeg:
            image = jpeg(image, rng, min_quality=self.jpeg)
        return image
