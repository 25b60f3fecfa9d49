"""A picture to check a slide's detections by eye: the QC preview PNG.

One image per slide: on the left the slide's thumbnail with its tissue outline (green) and a
heat map of the detections' density; on the right three fields at full resolution with the
points drawn — the densest field, the sparsest field on tissue and a random one on tissue —
each outlined and lettered on the thumbnail. Drawn with Pillow (no matplotlib).

The layout is fixed (:func:`preview_size`): a title bar, the thumbnail (longer side
:data:`THUMB`), and a column of three :data:`FIELD`-pixel fields.
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from wsidet.output.density import count_grid
from wsidet.output.files import atomic_path

if TYPE_CHECKING:
    import geopandas as gpd
    from PIL import Image as PILImage

    from wsidet.slide.wsi import Slide

#: Longer side of the thumbnail, in pixels.
THUMB = 768
#: Edge of each zoomed field, in level-0 (full-resolution) pixels, drawn 1:1.
FIELD = 256
#: Margin between parts, and the title bar's height.
GAP, TITLE = 8, 28
#: Heat-map cells, in thumbnail pixels.
HEAT_CELL = 12
#: Inferno-like colours from few (dark) to many (light) nuclei per cell.
_HEAT = np.array([(40, 11, 84), (120, 28, 109), (188, 55, 84), (237, 105, 37), (252, 206, 37)])
_POINT, _OUTLINE, _TISSUE = (0, 255, 255), (255, 255, 0), (0, 200, 0)


def preview_size(thumb_shape: tuple[int, int]) -> tuple[int, int]:
    """The preview's (height, width) for a thumbnail of ``thumb_shape`` (rows, cols)."""
    th, tw = thumb_shape
    fields = 3 * FIELD + 2 * GAP
    return TITLE + GAP + max(th, fields) + GAP, GAP + tw + GAP + FIELD + GAP


@dataclass(frozen=True)
class Field:
    """A zoomed field: its letter, why it was chosen and its level-0 box (y0, x0, y1, x1)."""

    label: str
    why: str
    box: tuple[int, int, int, int]


