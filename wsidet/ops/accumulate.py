"""Vector oriented confidence accumulation (VOCA's decoder), in torch.

Every pixel ``p`` adds ``wt[p] * conf[p]`` to the pixel its localisation vector points at,
``round(p + loc[p])`` (Xie et al. 2019, eq. 5), with a scatter-add on the maps' device. Vectors
are clamped to ``max_shift`` pixels per axis so that the accumulator at a pixel depends only on
predictions within that distance (the paper's targets never point further than ``r``).
"""

from __future__ import annotations

import torch


def accumulate(
    conf: torch.Tensor, loc: torch.Tensor, wt: torch.Tensor, *, max_shift: int
) -> torch.Tensor:
    """The accumulator map.

    Parameters
    ----------
    conf : Tensor, shape (H, W)
        Confidence in [0, 1].
    loc : Tensor, shape (2, H, W)
        (dy, dx) from each pixel to its nucleus centre, in pixels.
    wt : Tensor, shape (H, W)
        Weight of contribution (number of nuclei sharing the pixel).
    max_shift : int
        Per-axis clamp of the vectors.

    Returns
    -------
    Tensor, shape (H, W), float32
        Contributions pointing outside the image are dropped.
    """
    h, w = conf.shape
    yy, xx = torch.meshgrid(
        torch.arange(h, device=conf.device), torch.arange(w, device=conf.device), indexing="ij"
    )
    shift = torch.round(loc.float()).clamp(-max_shift, max_shift).long()
    ty, tx = yy + shift[0], xx + shift[1]
    inside = (ty >= 0) & (ty < h) & (tx >= 0) & (tx < w)
    values = (wt.float() * conf.float())[inside]
    out = torch.zeros(h * w, dtype=torch.float32, device=conf.device)
    out.index_add_(0, (ty * w + tx)[inside], values)
    return out.view(h, w)


def accumulate_reference(
    conf: torch.Tensor, loc: torch.Tensor, wt: torch.Tensor, *, max_shift: int
) -> torch.Tensor:
    """The same accumulation as a plain Python loop (slow; for tests)."""
    h, w = conf.shape
    out = torch.zeros(h, w, dtype=torch.float64)
    for y in range(h):
        for x in range(w):
            dy = int(max(-max_shift, min(max_shift, round(float(loc[0, y, x])))))
            dx = int(max(-max_shift, min(max_shift, round(float(loc[1, y, x])))))
            if 0 <= y + dy < h and 0 <= x + dx < w:
                out[y + dy, x + dx] += float(wt[y, x]) * float(conf[y, x])
    return out.float()
