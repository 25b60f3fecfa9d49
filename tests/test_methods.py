"""The Method contract, checked for every registered method (a new method is tested for free)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn import functional as F

from tests.rf_probe import probe_radius
from tests.synthetic import random_points
from wsidet.errors import NotTrainableError, ParameterError, UnknownMethodError
from wsidet.evaluation.metrics import evaluate_points
from wsidet.methods import get_method, list_methods, method_class
from wsidet.methods.base import Method
from wsidet.nets.fixed import Haematoxylin, LaplacianOfGaussian, gaussian_kernels

METHODS = list_methods()
TRAINABLE = [n for n in METHODS if method_class(n).trainable]


def as_tensors(maps: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.asarray(v)) for k, v in maps.items()}


def test_registry_lists_and_rejects() -> None:
    assert {"log", "mapde", "proximity", "fcrn_a", "fcrn_b", "micronet", "voca"} <= set(METHODS)
    with pytest.raises(UnknownMethodError, match=r"known methods: .*voca"):
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
    assert set(type(method).decode_params) <= set(method.param_names())


@pytest.mark.parametrize("name", METHODS)
def test_unknown_parameter_is_named(name: str) -> None:
    with pytest.raises(ParameterError, match="no parameter 'bogus'"):
        get_method(name, bogus=1)


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("shape", [(97, 131), (64, 64), (33, 50)])
def test_forward_and_decode_on_odd_sizes(name: str, shape: tuple[int, int]) -> None:
    method = get_method(name)
    net = method.build_network().eval()
    with torch.inference_mode():
        out = net(torch.rand(2, 3, *shape))
    assert isinstance(out, dict) and out
    for maps in out.values():
        assert maps.shape[0] == 2 and maps.shape[2:] == shape
        assert torch.isfinite(maps).all()
    points, scores = method.decode({k: v[0] for k, v in out.items()})
    assert points.ndim == 2 and points.shape[1] == 2 and points.dtype == torch.float32
    assert scores.shape == (points.shape[0],)
    for value in method.aggregate({k: v[0] for k, v in out.items()}).values():
        assert value.shape == shape


@pytest.mark.parametrize("name", TRAINABLE)
def test_loss_is_finite_and_has_finite_gradients(name: str) -> None:
    method = get_method(name)
    torch.manual_seed(0)
    net = method.build_network().train()
    rng = np.random.default_rng(0)
    shape = (97, 131)
    targets = [method.encode(random_points(rng, shape, 12, 15, -5), shape) for _ in range(2)]
    batch = {k: torch.from_numpy(np.stack([t[k] for t in targets])) for k in targets[0]}
    loss = method.loss(net(torch.rand(2, 3, *shape)), batch)
    assert loss.ndim == 0 and torch.isfinite(loss) and loss > 0
    loss.backward()
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name", TRAINABLE)
@pytest.mark.parametrize("seed", [0, 1])
def test_decode_of_encode_returns_the_points(name: str, seed: int) -> None:
    method = get_method(name)
    rng = np.random.default_rng(seed)
    shape = (150, 170)
    # 3 px from the border: a region centroid (mapde) cut by the image edge moves inward.
    # 7 px apart: neighbours' targets overlap (VOCA discs, weights up to 4; MapDe cones add
    # up); the smallest separation every method decodes exactly over 60 seeds (at 6 px two
    # MapDe cores merge, so cones clipped at 1, which needs < 5 px, stay untested).
    points = random_points(rng, shape, 30, min_sep=7, margin=3)
    ideal = as_tensors(method.ideal_outputs(method.encode(points, shape)))
    found, scores = method.decode(ideal)
    result = evaluate_points(found.numpy(), points, radius=1.0)
    assert result.precision == 1.0 and result.recall == 1.0, result
    assert len(scores) == len(points)


@pytest.mark.parametrize("name", METHODS)
def test_receptive_radius_bounds_the_network(name: str) -> None:
    """Changing a ring of input just beyond the receptive radius leaves the centre unchanged."""
    method = get_method(name)
    torch.manual_seed(0)
    net = method.build_network().eval()
    r, s = method.receptive_radius, method.stride
    size = 2 * r + 24 + 2 * s
    size += (-size) % s
    c = (size // 2) // s * s
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    ring = torch.maximum((yy - c).abs(), (xx - c).abs()) > r
    y = x.clone()
    y[0][:, ring] = torch.rand(3, int(ring.sum()), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        base, moved = net(x), net(y)
    for key in base:
        torch.testing.assert_close(
            moved[key][0, :, c, c], base[key][0, :, c, c], atol=1e-5, rtol=1e-5
        )


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in TRAINABLE if n != "proximity"])
def test_receptive_radius_is_computed_not_padded(name: str) -> None:
    """The computed radius is the network's true one (a linearised probe), give or take a stride.

    (The proximity network's radius is fixed by its patch geometry and checked against
    patch-by-patch evaluation below.)
    """
    method = get_method(name)
    if "width" in method.param_names():
        method = method.replace(width=4)  # the radius does not depend on the width
    actual = probe_radius(method.build_network(), method.stride, method.receptive_radius)
    assert actual <= method.receptive_radius <= actual + method.stride + 4


@pytest.mark.parametrize("name", [n for n in METHODS if not method_class(n).trainable])
def test_untrainable_methods_refuse_training(name: str) -> None:
    method = get_method(name)
    with pytest.raises(NotTrainableError):
        method.encode(np.zeros((0, 2)), (10, 10))
    with pytest.raises(NotTrainableError):
        method.loss({}, {})


@pytest.mark.parametrize(("name", "paper"), [("fcrn_a", 1.3e6), ("fcrn_b", 3.6e6)])
def test_fcrn_parameter_counts_match_the_paper(name: str, paper: float) -> None:
    net = get_method(name).build_network()
    count = sum(p.numel() for p in net.parameters())
    assert abs(count - paper) / paper <= 0.10, count


def test_parameter_coercion_and_validation() -> None:
    m = get_method("log", threshold="0.3", min_distance="5", sigmas="3,4")
    assert (m.threshold, m.min_distance, m.sigmas) == (0.3, 5, (3.0, 4.0))  # type: ignore[attr-defined]
    bad = [
        ("log", {"threshold": "high"}),
        ("log", {"min_distance": 0}),
        ("log", {"sigmas": (0.0,)}),
        ("log", {"mpp": -1}),
        ("mapde", {"mode": "magic"}),
        ("micronet", {"xi": 2.0}),
        ("fcrn_a", {"norm_window": 100}),
        ("voca", {"radius": 0}),
        ("proximity", {"scan_stride": 0}),
    ]
    for name, params in bad:
        with pytest.raises(ParameterError):
            get_method(name, **params)


# ---- fast implementations against slow references ---------------------------------------------


def test_lucy_richardson_equals_scikit_image() -> None:
    from skimage.restoration import richardson_lucy as sk_richardson_lucy

    from wsidet.nets.mapde import mapping_filter
    from wsidet.ops.deconv import richardson_lucy

    rng = np.random.default_rng(0)
    image = np.clip(rng.random((40, 53)) * 5, 0, None).astype(np.float64)
    psf = mapping_filter(5).astype(np.float64)
    psf /= psf.sum()
    for iterations in (1, 2, 5):
        expected = sk_richardson_lucy(image, psf, num_iter=iterations, clip=False)
        got = richardson_lucy(torch.from_numpy(image), torch.from_numpy(psf), iterations)
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-9, atol=1e-12)


def test_region_centroids_equal_connected_components() -> None:
    from skimage.measure import label, regionprops

    from wsidet.ops.deconv import region_centroids

    rng = np.random.default_rng(3)
    score = np.zeros((60, 70))
    for y, x in rng.integers(4, 56, (12, 2)):
        r = rng.integers(1, 3)
        score[y - r : y + r + 1, x - r : x + r + 1] = rng.uniform(1, 2)
    points, best = region_centroids(torch.from_numpy(score), 0.5, max_extent=8, min_distance=3)
    regions = regionprops(label(score > 0.5, connectivity=2), intensity_image=score)
    expected = sorted((r.centroid, r.intensity_max) for r in regions)
    got = sorted((tuple(p), s) for p, s in zip(points.tolist(), best.tolist(), strict=True))
    assert len(got) == len(expected)
    for (gp, gs), (ep, es) in zip(got, expected, strict=True):
        np.testing.assert_allclose(gp, ep, atol=1e-5)
        assert gs == pytest.approx(es)


def test_large_components_are_decoded_by_peaks_not_per_pixel() -> None:
    from scipy import ndimage

    from wsidet.ops.deconv import region_centroids

    yy, xx = torch.meshgrid(torch.arange(60.0), torch.arange(80.0), indexing="ij")
    # Two touching bumps whose thresholded cores merge into one ~30 px wide component.
    score = torch.exp(-((yy - 30) ** 2 + (xx - 30) ** 2) / 40) + torch.exp(
        -((yy - 30) ** 2 + (xx - 45) ** 2) / 40
    )
    points, _ = region_centroids(score, 0.3, max_extent=6, min_distance=4)
    s = score.numpy()
    expected = np.argwhere((s == ndimage.maximum_filter(s, 9)) & (s > 0.3))
    assert len(expected) == 2
    np.testing.assert_allclose(sorted(points.tolist()), expected, atol=0.5)


def test_voca_accumulation_equals_a_plain_loop() -> None:
    from wsidet.ops.accumulate import accumulate, accumulate_reference

    gen = torch.Generator().manual_seed(0)
    conf = torch.rand(23, 31, generator=gen)
    loc = (torch.rand(2, 23, 31, generator=gen) - 0.5) * 30
    wt = torch.rand(23, 31, generator=gen) * 3
    for max_shift in (3, 13):
        fast = accumulate(conf, loc, wt, max_shift=max_shift)
        slow = accumulate_reference(conf, loc, wt, max_shift=max_shift)
        torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)


def test_voca_points_read_only_the_decoder_radius() -> None:
    """A point whose pixel is in a region is decoded from the maps within decoder_radius of it.

    Random sparse votes make peaks whose weighted centroids sit up to ``score_radius`` off the
    peak, so a point can fall in the region while its peak is outside it (a radius without that
    shift fails this test).
    """
    method = get_method("voca", threshold=0.0, nms_distance=1, score_radius=2)
    r = method.decoder_radius
    h, w = 70, 80
    y0, y1, x0, x1 = r + 3, h - r - 5, r + 4, w - r - 2

    def inside(points: torch.Tensor, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pixel = torch.floor(points + 0.5)
        keep = (pixel[:, 0] >= y0) & (pixel[:, 0] < y1) & (pixel[:, 1] >= x0) & (pixel[:, 1] < x1)
        order = torch.argsort(points[keep, 0] * 1000 + points[keep, 1])
        return points[keep][order], scores[keep][order]

    for seed in range(60):
        gen = torch.Generator().manual_seed(seed)
        conf = (torch.rand(1, h, w, generator=gen) < 0.3) * torch.rand(1, h, w, generator=gen)
        loc = (torch.rand(2, h, w, generator=gen) - 0.5) * 2 * (method.max_shift + 2)  # type: ignore[attr-defined]
        wt = torch.randint(0, 3, (1, h, w), generator=gen).float()
        maps = {"conf": conf, "loc": loc, "wt": wt}
        whole = inside(*method.decode(maps))
        crop = {k: v[:, y0 - r : y1 + r, x0 - r : x1 + r] for k, v in maps.items()}
        points, scores = method.decode(crop)
        part = inside(points + torch.tensor([y0 - r, x0 - r]), scores)
        assert len(part[0]) == len(whole[0]) > 0, seed
        # Coordinates shifted by the crop origin differ in float32's last bits only.
        torch.testing.assert_close(part, whole, atol=1e-4, rtol=0)


@pytest.mark.parametrize("scan_stride", [1, 5])
def test_fast_scanning_equals_patch_by_patch_fusion(scan_stride: int) -> None:
    from wsidet.nets.patchcnn import (
        HALF_IN,
        HALF_OUT,
        OUT,
        ProximityPatchCNN,
        patch_forward,
        reflect_pad,
    )

    torch.manual_seed(0)
    net = ProximityPatchCNN(scan_stride).eval()
    h, w = 21, 26
    x = torch.rand(1, 3, h, w)
    c = net.centre_offset
    pad = c + HALF_IN + OUT
    padded = reflect_pad(x, (pad, pad, pad, pad))  # 49 px patches around every centre
    centres = [
        (cy, cx)
        for cy in range(-c, h + HALF_OUT, scan_stride)
        for cx in range(-c, w + HALF_OUT, scan_stride)
    ]
    with torch.no_grad():
        fused = net(x)["proximity"][0, 0]
        crops = torch.cat(
            [
                padded[
                    :,
                    :,
                    cy + pad - HALF_IN : cy + pad + HALF_IN + 1,
                    cx + pad - HALF_IN : cx + pad + HALF_IN + 1,
                ]
                for cy, cx in centres
            ]
        )
        predictions = patch_forward(net, crops)
    total = torch.zeros(h, w)
    count = torch.zeros(h, w)
    for (cy, cx), patch in zip(centres, predictions, strict=True):
        for dy in range(OUT):
            for dx in range(OUT):
                y, xx = cy - HALF_OUT + dy, cx - HALF_OUT + dx
                if 0 <= y < h and 0 <= xx < w:
                    total[y, xx] += patch[dy, dx]
                    count[y, xx] += 1
    assert count.min() >= (OUT // scan_stride) ** 2
    torch.testing.assert_close(fused, total / count, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("scan_stride", [1, 5])
def test_proximity_loss_ignores_outputs_outside_the_image(scan_stride: int) -> None:
    """The patch loss reads only the predictions for pixels that exist (no target outside)."""
    from wsidet.nets.patchcnn import HALF_OUT, OUT

    method = get_method("proximity", scan_stride=scan_stride)
    torch.manual_seed(0)
    net = method.build_network().train()
    h, w = 29, 34
    patches = net(torch.rand(2, 3, h, w))["patches"].detach()
    _, _, gh, gw = patches.shape
    rng = np.random.default_rng(0)
    target = method.encode(random_points(rng, (h, w), 6, 6, -3), (h, w))["proximity"]
    targets = {"proximity": torch.from_numpy(np.stack([target, target]))}
    # Image pixel of output j = (dy, dx) of the patch centred at (ss*i - c, ss*k - c).
    c, d = net.centre_offset, torch.arange(OUT) - HALF_OUT
    rows = (torch.arange(gh) * scan_stride - c)[None, :] + d[:, None]  # (17, gh)
    cols = (torch.arange(gw) * scan_stride - c)[None, :] + d[:, None]  # (17, gw)
    inside = ((rows >= 0) & (rows < h))[:, None, :, None] & ((cols >= 0) & (cols < w))[
        None, :, None, :
    ]
    inside = inside.reshape(OUT * OUT, gh, gw).expand_as(patches)
    assert (~inside).any() and inside.any()

    base = patches.clone().requires_grad_()
    loss = method.loss({"patches": base}, targets)
    loss.backward()
    assert base.grad is not None
    assert (base.grad[~inside] == 0).all() and (base.grad[inside] != 0).any()
    moved = torch.where(inside, patches, torch.rand_like(patches))
    assert float(method.loss({"patches": moved}, targets)) == float(loss.detach())

    # The paper's per-patch ½ Σ (y + λ)(y - o)² over the pixels that exist, by indexing.
    y = targets["proximity"][:, 0][
        :, rows.clamp(0, h - 1)[:, None, :, None], cols.clamp(0, w - 1)[None, :, None, :]
    ].reshape(2, OUT * OUT, gh, gw)
    terms = torch.where(inside, (y + method.lam) * (y - patches) ** 2, 0.0)  # type: ignore[attr-defined]
    centred = ((rows[HALF_OUT] >= 0) & (rows[HALF_OUT] < h))[:, None] & (
        (cols[HALF_OUT] >= 0) & (cols[HALF_OUT] < w)
    )[None, :]
    expected = 0.5 * terms.sum(dim=1)[:, centred].mean()
    torch.testing.assert_close(loss.detach(), expected)


@pytest.mark.parametrize("name", ["fcrn_a", "fcrn_b"])
def test_fcrn_count_is_the_integral_of_the_density(name: str) -> None:
    method = get_method(name)
    rng = np.random.default_rng(2)
    shape = (80, 90)
    points = random_points(rng, shape, 25, min_sep=3, margin=12)
    target = method.encode(points, shape)
    count = method.aggregate(as_tensors(target))["count"].sum().item()
    assert count == pytest.approx(len(points), abs=1e-3)
    assert count == pytest.approx(target["density"].sum() / method.scale, rel=1e-6)  # type: ignore[attr-defined]


@settings(max_examples=40)
@given(
    h=st.integers(24, 70),
    w=st.integers(24, 70),
    sigma=st.floats(0.8, 2.5),
    yx=st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1)), min_size=1, max_size=12),
)
def test_reflected_density_integrates_to_the_dot_count(
    h: int, w: int, sigma: float, yx: list[tuple[float, float]]
) -> None:
    """Dots anywhere in an image, at its edges too: mirrored across the edges, their density
    sums to their number; cut off, it loses what falls outside."""
    from wsidet.ops.targets import gaussian_density, reflect_at_edges

    points = np.array([(fy * (h - 1), fx * (w - 1)) for fy, fx in yx])
    mirrored = reflect_at_edges(points, -0.5, h - 0.5, -0.5, w - 0.5)
    assert mirrored.shape == (9 * len(points), 2)
    np.testing.assert_array_equal(mirrored[: len(points)], points)
    total = float(gaussian_density(mirrored, (h, w), sigma).sum())
    assert total == pytest.approx(len(points), abs=1e-3 * len(points))
    cut = float(gaussian_density(points, (h, w), sigma).sum())
    assert cut <= total + 1e-6
    # A dot closer than sigma to an edge loses more than 15.9 % of its mass across it.
    to_edge = np.minimum(points + 0.5, np.array([h, w]) - 0.5 - points).min()
    if to_edge < sigma:
        assert cut < total - 0.15


# ---- the LoG baseline ------------------------------------------------------------------------


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


@pytest.mark.parametrize("name", METHODS)
def test_threshold_filtering_claim_holds(name: str) -> None:
    """Where a method says its threshold only filters scores, decoding agrees at every threshold."""
    method = get_method(name)
    if not method.threshold_filters_scores:
        pytest.skip(f"{name} decodes at every threshold")
    rng = np.random.default_rng(0)
    shape = (120, 140)
    points = random_points(rng, shape, 25, min_sep=12, margin=0)
    if method.trainable:  # ideal outputs plus noise: many detections with varied scores
        ideal = method.ideal_outputs(method.encode(points, shape))
        maps = {
            k: torch.from_numpy(
                v + rng.normal(0, 0.2 * (v.std() + 1e-3), v.shape).astype(np.float32)
            )
            for k, v in ideal.items()
        }
        if "conf" in maps:
            maps["conf"] = maps["conf"].clamp(0, 1)
            maps["wt"] = maps["wt"].clamp(min=0)
    else:
        from tests.synthetic import blob_image

        image = blob_image(shape, points, 5.0, rng=rng)
        with torch.inference_mode():
            x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
            maps = {k: v[0] for k, v in method.build_network()(x).items()}
    floor_points, floor_scores = method.decode(maps, **{method.threshold_param: 0.0})
    assert len(floor_scores) >= 10
    for q in (0.2, 0.5, 0.9):
        cut = float(torch.quantile(floor_scores, q))
        points, scores = method.decode(
            maps, **{method.threshold_param: method.threshold_for_score(cut)}
        )
        keep = floor_scores > cut
        torch.testing.assert_close(points, floor_points[keep])
        torch.testing.assert_close(scores, floor_scores[keep])
