"""Stain colour normalisation (Reinhard et al. 2001): a slide's colours moved to a reference's.

A detector trained on one lab's slides sees another lab's haematoxylin and eosin in other
shades. Reinhard's method matches the mean and standard deviation of each CIELAB channel of a
slide's tissue to those of the training data: ``lab' = (lab - mean_slide) / std_slide *
std_ref + mean_ref``, pixel by pixel. The slide's statistics are measured once per slide, on
windows of tissue read at the working scale (not on the block-averaged thumbnail of the tissue
mask, whose averaging flattens the colour spread); the transform is then the same for every
pixel of the slide, so tiled detection still equals a whole-image pass.

Pure functions; the colour conversions are torch ops (sRGB, D65) that run on the detector's
device and agree with :func:`skimage.color.rgb2lab` / ``lab2rgb``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    import torch

    from wsidet.slide.wsi import Scale, Slide

#: Pixels lighter than this (CIELAB L*) are glass or background, not stained tissue.
MAX_TISSUE_L = 88.0
#: D65 white point (X, Y, Z).
_WHITE = (0.95047, 1.0, 1.08883)
_RGB_TO_XYZ = (
    (0.412453, 0.357580, 0.180423),
    (0.212671, 0.715160, 0.072169),
    (0.019334, 0.119193, 0.950227),
)


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """Convert sRGB in [0, 1] to CIELAB (D65).

    Parameters
    ----------
    rgb : Tensor, shape (3, ...), float

    Returns
    -------
    Tensor, shape (3, ...): L* in [0, 100], a*, b*
    """
    import torch

    linear = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    matrix = torch.tensor(_RGB_TO_XYZ, dtype=rgb.dtype, device=rgb.device)
    white = torch.tensor(_WHITE, dtype=rgb.dtype, device=rgb.device)
    xyz = torch.einsum("ij,j...->i...", matrix, linear) / white.view(3, *[1] * (rgb.dim() - 1))
    f = torch.where(xyz > 0.008856, xyz.clamp(min=1e-12) ** (1 / 3), 7.787 * xyz + 16 / 116)
    return torch.stack([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """CIELAB (D65) to sRGB, clipped to [0, 1]; the inverse of :func:`rgb_to_lab`.

    Parameters
    ----------
    lab : Tensor, shape (3, ...), float

    Returns
    -------
    Tensor, shape (3, ...)
    """
    import torch

    fy = (lab[0] + 16) / 116
    f = torch.stack([fy + lab[1] / 500, fy, fy - lab[2] / 200])
    xyz = torch.where(f > 0.2068966, f**3, (f - 16 / 116) / 7.787)
    white = torch.tensor(_WHITE, dtype=lab.dtype, device=lab.device)
    xyz = xyz * white.view(3, *[1] * (lab.dim() - 1))
    inverse = torch.linalg.inv(torch.tensor(_RGB_TO_XYZ, dtype=torch.float64)).to(lab)
    linear = torch.einsum("ij,j...->i...", inverse, xyz).clamp(min=0.0)
    rgb = torch.where(linear > 0.0031308, 1.055 * linear ** (1 / 2.4) - 0.055, 12.92 * linear)
    return rgb.clamp(0.0, 1.0)


@dataclass(frozen=True)
class StainStats:
    """Mean and standard deviation of the CIELAB channels of stained tissue.

    Attributes
    ----------
    mean, std : tuple of 3 float
        (L*, a*, b*).
    pixels : int
        Tissue pixels they were measured on.
    """

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    pixels: int = 0

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form (see :meth:`from_dict`)."""
        return {"mean": list(self.mean), "std": list(self.std), "pixels": self.pixels}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StainStats:
        """From :meth:`as_dict`'s form.

        Raises
        ------
        ValueError
            Not three means and three positive deviations.
        """
        mean, std = tuple(map(float, data["mean"])), tuple(map(float, data["std"]))
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"stain statistics need 3 means and 3 positive stds, got {data}")
        return cls(mean, std, int(data.get("pixels", 0)))


