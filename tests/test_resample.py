from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.synthetic import rgb_images
from wsidet.slide.resample import resample_weights, resample_window, resampled_size


def _resample(image: np.ndarray, factor: float, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    sy0, sy1, wy = resample_weights(y0, y1, factor, image.shape[0])
    sx0, sx1, wx = resample_weights(x0, x1, factor, image.shape[1])
    return resample_window(image[sy0:sy1, sx0:sx1], wy, wx)


def test_rows_are_normalised_and_local() -> None:
    start, stop, w = resample_weights(10, 40, 1.7, 200)
    np.testing.assert_allclose(np.asarray(w.sum(axis=1)).ravel(), 1.0, rtol=1e-6)
    assert start >= 10 * 1.7 - 3 and stop <= 40 * 1.7 + 3


def test_factor_one_is_identity() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (37, 41, 3), dtype=np.uint8)
    np.testing.assert_array_equal(_resample(image, 1.0, 0, 37, 0, 41), image)


def test_shrink_by_two_averages_pairs() -> None:
    ramp = np.repeat(np.arange(0, 64, dtype=np.uint8)[None, :, None] * 2, 4, axis=0)
    ramp = np.repeat(ramp, 3, axis=2)
    out = _resample(ramp, 2.0, 0, 2, 1, 31)
    # Triangle of half-width 2 around centre 2i+1: weights 1/8, 3/8, 3/8, 1/8 -> mean of pair.
    np.testing.assert_allclose(out[0, :, 0], (ramp[0, 2:62:2, 0] + ramp[0, 3:63:2, 0]) / 2, atol=1)


@settings(max_examples=40)
@given(
    factor=st.floats(0.4, 4.0),
    image=st.tuples(st.integers(8, 60), st.integers(8, 60)).flatmap(rgb_images),
    data=st.data(),
)
def test_window_equals_slice_of_whole(
    factor: float, image: np.ndarray, data: st.DataObject
) -> None:
    h, w = image.shape[:2]
    oh, ow = resampled_size(h, factor), resampled_size(w, factor)
    whole = _resample(image, factor, 0, oh, 0, ow)
    y0 = data.draw(st.integers(0, oh - 1))
    y1 = data.draw(st.integers(y0 + 1, oh))
    x0 = data.draw(st.integers(0, ow - 1))
    x1 = data.draw(st.integers(x0 + 1, ow))
    np.testing.assert_array_equal(_resample(image, factor, y0, y1, x0, x1), whole[y0:y1, x0:x1])
