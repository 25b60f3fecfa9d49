"""Finding a cohort's slides (recursively, TCGA style) and naming them uniquely."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import BlobSlide
from wsidet.cohort.discover import (
    ID_SEPARATOR,
    CohortError,
    find_slides,
    keep_earlier_ids,
    slide_ids,
)
from wsidet.cohort.run import run_cohort
from wsidet.methods import get_method
from wsidet.output.detections import read_detections
from wsidet.slide.wsi import slide_id_for

names = st.sampled_from(["a", "b", "slide", "TCGA-01", "x_y"])
folders = st.lists(st.sampled_from(["site1", "site2", "case", "deep"]), max_size=3)


def file_of(entry: tuple[list[str], str, str]) -> str:
    parts, name, ext = entry
    return "/".join([*parts, name + ext])


layouts = st.lists(
    st.tuples(folders, names, st.sampled_from([".svs", ".tif", ".ome.tif"])),
    min_size=1,
    max_size=8,
    unique_by=file_of,
)


@settings(max_examples=80, deadline=None)
@given(layout=layouts)
def test_slide_ids_are_unique_and_plain_where_names_are(layout) -> None:
    slides = [Path("/cohort", *parts, name + ext) for parts, name, ext in layout]
    ids = slide_ids(slides)
    assert set(ids) == set(slides)
    assert len(set(ids.values())) == len(slides)
    stems = [slide_id_for(p) for p in slides]
    for path, stem in zip(slides, stems, strict=True):
        if stems.count(stem) == 1:
            assert ids[path] == stem
        else:
            assert ids[path].endswith(stem) or ID_SEPARATOR in ids[path]
        assert "/" not in ids[path]  # an id is a file name
    assert slide_ids(slides) == ids  # deterministic


def test_clashing_names_are_told_apart_by_their_folders() -> None:
    ids = slide_ids([Path("/c/site1/slide.svs"), Path("/c/site2/slide.svs"), Path("/c/o.svs")])
    assert list(ids.values()) == ["site1__slide", "site2__slide", "o"]
    same_folder = slide_ids([Path("/c/a.svs"), Path("/c/a.tif")])
    assert list(same_folder.values()) == ["a", "a__2"]


def tcga(tmp_path: Path) -> Path:
    for case, name in [("case-1", "TCGA-A.svs"), ("case-2/sub", "TCGA-B.svs"), ("case-3", "x")]:
        (tmp_path / case).mkdir(parents=True)
        (tmp_path / case / name).write_bytes(b"")
    return tmp_path


def test_recursive_search_finds_one_folder_per_case(tmp_path: Path) -> None:
    root = tcga(tmp_path)
    found = find_slides([root], recursive=True)
    assert [p.relative_to(root).as_posix() for p in found] == [
        "case-1/TCGA-A.svs",
        "case-2/sub/TCGA-B.svs",
    ]
    with pytest.raises(CohortError, match=r"no slides found.*subfolders hold slides.*recursive"):
        find_slides([root])


def test_nothing_anywhere_is_refused_plainly(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(CohortError, match=r"^no slides found in the paths given$"):
        find_slides([tmp_path], recursive=True)


def test_two_slides_of_one_name_both_run(blob_slide: BlobSlide, tmp_path: Path) -> None:
    for site in ("site1", "site2"):
        (tmp_path / "in" / site).mkdir(parents=True)
        (tmp_path / "in" / site / "blobs.tif").write_bytes(blob_slide.path.read_bytes())
    summary = run_cohort(
        [tmp_path / "in"],
        tmp_path / "out",
        method=get_method("log"),
        recursive=True,
        chunk=512,
        device="cpu",
    )
    assert [r.slide_id for r in summary.results] == ["site1__blobs", "site2__blobs"]
    assert summary.done == 2
    for slide_id in ("site1__blobs", "site2__blobs"):
        frame = read_detections(tmp_path / "out" / f"{slide_id}.parquet")
        assert set(frame["slide_id"]) == {slide_id} and len(frame) == 120
        assert frame.attrs["wsidet"]["slide"]["slide_id"] == slide_id


def test_a_slide_keeps_the_name_an_earlier_run_gave_it(tmp_path: Path) -> None:
    a, b = tmp_path / "site1" / "slide.svs", tmp_path / "site2" / "slide.svs"
    ids = slide_ids([a, b])
    assert ids == {a: "site1__slide", b: "site2__slide"}
    kept = keep_earlier_ids(ids, {str(a): "slide"})  # the first run had site1 alone
    assert kept == {a: "slide", b: "site2__slide"}
    assert keep_earlier_ids(ids, {str(a): "site2__slide"}) == ids  # never a clash
