"""Pixel size from nucleus size: the estimate, the warnings, ``--mpp auto``."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st
from wsidet.cli.main import main

from tests.synthetic import blob_image
from wsidet.errors import MppUnknownError, MppWarning
from wsidet.slide.nucleus_scale import (
    SIGMAS_PX,
    ScaleEstimate,
    blob_sigmas,
    characteristic_sigma,
    estimate_from_energies,
    peak_sigmas,
    scale_energy,
)
from wsidet.slide.resample import resample_weights, resample_window, resampled_size
from wsidet.slide.scale_check import (
    DENSITY_PER_MM2,
    density_problem,
    estimate_slide_mpp,
    mpp_disagreement,
    resolve_mpp,
)
from wsidet.slide.wsi import open_slide


@settings(max_examples=15)
@given(
    radius=st.floats(2.0, 9.0),
    offsets=st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1)), min_size=6, max_size=6),
)
def test_disc_scale_is_radius_over_sqrt2(radius: float, offsets: list[tuple[float, float]]) -> None:
    """A dark disc of radius r peaks at σ = r / √2 (Lindeberg), at its centre and on average."""
    size = int(8 * radius) + 16
    grid = np.array([(y, x) for y in (0.25, 0.75) for x in (0.2, 0.5, 0.8)]) * size
    jitter = (np.array(offsets) - 0.5) * radius * 0.5
    centres = grid + jitter
    image = blob_image((size, size), centres, radius, rng=np.random.default_rng(0), noise=1.0)
    expected = radius / math.sqrt(2)
    at_centres = blob_sigmas(image, centres)
    assert len(at_centres) == len(centres)
    assert np.allclose(at_centres, expected, rtol=0.2)
    assert characteristic_sigma(scale_energy(image)) == pytest.approx(expected, rel=0.2)


@given(k=st.integers(1, len(SIGMAS_PX) - 2), bend=st.floats(-0.45, 0.45))
def test_peak_sigma_refines_between_scales(k: int, bend: float) -> None:
    """A parabola in log σ peaking between two scales is found there."""
    log_s = np.log2(np.array(SIGMAS_PX))
    true = log_s[k] + bend * (log_s[1] - log_s[0])
    profile = (10.0 - (log_s - true) ** 2).astype(np.float32)
    assert math.log2(peak_sigmas(profile[:, None])[0]) == pytest.approx(true, abs=1e-3)


def test_peak_at_the_end_of_the_range_is_unknown() -> None:
    rising = np.arange(len(SIGMAS_PX), dtype=np.float32)
    assert math.isnan(peak_sigmas(rising[:, None])[0])
    assert math.isnan(estimate_from_energies([rising.astype(np.float64)]).mpp)
    assert estimate_from_energies([]).windows == 0


def test_disagreement_and_density_rules() -> None:
    estimate = ScaleEstimate(0.5, 3.2, 6, 1.2)
    assert mpp_disagreement(0.45, estimate, "the file's") is None
    assert mpp_disagreement(0.7, estimate, "the file's") is None  # 1.4x: within 1.5x
    assert mpp_disagreement(0.8, estimate, "the file's") is not None  # 1.6x
    assert estimate.disagrees(0.8) and not estimate.disagrees(0.7)
    message = mpp_disagreement(0.25, estimate, "the file's")
    assert message is not None and "1/2.0 of" in message and "0.25" in message
    lo, hi = DENSITY_PER_MM2
    assert density_problem(int(lo * 2), 1.0) is None
    assert density_problem(0, 1.0) is not None
    low = density_problem(10, 1.0)
    assert low is not None and "below" in low
    high = density_problem(int(hi * 2), 1.0)
    assert high is not None and "above" in high
    assert density_problem(0, 0.01) is None  # too little tissue to judge


def _resampled(slide_path: Path, factor: float, out: Path, *, mpp: float | None) -> Path:
    slide = open_slide(slide_path)
    rgb = slide.read_region(0, 0, *slide.shape)
    h, w = rgb.shape[:2]
    _, _, wy = resample_weights(0, resampled_size(h, factor), factor, h)
    _, _, wx = resample_weights(0, resampled_size(w, factor), factor, w)
    kwargs = {} if mpp is None else {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": 3}
    tifffile.imwrite(
        out, resample_window(rgb, wy, wx), tile=(256, 256), compression="jpeg", **kwargs
    )
    return out


@pytest.fixture(scope="module")
def sample_halved(sample_slide: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample slide at half resolution (pixels 2x larger), without a pixel size."""
    out = tmp_path_factory.mktemp("scale") / "halved.tif"
    return _resampled(sample_slide, 2.0, out, mpp=None)


def test_estimate_within_25_percent_on_the_sample_and_halved(
    sample_slide: Path, sample_halved: Path
) -> None:
    sample = open_slide(sample_slide)
    assert sample.mpp is not None
    estimate = estimate_slide_mpp(sample)
    assert estimate.mpp == pytest.approx(sample.mpp, rel=0.25)
    halved = estimate_slide_mpp(open_slide(sample_halved, mpp=2 * sample.mpp))
    assert halved.mpp == pytest.approx(2 * sample.mpp, rel=0.25)
    # The estimate does not depend on the pixel size claimed.
    claimed = estimate_slide_mpp(open_slide(sample_halved, mpp=0.3))
    assert claimed.mpp == pytest.approx(halved.mpp, rel=0.1)


