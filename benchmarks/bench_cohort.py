"""Cohort throughput on a local dask cluster with different numbers of workers, as JSON.

Builds ``--slides`` synthetic slides of real tissue (see make_synthetic_slide.py), then runs
``run_cohort`` over them ``--repeat`` times per layout, each layout on a fresh ``LocalCluster``
sharing the same cores (workers × threads = cores; ``0`` workers: in this process, no
cluster), and reports the median Mpx/s, its ratio to the first layout, and each worker
process's peak resident memory.

    python benchmarks/bench_cohort.py --slides 8 --size 4096 --workers 0,1,2 [--method log]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def peak_rss_mb() -> float:
    """Peak resident memory of the calling process, in MB.

    ``VmHWM`` where Linux has it: ``ru_maxrss`` survives fork and exec, so a worker spawned by a
    process that had grown to 1.3 GB reports at least 1.3 GB however little it used itself.
    """
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    sys.path.insert(0, str(HERE))
    from make_synthetic_slide import build

    from wsidet.cohort.cluster import available_cores, close_client, start_client
    from wsidet.cohort.run import run_cohort
    from wsidet.slide.pyramid import write_pyramid
    from wsidet.weights import resolve_method

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slides", type=int, default=8)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--method", default="log")
    parser.add_argument("--weights")
    parser.add_argument("--chunk", type=int, default=2048)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="build the slides here (and reuse them)")
    args = parser.parse_args()

    method, weights = resolve_method(args.method, args.weights)
    cores = available_cores()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp) / "slides"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(args.slides):
            path = folder / f"synthetic-{i}.tif"
            if not path.exists():
                write_pyramid(path, build(args.size, 500, seed=i), mpp=0.5, downsamples=(1, 4, 16))
        runs = []
        for n in map(int, args.workers.split(",")):
            threads = cores if n == 0 else max(1, cores // n)
            # The CLI's own local cluster (worker environment included).
            client = None
            if n > 0:
                client, _ = start_client("local", workers=n, threads_per_worker=threads)
            try:
                times = []
                for k in range(args.repeat):
                    started = time.perf_counter()
                    summary = run_cohort(
                        [folder],
                        Path(tmp) / f"out-{n}-{k}",
                        method=method,
                        weights=weights,
                        client=client,
                        chunk=args.chunk,
                        device=args.device,
                    )
                    times.append(time.perf_counter() - started)
                rss = sorted(client.run(peak_rss_mb).values()) if client else [peak_rss_mb()]
            finally:
                if client is not None:
                    close_client(client)
            seconds = statistics.median(times)
            runs.append(
                {
                    "workers": n,
                    "threads_per_worker": threads,
                    "seconds": [round(t, 2) for t in times],
                    "slides_done": summary.done,
                    "points": summary.points,
                    "mpx": round(summary.processed_mpx, 1),
                    "mpx_per_s": round(summary.processed_mpx / seconds, 2),
                    "peak_rss_mb_per_worker": [round(r) for r in rss],
                }
            )
            print(json.dumps(runs[-1]), flush=True)
    base = runs[0]["mpx_per_s"]
    for run in runs:
        run["ratio"] = round(run["mpx_per_s"] / base, 2) if base else None
    print(
        json.dumps(
            {
                "method": method.name,
                "slides": args.slides,
                "size": args.size,
                "chunk": args.chunk,
                "cores": cores,
                "device": args.device,
                "repeat": args.repeat,
                "date": time.strftime("%Y-%m-%d"),
                "runs": runs,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