def stain_stats(images: list[npt.NDArray[np.uint8]]) -> StainStats:
    """CIELAB statistics of the tissue pixels (L* below :data:`MAX_TISSUE_L`) of RGB images.

    Parameters
    ----------
    images : list of ndarray, each (h, w, 3) uint8

    Raises
    ------
    ValueError
        No tissue pixel at all.
    """
    import torch

    total = 0
    sums = np.zeros(3)
    squares = np.zeros(3)
    for image in images:
        rgb = torch.from_numpy(np.ascontiguousarray(image)).double().permute(2, 0, 1) / 255.0
        lab = rgb_to_lab(rgb).reshape(3, -1)
        tissue = lab[:, lab[0] < MAX_TISSUE_L].numpy()
        total += tissue.shape[1]
        sums += tissue.sum(axis=1)
        squares += (tissue**2).sum(axis=1)
    if total == 0:
        raise ValueError("no stained tissue to measure stain statistics on")
    mean = sums / total
    std = np.sqrt(np.maximum(squares / total - mean**2, 1e-6))
    return StainStats(
        (float(mean[0]), float(mean[1]), float(mean[2])),
        (float(std[0]), float(std[1]), float(std[2])),
        total,
    )


def slide_stain_stats(
    slide: Slide, scale: Scale, *, windows: int = 16, size: int = 256, seed: int = 0
) -> StainStats:
    """Stain statistics of a slide, from ``windows`` windows of tissue read at ``scale``.

    Window centres are drawn (seeded, so a slide always gives the same statistics) from the
    pixels of its tissue mask; a slide without tissue is measured on windows anywhere.
    """
    mask = slide.tissue_mask()
    rows, cols = np.nonzero(mask.mask)
    if len(rows) == 0:
        rows, cols = np.nonzero(np.ones_like(mask.mask))
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(rows), size=min(windows, len(rows)), replace=False)
    reader = slide.reader(scale)
    height, width = scale.shape
    dy, dx = scale.downsample
    crops = []
    for i in pick:
        # Centre of the mask pixel, in working pixels.
        cy = int((rows[i] + 0.5) * mask.downsample[0] / dy)
        cx = int((cols[i] + 0.5) * mask.downsample[1] / dx)
        y0 = min(max(0, cy - size // 2), max(0, height - size))
        x0 = min(max(0, cx - size // 2), max(0, width - size))
        crops.append(reader.read(y0, min(height, y0 + size), x0, min(width, x0 + size)))
    try:
        return stain_stats(crops)
    except ValueError:  # only glass: nothing to normalise, keep colours as they are
        return StainStats((50.0, 0.0, 0.0), (1.0, 1.0, 1.0), 0)


@dataclass(frozen=True)
class Reinhard:
    """A per-channel CIELAB affine map from a slide's stain statistics to a reference's.

    Attributes
    ----------
    source : StainStats
        The slide's.
    target : StainStats
        The training data's.
    """

    source: StainStats
    target: StainStats

    @property
    def identity(self) -> bool:
        """Whether the map changes nothing (a slide without tissue)."""
        return self.source.pixels == 0

    def __call__(self, rgb: torch.Tensor) -> torch.Tensor:
        """Normalise an RGB image.

        Parameters
        ----------
        rgb : Tensor, shape (3, H, W), float in [0, 1]

        Returns
        -------
        Tensor, shape (3, H, W), float in [0, 1], same dtype and device
        """
        import torch

        if self.identity:
            return rgb
        shape = (3, *[1] * (rgb.dim() - 1))

        def column(values: tuple[float, float, float]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.float32, device=rgb.device).view(shape)

        lab = rgb_to_lab(rgb.float())
        scale = column(self.target.std) / column(self.source.std)
        lab = (lab - column(self.source.mean)) * scale + column(self.target.mean)
        return lab_to_rgb(lab).to(rgb.dtype)
