"""The run's typed values: RunSpec (decides the points), ExecOptions (does not), SlideMetadata."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import BlobSlide
from wsidet.cohort.run import CohortOptions, find_slides, run_cohort, run_slides
from wsidet.errors import ParameterError
from wsidet.inference.detector import weights_hash
from wsidet.inference.pipeline import detect, detect_slide
from wsidet.inference.spec import ExecOptions, RunSpec
from wsidet.methods import DEFAULT_METHOD, get_method
from wsidet.output.detections import detections_frame, read_detections, write_detections
from wsidet.output.metadata import (
    RunInfo,
    ScaleInfo,
    SlideInfo,
    SlideMetadata,
    read_parquet_metadata,
)
from wsidet.weights import bundled_weights

LOG = get_method("log")


def test_resolve_takes_the_default_method_with_its_bundled_weights() -> None:
    run = RunSpec.resolve()
    bundled = bundled_weights(DEFAULT_METHOD)
    assert bundled is not None
    assert run.method.name == DEFAULT_METHOD
    assert run.weights == str(bundled)
    assert run.weights_hash == weights_hash(bundled)
    assert run.stain is False  # the shipped weights were not trained on normalised colours


def test_resolve_applies_parameter_overrides_to_names_and_instances() -> None:
    assert RunSpec.resolve("log", params={"threshold": 0.3}).method.threshold == 0.3
    assert RunSpec.resolve(LOG, params={"threshold": 0.4}).method.threshold == 0.4


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [({"mpp": 400.0}, "mpp"), ({"precision": "fp8"}, "precision")],
)
def test_resolve_refuses_bad_values(kwargs: dict, fragment: str) -> None:
    with pytest.raises(ParameterError, match=fragment):
        RunSpec.resolve("log", **kwargs)


@pytest.mark.parametrize(
    "kwargs", [{"chunk": 16}, {"tile": 10}, {"batch_size": 0}, {"chunk": 10**6}]
)
def test_exec_options_refuse_numbers_out_of_range(kwargs: dict) -> None:
    with pytest.raises(ParameterError) as caught:
        ExecOptions(**kwargs)
    assert isinstance(caught.value, ValueError)  # and the built-in it refines


def test_signature_is_what_decides_the_points() -> None:
    base = RunSpec(LOG).signature("1:abc")
    assert base == RunSpec(LOG).signature("1:abc")
    changed = {
        "slide": RunSpec(LOG).signature("2:def"),
        "params": RunSpec(LOG.replace(threshold=0.5)).signature("1:abc"),
        "mpp": RunSpec(LOG, mpp=0.25).signature("1:abc"),
        "tissue": RunSpec(LOG, tissue=False).signature("1:abc"),
        "stain": RunSpec(LOG, stain=True).signature("1:abc"),
        "precision": RunSpec(LOG, precision="bf16").signature("1:abc"),
        "weights_hash": RunSpec(LOG, weights_hash="sha256:0").signature("1:abc"),
    }
    for key, signature in changed.items():
        assert signature[key] != base[key], key
        assert {k: v for k, v in signature.items() if k != key} == {
            k: v for k, v in base.items() if k != key
        }, key


def test_a_missing_weights_file_is_left_to_the_detector(tmp_path: Path) -> None:
    run = RunSpec(get_method("voca"), weights=str(tmp_path / "none.safetensors"))
    assert run.weights_hash is None


def _metadata(values: dict) -> SlideMetadata:
    return SlideMetadata(
        version="0.1.0",
        slide=SlideInfo("p.svs", values["id"], values["mpp"], "file", None, 10, 20, "aperio"),
        method="log",
        params={"threshold": values["threshold"]},
        scale=ScaleInfo(1, 2.0, values["mpp"], 8, 4, values["chunks"]),
        totals=values["totals"],
        run=RunInfo(values["seconds"], 1.5, None, 0.5, 0.1),
        warnings=values["warnings"],
        signature=values["signature"],
    )


finite = st.floats(0.01, 1e4, allow_nan=False)
metadata_values = st.fixed_dictionaries(
    {
        "id": st.text(min_size=1, max_size=12),
        "mpp": finite,
        "threshold": finite,
        "chunks": st.integers(0, 100),
        "totals": st.dictionaries(st.sampled_from(["count", "area"]), finite),
        "seconds": finite,
        "warnings": st.lists(st.text(max_size=20), max_size=3),
        "signature": st.none() | st.fixed_dictionaries({"slide": st.text(max_size=8)}),
    }
)


@settings(max_examples=30, deadline=None)
@given(values=metadata_values)
def test_metadata_round_trips_through_its_dict(values: dict) -> None:
    meta = _metadata(values)
    stored = meta.to_dict()
    assert ("signature" in stored) == (values["signature"] is not None)
    assert SlideMetadata.from_dict(stored) == meta


def test_metadata_from_a_file_of_another_version() -> None:
    meta = SlideMetadata.from_dict({"slide": {"slide_id": "s", "new_field": 1}, "method": "log"})
    assert meta.slide.slide_id == "s" and meta.run.tissue_area_mm2 is None
    assert meta.signature is None and meta.warnings == [] and meta.scale == ScaleInfo()


@settings(max_examples=10, deadline=None)
@given(values=metadata_values, n=st.integers(0, 30))
def test_parquet_metadata_is_read_without_the_points(tmp_path_factory, values: dict, n: int):
    meta = _metadata(values)
    xy = np.arange(2 * n, dtype=np.float64).reshape(n, 2)
    frame = detections_frame(xy, np.ones(n), method="log", slide_id="s", metadata=meta.to_dict())
    (path,) = write_detections(frame, tmp_path_factory.mktemp("m"), formats=["parquet"]).values()
    stored, count = read_parquet_metadata(path)
    assert count == n
    assert stored == read_detections(path).attrs["wsidet"] == meta.to_dict()


def test_detect_slide_is_detect_with_resolved_specs(blob_slide: BlobSlide) -> None:
    kwargs = {"chunk": 256, "device": "cpu", "scheduler": "sync"}
    a = detect_slide(blob_slide.path, LOG, **kwargs)
    b = detect(
        blob_slide.path, RunSpec(LOG), ExecOptions(chunk=256, device="cpu"), scheduler="sync"
    )
    assert len(a) > 50
    np.testing.assert_array_equal(a[["x", "y", "score"]], b[["x", "y", "score"]])
    ma, mb = a.attrs["wsidet"], b.attrs["wsidet"]
    ma["run"].pop("seconds"), mb["run"].pop("seconds")  # timings differ, nothing else may
    assert ma == mb


def test_run_cohort_is_run_slides_with_resolved_specs(blob_slide: BlobSlide, tmp_path) -> None:
    a = run_cohort([blob_slide.path], tmp_path / "a", method=LOG, chunk=256, device="cpu")
    b = run_slides(
        find_slides([blob_slide.path]),
        tmp_path / "b",
        RunSpec.resolve(LOG),
        ExecOptions(chunk=256, device="cpu"),
        CohortOptions(),
    )
    assert [dataclasses.replace(r, seconds=0.0, finished="") for r in a.results] == [
        dataclasses.replace(r, seconds=0.0, finished="") for r in b.results
    ]
    fa = read_detections(tmp_path / "a" / "blobs.parquet")
    fb = read_detections(tmp_path / "b" / "blobs.parquet")
    np.testing.assert_array_equal(fa[["x", "y"]], fb[["x", "y"]])
    assert fa.attrs["wsidet"]["signature"] == fb.attrs["wsidet"]["signature"]
