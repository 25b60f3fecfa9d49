from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from torch.nn import functional as F

from tests.synthetic import level_maps
from wsidet.ops.peaks import _window_max, local_maxima, support


def _reference(score: np.ndarray, m: int, threshold: float) -> set[tuple[int, int]]:
    """Brute force: window maxima above threshold; ties go to the first in raster order."""
    h, w = score.shape
    cand = set()
    for y in range(h):
        for x in range(w):
            win = score[max(0, y - m) : y + m + 1, max(0, x - m) : x + m + 1]
            if score[y, x] > threshold and score[y, x] >= win.max():
                cand.add((y, x))
    keep = set()
    for y, x in cand:
        earlier = [
            (q, r)
            for q, r in cand
            if abs(q - y) <= m
            and abs(r - x) <= m
            and (q, r) < (y, x)
            and score[q, r] == score[y, x]
        ]
        if not earlier:
            keep.add((y, x))
    return keep


@st.composite
def dense_level_maps(draw: st.DrawFn) -> np.ndarray:
    """Small maps of few distinct values, every pixel drawn: plenty of plateaus and ties."""
    shape = draw(st.tuples(st.integers(1, 24), st.integers(1, 24)))
    levels = draw(st.integers(2, 6))
    values = st.integers(0, levels - 1)
    return draw(hnp.arrays(np.int64, shape, elements=values, fill=st.nothing())).astype(np.float32)


@settings(max_examples=60)
@given(score=dense_level_maps(), m=st.integers(1, 4))
def test_matches_brute_force_including_ties(score, m) -> None:
    pts, scores = local_maxima(torch.from_numpy(score), min_distance=m, threshold=0.5, refine=False)
    got = {(int(y), int(x)) for y, x in pts.numpy()}
    assert got == _reference(score, m, 0.5)
    np.testing.assert_array_equal(scores.numpy(), [score[y, x] for y, x in pts.numpy().astype(int)])


def test_plateau_gives_one_point() -> None:
    score = torch.zeros(20, 20)
    score[5:8, 9:11] = 1.0
    pts, _ = local_maxima(score, min_distance=3, threshold=0.5, refine=False)
    assert pts.tolist() == [[5.0, 9.0]]


def test_subpixel_refinement_recovers_parabola_vertex() -> None:
    yy, xx = torch.meshgrid(torch.arange(15.0), torch.arange(17.0), indexing="ij")
    score = 5 - (yy - 7.3) ** 2 - (xx - 8.8) ** 2
    pts, _ = local_maxima(score, min_distance=2, threshold=0, refine=True)
    np.testing.assert_allclose(pts.numpy(), [[7.3, 8.8]], atol=1e-4)


@settings(max_examples=40)
@given(
    values=hnp.arrays(
        np.float32,
        st.tuples(st.integers(1, 30), st.integers(1, 30)),
        elements=st.floats(0, 1, width=32),
    ),
    window=st.tuples(*[st.integers(0, 6)] * 4),
)
def test_window_max_equals_max_pool(values, window) -> None:
    x = torch.from_numpy(values)
    t, b, left, right = window
    ref = F.max_pool2d(
        F.pad(x[None, None], (left, right, t, b), value=float("-inf")),
        (t + b + 1, left + right + 1),
        stride=1,
    )[0, 0]
    assert torch.equal(_window_max(x, t, b, left, right), ref)


@settings(max_examples=30)
@given(score=level_maps((40, 40), 4), m=st.integers(1, 3))
def test_support_is_enough_context(score, m) -> None:
    """A peak's fate is decided by the map within support(m) of it."""
    full = local_maxima(torch.from_numpy(score), min_distance=m, threshold=0.5)[0].numpy()
    r = support(m)
    y0, x0, y1, x1 = 12, 9, 27, 31
    crop = score[y0 - r : y1 + r, x0 - r : x1 + r]
    part = local_maxima(torch.from_numpy(crop), min_distance=m, threshold=0.5)[0].numpy()
    part += [y0 - r, x0 - r]

    def inside(p: np.ndarray) -> np.ndarray:
        pix = np.floor(p + 0.5)
        return p[(pix[:, 0] >= y0) & (pix[:, 0] < y1) & (pix[:, 1] >= x0) & (pix[:, 1] < x1)]

    # Sub-pixel offsets are added at other coordinates: equal up to float32 rounding.
    np.testing.assert_allclose(inside(part), inside(full), atol=1e-5)


def test_masked_neighbours_give_finite_points() -> None:
    score = torch.full((9, 9), float("-inf"))
    score[3:6, 3:6] = torch.tensor([[1.0, 2.0, 1.0], [2.0, 5.0, 3.0], [1.0, 2.0, 1.0]])
    score[4, 6] = float("-inf")
    pts, _ = local_maxima(score, min_distance=2, threshold=0.0)
    assert torch.isfinite(pts).all() and pts.tolist()[0][0] == 4.0


@settings(max_examples=60, deadline=None)
@given(values=level_maps((64, 64), 3, max_boxes=16), extent=st.integers(1, 4), m=st.integers(1, 4))
def test_region_centroids_read_only_their_support(values, extent, m) -> None:
    """A point of region_centroids is decided by the map within centroid_support of it.

    Drawn pixels and rectangles of few values make small regions, large components (decoded by
    peaks) and plateaus next to each other.
    """
    from wsidet.ops.deconv import centroid_support, region_centroids

    score = torch.from_numpy(values.astype(np.float64))
    r = centroid_support(extent, m)
    full, _ = region_centroids(score, 0.5, max_extent=extent, min_distance=m)
    # Points at least r inside the crop's edge must be those of the whole map.
    inner = (slice(2, 62), slice(2, 62))
    part, _ = region_centroids(score[inner], 0.5, max_extent=extent, min_distance=m)
    part = part.numpy() + 2

    def inside(p: np.ndarray) -> np.ndarray:
        pix = np.floor(p + 0.5)
        lo, hi = 2 + r, 62 - r
        keep = (pix >= lo).all(axis=1) & (pix < hi).all(axis=1)
        return np.array(sorted(map(tuple, p[keep])))

    np.testing.assert_allclose(inside(part), inside(full.numpy()), atol=1e-5)
