"""The Method contract, checked for every registered method (a new method is tested for free)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from wsidet.errors import NotTrainableError, ParameterError, UnknownMethodError
from wsidet.methods import get_method, list_methods, method_class
from wsidet.methods.base import Method
from wsidet.nets.fixed import Haematoxylin, LaplacianOfGaussian, gaussian_kernels

METHODS = list_methods()


def test_registry_lists_and_rejects() -> None:
    assert "log" in METHODS
    with pytest.raises(UnknownMethodError, match=r"known methods: .*log"):
        get_method("no-such-method")
    with pytest.raises(KeyError):  # refines the built-in
        method_class("no-such-method")


@pytest.mark.parametrize("name", METHODS)
def test_method_is_a_frozen_hashable_value(name: str) -> None:
    method = get_method(name)
    assert isinstance(method, Method) and method.name == name
    assert hash(method) == hash(get_method(name))
    assert pickle.loads(pickle.dumps(method)) == method
    assert get_method(name, **method.params()) == method
    assert method.halo >= method.receptive_radius + method.decoder_radius
    assert method.halo % method.stride == 0 and method.mpp > 0


@pytest.mark.parametrize("name", METHODS)
def test_unknown_parameter_is_named(name: str) -> None:
    with pytest.raises(ParameterError, match="no parameter 'bogus'"):
        get_method(name, bogus=1)


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("shape", [(97, 131), (64, 64), (33, 200)])
def test_forward_and_decode_on_odd_sizes(name: str, shape: tuple[int, int]) -> None:
    method = get_method(name)
    net = method.build_network().eval()
    x = torch.rand(2, 3, *shape)
    if method.stride > 1:
        pytest.skip("covered by the engine, which pads to the stride")
    with torch.inference_mode():
        out = net(x)
    assert isinstance(out, dict) and out
    for maps in out.values():
        assert maps.shape[0] == 2 and maps.shape[2:] == shape
        assert torch.isfinite(maps).all()
    points, scores = method.decode({k: v[0] for k, v in out.items()})
    assert points.ndim == 2 and points.shape[1] == 2 and points.dtype == torch.float32
    assert scores.shape == (points.shape[0],)


@pytest.mark.parametrize("name", METHODS)
def test_receptive_radius_bounds_the_network(name: str) -> None:
    """Changing input beyond the receptive radius leaves the centre output unchanged."""
    method = get_method(name)
    net = method.build_network().eval()
    r = method.receptive_radius
    size = 2 * r + 2 * method.stride + 9
    size += (-size) % method.stride
    c = size // 2
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        base = {k: v[0, :, c, c] for k, v in net(x).items()}
        for dy, dx in [(r + 1, 0), (0, -(r + 1)), (r + 1, r + 1)]:
            y = x.clone()
            y[0, :, c + dy, c + dx] = 1.0 - y[0, :, c + dy, c + dx]
            for k, v in net(y).items():
                torch.testing.assert_close(v[0, :, c, c], base[k], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", [n for n in METHODS if not method_class(n).trainable])
def test_untrainable_methods_refuse_training(name: str) -> None:
    method = get_method(name)
    with pytest.raises(NotTrainableError):
        method.encode(np.zeros((0, 2)), (10, 10))
    with pytest.raises(NotTrainableError):
        method.loss({}, {})


def test_parameter_coercion_and_validation() -> None:
    m = get_method("log", threshold="0.3", min_distance="5", sigmas="3,4")
    assert (m.threshold, m.min_distance, m.sigmas) == (0.3, 5, (3.0, 4.0))  # type: ignore[attr-defined]
    for bad in ({"threshold": "high"}, {"min_distance": 0}, {"sigmas": (0.0,)}, {"mpp": -1}):
        with pytest.raises(ParameterError):
            get_method("log", **bad)


def test_log_fft_equals_direct_convolution() -> None:
    sigmas = (1.5, 2.5)
    log = LaplacianOfGaussian(sigmas, truncate=3.0)
    x = torch.rand(1, 1, 45, 61, generator=torch.Generator().manual_seed(1))
    r = log.radius
    direct = []
    for s in sigmas:
        g, g2 = gaussian_kernels(s, r)
        k = -(s**2) * (torch.outer(g2, g) + torch.outer(g, g2))
        direct.append(F.conv2d(x, k[None, None], padding=r))
    expected = torch.cat(direct, dim=1).amax(dim=1, keepdim=True)
    torch.testing.assert_close(log(x), expected, atol=1e-5, rtol=1e-4)


def test_log_kernel_moments() -> None:
    g, g2 = gaussian_kernels(3.0, 12)
    t = torch.arange(-12.0, 13.0)
    assert float(g.sum()) == pytest.approx(1.0)
    assert float(g2.sum()) == pytest.approx(0.0, abs=1e-6)
    assert float((g2 * t**2).sum()) == pytest.approx(2.0)


def test_haematoxylin_matches_scikit_image() -> None:
    from skimage.color import rgb2hed

    rgb = np.random.default_rng(0).integers(1, 256, (20, 30, 3)).astype(np.uint8)
    ours = Haematoxylin()(torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255)[0, 0]
    # scikit-image divides the optical density by -log(1e-6).
    theirs = rgb2hed(rgb)[..., 0] * -np.log(1e-6)
    np.testing.assert_allclose(ours.numpy(), np.clip(theirs, 0, None), atol=1e-4)


def test_log_finds_a_dark_nucleus() -> None:
    from tests.synthetic import blob_image

    rng = np.random.default_rng(0)
    image = blob_image((64, 64), np.array([[30.3, 33.6]]), 7.0, rng=rng, noise=1.0)
    method = get_method("log")
    with torch.inference_mode():
        out = method.build_network()(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255)
    points, _ = method.decode({k: v[0] for k, v in out.items()})
    assert points.shape == (1, 2)
    np.testing.assert_allclose(points.numpy()[0], [30.3, 33.6], atol=0.5)
