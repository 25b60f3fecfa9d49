from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tiffslide
import torch
from safetensors.torch import save_file
from wsidet.cli.main import main

from tests.conftest import BlobSlide, make_blob_slide
from wsidet.output.detections import read_detections
from wsidet.slide.wsi import open_slide


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def assert_nothing_written(out: Path) -> None:
    """A run in which nothing was done leaves no trace: not even the output folder."""
    assert not out.exists(), sorted(f.name for f in out.iterdir())


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("wsidet: error: "), err
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.fixture(scope="module")
def sample_run(
    sample_slide: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """The README's main command, through the installed console script."""
    out = tmp_path_factory.mktemp("cli") / "results"
    exe = Path(sys.executable).with_name("wsidet")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "wsidet.cli"]
    proc = subprocess.run(
        [*cmd, "run", str(sample_slide), "--out", str(out), "--device", "cpu"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    return out, proc


def test_sample_slide_end_to_end(sample_run, sample_slide: Path) -> None:
    out, proc = sample_run
    assert proc.returncode == 0, proc.stderr
    summary = proc.stdout.strip().splitlines()[-1]
    assert "nuclei" in summary and "mm² tissue" in summary and "Mpx/s" in summary
    # Every file written is named, where it is: points, QuPath points, density, QC picture.
    names = ["parquet", "geojson", "density.parquet", "preview.png"]
    written = [out / f"CMU-1-Small-Region.{name}" for name in names]
    assert summary.endswith("-> " + ", ".join(map(str, written)))
    assert all(path.is_file() for path in written) and (out / "report.html").is_file()
    frame = read_detections(out / "CMU-1-Small-Region.parquet")
    assert len(frame) > 1000
    assert f"{len(frame)} nuclei" in summary
    assert frame["x"].between(0, 2220).all() and frame["y"].between(0, 2967).all()
    mask = open_slide(sample_slide).tissue_mask()
    assert mask.contains(frame[["x", "y"]].to_numpy()).all()
    # Independently of the mask: every point has stained (dark) pixels next to it, where glass
    # is near white (about 244 grey here; nuclei centres are under 110).
    slide = tiffslide.TiffSlide(sample_slide)
    grey = np.asarray(slide.read_region((0, 0), 0, slide.dimensions).convert("L"), np.float64)
    cols = np.clip(frame["x"].to_numpy().astype(int), 4, grey.shape[1] - 5)
    rows = np.clip(frame["y"].to_numpy().astype(int), 4, grey.shape[0] - 5)
    darkest = [grey[r - 4 : r + 5, c - 4 : c + 5].min() for r, c in zip(rows, cols, strict=True)]
    assert max(darkest) < 180
    geo = json.loads((out / "CMU-1-Small-Region.geojson").read_text())
    assert len(geo["features"]) == len(frame)
    assert frame.attrs["wsidet"]["slide"]["mpp"] == pytest.approx(0.499)


def test_existing_outputs_are_kept(sample_run, sample_slide: Path, capsys) -> None:
    out, _ = sample_run
    before = (out / "CMU-1-Small-Region.parquet").read_bytes()
    # The same run again: nothing to do, nothing rewritten.
    code, stdout, _ = run_cli(["run", str(sample_slide), "--out", str(out), "-q"], capsys)
    assert code == 0 and "already done" in stdout
    assert (out / "CMU-1-Small-Region.parquet").read_bytes() == before
    # Another configuration would replace the output: refused without --overwrite, and the
    # manifest still describes the outputs that are there.
    args = ["run", str(sample_slide), "--out", str(out), "-q", "--param", "threshold=0.3"]
    code, _, err = run_cli(args, capsys)
    assert_one_line_error(code, err, "exists", "other parameters", "--overwrite")
    assert (out / "CMU-1-Small-Region.parquet").read_bytes() == before
    manifest = pd.read_parquet(out / "manifest.parquet")
    assert list(manifest["status"]) == ["done"] and manifest["n_points"][0] > 1000


def _bad_inputs(tmp: Path, sample_slide: Path) -> dict[str, tuple[list[str], tuple[str, ...]]]:
    text = tmp / "notes.svs"
    text.write_text("hello\n")
    png = tmp / "image.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 100)
    data = sample_slide.read_bytes()
    truncated = tmp / "truncated.svs"
    truncated.write_bytes(data[: len(data) // 2])
    weights = tmp / "w.safetensors"
    save_file({"w": torch.zeros(1)}, str(weights))
    return {
        "missing": ([str(tmp / "absent.svs")], ("slide not found", "absent.svs")),
        "text": ([str(text)], ("not a readable TIFF-based slide",)),
        "png": ([str(png)], ("not a readable TIFF-based slide",)),
        "truncated": ([str(truncated)], ("truncated.svs", "truncated or corrupt")),
        "method": ([str(sample_slide), "--method", "nope"], ("unknown method 'nope'", "log")),
        "weights": (
            [str(sample_slide), "--method", "log", "--weights", str(weights)],
            ("takes no weights",),
        ),
        "anonymous-weights": (
            [str(sample_slide), "--weights", str(weights)],
            ("do not name their method", "--method"),
        ),
        "param": ([str(sample_slide), "--param", "bogus=1"], ("no parameter 'bogus'",)),
        "device": ([str(sample_slide), "--device", "tpu9"], ("device",)),
        "stain": (
            [str(sample_slide), "--method", "log", "--stain-normalise"],
            ("stain normalisation needs", "records none"),
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing", "text", "png", "truncated", "method", "weights", "anonymous-weights", "param",
        "device", "stain",
    ],
)  # fmt: skip
def test_bad_input_is_one_line_and_leaves_nothing(case, sample_slide, tmp_path, capsys) -> None:
    args, fragments = _bad_inputs(tmp_path, sample_slide)[case]
    out = tmp_path / "out"
    code, stdout, err = run_cli(["run", *args, "--out", str(out), "-q"], capsys)
    assert_one_line_error(code, err, *fragments)
    assert "Traceback" not in err and stdout == ""
    assert_nothing_written(out)


def test_truncated_tiles_fail_cleanly(blob_slide: BlobSlide, tmp_path, capsys) -> None:
    data = blob_slide.path.read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    out = tmp_path / "out"
    code, _, err = run_cli(["run", str(cut), "--out", str(out), "-q"], capsys)
    assert_one_line_error(code, err, "cannot read")
    assert_nothing_written(out)


def test_debug_shows_the_traceback(tmp_path, capsys) -> None:
    with pytest.raises(FileNotFoundError):
        main(["run", str(tmp_path / "absent.svs"), "--out", str(tmp_path / "o"), "--debug"])


def test_usage_errors_exit_2(capsys) -> None:
    for args in (["run"], ["run", "x.svs", "--chunk", "0"], ["run", "x.svs", "--format", "csv"]):
        with pytest.raises(SystemExit) as exc:
            main(args)
        assert exc.value.code == 2


def test_no_tissue_is_an_empty_result(blank_slide: Path, tmp_path, capsys) -> None:
    code, out, err = run_cli(["run", str(blank_slide), "--out", str(tmp_path), "-q"], capsys)
    assert code == 0, err
    assert "blank: 0 nuclei" in out
    assert len(read_detections(tmp_path / "blank.parquet")) == 0


def test_small_slide_and_formats(tmp_path, capsys) -> None:
    path = tmp_path / "small.tif"
    make_blob_slide(
        path, shape=(200, 260), mpp=0.5, physical_mpp=0.5, seed=3, n=10, downsamples=(1,)
    )
    code, _, err = run_cli(
        [
            "run",
            str(path),
            "--out",
            str(tmp_path / "o"),
            "--format",
            "geojson.gz",
            "-q",
            "--method",
            "log",
            "--param",
            "threshold=0.25",
        ],
        capsys,
    )
    assert code == 0, err
    frame = read_detections(tmp_path / "o" / "small.geojson.gz")
    assert len(frame) == 10
    assert frame.attrs["wsidet"]["params"]["threshold"] == 0.25


def test_several_slides_continue_past_a_bad_one(blob_slide: BlobSlide, tmp_path, capsys) -> None:
    good = tmp_path / "good.tif"
    shutil.copy(blob_slide.path, good)
    code, out, err = run_cli(
        ["run", str(tmp_path / "absent.svs"), str(good), "--out", str(tmp_path / "o"), "-q"], capsys
    )
    assert code == 1
    assert "absent.svs" in err and "good:" in out
    assert (tmp_path / "o" / "good.parquet").exists()


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from wsidet.methods import get_method

    folder = tmp_path_factory.mktemp("weights")
    paths = {}
    for name in ("fcrn_a", "fcrn_b"):
        torch.manual_seed(0)
        net = get_method(name).build_network()
        paths[name] = folder / f"{name}.safetensors"
        save_file(net.state_dict(), str(paths[name]), metadata={"wsidet.method": name})
    return paths


def test_trained_method_runs_with_weights(random_weights, tmp_path, capsys) -> None:
    path = tmp_path / "small.tif"
    make_blob_slide(path, shape=(200, 260), mpp=0.5, physical_mpp=0.5, seed=3, n=10)
    args = ["run", str(path), "--method", "fcrn_a", "--weights", str(random_weights["fcrn_a"])]
    code, out, err = run_cli(
        [*args, "--out", str(tmp_path / "o"), "-q", "--param", "threshold=0"], capsys
    )
    assert code == 0, err
    assert "| count " in out  # FCRN's density integral
    frame = read_detections(tmp_path / "o" / "small.parquet")
    meta = frame.attrs["wsidet"]
    assert meta["method"] == "fcrn_a" and meta["weights_hash"].startswith("sha256:")
    assert set(meta["totals"]) == {"count"} and meta["chunk_totals"][0]["box"] == [0, 0, 260, 200]


@pytest.mark.parametrize(
    ("method", "weights", "fragments"),
    [
        ("fcrn_b", "fcrn_a", ("trained for method 'fcrn_a'",)),
        ("mapde", None, ("needs trained weights", "--weights")),
    ],
)
def test_weights_must_match(
    random_weights, blob_slide, tmp_path, capsys, method, weights, fragments
):
    args = ["run", str(blob_slide.path), "--method", method, "--out", str(tmp_path / "o"), "-q"]
    if weights:
        args += ["--weights", str(random_weights[weights])]
    code, _, err = run_cli(args, capsys)
    assert_one_line_error(code, err, *fragments)
    assert_nothing_written(tmp_path / "o")


def test_methods_and_info(sample_slide: Path, capsys) -> None:
    code, out, _ = run_cli(["methods"], capsys)
    assert code == 0 and "halo" in out
    rows = {line.split()[0]: line for line in out.splitlines()[1:-1]}
    assert sorted(rows) == ["fcrn_a", "fcrn_b", "log", "mapde", "micronet", "proximity", "voca"]
    assert "voca *" in rows["voca"] and "bundled" in rows["voca"]
    assert "none needed" in rows["log"] and "--weights FILE" in rows["mapde"]
    code, out, _ = run_cli(["info", str(sample_slide)], capsys)
    assert code == 0 and "0.499" in out and "2967 x 2220" in out and "tissue" in out
    code, out, _ = run_cli(["info", str(sample_slide), "--json"], capsys)
    info = json.loads(out)
    assert info["levels"][0]["width"] == 2220 and 0.2 < info["tissue_fraction"] < 0.8


def test_import_is_lazy() -> None:
    code = (
        "import sys, wsidet; import wsidet.methods; wsidet.list_methods();"
        "heavy = [m for m in ('torch', 'dask', 'distributed', 'geopandas') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == ""  # numpy is fine to import; none of these
    import importlib

    import wsidet

    # Every public name resolves (lazily) to the very object its module defines.
    for name in wsidet.__all__:
        home = wsidet._LAZY.get(name, "wsidet._version")
        assert getattr(wsidet, name) is getattr(importlib.import_module(home), name), name
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        wsidet.nonexistent  # noqa: B018
