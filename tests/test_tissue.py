from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tests.synthetic import BACKGROUND, GLASS
from wsidet.slide.tissue import (
    MAX_SATURATION,
    MIN_SATURATION,
    TissueMask,
    saturation,
    saturation_threshold,
    tissue_from_rgb,
)


def test_saturation_of_grey_and_colour() -> None:
    rgb = np.array([[[200, 200, 200], [200, 100, 100], [0, 0, 0]]], np.uint8)
    np.testing.assert_allclose(saturation(rgb), [[0.0, 0.5, 0.0]])


def test_threshold_is_clamped() -> None:
    rng = np.random.default_rng(0)
    noise = rng.uniform(0, 0.02, (50, 50)).astype(np.float32)
    assert saturation_threshold(noise) == MIN_SATURATION
    tissue = rng.uniform(0.1, 0.6, (50, 50)).astype(np.float32)
    assert saturation_threshold(tissue) == MAX_SATURATION
    assert saturation_threshold(np.zeros((4, 4), np.float32)) == MIN_SATURATION


def test_blank_glass_has_no_tissue_and_tissue_is_found() -> None:
    rng = np.random.default_rng(1)
    glass = np.clip(GLASS + rng.normal(0, 2, (60, 80, 3)), 0, 255).astype(np.uint8)
    assert not tissue_from_rgb(glass).any()
    slide = glass.copy()
    slide[10:30, 20:50] = BACKGROUND.astype(np.uint8)
    mask = tissue_from_rgb(slide, dilation=0)
    assert mask[10:30, 20:50].all() and mask.sum() == 20 * 30


def test_small_specks_are_dropped() -> None:
    rgb = np.full((40, 40, 3), 245, np.uint8)
    rgb[5, 5] = (200, 50, 50)
    rgb[20:30, 20:30] = (200, 50, 50)
    mask = tissue_from_rgb(rgb, dilation=0, min_area=4)
    assert not mask[5, 5] and mask[20:30, 20:30].all()


@settings(max_examples=50)
@given(
    # Sparse tissue: drawn pixels over glass.
    mask=hnp.arrays(np.bool_, (30, 40), elements=st.booleans(), fill=st.just(False)),
    ds=st.tuples(st.floats(0.5, 8), st.floats(0.5, 8)),
    boxes=st.lists(
        st.tuples(st.floats(0, 300), st.floats(0, 300), st.floats(1, 100), st.floats(1, 100)),
        min_size=1,
        max_size=10,
    ),
    # Points (x, y) as fractions of the mask's extent.
    where=st.lists(
        st.tuples(st.floats(0, 1, exclude_max=True), st.floats(0, 1, exclude_max=True)),
        min_size=1,
        max_size=20,
    ),
)
def test_any_in_boxes_matches_brute_force(mask, ds, boxes, where) -> None:
    tm = TissueMask(mask, ds)
    arr = np.array([(y, x, y + h, x + w) for y, x, h, w in boxes])
    expected = []
    for y0, x0, y1, x1 in arr:
        r0, r1 = int(np.floor(y0 / ds[0])), int(np.ceil(y1 / ds[0]))
        c0, c1 = int(np.floor(x0 / ds[1])), int(np.ceil(x1 / ds[1]))
        expected.append(bool(mask[max(r0, 0) : r1, max(c0, 0) : c1].any()))
    np.testing.assert_array_equal(tm.any_in_boxes(arr), expected)
    # A point is on tissue iff its mask pixel is.
    pts = np.array(where) * [40 * ds[1], 30 * ds[0]]
    rows = (pts[:, 1] / ds[0]).astype(int).clip(0, 29)
    cols = (pts[:, 0] / ds[1]).astype(int).clip(0, 39)
    np.testing.assert_array_equal(tm.contains(pts), mask[rows, cols])
