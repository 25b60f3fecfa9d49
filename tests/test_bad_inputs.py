"""A corpus of bad inputs and faults, tried as a new user and as an attacker would.

Each case asserts what a user sees (exit status, one line on stderr, no traceback) and what
must survive (earlier outputs and manifest rows). Cases that need a real process (signals,
a file-size limit, two runs at once, noise printed at interpreter exit) run the installed
``wsidet`` program; the others call :func:`wsidet.cli.main.main` in this process.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
import tifffile
import torch
from safetensors.torch import save_file
from wsidet.cli.main import main

from tests.conftest import make_blob_slide
from wsidet.errors import PartialCohortWarning
from wsidet.methods import get_method
from wsidet.output.detections import read_detections

EXE = Path(sys.executable).with_name("wsidet")


def wsidet(
    args: list[str], *, timeout: float = 300, **kwargs: object
) -> subprocess.CompletedProcess[str]:
    cmd = [str(EXE)] if EXE.exists() else [sys.executable, "-m", "wsidet.cli"]
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        [*cmd, *args], capture_output=True, text=True, timeout=timeout, **kwargs
    )


def assert_one_error_line(code: int, err: str, *fragments: str, status: int = 1) -> str:
    assert code == status, err
    # The synthetic slides' discs are larger than H&E nuclei: the good slides among the bad
    # ones may be warned about their pixel size (wsidet.slide.scale_check), on lines of their own.
    lines = [x for x in err.strip().splitlines() if not x.startswith("wsidet: warning: ")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert "error: " in lines[0], err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = main(args)
    except SystemExit as exc:  # argparse
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Small good slides, and bad ones derived from them."""
    folder = tmp_path_factory.mktemp("bad-inputs")
    made = {}
    for i in range(4):
        path = folder / f"s{i}.tif"
        make_blob_slide(path, shape=(300, 400), mpp=0.5, physical_mpp=0.5, seed=20 + i, n=20)
        made[f"s{i}"] = path
    data = made["s0"].read_bytes()
    for pct in (33, 50, 90):
        path = folder / f"cut{pct}.tif"
        path.write_bytes(data[: len(data) * pct // 100])
        made[f"cut{pct}"] = path
    # A header that claims 10^6 x 10^6 px in a file of a few KB.
    small = folder / "small.tif"
    tifffile.imwrite(
        small, np.full((512, 512, 3), 200, np.uint8), tile=(256, 256), compression="jpeg"
    )
    raw = bytearray(small.read_bytes())
    with tifffile.TiffFile(small) as tf:
        tags = tf.pages[0].tags
        for name in ("ImageWidth", "ImageLength"):
            fmt = "<I" if tags[name].dtype == 4 else "<H"
            struct.pack_into(fmt, raw, tags[name].valueoffset, 1_000_000 if fmt == "<I" else 65535)
    made["hostile"] = folder / "hostile.tif"
    made["hostile"].write_bytes(bytes(raw))
    # The JPEG data of one tile zeroed: a sound header over a corrupt tile.
    raw = bytearray(data)
    with tifffile.TiffFile(made["s0"]) as tf:
        page = tf.series[0].levels[0].keyframe
        offset, count = page.dataoffsets[0], page.databytecounts[0]
    raw[offset + 2 : offset + count] = bytes(count - 2)
    made["corrupt"] = folder / "corrupt.tif"
    made["corrupt"].write_bytes(bytes(raw))
    loop = folder / "loop.svs"
    os.symlink(loop, loop)
    made["loop"] = loop
    fifo = folder / "pipe.svs"
    os.mkfifo(fifo)
    made["fifo"] = fifo
    return made


# ---- slides a reader must refuse, fast and in one line -------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("command", ["run", "info"])
def test_a_forged_header_fails_at_once(slides, command, tmp_path, capsys) -> None:
    args = [command, str(slides["hostile"])]
    if command == "run":
        args += ["--out", str(tmp_path / "o"), "--method", "log", "-q"]
    started = time.perf_counter()
    code, _, err = run_cli(args, capsys)
    assert time.perf_counter() - started < 30  # it used to hang on a terabyte read
    assert_one_error_line(code, err, "claims 1000000 x 1000000 px", "forged header")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("pct", [33, 50, 90])
def test_truncated_slides_fail_in_one_line(slides, pct, tmp_path, capsys) -> None:
    code, _, err = run_cli(
        ["run", str(slides[f"cut{pct}"]), "--out", str(tmp_path / "o"), "--method", "log", "-q"],
        capsys,
    )
    line = assert_one_error_line(code, err, f"cut{pct}.tif")
    assert "truncated" in line
    assert not (tmp_path / "o").exists()


def test_an_unreadable_tile_is_reported_once_by_the_program(slides, tmp_path) -> None:
    """zarr's asynchronous reads used to add ~500 lines of tracebacks at exit."""
    proc = wsidet(["run", str(slides["corrupt"]), "--out", str(tmp_path / "o"), "-q"])
    assert_one_error_line(proc.returncode, proc.stderr, "tile 0 is corrupt")
    assert proc.stdout == ""


# ---- paths that are not slides --------------------------------------------------------------


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["loop", "fifo", "device"])
def test_entries_that_are_not_files_fail_alone(slides, kind, tmp_path, capsys) -> None:
    bad = Path("/dev/null") if kind == "device" else slides[kind]
    reason = {"loop": "symlink loop", "fifo": "FIFO", "device": "character device"}[kind]
    code, _, err = run_cli(["run", str(bad), "--out", str(tmp_path / "o"), "-q"], capsys)
    assert_one_error_line(code, err, reason)
    # Among a cohort's inputs: reported with its path, the others run.
    code, out, err = run_cli(
        [
            *("run", str(bad), str(slides["s1"]), "--out", str(tmp_path / "o")),
            *("--method", "log", "--cluster", "none", "-q"),
        ],
        capsys,
    )
    assert code == 1 and "s1: 20 nuclei" in out
    assert_one_error_line(code, err, str(bad), reason)
    manifest = pd.read_parquet(tmp_path / "o" / "manifest.parquet").set_index("slide_id")
    assert manifest.loc["s1", "status"] == "done" and manifest.loc[bad.stem, "status"] == "failed"


@pytest.mark.timeout(120)
def test_a_folder_with_a_loop_and_a_fifo_still_runs_its_slides(slides, tmp_path, capsys) -> None:
    folder = tmp_path / "cohort"
    folder.mkdir()
    os.symlink(slides["s2"], folder / "s2.tif")
    os.symlink(folder / "loop.svs", folder / "loop.svs")
    os.mkfifo(folder / "pipe.tif")
    args = ["--out", str(tmp_path / "o"), "--method", "log", "--cluster", "none", "-q"]
    code, out, err = run_cli(["run", str(folder), *args], capsys)
    assert code == 1 and "s2: 20 nuclei" in out
    lines = [x for x in err.strip().splitlines() if not x.startswith("wsidet: warning: ")]
    assert len(lines) == 2 and "Traceback" not in err
    assert any("symlink loop" in line for line in lines)
    assert any("FIFO" in line for line in lines)


# ---- numbers out of range --------------------------------------------------------------------

ARGUMENT_CASES = {
    "mpp-huge": (["--mpp", "1e9"], "--mpp: must be in [0.05, 20]"),
    "mpp-40x": (["--mpp", "40"], "40x is about 0.25"),
    "mpp-tiny": (["--mpp", "1e-9"], "--mpp: must be in"),
    "mpp-nan": (["--mpp", "nan"], "--mpp: must be in"),
    "mpp-text": (["--mpp", "fast"], "expected a number"),
    "tile-3": (["--tile", "3"], "--tile: must be in [64, 8192]"),
    "chunk-tiny": (["--chunk", "10"], "--chunk: must be in [128"),
    "batch-0": (["--batch-size", "0"], "--batch-size: must be in [1, 256]"),
    "workers-0": (["--workers", "0"], "--workers: must be in [1"),
}


@pytest.mark.parametrize("case", sorted(ARGUMENT_CASES))
def test_out_of_range_arguments_are_refused_before_any_work(slides, case, tmp_path, capsys) -> None:
    extra, fragment = ARGUMENT_CASES[case]
    out = tmp_path / "o"
    code, stdout, err = run_cli(["run", str(slides["s0"]), "--out", str(out), *extra], capsys)
    assert_one_error_line(code, err, fragment, "(see wsidet run --help)", status=2)
    assert stdout == "" and not out.exists()


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_a_non_finite_parameter_is_refused(slides, value, tmp_path, capsys) -> None:
    code, _, err = run_cli(
        [
            *("run", str(slides["s0"]), "--out", str(tmp_path / "o")),
            *("--method", "log", "--param", f"threshold={value}", "-q"),
        ],
        capsys,
    )
    assert_one_error_line(code, err, "threshold", "finite")
    assert not (tmp_path / "o").exists()  # no 0-nuclei result marked done, to be reused


def test_a_slide_far_too_coarse_for_the_method_is_refused(slides, tmp_path, capsys) -> None:
    code, _, err = run_cli(
        ["run", str(slides["s0"]), "--out", str(tmp_path / "o"), "--mpp", "10", "-q"], capsys
    )
    assert_one_error_line(code, err, "enlarged 20x", "at most 4x")


def test_a_block_that_cannot_fit_in_memory_is_refused(slides, tmp_path, capsys) -> None:
    args = ["--chunk", "16384", "--tile", "8192", "--batch-size", "256"]
    code, _, err = run_cli(
        ["run", str(slides["s0"]), "--out", str(tmp_path / "o"), *args, "-q"], capsys
    )
    assert_one_error_line(code, err, "GiB are available", "lower --chunk, --tile or --batch-size")
    assert not (tmp_path / "o").exists()


# ---- weights -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fcrn_weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    state = get_method("fcrn_a").build_network().state_dict()
    good = folder / "fcrn_a.safetensors"
    save_file(state, str(good), metadata={"wsidet.method": "fcrn_a"})
    pickle = folder / "fcrn_a.pt"
    torch.save(state, pickle)
    corrupt = folder / "corrupt.safetensors"
    corrupt.write_bytes(good.read_bytes()[:-1000])
    header = folder / "header.safetensors"
    header.write_bytes(struct.pack("<Q", 40) + b'{"broken": ' + b" " * 64)
    return {"good": good, "pickle": pickle, "corrupt": corrupt, "header": header}


@pytest.mark.parametrize(
    ("case", "fragment"),
    [
        ("pickle", "torch pickle file"),
        ("corrupt", "corrupt safetensors file"),
        ("header", "corrupt safetensors file"),
    ],
)
def test_weights_are_safetensors_unless_pickle_is_allowed(
    slides, fcrn_weights, case, fragment, tmp_path, capsys
) -> None:
    args = ["run", str(slides["s0"]), "--out", str(tmp_path / "o"), "--method", "fcrn_a", "-q"]
    code, _, err = run_cli([*args, "--weights", str(fcrn_weights[case])], capsys)
    line = assert_one_error_line(code, err, fragment)
    if case == "pickle":
        assert "--allow-pickle" in line
    assert not (tmp_path / "o").exists()


def test_allow_pickle_reads_a_torch_state_dict(slides, fcrn_weights, tmp_path, capsys) -> None:
    common = ["run", str(slides["s0"]), "--method", "fcrn_a", "-q", "--device", "cpu"]
    pickle = ["--weights", str(fcrn_weights["pickle"]), "--allow-pickle"]
    code, _, err = run_cli([*common, "--out", str(tmp_path / "a"), *pickle], capsys)
    assert code == 0, err
    code, _, err = run_cli(
        [*common, "--out", str(tmp_path / "b"), "--weights", str(fcrn_weights["good"])], capsys
    )
    assert code == 0, err
    a, b = (read_detections(tmp_path / d / "s0.parquet") for d in "ab")
    assert np.array_equal(a[["x", "y"]].to_numpy(), b[["x", "y"]].to_numpy())


# ---- the output folder: concurrent runs, full disk, stale files, hostile manifests ---------


@pytest.mark.timeout(300)
def test_two_runs_into_one_folder_keep_every_row(slides, tmp_path) -> None:
    out = tmp_path / "o"
    common = ["--out", str(out), "--method", "log", "--cluster", "none", "-q"]
    cmd = [str(EXE)] if EXE.exists() else [sys.executable, "-m", "wsidet.cli"]
    procs = [
        subprocess.Popen(
            [*cmd, "run", str(slides[a]), str(slides[b]), *common],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for a, b in (("s0", "s1"), ("s2", "s3"))
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err
    manifest = pd.read_parquet(out / "manifest.parquet")
    assert sorted(manifest["slide_id"]) == ["s0", "s1", "s2", "s3"]
    assert (manifest["status"] == "done").all()
    merged = read_detections(out)
    assert sorted(merged["slide_id"].unique()) == ["s0", "s1", "s2", "s3"]
    assert not list(out.glob(".*.tmp"))


def _limit_file_size(limit: int) -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


@pytest.mark.timeout(300)
def test_a_full_disk_fails_the_slide_and_keeps_what_was_there(slides, tmp_path) -> None:
    out = tmp_path / "o"
    common = ["--out", str(out), "--method", "log", "--cluster", "none", "-q"]
    first = wsidet(["run", str(slides["s0"]), *common])
    assert first.returncode == 0, first.stderr
    before = {p.name: p.read_bytes() for p in out.iterdir() if not p.name.startswith(".")}
    # Files over 2 KB cannot be written (EFBIG): the next slide's outputs and the manifest.
    proc = wsidet(["run", str(slides["s1"]), *common], preexec_fn=lambda: _limit_file_size(2048))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert 1 <= len(lines) <= 2 and all(line.startswith("wsidet: error: ") for line in lines)
    assert "File too large" in lines[0]
    assert any("manifest" in line for line in lines[1:]) or len(lines) == 1
    after = {p.name: p.read_bytes() for p in out.iterdir() if not p.name.startswith(".")}
    assert after == before  # s0's outputs and its manifest row, untouched; nothing of s1
    assert not list(out.glob(".*.tmp"))


def test_a_manifest_that_cannot_be_written_does_not_stop_the_cohort(
    slides, tmp_path, capsys
) -> None:
    out = tmp_path / "o"
    (out / "manifest.parquet").mkdir(parents=True)  # a folder where the file should go
    code, stdout, err = run_cli(
        [
            *("run", str(slides["s0"]), str(slides["s1"]), "--out", str(out)),
            *("--method", "log", "--cluster", "none", "-q"),
        ],
        capsys,
    )
    assert "s0: 20 nuclei" in stdout and "s1: 20 nuclei" in stdout  # both slides ran
    assert_one_error_line(code, err, "cannot write the manifest", "manifest.parquet")
    assert (out / "s0.parquet").is_file() and (out / "s1.parquet").is_file()


def test_stale_temporary_files_are_cleaned_and_live_ones_kept(slides, tmp_path, capsys) -> None:
    out = tmp_path / "o"
    out.mkdir()
    host = socket.gethostname()
    stale = out / f".s0.parquet.abc123.wsidet-{host}-{2**22 + 17}.tmp"  # over Linux's pid_max
    live = out / f".s0.geojson.def456.wsidet-{host}-{os.getpid()}.tmp"
    foreign = out / ".notes.txt.tmp"  # not ours: never touched
    for path in (stale, live, foreign):
        path.write_bytes(b"partial")
    code, _, err = run_cli(
        ["run", str(slides["s0"]), "--out", str(out), "--method", "log", "-q"], capsys
    )
    assert code == 0, err
    assert not stale.exists() and live.exists() and foreign.exists()


def test_read_detections_never_leaves_the_folder_nor_hides_a_gap(slides, tmp_path) -> None:
    out = tmp_path / "o"
    args = ["--out", str(out), "--method", "log", "--cluster", "none", "-q"]
    assert main(["run", str(slides["s0"]), str(slides["s1"]), *args]) == 0
    outside = tmp_path / "secret.parquet"
    outside.write_bytes((out / "s1.parquet").read_bytes())
    manifest = pd.read_parquet(out / "manifest.parquet")
    manifest.loc[manifest["slide_id"] == "s1", "output"] = "../secret.parquet"
    extra = manifest.iloc[[0]].assign(slide_id="s9", status="failed", error="disk full")
    pd.concat([manifest, extra]).to_parquet(out / "manifest.parquet")
    with pytest.warns(PartialCohortWarning, match=r"2 slide\(s\) left out") as caught:
        merged = read_detections(out)
    message = str(caught[0].message)
    assert "s1 (its manifest row names a file outside the folder" in message
    assert "s9 (failed: disk full)" in message
    assert set(merged["slide_id"]) == {"s0"}
    assert set(merged.attrs["wsidet"]["skipped"]) == {"s1", "s9"}


# ---- signals ------------------------------------------------------------------------------


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("sig", "status", "word"), [
    (signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated"),
])  # fmt: skip
def test_a_signal_stops_a_run_promptly_in_one_line(sample_slide, sig, status, word, tmp_path):
    out = tmp_path / "o"
    cmd = [str(EXE)] if EXE.exists() else [sys.executable, "-m", "wsidet.cli"]
    # The bundled VOCA on the sample: ~15 s of model tiles on 2 cores, well past start-up.
    proc = subprocess.Popen(
        [*cmd, "run", str(sample_slide), "--out", str(out), "--device", "cpu"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # Piped, it draws no progress bar: wait until it has spent well past its start-up (~4 s
    # of CPU importing torch and loading the model) in computing.
    watched = psutil.Process(proc.pid)
    while sum(watched.cpu_times()[:2]) < 9.0:
        if proc.poll() is not None:
            pytest.fail(f"finished before the signal: {proc.stderr.read()}")
        time.sleep(0.1)
    sent = time.perf_counter()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    waited = time.perf_counter() - sent
    assert proc.returncode == status, err
    assert "Traceback" not in err and err.strip().endswith(f"wsidet: {word}")
    assert waited < 10, waited  # it used to wait for every chunk in flight
    assert not out.exists() or not [p for p in out.iterdir()]


# ---- the network ----------------------------------------------------------------------------


def _listening(processes: list[psutil.Process]) -> set[str]:
    addresses = set()
    for proc in processes:
        with contextlib.suppress(psutil.Error):
            for conn in proc.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN:
                    addresses.add(conn.laddr.ip)
    return addresses


@pytest.mark.timeout(120)
@pytest.mark.parametrize("layout", ["cpu", "gpu-without-dask-cuda"])
def test_local_clusters_listen_on_this_machine_only(layout, monkeypatch) -> None:
    """An unauthenticated dask scheduler runs any code it is sent: never on 0.0.0.0."""
    import distributed

    from wsidet.cohort.cluster import close_client, gpu_cluster, start_client

    if layout == "cpu":
        client, _ = start_client("local", workers=1, threads_per_worker=1)
    else:  # the --gpus fallback, checked without GPUs (workers see CUDA_VISIBLE_DEVICES)
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
        client = distributed.Client(gpu_cluster(1, 1))
    try:
        me = psutil.Process()
        addresses = _listening([me, *me.children(recursive=True)])
    finally:
        close_client(client)
    assert addresses and addresses <= {"127.0.0.1"}, addresses
