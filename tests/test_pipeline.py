from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from tests.conftest import BlobSlide, make_blob_slide
from tests.synthetic import GLASS, BlobLayout, blob_image, blob_layouts, random_points
from wsidet.evaluation.metrics import match_points
from wsidet.inference.detector import QUANTUM, DetectorSpec
from wsidet.inference.pipeline import detect_array, detect_slide
from wsidet.methods import get_method, list_methods
from wsidet.slide.pyramid import write_pyramid
from wsidet.slide.wsi import open_slide
from wsidet.tiling import Grid

METHOD = get_method("log")


def assert_same_points(
    tiled: tuple[np.ndarray, np.ndarray], whole: tuple[np.ndarray, np.ndarray]
) -> None:
    """Same points (to the output quantum), none lost, none duplicated, same scores."""
    (tp, ts), (wp, ws) = tiled, whole
    assert len(tp) == len(wp), f"{len(tp)} tiled vs {len(wp)} whole-image points"
    pairs, _ = match_points(tp, wp, radius=1.5 * QUANTUM)
    assert len(pairs) == len(wp)
    np.testing.assert_allclose(ts[pairs[:, 0]], ws[pairs[:, 1]], rtol=1e-4, atol=1e-5)


def tiled_and_whole(
    image: np.ndarray, chunks: tuple[tuple[int, ...], tuple[int, ...]], tile: int
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    grid = Grid.from_chunks(image.shape[:2], chunks, METHOD.halo)
    spec = DetectorSpec(METHOD, device="cpu", tile=tile)
    tiled, _ = detect_array(
        da.from_array(image, chunks=(*chunks, (3,))), grid, spec, scheduler="sync"
    )
    whole = DetectorSpec(METHOD, device="cpu", tile=4096).get().detect(image)
    return (tiled.points_yx, tiled.scores), (whole.points_yx, whole.scores)


def random_chunks(draw: st.DrawFn, length: int, minimum: int) -> tuple[int, ...]:
    sizes: list[int] = []
    while sum(sizes) < length:
        sizes.append(draw(st.integers(minimum, max(minimum, 180)), label="chunk"))
    sizes[-1] -= sum(sizes) - length
    if sizes[-1] < minimum and len(sizes) > 1:  # fold the remainder like Grid.aligned does
        last = sizes.pop()
        sizes[-1] += last
    return tuple(sizes)


@st.composite
def blob_cases(draw: st.DrawFn) -> tuple[BlobLayout, tuple[tuple[int, ...], tuple[int, ...]]]:
    """Blobs of drawn size and spacing on a drawn image, and drawn chunk sizes."""
    h, w = draw(st.tuples(st.integers(60, 420), st.integers(60, 420)), label="shape")
    # 0.0005 - 0.004 blobs per pixel; margin 0: blobs cut by the image border and by seams alike.
    layout = draw(
        blob_layouts(
            (h, w), min_points=max(1, int(0.0005 * h * w)), max_points=max(1, int(0.004 * h * w)),
            min_sep=(9.0, 30.0), radius=(4.0, 9.0),
        )
    )  # fmt: skip
    chunks = (random_chunks(draw, h, METHOD.halo), random_chunks(draw, w, METHOD.halo))
    return layout, chunks


@settings(max_examples=25)
@given(case=blob_cases(), tile=st.sampled_from([24, 61, 128, 1024]))
def test_tiled_equals_whole_image_on_random_blobs(case, tile) -> None:
    layout, chunks = case
    tiled, whole = tiled_and_whole(layout.image(), chunks, tile)
    assert_same_points(tiled, whole)


# Thresholds that make an untrained network decode points at all (random weights give flat maps).
RANDOM_WEIGHT_PARAMS = {
    "fcrn_a": {"threshold": 0.0},
    "fcrn_b": {"threshold": 0.0},
    "voca": {"threshold": 0.0},
    "proximity": {"threshold": 0.0},  # untrained outputs start near 0.02 (prior initialisation)
    "micronet": {"xi": 0.0},
}


# FCRNs have no width to shrink, and their 101 px normalisation window makes the halo (and the
# image the test needs) large: 20-60 s on two cores. An 11 px window checks the same things (the
# halo is that configuration's, so halo, ownership and decoder locality are checked exactly) in
# a few seconds; the default window is kept as a slow variant.
FAST_PARAMS = {"fcrn_a": {"norm_window": 11}, "fcrn_b": {"norm_window": 11}}

# Non-default configurations whose decoder or grid differs from the default's (slow: each
# takes 20-60 s on two cores).
SEAM_VARIANTS = [
    pytest.param("mapde", {"mode": "peak"}, id="mapde-peak", marks=pytest.mark.slow),
    pytest.param("proximity", {"scan_stride": 1}, id="proximity-ss1", marks=pytest.mark.slow),
    pytest.param("fcrn_a", {}, id="fcrn_a-default", marks=pytest.mark.slow),
    pytest.param("fcrn_b", {}, id="fcrn_b-default", marks=pytest.mark.slow),
]


@pytest.mark.parametrize(
    ("name", "params"),
    [pytest.param(name, FAST_PARAMS.get(name, {}), id=name) for name in list_methods()]
    + SEAM_VARIANTS,
)
def test_seams_are_exact_for_every_method(name: str, params: dict, tmp_path: Path) -> None:
    """Tiled == whole image through the pipeline, with random weights for trainable methods.

    oneDNN is switched off: it picks convolution kernels by tensor size, which changes results
    in the last bits (1e-6) between a block and the whole image, and an untrained network's flat
    maps are full of near-ties that such noise can flip. With size-independent arithmetic the
    check is exact, so it tests the halo, the ownership and the decoders' locality themselves.
    """
    method = get_method(name, **{**RANDOM_WEIGHT_PARAMS.get(name, {}), **params})
    if "width" in method.param_names():
        method = method.replace(width=8)  # the halo does not depend on the width
    weights = None
    if method.trainable:
        torch.manual_seed(0)
        weights = str(tmp_path / f"{name}.safetensors")
        save_file(method.build_network().state_dict(), weights, metadata={"wsidet.method": name})
    rng = np.random.default_rng(1)
    halo, stride = method.halo, method.stride
    shape = (2 * halo + 3 * stride + 77, 2 * halo + 5 * stride + 101)
    points = random_points(rng, shape, 400, min_sep=12, margin=0)
    image = blob_image(shape, points, 6.0, rng=rng)
    grid = Grid.aligned(shape, halo=halo, chunk=shape[0] // 2, align=stride)
    assert min(grid.n_blocks) >= 2
    tile = stride * max(1, 192 // stride)
    spec = DetectorSpec(method, weights=weights, device="cpu", tile=tile)
    with torch.backends.mkldnn.flags(enabled=False):
        tiled, block_totals = detect_array(
            da.from_array(image, chunks=(*grid.chunks, (3,))), grid, spec, scheduler="sync"
        )
        whole = DetectorSpec(method, weights=weights, device="cpu", tile=4096).get().detect(image)
    assert len(whole.points_yx) > 20, "the test needs points to compare"
    assert_same_points((tiled.points_yx, tiled.scores), (whole.points_yx, whole.scores))
    assert tiled.totals.keys() == whole.totals.keys()
    assert len(block_totals) == grid.n_blocks[0] * grid.n_blocks[1]
    for key, value in whole.totals.items():
        assert tiled.totals[key] == pytest.approx(value, rel=1e-4, abs=1e-3)


@pytest.mark.parametrize(("chunk", "tile"), [(64, 32), (130, 1024), (250, 100)])
def test_tiled_equals_whole_image_on_real_tissue(sample_slide: Path, chunk: int, tile: int) -> None:
    image = open_slide(sample_slide).read_region(700, 300, 640, 900)
    grid = Grid.aligned(image.shape[:2], halo=METHOD.halo, chunk=chunk)
    tiled, whole = tiled_and_whole(image, grid.chunks, tile)
    assert len(whole[0]) > 100
    assert_same_points(tiled, whole)


def test_resampled_slide_equals_whole_resampled_image(tmp_path: Path) -> None:
    path = tmp_path / "odd.tif"
    make_blob_slide(path, shape=(700, 900), mpp=0.3, physical_mpp=0.3, seed=4, n=60)
    slide = open_slide(path)
    scale = slide.scale_for_mpp(METHOD.mpp)
    assert scale.factor == pytest.approx(0.5 / 0.3)
    frame = detect_slide(slide, METHOD, chunk=128, device="cpu", tissue=False, scheduler="sync")
    whole_image = slide.to_dask(scale, chunks=4096).compute()
    whole = DetectorSpec(METHOD, device="cpu").get().detect(whole_image)
    pts, scores = whole.points_yx, whole.scores
    whole_xy = scale.to_level0(pts)[:, ::-1]
    assert_same_points(
        (frame[["x", "y"]].to_numpy(), frame["score"].to_numpy()), (whole_xy, scores)
    )


def recall_at(frame, truth_xy: np.ndarray, radius: float) -> tuple[float, float]:
    pairs, _ = match_points(frame[["x", "y"]].to_numpy(), truth_xy, radius)
    return len(pairs) / len(truth_xy), len(pairs) / max(1, len(frame))


def test_finds_blobs_through_a_lower_level(blob_slide: BlobSlide) -> None:
    frame = detect_slide(blob_slide.path, METHOD, device="cpu")
    meta = frame.attrs["wsidet"]
    assert meta["scale"]["level"] == 1 and meta["scale"]["factor"] == 1.0
    recall, precision = recall_at(frame, blob_slide.points_xy, 3.0)
    assert recall >= 0.99 and precision >= 0.95
    assert frame["x"].between(0, 1600).all() and frame["y"].between(0, 1200).all()


@pytest.mark.parametrize(
    ("file_mpp", "physical_mpp", "override", "ome"),
    [
        (0.5, 0.5, None, False),  # level 0 as is
        (0.3, 0.3, None, False),  # level 0 shrunk by 5/3
        (None, 0.25, 0.25, False),  # no pixel size in the file: --mpp
        (0.2, 0.2, None, True),  # OME-TIFF, level 1 shrunk by 1.25
    ],
)
def test_finds_blobs_at_other_scales(tmp_path: Path, file_mpp, physical_mpp, override, ome) -> None:
    path = tmp_path / ("s.ome.tif" if ome else "s.tif")
    truth = make_blob_slide(
        path, shape=(900, 1100), mpp=file_mpp, physical_mpp=physical_mpp, seed=7, n=80, ome=ome
    )
    frame = detect_slide(path, METHOD, mpp=override, device="cpu", chunk=256)
    recall, precision = recall_at(frame, truth.points_xy, 3.0)
    assert recall >= 0.99 and precision >= 0.95


def test_no_tissue_gives_an_empty_result(blank_slide: Path) -> None:
    calls = []
    frame = detect_slide(
        blank_slide, METHOD, device="cpu", progress=lambda d, t: calls.append((d, t))
    )
    assert len(frame) == 0
    assert list(frame.columns) == ["x", "y", "score", "method", "slide_id", "geometry"]
    assert frame.attrs["wsidet"]["scale"]["chunks_processed"] == 0
    assert calls == [(0, 0)]


def test_slide_smaller_than_a_chunk(tmp_path: Path) -> None:
    path = tmp_path / "tiny.tif"
    truth = make_blob_slide(
        path, shape=(150, 230), mpp=0.5, physical_mpp=0.5, seed=2, n=8, downsamples=(1,)
    )
    frame = detect_slide(path, METHOD, device="cpu")
    assert frame.attrs["wsidet"]["scale"]["chunks_total"] == 1
    recall, _ = recall_at(frame, truth.points_xy, 3.0)
    assert recall == 1.0


def test_only_tissue_chunks_are_processed(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    shape = (512, 2048)
    # Tissue ends 112 px before the first chunk edge, beyond the mask's 32 px dilation.
    pts = random_points(rng, (512, 400), 16, min_sep=28, margin=10)
    image = np.clip(GLASS + rng.normal(0, 2, (*shape, 3)), 0, 255).astype(np.uint8)
    image[:, :400] = blob_image((512, 400), pts, 7.0, rng=rng)
    path = tmp_path / "half.tif"
    write_pyramid(path, image, mpp=0.5, downsamples=(1, 4))
    progress = []
    frame = detect_slide(
        path, METHOD, device="cpu", chunk=512, progress=lambda d, t: progress.append((d, t))
    )
    scale = frame.attrs["wsidet"]["scale"]
    assert (scale["chunks_total"], scale["chunks_processed"]) == (4, 1)
    assert progress[-1] == (1, 1)
    recall, precision = recall_at(frame, pts[:, ::-1] + 0.5, 3.0)
    assert recall == 1.0 and precision == 1.0
    everything = detect_slide(path, METHOD, device="cpu", chunk=512, tissue=False)
    assert everything.attrs["wsidet"]["scale"]["chunks_processed"] == 4
    assert len(everything) == len(frame)  # glass holds no nuclei either way


def test_threads_and_sync_schedulers_agree(blob_slide: BlobSlide) -> None:
    a = detect_slide(blob_slide.path, METHOD, device="cpu", chunk=256, scheduler="threads")
    b = detect_slide(blob_slide.path, METHOD, device="cpu", chunk=256, scheduler="sync")
    assert len(a) > 100  # the blobs are found

    def rows(frame) -> np.ndarray:
        table = frame[["x", "y", "score"]].to_numpy(np.float64)
        return table[np.lexsort(table.T[::-1])]

    np.testing.assert_array_equal(rows(a), rows(b))  # the same points, bit for bit


@pytest.mark.parametrize("mpp", [0.25, 0.24, 0.22])
def test_jpeg_tiles_decoded_smaller_equal_the_whole_reduced_image(mpp: float, tmp_path) -> None:
    """A 40x level read at half size by libjpeg: tiled == whole, and points on the blobs."""
    path = tmp_path / "fine.tif"
    slide_truth = make_blob_slide(
        path, shape=(1000, 1200), mpp=mpp, physical_mpp=mpp, seed=6, n=60, downsamples=(1, 4)
    )
    slide = open_slide(path)
    scale = slide.scale_for_mpp(METHOD.mpp)
    assert scale.level.index == 0 and scale.reduce == 2  # decoded at 1/2, not level 1
    if mpp == 0.25:
        assert scale.factor == 2.0  # within tolerance: no resampling at all
    frame = detect_slide(slide, METHOD, chunk=256, device="cpu", tissue=False, scheduler="sync")
    assert frame.attrs["wsidet"]["scale"]["factor"] == scale.factor
    whole_image = slide.to_dask(scale, chunks=4096).compute()
    whole = DetectorSpec(METHOD, device="cpu").get().detect(whole_image)
    whole_xy = scale.to_level0(whole.points_yx)[:, ::-1]
    assert_same_points(
        (frame[["x", "y"]].to_numpy(), frame["score"].to_numpy()), (whole_xy, whole.scores)
    )
    recall, precision = recall_at(frame, slide_truth.points_xy, 3.0 / mpp)
    assert recall > 0.9 and precision > 0.9