def test_unknown_pixel_size_names_the_estimate(sample_halved: Path) -> None:
    slide = open_slide(sample_halved)
    assert slide.mpp is None
    with pytest.raises(MppUnknownError, match=r"nuclei suggest about 0\.\d+ µm/px.*--mpp auto"):
        resolve_mpp(slide, None)
    auto, estimate, notes = resolve_mpp(slide, "auto")
    assert auto.mpp_source == "estimated" and notes == ()
    assert estimate is not None and auto.mpp == pytest.approx(estimate.mpp, abs=1e-4)


def test_auto_keeps_an_agreeing_file_value(sample_slide: Path) -> None:
    slide = open_slide(sample_slide)
    kept, _, notes = resolve_mpp(slide, "auto")
    assert kept.mpp == slide.mpp and kept.mpp_source == "file" and notes == ()
    with pytest.raises(ValueError, match="auto"):
        resolve_mpp(slide, "automatic")


def test_wrong_mpp_warns_in_the_library(sample_slide: Path) -> None:
    from wsidet.inference.pipeline import plan_slide
    from wsidet.inference.spec import RunSpec

    with pytest.warns(MppWarning, match=r"1/2\.\d of the 0\.5\d µm/px"):
        plan = plan_slide(sample_slide, RunSpec.resolve(mpp=0.25))
    assert plan.warnings and plan.mpp_estimate is not None
    with warnings.catch_warnings():
        warnings.simplefilter("error", MppWarning)
        right = plan_slide(sample_slide, RunSpec.resolve())
    assert right.warnings == ()


def test_default_run_at_a_wrong_mpp_warns(
    sample_slide: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["run", str(sample_slide), "--mpp", "0.25", "--out", str(tmp_path), "--quiet"])
    assert code == 0
    err = capsys.readouterr().err
    assert "wsidet: warning: CMU-1-Small-Region: the given (--mpp) pixel size 0.25" in err
    assert err.count("pixel size 0.25") == 1  # said once, not also by the library
    # The warning travels with the outputs and the manifest.
    import json

    import pandas as pd

    from wsidet.output.detections import read_detections

    meta = read_detections(tmp_path / "CMU-1-Small-Region.parquet").attrs["wsidet"]
    assert any("pixel size 0.25" in w for w in meta["warnings"])
    assert meta["slide"]["mpp_estimate"] == pytest.approx(0.5, rel=0.25)
    row = pd.read_parquet(tmp_path / "manifest.parquet").iloc[0]
    assert any("pixel size 0.25" in w for w in json.loads(row["warnings"]))


def test_no_tissue_no_estimate(blank_slide: Path, tmp_path: Path) -> None:
    from tests.synthetic import GLASS
    from wsidet.slide.pyramid import write_pyramid

    slide = open_slide(blank_slide)
    estimate = estimate_slide_mpp(slide)
    assert math.isnan(estimate.mpp) and estimate.windows == 0
    for asked in (None, "auto"):  # the file's value stands, unjudged
        kept, _, notes = resolve_mpp(slide, asked)
        assert kept.mpp == slide.mpp and kept.mpp_source == "file" and notes == ()
    glass = np.clip(GLASS + np.random.default_rng(1).normal(0, 2, (400, 500, 3)), 0, 255)
    write_pyramid(tmp_path / "bare.tif", glass.astype(np.uint8), mpp=None, downsamples=(1,))
    bare = open_slide(tmp_path / "bare.tif")
    with pytest.raises(MppUnknownError, match="no nucleus-like structure"):
        resolve_mpp(bare, "auto")
    with pytest.raises(MppUnknownError, match="no estimate could be made"):
        resolve_mpp(bare, None)


def test_glass_and_noise_windows_have_no_scale() -> None:
    rng = np.random.default_rng(0)
    glass = np.clip(245 + rng.normal(0, 2, (256, 256, 3)), 0, 255).astype(np.uint8)
    assert math.isnan(characteristic_sigma(scale_energy(glass)))


def test_auto_is_recorded_with_its_estimator() -> None:
    from wsidet.cohort.resume import run_signature
    from wsidet.methods import get_method
    from wsidet.slide.nucleus_scale import NUCLEUS_SIGMA_UM

    method = get_method("log")
    auto = run_signature("f", method, None, mpp="auto", tissue=True)["mpp"]
    assert auto.startswith("auto") and str(NUCLEUS_SIGMA_UM) in auto
    assert run_signature("f", method, None, mpp=0.5, tissue=True)["mpp"] == 0.5


def test_info_prints_the_estimate(sample_halved: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", str(sample_halved)]) == 0
    out = capsys.readouterr().out
    assert "mpp      unknown" in out
    line = next(x for x in out.splitlines() if x.startswith("estimate"))
    value = float(line.split()[1])
    assert 0.75 < value < 1.25
