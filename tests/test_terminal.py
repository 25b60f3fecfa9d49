"""Terminal manners: results on stdout, everything else on stderr, no redraws into a log."""

from __future__ import annotations

from pathlib import Path

import pytest
from wsidet.cli.main import main

from tests.conftest import BlobSlide


def test_a_redirected_run_writes_plain_lines(
    blob_slide: BlobSlide, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Captured streams are not terminals, as when a run is piped into a log file.
    code = main(["run", str(blob_slide.path), "--out", str(tmp_path), "--method", "log"])
    out, err = capsys.readouterr()
    assert code == 0
    for stream in (out, err):
        assert "\r" not in stream and "\x1b" not in stream  # no bar redraws, no colours
    (line,) = out.splitlines()
    assert line.startswith("blobs: 120 nuclei") and line.endswith("blobs.preview.png")
    assert all(text.startswith("wsidet: warning: ") for text in err.splitlines())


def test_progress_moves_by_model_tile(sample_slide: Path) -> None:
    from wsidet.inference.pipeline import detect_slide, plan_slide
    from wsidet.inference.spec import ExecOptions, RunSpec

    calls: list[tuple[int, int]] = []
    detect_slide(
        sample_slide, "log", tile=256, device="cpu", progress=lambda d, t: calls.append((d, t))
    )
    plan = plan_slide(sample_slide, RunSpec.resolve("log"), ExecOptions(tile=256, device="cpu"))
    total = plan.tile_total()
    assert len(plan.blocks) <= 4 < total  # far finer than the chunks
    assert calls[0] == (0, total) and calls[-1] == (total, total)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    assert len(calls) > len(plan.blocks) + 1


def test_progress_with_worker_processes_counts_chunks(blob_slide: BlobSlide) -> None:
    from wsidet.inference.pipeline import detect_slide

    calls: list[tuple[int, int]] = []
    frame = detect_slide(
        blob_slide.path, "log", chunk=512, device="cpu", scheduler="processes",
        progress=lambda d, t: calls.append((d, t)),
    )  # fmt: skip
    assert len(frame) == 120 and calls and calls[-1][0] == calls[-1][1]
