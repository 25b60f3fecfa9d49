"""Local maxima of a score map, in torch, on whatever device the map is on.

Shared by the methods that decode by peak picking. Two properties matter for tiling:

* **Locality.** Whether a pixel is a peak depends only on the map within ``min_distance + 1``
  pixels of it (the window plus the 3×3 sub-pixel fit), so a block that has that much context
  decodes exactly what a whole-image pass decodes.
* **Deterministic ties.** Plateaus (equal maxima inside one window) are resolved by raster
  order using only the window, never by which block happens to see them first: of tied
  maxima, a pixel is kept only if no tied candidate precedes it (above it in the window, or
  left of it on its row).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

# Torch-free, so a method's halo can be read without torch.
from wsidet.ops.support import support as support


def _running_max(x: torch.Tensor, before: int, after: int, dim: int) -> torch.Tensor:
    """Max over ``x[i - before : i + after + 1]`` along ``dim`` (-inf outside the array).

    Doubling: after k rounds each entry holds the max of 2**k consecutive values, so a window
    of n costs about log2(n) elementwise maxima instead of n comparisons per pixel
    (``max_pool2d`` with stride 1 is several times slower on CPU).
    """
    n = before + after + 1
    if n == 1:
        return x
    pad = [0, 0] * (x.ndim - 1 - dim) + [before, after]
    xp = F.pad(x, pad, value=float("-inf"))
    length = x.shape[dim]
    width = 1
    result = xp
    while width * 2 <= n:
        size = result.shape[dim] - width
        result = torch.maximum(result.narrow(dim, 0, size), result.narrow(dim, width, size))
        width *= 2
    if width < n:
        result = torch.maximum(result.narrow(dim, 0, length), result.narrow(dim, n - width, length))
    return result.narrow(dim, 0, length)


def _window_max(x: torch.Tensor, top: int, bottom: int, left: int, right: int) -> torch.Tensor:
    """Max over the window [y-top, y+bottom] × [x-left, x+right] of a (H, W) map."""
    return _running_max(_running_max(x, top, bottom, 0), left, right, 1)


def local_maxima(
    score: torch.Tensor,
    *,
    min_distance: int,
    threshold: float,
    refine: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Peaks of a 2-D map: maxima of their ``(2 m + 1)²`` window above a threshold.

    Parameters
    ----------
    score : Tensor, shape (H, W)
    min_distance : int
        ``m``; two peaks are at least ``m + 1`` pixels apart in Chebyshev distance.
    threshold : float
        Peaks must be strictly above it.
    refine : bool
        Fit a parabola through the 3×3 neighbourhood along each axis for a sub-pixel position
        (offsets are kept strictly inside the peak pixel).

    Returns
    -------
    points_yx : Tensor, shape (n, 2), float32
        Row-major order.
    scores : Tensor, shape (n,), float32
        Map values at the peak pixels.
    """
    if score.ndim != 2:
        raise ValueError(f"score must be (H, W), got shape {tuple(score.shape)}")
    m = int(min_distance)
    s = score.float()
    candidate = (s > threshold) & (s >= _window_max(s, m, m, m, m))
    if m > 0 and bool(candidate.any()):
        tied = torch.where(candidate, s, torch.full_like(s, float("-inf")))
        # Rows y-m .. y-1 of the window: max over rows [y-m+1, y], shifted down one row.
        rows_above = _window_max(tied, m - 1, 0, m, m)
        rows_above = torch.cat([torch.full_like(rows_above[:1], float("-inf")), rows_above[:-1]])
        # Columns x-m .. x-1 of the pixel's own row, likewise shifted right one column.
        left = _window_max(tied, 0, 0, m - 1, 0)
        left = torch.cat([torch.full_like(left[:, :1], float("-inf")), left[:, :-1]], dim=1)
        candidate &= (rows_above < s) & (left < s)
    idx = candidate.nonzero()
    scores = s[idx[:, 0], idx[:, 1]]
    points = idx.to(torch.float32)
    if refine and idx.shape[0]:
        points = points + _parabolic_offsets(s, idx)
    return points, scores


def _parabolic_offsets(s: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Sub-pixel offsets (n, 2) from a 1-D parabola per axis, clipped to (-0.5, 0.5)."""
    h, w = s.shape
    y, x = idx[:, 0], idx[:, 1]
    centre = s[y, x]
    offsets = []
    for before, after in (
        (s[(y - 1).clamp(min=0), x], s[(y + 1).clamp(max=h - 1), x]),
        (s[y, (x - 1).clamp(min=0)], s[y, (x + 1).clamp(max=w - 1)]),
    ):
        # A masked (-inf) neighbour gives no parabola: no offset along this axis.
        finite = torch.isfinite(before) & torch.isfinite(after)
        before = torch.where(finite, before, centre)
        after = torch.where(finite, after, centre)
        curvature = before - 2 * centre + after
        safe = torch.where(curvature < 0, curvature, torch.full_like(curvature, -1.0))
        delta = torch.where(curvature < 0, 0.5 * (before - after) / safe, torch.zeros_like(centre))
        # Strictly inside the pixel, so the point's pixel (its owner) is the peak's pixel.
        offsets.append(delta.clamp(-0.49, 0.49))
    return torch.stack(offsets, dim=1)
