"""Resampling of image windows by a non-integer factor, exact across windows.

A slide level rarely has exactly the pixel size a model wants; the remaining factor is applied
here, one chunk at a time. Output pixel ``i`` (a global index at the output scale) has its centre
at ``(i + 0.5) * factor`` in the continuous coordinates of the source, and its value is a
triangle-filter average of the source pixels around that centre (antialiased when shrinking,
linear interpolation when enlarging, like Pillow's ``BILINEAR`` with ``reducing_gap=None``).
Weights depend only on global indices, and each output pixel sums the same terms in the same
order whatever window it is computed in, so a window of the output equals the same slice of the
whole resampled image bit for bit: tiling never changes the pixels a model sees.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from scipy import sparse


def resampled_size(src_size: int, factor: float) -> int:
    """Length of an axis of ``src_size`` source pixels after shrinking by ``factor``.

    Parameters
    ----------
    src_size : int
        Number of source pixels along the axis.
    factor : float
        Source pixels per output pixel (> 1 shrinks, < 1 enlarges).

    Returns
    -------
    int
        ``max(1, round(src_size / factor))``.
    """
    return max(1, round(src_size / factor))


def resample_weights(
    out_start: int, out_stop: int, factor: float, src_size: int
) -> tuple[int, int, sparse.csr_matrix]:
    """Filter weights that map a source window onto output pixels ``[out_start, out_stop)``.

    Parameters
    ----------
    out_start, out_stop : int
        Half-open range of global output indices along one axis.
    factor : float
        Source pixels per output pixel.
    src_size : int
        Length of the whole source axis (weights near the edges are renormalised).

    Returns
    -------
    src_start, src_stop : int
        Half-open range of source indices the window needs.
    weights : scipy.sparse.csr_matrix, shape (out_stop - out_start, src_stop - src_start)
        Row-normalised float32 weights; columns are relative to ``src_start``.
    """
    if out_stop <= out_start:
        raise ValueError(f"empty output range [{out_start}, {out_stop})")
    if not factor > 0:
        raise ValueError(f"factor must be > 0, got {factor}")
    support = max(factor, 1.0)
    out_idx = np.arange(out_start, out_stop, dtype=np.float64)
    centre = (out_idx + 0.5) * factor
    # Source pixel j (centre j + 0.5) has non-zero weight iff |j + 0.5 - centre| < support.
    lo = np.clip(np.floor(centre - support - 0.5).astype(np.int64) + 1, 0, src_size - 1)
    hi = np.clip(np.ceil(centre + support - 0.5).astype(np.int64) - 1, 0, src_size - 1)
    taps = int((hi - lo).max()) + 1
    cols = lo[:, None] + np.arange(taps)[None, :]
    valid = cols <= hi[:, None]
    dist = np.abs(cols + 0.5 - centre[:, None]) / support
    w = np.where(valid, np.maximum(0.0, 1.0 - dist), 0.0)
    total = w.sum(axis=1, keepdims=True)
    # A row can only sum to 0 when the source axis is empty, which callers never pass.
    w = (w / total).astype(np.float32)
    src_start = int(lo.min())
    src_stop = int(hi.max()) + 1
    keep = w > 0
    rows = np.broadcast_to(np.arange(len(out_idx))[:, None], w.shape)[keep]
    matrix = sparse.csr_matrix(
        (w[keep], (rows, cols[keep] - src_start)),
        shape=(len(out_idx), src_stop - src_start),
    )
    matrix.sort_indices()
    return src_start, src_stop, matrix


def resample_window(
    src: npt.NDArray[np.uint8], weights_y: sparse.csr_matrix, weights_x: sparse.csr_matrix
) -> npt.NDArray[np.uint8]:
    """Apply separable weights from :func:`resample_weights` to an image window.

    Parameters
    ----------
    src : ndarray, shape (h, w, c), uint8
        The source window ``[src_start_y:src_stop_y, src_start_x:src_stop_x]``.
    weights_y : csr_matrix, shape (oh, h)
    weights_x : csr_matrix, shape (ow, w)

    Returns
    -------
    ndarray, shape (oh, ow, c), uint8
    """
    h, w, c = src.shape
    oh, ow = weights_y.shape[0], weights_x.shape[0]
    rows = weights_y @ src.reshape(h, w * c).astype(np.float32)  # (oh, w*c)
    cols = rows.reshape(oh, w, c).transpose(1, 0, 2).reshape(w, oh * c)
    out = np.asarray(weights_x @ cols).reshape(ow, oh, c).transpose(1, 0, 2)
    result: npt.NDArray[np.uint8] = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return result
