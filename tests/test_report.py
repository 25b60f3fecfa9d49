"""The cohort report: every slide with its status, parsed as HTML, and rendered by a browser."""

from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
from PIL import Image
from wsidet.cli.main import main

from tests.conftest import BlobSlide
from wsidet.cohort.run import run_cohort
from wsidet.methods import get_method
from wsidet.output.report import REPORT


class Rows(HTMLParser):
    """The slide rows of a report: their data-slide, cell texts, images, and all tags seen."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, list[str]] = {}
        self.images: dict[str, str] = {}
        self.tags: list[str] = []
        self._slide: str | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        a = dict(attrs)
        if tag == "tr" and a.get("data-slide") is not None:
            self._slide = a["data-slide"]
            self.rows[self._slide] = []
        elif tag == "td" and self._slide is not None:
            self._cell = []
        elif tag == "img" and self._slide is not None:
            self.images[self._slide] = a.get("src") or ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._slide is not None and self._cell is not None:
            self.rows[self._slide].append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "tr":
            self._slide = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


@pytest.fixture(scope="module")
def cohort_folder(blob_slide: BlobSlide, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("report")
    slides = root / "slides"
    slides.mkdir()
    shutil.copy(blob_slide.path, slides / "one.tif")
    shutil.copy(blob_slide.path, slides / "two <marquee>x.tif")  # markup in a file name
    (slides / "broken.svs").write_bytes(b"II*\0 not a slide")
    run_cohort([slides], root / "out", method=get_method("log"), chunk=512, device="cpu",
               formats=("parquet", "preview.png"))  # fmt: skip
    return root / "out"


def test_the_report_lists_every_slide_with_its_status(cohort_folder: Path) -> None:
    parser = Rows()
    parser.feed((cohort_folder / REPORT).read_text(encoding="utf-8"))
    assert set(parser.rows) == {"one", "two <marquee>x", "broken"}
    status = {slide: cells[2] for slide, cells in parser.rows.items()}
    assert status["one"].startswith("done") and status["two <marquee>x"].startswith("done")
    assert status["broken"].startswith("failed") and len(status["broken"]) > len("failed ")
    assert parser.rows["one"][3] == "120"  # nuclei
    assert "marquee" not in parser.tags  # the file name's markup is text, not markup
    for slide in ("one", "two <marquee>x"):  # pictures link to files beside the report
        assert (cohort_folder / unquote(parser.images[slide])).is_file()  # links are URLs
    assert "broken" not in parser.images


def test_report_command_writes_it_again(cohort_folder: Path, capsys) -> None:
    (cohort_folder / REPORT).unlink()
    assert main(["report", str(cohort_folder)]) == 0
    assert (cohort_folder / REPORT).is_file()
    assert main(["report", str(cohort_folder / "nothing")]) == 1
    assert "not a wsidet output folder" in capsys.readouterr().err


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (apt-get install chromium)")
def test_the_report_renders_in_a_headless_browser(cohort_folder: Path, tmp_path: Path) -> None:
    page = (cohort_folder / REPORT).resolve().as_uri()
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files"]
    dom = subprocess.run(
        [CHROMIUM, *flags, "--dump-dom", page], capture_output=True, text=True, timeout=120
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    parser = Rows()
    parser.feed(dom.stdout)
    assert set(parser.rows) == {"one", "two <marquee>x", "broken"}
    shot = tmp_path / "report.png"
    subprocess.run(
        [CHROMIUM, *flags, f"--screenshot={shot}", "--window-size=1280,900", page],
        capture_output=True,
        timeout=120,
        check=True,
    )
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (900, 1280)
    assert pixels.std() > 10  # not a blank page: text, table and previews drawn
