"""Getting a dask cluster to run a cohort on: a local one sized to the machine, or an existing one.

``start_client("local")`` starts worker processes on this machine: with GPUs, one worker per
GPU, each seeing only its own device (``CUDA_VISIBLE_DEVICES``) and offering the worker
resource ``GPU=1`` that chunk tasks ask for (dask-cuda's ``LocalCUDACluster`` when installed,
which also pins each worker to the CPU cores near its GPU; otherwise one nanny per GPU);
without, a few workers sharing the cores. ``start_client("tcp://host:8786")`` connects to a
running scheduler. Either way a worker plugin sets JPEG decoding single-threaded per dask thread
(more would oversubscribe the cores).

Local worker processes get two environment settings before they start (dask's nanny applies
them at every spawn, restarts included), both measured to matter for inference:

* ``OMP_NUM_THREADS`` (and MKL's, OpenBLAS's) = the worker's threads. Dask sets 1 by default,
  and torch's intra-op thread count cannot be raised afterwards from another thread.
* glibc's ``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_`` = 256 MiB. Dask sets a 64 KiB
  trim threshold; any explicit malloc setting turns off glibc's adaptive mmap threshold, so
  every tensor over 128 KiB is mapped and unmapped afresh and its pages fault in on each use.
  On the LoG detector that made a worker 2-4× slower than the same code in the main process.
  With these settings worker and main process run at the same speed; the cost is that a worker
  keeps up to 256 MiB of freed memory for reuse.

Remote clusters keep their own settings: start their workers with the same environment.

A local cluster listens on the loopback interface only (scheduler, workers, nannies and the
dashboard): an unauthenticated dask scheduler runs any Python it is sent, so it must not be
reachable from the network unless the user asks (``dashboard_address`` for the dashboard;
a cluster of several machines is one the user starts and names with its address).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

from distributed import WorkerPlugin

from wsidet.cohort.defaults import DEFAULT_DASHBOARD, GPU_RESOURCE, LOOPBACK
from wsidet.errors import WsidetError

logger = logging.getLogger(__name__)


class ClusterError(WsidetError, RuntimeError):
    """A cluster cannot be started or reached."""


def available_cores() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_layout(cores: int, workers: int | None, threads: int | None) -> tuple[int, int]:
    """(workers, threads per worker) for CPU work: about four cores per worker process.

    One process per core would load the model once per core; one process for all cores
    serialises reading behind inference. Four threads per worker keeps both busy.
    """
    if workers is None:
        workers = max(1, cores // 4) if threads is None else max(1, cores // threads)
    if threads is None:
        threads = max(1, cores // workers)
    if workers < 1 or threads < 1:
        raise ClusterError(f"workers and threads must be >= 1, got {workers}, {threads}")
    return workers, threads


#: glibc malloc settings for worker processes (see the module docstring).
HEAP_ENV = {"MALLOC_TRIM_THRESHOLD_": str(2**28), "MALLOC_MMAP_THRESHOLD_": str(2**28)}


def worker_environment(threads: int) -> dict[str, str]:
    """Environment a local worker process with ``threads`` threads is started with."""
    n = str(threads)
    return {"OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": n, **HEAP_ENV}


@contextlib.contextmanager
def spawning(threads: int) -> Iterator[None]:
    """Worker processes started inside get :func:`worker_environment` before they start.

    distributed's nanny copies its pre-spawn variables into this (the driver's) environment
    and, for the next cluster, prefers the driver's variables to its configuration: the
    first cluster's values would win for every later one. So the variables are set here too
    while workers spawn, and restored afterwards.
    """
    import dask

    wanted = worker_environment(threads)
    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}) or {})
    environ.update(wanted)
    saved = {k: os.environ.get(k) for k in wanted}
    os.environ.update(wanted)
    try:
        with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
            yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class WorkerSetup(WorkerPlugin):
    """Worker plugin: per-process settings applied once when a worker starts."""

    name = "wsidet-worker-setup"

    def setup(self, worker: Any) -> None:
        """Called by dask on each worker (also on ones that join later)."""
        import warnings

        from wsidet.errors import MppWarning
        from wsidet.inference.heap import configure_heap

        os.environ.setdefault("TIFFSLIDE_NUM_DECODE_THREADS", "1")
        configure_heap()
        # A slide's warnings reach the client in its results (outputs' metadata, manifest,
        # the CLI's line per slide); printed on a worker's stderr they would say it twice.
        warnings.filterwarnings("ignore", category=MppWarning)

    def teardown(self, worker: Any) -> None:
        """Nothing to release: detectors go with the process."""


def start_client(
    address: str = "local",
    *,
    workers: int | None = None,
    threads_per_worker: int | None = None,
    gpus: int = 0,
    processes: bool = True,
    dashboard_address: str = DEFAULT_DASHBOARD,
) -> tuple[Any, str | None]:
    """A ``distributed.Client`` and the resource name GPU tasks should ask for.

    Parameters
    ----------
    address : str
        ``"local"`` for a cluster on this machine, or a scheduler address (``tcp://…``).
    workers, threads_per_worker : int, optional
        Local cluster layout (default: sized to the machine; one worker per GPU with GPUs).
    gpus : int
        GPUs to use on a local cluster.
    processes : bool
        Workers as processes (the default, so a crash or a lost worker does not take the
        driver with it) or threads.
    dashboard_address : str
        Where a local cluster's dashboard listens (default: this machine only); e.g.
        ``"0.0.0.0:8787"`` to reach it from elsewhere.

    Returns
    -------
    client : distributed.Client
    gpu_resource : str or None
        ``"GPU"`` when the workers advertise GPUs, else None.

    Raises
    ------
    ClusterError
        The scheduler cannot be reached, or more GPUs are asked for than are visible.
    """
    from distributed import Client, LocalCluster

    cores = available_cores()
    if gpus < 0:
        raise ClusterError(f"gpus must be >= 0, got {gpus}")
    if address == "local":
        if gpus > 0:
            threads = threads_per_worker or max(1, cores // gpus)
            try:
                from dask_cuda import LocalCUDACluster  # type: ignore[import-not-found]
            except ImportError:
                with spawning(threads):
                    cluster: Any = gpu_cluster(gpus, threads, dashboard_address=dashboard_address)
            else:
                with spawning(threads):
                    cluster = LocalCUDACluster(
                        n_workers=gpus,
                        threads_per_worker=threads,
                        resources={GPU_RESOURCE: 1},
                        host=LOOPBACK,
                        dashboard_address=dashboard_address,
                    )
        else:
            n_workers, threads = default_layout(cores, workers, threads_per_worker)
            with spawning(threads):
                cluster = LocalCluster(
                    n_workers=n_workers,
                    threads_per_worker=threads,
                    processes=processes,
                    host=LOOPBACK,
                    dashboard_address=dashboard_address,
                )
        client = Client(cluster)
    else:
        try:
            client = Client(address, timeout="20s")
        except OSError as exc:
            raise ClusterError(f"cannot reach the dask scheduler at {address!r}: {exc}") from exc
    client.register_plugin(WorkerSetup())
    info = client.scheduler_info().get("workers", {})
    has_gpu = any(GPU_RESOURCE in w.get("resources", {}) for w in info.values())
    return client, GPU_RESOURCE if has_gpu else None


def visible_gpus() -> list[str]:
    """GPU ids this process may use (``CUDA_VISIBLE_DEVICES``, else 0 .. count - 1)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def gpu_cluster(gpus: int, threads: int, *, dashboard_address: str = DEFAULT_DASHBOARD) -> Any:
    """A local cluster of one worker process per GPU, without dask-cuda.

    Each worker's nanny starts it with ``CUDA_VISIBLE_DEVICES`` set to its one GPU (so
    ``cuda`` in that worker is its own device) and offers ``GPU=1``. Scheduler, nannies and
    workers listen on the loopback interface only.

    Raises
    ------
    ClusterError
        More GPUs asked for than this process can see.
    """
    from distributed import Nanny, Scheduler, SpecCluster

    ids = visible_gpus()
    if gpus > len(ids):
        raise ClusterError(f"{gpus} GPUs asked for, but {len(ids)} are visible ({ids})")
    workers = {
        f"gpu-{device}": {
            "cls": Nanny,
            "options": {
                "nthreads": threads,
                "resources": {GPU_RESOURCE: 1},
                "env": {"CUDA_VISIBLE_DEVICES": device},
                "host": LOOPBACK,
            },
        }
        for device in ids[:gpus]
    }
    return SpecCluster(
        scheduler={
            "cls": Scheduler,
            "options": {"host": LOOPBACK, "dashboard_address": dashboard_address},
        },
        workers=workers,
    )


def close_client(client: Any) -> None:
    """Close a client and, for a local cluster, the cluster it started."""
    cluster = getattr(client, "cluster", None)
    client.close()
    if cluster is not None:
        cluster.close()
