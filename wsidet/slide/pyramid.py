"""Write an RGB image as a tiled pyramidal TIFF (generic or OME) that tiffslide opens.

Used to turn arrays (test fixtures, image crops, synthetic benchmark slides) into slides. Levels
are written as SubIFDs of the full-resolution page, each a block mean of level 0, with the pixel
size in the resolution tags (and in the OME-XML for ``ome=True``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt


def downsample_mean(image: npt.NDArray[np.uint8], factor: int) -> npt.NDArray[np.uint8]:
    """Average ``factor × factor`` blocks (partial edge blocks included), in row strips.

    Parameters
    ----------
    image : ndarray, shape (h, w, c), uint8
    factor : int

    Returns
    -------
    ndarray, shape (ceil(h / factor), ceil(w / factor), c), uint8
    """
    if factor < 1:
        raise ValueError(f"factor must be >= 1, got {factor}")
    if factor == 1:
        return image
    h, w, c = image.shape
    out = np.empty((-(-h // factor), -(-w // factor), c), np.uint8)
    # Strips bound the float32 working copy to about 32 Mpx.
    strip = max(1, (32_000_000 // max(1, w * c)) // factor) * factor
    for y0 in range(0, h, strip):
        block = image[y0 : y0 + strip].astype(np.float32)
        pad_h, pad_w = (-block.shape[0]) % factor, (-w) % factor
        if pad_h or pad_w:
            block = np.pad(block, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
        bh, bw = block.shape[0] // factor, block.shape[1] // factor
        reduced = block.reshape(bh, factor, bw, factor, c).mean(axis=(1, 3))
        out[y0 // factor : y0 // factor + bh] = np.rint(reduced).astype(np.uint8)
    return out


def write_pyramid(
    path: str | os.PathLike[str],
    image: npt.NDArray[np.uint8],
    *,
    mpp: float | None,
    downsamples: Sequence[int] = (1, 2, 4),
    tile: int = 256,
    compression: str = "jpeg",
    quality: int = 90,
    ome: bool = False,
) -> None:
    """Write ``image`` as a tiled pyramidal TIFF.

    Parameters
    ----------
    path : path
        Output file (``.tif``/``.tiff``; ``.ome.tif`` for OME).
    image : ndarray, shape (h, w, 3), uint8
        Level 0 (a ``numpy.memmap`` works for large slides).
    mpp : float or None
        Level-0 micrometres per pixel; None writes no physical size.
    downsamples : sequence of int
        Level factors, starting with 1.
    tile : int
        Tile edge (a multiple of 16).
    compression : str
        ``"jpeg"`` (lossy, like most scanners), ``"zlib"`` or ``"none"``.
    quality : int
        JPEG quality.
    ome : bool
        Write OME-XML (pixel size in ``PhysicalSizeX``) instead of plain resolution tags only.
    """
    import tifffile

    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (h, w, 3) uint8, got {image.shape} {image.dtype}")
    if list(downsamples[:1]) != [1] or any(d < 1 for d in downsamples):
        raise ValueError(f"downsamples must start with 1, got {list(downsamples)}")
    if tile % 16:
        raise ValueError(f"tile must be a multiple of 16, got {tile}")
    if compression not in {"jpeg", "zlib", "none"}:
        raise ValueError(f"compression must be 'jpeg', 'zlib' or 'none', got {compression!r}")
    codec = None if compression == "none" else compression
    codec_args = {"level": quality} if compression == "jpeg" else None
    levels = [image if d == 1 else downsample_mean(image, d) for d in downsamples]
    with tifffile.TiffWriter(path, bigtiff=image.nbytes > 2**31, ome=ome) as tw:
        for i, (level, d) in enumerate(zip(levels, downsamples, strict=True)):
            options: dict[str, object] = {
                "tile": (tile, tile),
                "compression": codec,
                "compressionargs": codec_args,
                "photometric": "rgb",
            }
            if mpp is not None:
                level_mpp = mpp * d
                options["resolution"] = (1e4 / level_mpp, 1e4 / level_mpp)
                options["resolutionunit"] = "CENTIMETER"
            if i == 0:
                if ome and mpp is not None:
                    options["metadata"] = {
                        "axes": "YXS",
                        "PhysicalSizeX": mpp,
                        "PhysicalSizeY": mpp,
                        "PhysicalSizeXUnit": "µm",
                        "PhysicalSizeYUnit": "µm",
                    }
                elif not ome:
                    options["metadata"] = None
                tw.write(level, subifds=len(levels) - 1, **options)  # type: ignore[arg-type]
            else:
                tw.write(level, subfiletype=1, **options)  # type: ignore[arg-type]
