"""Cohorts on real dask clusters (worker processes, as in production)."""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import make_blob_slide
from wsidet.cohort.run import CohortError, CohortProgress, find_slides, read_manifest, run_cohort
from wsidet.errors import PartialCohortWarning
from wsidet.evaluation.metrics import match_points
from wsidet.inference.detector import QUANTUM
from wsidet.inference.pipeline import detect_slide
from wsidet.methods import get_method
from wsidet.output.detections import read_detections

distributed = pytest.importorskip("distributed")

METHOD = get_method("log")
OPTIONS = {"chunk": 256, "device": "cpu"}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three small slides (6 chunks each at chunk 256) and one truncated file."""
    folder = tmp_path_factory.mktemp("cohort")
    for i in range(3):
        make_blob_slide(
            folder / f"s{i}.tif", shape=(512, 640), mpp=0.5, physical_mpp=0.5, seed=10 + i, n=40
        )
    data = (folder / "s0.tif").read_bytes()
    (folder / "broken.tif").write_bytes(data[: len(data) // 2])
    return folder


@pytest.fixture(scope="module")
def reference(cohort: Path) -> dict[str, np.ndarray]:
    """Single-process results, the ground truth for every cluster run."""
    out = {}
    for i in range(3):
        frame = detect_slide(cohort / f"s{i}.tif", METHOD, **OPTIONS)
        out[f"s{i}"] = frame[["x", "y"]].to_numpy()
    return out


def assert_outputs_match(out: Path, reference: dict[str, np.ndarray]) -> None:
    for slide_id, expected in reference.items():
        got = read_detections(out / f"{slide_id}.parquet")[["x", "y"]].to_numpy()
        assert len(got) == len(expected), slide_id
        pairs, _ = match_points(got, expected, 1.5 * QUANTUM)
        assert len(pairs) == len(expected), slide_id  # none lost, none duplicated


@pytest.fixture(scope="module")
def client() -> distributed.Client:
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    )
    with distributed.Client(cluster) as c:
        yield c
    cluster.close()


def test_cohort_on_a_local_cluster(cohort, reference, client, tmp_path) -> None:
    chunks = []
    summary = run_cohort(
        [cohort], tmp_path, method=METHOD, client=client,
        progress=CohortProgress(on_chunks=lambda d, t: chunks.append((d, t))), **OPTIONS,
    )  # fmt: skip
    assert (summary.done, summary.failed) == (3, 1)
    assert chunks[-1] == (18, 18)
    manifest = read_manifest(tmp_path).set_index("slide_id")
    assert manifest.loc["broken", "status"] == "failed"
    assert (
        "cannot read" in manifest.loc["broken", "error"]
        or "truncated" in manifest.loc["broken", "error"]
    )
    assert "\n" not in manifest.loc["broken", "error"]
    assert (manifest.drop("broken")["status"] == "done").all()
    assert manifest.loc["s0", "n_points"] == len(reference["s0"])
    assert_outputs_match(tmp_path, reference)
    assert not (tmp_path / "broken.parquet").exists()
    # The whole cohort reads as one table, saying which slide it lacks and why.
    with pytest.warns(PartialCohortWarning, match=r"broken \(failed: cannot read"):
        merged = read_detections(tmp_path)
    assert set(merged["slide_id"].cat.categories) == {"s0", "s1", "s2"}
    assert len(merged) == sum(len(v) for v in reference.values())


def test_a_lost_worker_changes_nothing(cohort, reference, tmp_path) -> None:
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    )
    with distributed.Client(cluster) as client:
        pids = client.run(os.getpid)
        victim = pids[sorted(pids)[0]]
        killed = threading.Event()

        def kill_once(done: int, total: int) -> None:
            # SIGKILL, as the kernel's OOM killer would: no clean shutdown, results lost.
            if done >= 2 and not killed.is_set():
                killed.set()
                os.kill(victim, signal.SIGKILL)

        summary = run_cohort(
            [cohort], tmp_path, method=METHOD, client=client,
            progress=CohortProgress(on_chunks=kill_once), **OPTIONS,
        )  # fmt: skip
        assert killed.is_set()
        client.wait_for_workers(2, timeout=60)
        assert set(client.run(os.getpid).values()) != set(pids.values())  # a worker was replaced
    cluster.close()
    assert (summary.done, summary.failed) == (3, 1)
    assert_outputs_match(tmp_path, reference)


def test_resume_skips_finished_slides_and_retries_failed_ones(cohort, reference, tmp_path) -> None:
    first = tmp_path / "first"
    first.mkdir()
    shutil.copy(cohort / "s0.tif", first)
    shutil.copy(cohort / "broken.tif", first)
    out = tmp_path / "out"
    summary = run_cohort([first], out, method=METHOD, **OPTIONS)
    assert (summary.done, summary.failed) == (1, 1)
    # In this process too, chunk progress counts over the cohort and never goes back.
    chunks: list[tuple[int, int]] = []
    run_cohort(
        [cohort / "s1.tif", cohort / "s2.tif"], tmp_path / "progress", method=METHOD,
        progress=CohortProgress(on_chunks=lambda d, t: chunks.append((d, t))), **OPTIONS,
    )  # fmt: skip
    assert chunks[-1] == (12, 12)
    assert all(b[0] >= a[0] for a, b in itertools.pairwise(chunks))
    stamp = (out / "s0.parquet").stat().st_mtime_ns
    # The broken slide is repaired and another one added; s0 must not be recomputed.
    shutil.copy(cohort / "s1.tif", first / "broken.tif")
    shutil.copy(cohort / "s2.tif", first)
    summary = run_cohort([first], out, method=METHOD, **OPTIONS)
    assert (summary.done, summary.failed, summary.reused) == (3, 0, 1)
    assert (out / "s0.parquet").stat().st_mtime_ns == stamp
    manifest = read_manifest(out).set_index("slide_id")
    assert list(manifest.loc[["s0", "broken", "s2"], "status"]) == ["done"] * 3
    assert manifest.loc["broken", "error"] == ""
    assert len(read_detections(out / "broken.parquet")) == len(reference["s1"])
    # Other parameters make the old outputs unusable: refused, nothing overwritten, and the
    # manifest keeps describing the outputs that are there.
    other = run_cohort([first], out, method=METHOD.replace(threshold=0.3), **OPTIONS)
    assert other.failed == 3 and "--overwrite" in other.results[0].error
    assert (out / "s0.parquet").stat().st_mtime_ns == stamp
    manifest = read_manifest(out).set_index("slide_id")
    assert list(manifest.loc[["s0", "broken", "s2"], "status"]) == ["done"] * 3
    assert manifest.loc["s0", "n_points"] == len(reference["s0"])


def test_resume_after_an_interrupt_on_a_cluster(cohort, reference, client, tmp_path) -> None:
    """Ctrl-C after the first slide, then the same command: only the rest is computed."""
    finished: list[str] = []

    def interrupt(result, done: int, total: int) -> None:
        finished.append(result.slide_id)
        if result.status == "done":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_cohort(
            [cohort], tmp_path, method=METHOD, client=client,
            progress=CohortProgress(on_slide=interrupt), **OPTIONS,
        )  # fmt: skip
    first = next(s for s in finished if s != "broken")
    stamp = (tmp_path / f"{first}.parquet").stat().st_mtime_ns
    # The manifest written on the way out names the finished slide.
    assert read_manifest(tmp_path).set_index("slide_id").loc[first, "status"] == "done"
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary file left behind
    summary = run_cohort([cohort], tmp_path, method=METHOD, client=client, **OPTIONS)
    assert (summary.done, summary.failed, summary.reused) == (3, 1, 1)
    assert (tmp_path / f"{first}.parquet").stat().st_mtime_ns == stamp
    assert_outputs_match(tmp_path, reference)


def test_rerun_checks_what_made_the_outputs(cohort, reference, tmp_path) -> None:
    """Outputs are reused only for the same slide content and settings; gaps are filled."""
    out = tmp_path / "out"
    formats = ("parquet", "geojson")
    run_cohort([cohort / "s0.tif"], out, method=METHOD, formats=formats, **OPTIONS)
    stamp = (out / "s0.parquet").stat().st_mtime_ns
    # A deleted GeoJSON is written again from the Parquet file; nothing is recomputed.
    (out / "s0.geojson").unlink()
    again = run_cohort([cohort / "s0.tif"], out, method=METHOD, formats=formats, **OPTIONS)
    assert (again.done, again.reused) == (1, 1)
    assert again.results[0].n_points == len(reference["s0"])
    assert len(read_detections(out / "s0.geojson")) == len(reference["s0"])
    assert (out / "s0.parquet").stat().st_mtime_ns == stamp
    # The same file moved elsewhere is the same slide.
    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.copy(cohort / "s0.tif", moved / "s0.tif")
    assert run_cohort([moved], out, method=METHOD, **OPTIONS).reused == 1
    # Another slide under the same name, or other settings: refused.
    impostor = tmp_path / "impostor"
    impostor.mkdir()
    shutil.copy(cohort / "s1.tif", impostor / "s0.tif")
    cases = {
        "another slide file": ([impostor], {}),
        "another tissue setting": ([cohort / "s0.tif"], {"tissue": False}),
        "another --mpp": ([cohort / "s0.tif"], {"mpp": 0.25}),
    }
    for words, (paths, changes) in cases.items():
        summary = run_cohort(paths, out, method=METHOD, **{**OPTIONS, **changes})
        assert summary.failed == 1 and words in summary.results[0].error, words
    assert (out / "s0.parquet").stat().st_mtime_ns == stamp
    replaced = run_cohort([impostor], out, method=METHOD, overwrite=True, **OPTIONS)
    assert replaced.done == 1 and replaced.results[0].n_points == len(reference["s1"])


def test_a_failed_write_fails_only_its_slide(cohort, client, tmp_path, monkeypatch) -> None:
    import wsidet.cohort.run

    real = wsidet.cohort.run.write_detections

    def full_disk(frame, out, **kwargs):
        if frame.attrs["wsidet"]["slide"]["slide_id"] == "s1":
            raise OSError(28, "No space left on device")
        return real(frame, out, **kwargs)

    monkeypatch.setattr(wsidet.cohort.run, "write_detections", full_disk)
    for where, runner in {"here": None, "cluster": client}.items():
        out = tmp_path / where
        summary = run_cohort([cohort], out, method=METHOD, client=runner, **OPTIONS)
        status = {r.slide_id: (r.status, r.error) for r in summary.results}
        assert status["s1"] == ("failed", "[Errno 28] No space left on device"), where
        assert status["s0"][0] == status["s2"][0] == "done", where
        assert read_manifest(out).set_index("slide_id").loc["s1", "status"] == "failed"


def test_nothing_left_behind_and_reserved_names(cohort, tmp_path) -> None:
    out = tmp_path / "never"
    summary = run_cohort([tmp_path / "absent.svs"], out, method=METHOD, **OPTIONS)
    assert summary.failed == 1 and "slide not found" in summary.results[0].error
    assert not out.exists()
    named = tmp_path / "named"
    named.mkdir()
    shutil.copy(cohort / "s0.tif", named / "manifest.tif")
    summary = run_cohort([named], out, method=METHOD, **OPTIONS)
    assert "reserved" in summary.results[0].error and not out.exists()
    with pytest.raises(CohortError, match="not a folder"):
        run_cohort([cohort / "s0.tif"], cohort / "s0.tif", method=METHOD, **OPTIONS)
    # The same file under two spellings is one slide.
    assert find_slides([cohort / "s0.tif", cohort / ".." / cohort.name / "s0.tif"]) == [
        cohort / "s0.tif"
    ]


def test_read_detections_follows_the_manifest(cohort, reference, tmp_path) -> None:
    run_cohort([cohort / "s0.tif", cohort / "s1.tif"], tmp_path, method=METHOD, **OPTIONS)
    # A stray file the manifest does not list as done is not part of the cohort.
    shutil.copy(tmp_path / "s0.parquet", tmp_path / "stray.parquet")
    with pytest.warns(PartialCohortWarning, match=r"stray \(not listed as done"):
        merged = read_detections(tmp_path)
    assert set(merged["slide_id"]) == {"s0", "s1"}
    assert len(merged) == len(reference["s0"]) + len(reference["s1"])
    (tmp_path / "s1.parquet").unlink()
    with pytest.raises(FileNotFoundError, match="lists 's1' as done"):
        read_detections(tmp_path)


def test_detection_tasks_run_only_on_gpu_workers(cohort, reference, tmp_path) -> None:
    """GPU routing without a GPU: a worker advertising GPU=1 and one without."""
    from distributed import Nanny, Scheduler, SpecCluster, get_task_stream

    cluster = SpecCluster(
        scheduler={"cls": Scheduler, "options": {"dashboard_address": ":0"}},
        workers={
            "gpu": {"cls": Nanny, "options": {"nthreads": 1, "resources": {"GPU": 1}}},
            "cpu": {"cls": Nanny, "options": {"nthreads": 1}},
        },
    )
    with distributed.Client(cluster) as client:
        info = client.scheduler_info()["workers"]
        gpu_worker = next(a for a, w in info.items() if w.get("resources", {}).get("GPU"))
        with get_task_stream(client) as stream:
            summary = run_cohort(
                [cohort / "s0.tif", cohort / "s1.tif"], tmp_path, method=METHOD,
                client=client, gpu_resource="GPU", **OPTIONS,
            )  # fmt: skip
        detections = [t for t in stream.data if "wsidet-detect-" in str(t["key"])]
    cluster.close()
    assert summary.done == 2 and len(detections) == 12
    assert {t["worker"] for t in detections} == {gpu_worker}
    assert_outputs_match(tmp_path, {k: reference[k] for k in ("s0", "s1")})


def test_gpu_resource_no_worker_has_is_refused(cohort, client, tmp_path) -> None:
    with pytest.raises(CohortError, match="no worker of the cluster offers the resource 'GPU'"):
        run_cohort(
            [cohort / "s0.tif"], tmp_path, method=METHOD, client=client, gpu_resource="GPU",
            **OPTIONS,
        )  # fmt: skip


def test_one_worker_per_gpu_without_dask_cuda(monkeypatch) -> None:
    """Each GPU worker sees only its own device and offers GPU=1 (checked without GPUs), and
    start_client tells GPU tasks to ask for that resource."""
    import sys

    from wsidet.cohort.cluster import ClusterError, close_client, gpu_cluster, start_client

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    monkeypatch.setitem(sys.modules, "dask_cuda", None)  # not installed, wherever this runs
    with pytest.raises(ClusterError, match="3 GPUs asked for, but 2 are visible"):
        gpu_cluster(3, 1)
    client, gpu = start_client("local", gpus=2, threads_per_worker=1, dashboard_address=":0")
    try:
        seen = client.run(lambda: os.environ["CUDA_VISIBLE_DEVICES"])
        resources = [w["resources"] for w in client.scheduler_info()["workers"].values()]
    finally:
        close_client(client)
    assert gpu == "GPU"
    assert sorted(seen.values()) == ["3", "5"]
    assert resources == [{"GPU": 1}, {"GPU": 1}]


def test_slides_are_found_and_nothing_found_is_refused(tmp_path) -> None:
    """Slides sharing a name are both found (told apart by their ids: see test_discover);
    folders with no slide in them, or no paths at all, are refused."""
    for folder in ("a", "b", "empty", "other"):
        (tmp_path / folder).mkdir()
    (tmp_path / "a" / "x.tif").write_bytes(b"")
    (tmp_path / "b" / "x.svs").write_bytes(b"")
    (tmp_path / "other" / "notes.txt").write_text("not a slide")
    assert find_slides([tmp_path / "a", tmp_path / "b"]) == [
        tmp_path / "a" / "x.tif",
        tmp_path / "b" / "x.svs",
    ]
    # A missing file is kept: it fails later, as that slide's error.
    assert find_slides([tmp_path / "absent.svs"]) == [tmp_path / "absent.svs"]
    for paths in ([tmp_path / "empty", tmp_path / "other"], []):
        with pytest.raises(CohortError, match="no slides"):
            find_slides(paths)


def test_cli_runs_a_folder_on_a_local_cluster(cohort, reference, tmp_path, capfd) -> None:
    """capfd, not capsys: worker processes write to the file descriptors, not sys.stderr."""
    from wsidet.cli.main import main

    code = main(
        [
            *("run", str(cohort), "--out", str(tmp_path), "--method", "log"),
            *("--workers", "2", "--chunk", "256", "-q"),
        ]
    )
    out, err = capfd.readouterr()
    assert code == 1  # one slide failed
    assert "4 slides: 3 done (0 already), 1 failed" in out
    # The dashboard's address is a log line (stderr); stdout is for results.
    assert "dask dashboard:" not in out
    logs = err.splitlines()
    assert sum(x.startswith("dask dashboard: http") for x in logs) == 1
    # The synthetic discs are larger than H&E nuclei: each good slide is warned about its
    # pixel size, once, by the CLI (not again by its worker); the failure is one line.
    warnings = [x for x in logs if x.startswith("wsidet: warning: ")]
    errors = [x for x in logs if not x.startswith(("wsidet: warning: ", "dask dashboard: "))]
    assert len(errors) == 1 and "broken.tif" in errors[0]
    assert 1 <= len(warnings) <= 3
    assert_outputs_match(tmp_path, reference)
    manifest = pd.read_parquet(tmp_path / "manifest.parquet")
    assert sorted(manifest["slide_id"]) == ["broken", "s0", "s1", "s2"]


def test_local_workers_start_with_the_right_environment() -> None:
    """Threads and heap settings reach worker processes (see wsidet.cohort.cluster)."""
    from wsidet.cohort.cluster import close_client, default_layout, start_client

    # Not inherited from this process: the worker plugin must set it.
    os.environ.pop("TIFFSLIDE_NUM_DECODE_THREADS", None)
    client, gpu = start_client("local", workers=1, threads_per_worker=2)
    try:
        workers = client.scheduler_info()["workers"]
        env = next(iter(client.run(lambda: dict(os.environ)).values()))
        threads = next(iter(client.run(lambda: __import__("torch").get_num_threads()).values()))
    finally:
        close_client(client)
    # The layout asked for, on this machine only, with no GPU resource for tasks to ask for.
    assert [w["nthreads"] for w in workers.values()] == [2]
    assert all(address.startswith("tcp://127.0.0.1:") for address in workers)
    assert gpu is None and all(not w.get("resources") for w in workers.values())
    assert env["OMP_NUM_THREADS"] == "2" and threads == 2
    assert env["MALLOC_MMAP_THRESHOLD_"] == env["MALLOC_TRIM_THRESHOLD_"] == str(2**28)
    assert env["TIFFSLIDE_NUM_DECODE_THREADS"] == "1"
    assert default_layout(16, None, None) == (4, 4)
    assert default_layout(2, None, None) == (1, 2)
    assert default_layout(8, 2, None) == (2, 4)
