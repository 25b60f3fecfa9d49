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
from wsidet.cohort import CohortError, CohortProgress, find_slides, read_manifest, run_cohort
from wsidet.engine import QUANTUM
from wsidet.io import read_detections
from wsidet.methods import get_method
from wsidet.metrics import match_points
from wsidet.pipeline import detect_slide

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
    assert assert_outputs_match(tmp_path, reference) is None
    assert not (tmp_path / "broken.parquet").exists()
    # The whole cohort reads as one table.
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
    # Other parameters make the old outputs unusable: refused, nothing overwritten.
    other = run_cohort([first], out, method=METHOD.replace(threshold=0.3), **OPTIONS)
    assert other.failed == 3 and "--overwrite" in other.results[0].error
    assert (out / "s0.parquet").stat().st_mtime_ns == stamp


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


def test_slide_ids_must_be_unique(tmp_path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "x.tif").write_bytes(b"")
    (tmp_path / "b" / "x.svs").write_bytes(b"")
    with pytest.raises(CohortError, match="two slides would write 'x'"):
        find_slides([tmp_path / "a", tmp_path / "b"])
    with pytest.raises(CohortError, match="no slides"):
        find_slides([tmp_path / "a" / "nothing-here"] * 0)


def test_cli_runs_a_folder_on_a_local_cluster(cohort, reference, tmp_path, capsys) -> None:
    from wsidet.cli.main import main

    code = main(
        [
            *("run", str(cohort), "--out", str(tmp_path), "--method", "log"),
            *("--workers", "2", "--chunk", "256", "-q"),
        ]
    )
    out, err = capsys.readouterr()
    assert code == 1  # one slide failed
    assert "dask dashboard:" in out and "4 slides: 3 done (0 already), 1 failed" in out
    assert err.count("\n") == 1 and "broken.tif" in err
    assert_outputs_match(tmp_path, reference)
    manifest = pd.read_parquet(tmp_path / "manifest.parquet")
    assert sorted(manifest["slide_id"]) == ["broken", "s0", "s1", "s2"]


def test_local_workers_start_with_the_right_environment() -> None:
    """Threads and heap settings reach worker processes (see wsidet.cluster)."""
    from wsidet.cluster import close_client, default_layout, start_client

    client, gpu = start_client("local", workers=1, threads_per_worker=2)
    try:
        env = next(iter(client.run(lambda: dict(os.environ)).values()))
        threads = next(iter(client.run(lambda: __import__("torch").get_num_threads()).values()))
    finally:
        close_client(client)
    assert gpu is None
    assert env["OMP_NUM_THREADS"] == "2" and threads == 2
    assert env["MALLOC_MMAP_THRESHOLD_"] == env["MALLOC_TRIM_THRESHOLD_"] == str(2**28)
    assert env["TIFFSLIDE_NUM_DECODE_THREADS"] == "1"
    assert default_layout(16, None, None) == (4, 4)
    assert default_layout(2, None, None) == (1, 2)
    assert default_layout(8, 2, None) == (2, 4)
