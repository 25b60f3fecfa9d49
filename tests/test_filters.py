from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy.signal import convolve

from wsidet.ops.filters import convolve_same, convolve_taps

unit = st.floats(0, 1)


@settings(max_examples=30)
@given(
    x=hnp.arrays(np.float64, st.tuples(st.integers(1, 40), st.integers(1, 40)), elements=unit),
    # Sparse (zero background), asymmetric kernels.
    kernel=hnp.arrays(
        np.float64,
        st.tuples(st.sampled_from([1, 3, 5, 11]), st.sampled_from([1, 3, 7])),
        elements=unit,
        fill=st.just(0.0),
    ),
)
def test_both_equal_scipy_same_convolution(x, kernel) -> None:
    # scipy centres an odd kernel the same way for any image size (smaller than the kernel too).
    expected = convolve(x, kernel, mode="same")
    taps = convolve_taps(torch.from_numpy(x), torch.from_numpy(kernel))
    fft = convolve_same(torch.from_numpy(x), torch.from_numpy(kernel))
    np.testing.assert_allclose(taps.numpy(), expected, atol=1e-12)
    np.testing.assert_allclose(fft.numpy(), expected, atol=1e-10)


def test_taps_are_bitwise_independent_of_the_image_size() -> None:
    x = torch.rand(1, 1, 300, 340, generator=torch.Generator().manual_seed(0))
    kernel = torch.rand(11, 11, generator=torch.Generator().manual_seed(1))
    whole = convolve_taps(x, kernel)
    crop = convolve_taps(x[..., 40:200, 60:250], kernel)
    assert torch.equal(whole[..., 45:195, 65:245], crop[..., 5:155, 5:185])


def test_even_kernels_are_rejected() -> None:
    with pytest.raises(ValueError, match="odd"):
        convolve_taps(torch.zeros(5, 5), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="odd"):
        convolve_same(torch.zeros(5, 5), torch.zeros(3, 4))