def choose_fields(
    counts: npt.NDArray[np.int64], tissue: npt.NDArray[np.bool_], seed: int
) -> list[tuple[str, tuple[int, int]]]:
    """Cells of a field-sized count grid worth looking at: dense, sparse, random.

    Parameters
    ----------
    counts : ndarray, shape (rows, cols), int
        Points per field-sized cell.
    tissue : ndarray, shape (rows, cols), bool
        Cells mostly on tissue (all cells where none is).
    seed : int
        For the random field (a slide's own, so a preview can be made again the same).

    Returns
    -------
    list of (str, (row, col))
        Up to three distinct cells: ``dense`` (most points), ``sparse`` (fewest points on
        tissue) and ``random`` (on tissue).
    """
    candidates = np.flatnonzero(tissue.ravel()) if tissue.any() else np.arange(counts.size)
    flat = counts.ravel()
    chosen: list[tuple[str, int]] = [("dense", int(np.argmax(flat)))]
    rest = candidates[candidates != chosen[0][1]]
    if rest.size:
        chosen.append(("sparse", int(rest[np.argmin(flat[rest])])))
        rest = rest[rest != chosen[-1][1]]
    if rest.size:
        chosen.append(("random", int(np.random.default_rng(seed).choice(rest))))
    cols = counts.shape[1]
    return [(why, (i // cols, i % cols)) for why, i in chosen]


def _heat(counts: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
    """RGB (rows, cols, 3) of counts on the heat colours (0: black, unused)."""
    top = max(1, int(counts.max()))
    t = np.clip(counts / top, 0, 1) * (len(_HEAT) - 1)
    lo = np.floor(t).astype(int).clip(0, len(_HEAT) - 2)
    frac = (t - lo)[..., None]
    rgb: npt.NDArray[np.float64] = _HEAT[lo] * (1 - frac) + _HEAT[lo + 1] * frac
    return rgb


def _thumbnail_panel(
    thumb: npt.NDArray[np.uint8],
    downsample: tuple[float, float],
    xy: npt.NDArray[np.float64],
    tissue: npt.NDArray[np.bool_] | None,
) -> npt.NDArray[np.uint8]:
    """The thumbnail with the density heat map blended in and the tissue outline drawn."""
    from scipy import ndimage

    th, tw = thumb.shape[:2]
    thumb_xy = xy / np.array([downsample[1], downsample[0]])
    counts = count_grid(thumb_xy, th, tw, HEAT_CELL)
    heat = np.repeat(np.repeat(_heat(counts), HEAT_CELL, 0), HEAT_CELL, 1)[:th, :tw]
    weight = np.repeat(np.repeat(counts > 0, HEAT_CELL, 0), HEAT_CELL, 1)[:th, :tw, None] * 0.55
    panel = thumb * (1 - weight) + heat * weight
    if tissue is not None and tissue.any():
        edge = tissue & ~ndimage.binary_erosion(tissue)
        panel[ndimage.binary_dilation(edge)] = _TISSUE
    return panel.round().clip(0, 255).astype(np.uint8)


def _tissue_at(slide: Slide, shape: tuple[int, int], tissue: bool) -> npt.NDArray[np.bool_] | None:
    """The slide's tissue mask resampled to ``shape`` (None without tissue detection)."""
    if not tissue:
        return None
    from PIL import Image

    mask = slide.tissue_mask().mask
    image = Image.fromarray(mask.astype(np.uint8) * 255).resize(
        (shape[1], shape[0]), Image.Resampling.NEAREST
    )
    return np.asarray(image) > 127


def render_preview(slide: Slide, frame: gpd.GeoDataFrame, *, tissue: bool = True) -> PILImage.Image:
    """The QC preview of one slide's detections (see the module docstring).

    Parameters
    ----------
    slide : Slide
        The slide the detections were made on.
    frame : GeoDataFrame
        Its detections (level-0 ``x``, ``y``).
    tissue : bool
        Outline the tissue and prefer fields on it.

    Returns
    -------
    PIL.Image.Image
        RGB, of :func:`preview_size` of the thumbnail.
    """
    from PIL import Image, ImageDraw

    thumb, ds = slide.thumbnail(THUMB)
    xy = np.column_stack([frame["x"].to_numpy(np.float64), frame["y"].to_numpy(np.float64)])
    mask = _tissue_at(slide, thumb.shape[:2], tissue)
    height, width = preview_size(thumb.shape[:2])
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    canvas.paste(Image.fromarray(_thumbnail_panel(thumb, ds, xy, mask)), (GAP, TITLE + GAP))
    draw = ImageDraw.Draw(canvas)
    method = frame.attrs.get("wsidet", {}).get("method", "")
    draw.text((GAP, 8), f"{slide.slide_id}: {len(frame)} nuclei ({method})", fill=(0, 0, 0))
    for k, field in enumerate(_fields(slide, xy, mask)):
        _draw_field(canvas, draw, slide, field, xy, ds, k)
    return canvas


def _fields(slide: Slide, xy: npt.NDArray[np.float64], mask: Any) -> list[Field]:
    """The three fields, from a field-sized count grid over level 0."""
    from PIL import Image

    h0, w0 = slide.shape
    counts = count_grid(xy, h0, w0, FIELD)
    if mask is None:
        on_tissue = np.ones(counts.shape, bool)
    else:
        small = Image.fromarray(mask.astype(np.uint8) * 255).resize(
            (counts.shape[1], counts.shape[0]), Image.Resampling.BOX
        )
        fraction = np.asarray(small) / 255.0
        # Fields wholly on tissue where there are such, else mostly on it.
        on_tissue = fraction >= 0.9 if (fraction >= 0.9).any() else fraction >= 0.5
    seed = zlib.crc32(slide.slide_id.encode())
    out = []
    for k, (why, (r, c)) in enumerate(choose_fields(counts, on_tissue, seed)):
        y0, x0 = min(r * FIELD, max(0, h0 - FIELD)), min(c * FIELD, max(0, w0 - FIELD))
        out.append(Field("ABC"[k], why, (y0, x0, min(h0, y0 + FIELD), min(w0, x0 + FIELD))))
    return out


def _draw_field(
    canvas: PILImage.Image,
    draw: Any,
    slide: Slide,
    field: Field,
    xy: npt.NDArray[np.float64],
    ds: tuple[float, float],
    k: int,
) -> None:
    """Paste one field with its points, and outline it on the thumbnail."""
    from PIL import Image

    y0, x0, y1, x1 = field.box
    left, top = canvas.width - GAP - FIELD, TITLE + GAP + k * (FIELD + GAP)
    pixels = slide.read_region(y0, x0, y1 - y0, x1 - x0)
    canvas.paste(Image.fromarray(np.ascontiguousarray(pixels)), (left, top))
    inside = (xy[:, 0] >= x0) & (xy[:, 0] < x1) & (xy[:, 1] >= y0) & (xy[:, 1] < y1)
    for x, y in xy[inside]:
        px, py = left + x - x0, top + y - y0
        draw.ellipse((px - 3, py - 3, px + 3, py + 3), outline=_POINT, width=2)
    draw.rectangle((left, top, left + x1 - x0 - 1, top + y1 - y0 - 1), outline=_OUTLINE, width=2)
    _label(draw, (left + 2, top + 2), f"{field.label}: {field.why}, {int(inside.sum())} nuclei")
    tx0, ty0 = GAP + x0 / ds[1], TITLE + GAP + y0 / ds[0]
    tx1, ty1 = GAP + x1 / ds[1], TITLE + GAP + y1 / ds[0]
    draw.rectangle((tx0, ty0, max(tx1, tx0 + 3), max(ty1, ty0 + 3)), outline=_OUTLINE, width=2)
    _label(draw, (max(tx1, tx0 + 3) + 2, ty0), field.label)


def _label(draw: Any, xy: tuple[float, float], text: str) -> None:
    """Dark text on the outline colour: readable on glass and on tissue alike."""
    box = draw.textbbox(xy, text)
    draw.rectangle((box[0] - 2, box[1] - 1, box[2] + 2, box[3] + 1), fill=_OUTLINE)
    draw.text(xy, text, fill=(0, 0, 0))


def write_preview(
    frame: gpd.GeoDataFrame,
    path: str | os.PathLike[str],
    *,
    slide: Slide | None = None,
    overwrite: bool = False,
) -> None:
    """Render and write a slide's preview PNG (atomically).

    Parameters
    ----------
    frame : GeoDataFrame
        A slide's detections with their metadata.
    path : path
    slide : Slide, optional
        Default: opened from the path (and pixel size) the metadata records.
    overwrite : bool

    Raises
    ------
    SlideNotFoundError
        The slide is not where the metadata says (pass ``slide``).
    """
    meta = frame.attrs.get("wsidet", {})
    if slide is None:
        from wsidet.slide.wsi import open_slide

        info = meta.get("slide", {})
        slide = open_slide(info["path"], mpp=info.get("mpp")).with_id(info["slide_id"])
    tissue = meta.get("run", {}).get("tissue_fraction") is not None  # a run limited to tissue
    image = render_preview(slide, frame, tissue=tissue)
    with atomic_path(path, overwrite=overwrite) as tmp:
        image.save(tmp, format="PNG")  # optimize=True: 1% smaller, 6x slower to write
