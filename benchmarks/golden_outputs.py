"""Points written by the command line, saved once and compared after a refactor.

A change that should not alter behaviour (issue 17's layout sweep) must give the same points,
scores and metadata on the same inputs. ``--save`` runs ``wsidet run`` on the sample slide
(default method and ``log``), on a synthetic pyramidal slide with every registered method
(trainable ones with seeded random weights, written once into the golden folder so that the
check does not depend on how a network is built), and on a two-slide cohort in one process;
``--check`` runs the same commands into a scratch folder and compares them to the saved ones:
points and scores bit for bit, metadata except timings and versions.

    python benchmarks/golden_outputs.py --save bench-out/golden     # before the change
    python benchmarks/golden_outputs.py --check bench-out/golden    # after it

The runs use one thread (``OMP_NUM_THREADS=1``) whatever the caller's setting: oneDNN picks its
convolution kernels by thread count, and random weights' flat maps turn the last-bit
differences into different scores (measured: two threads against one changed VOCA's scores).

Only the command line and ``wsidet.read_detections`` are used at check time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "examples" / "data" / "CMU-1-Small-Region.svs"
#: Metadata that legitimately changes between runs.
RANDOM_WEIGHT_PARAMS = {
    "fcrn_a": "threshold=0",
    "fcrn_b": "threshold=0",
    "mapde": "threshold=0",
    "micronet": "xi=0",
    "proximity": "threshold=0",
    "voca": "threshold=0",
}
VOLATILE = {"seconds", "created", "wsidet_version", "git", "mpx_per_s", "started", "finished"}


def make_inputs(folder: Path) -> None:
    """The synthetic slides and the seeded random weights (only at ``--save``)."""
    import torch
    from safetensors.torch import save_file

    sys.path.insert(0, str(ROOT))
    from tests.conftest import make_blob_slide
    from wsidet.methods import get_method, list_methods

    make_blob_slide(folder / "blobs.tif", shape=(1400, 1800), mpp=0.25, physical_mpp=0.25, seed=7)
    make_blob_slide(folder / "blobs2.tif", shape=(900, 1100), mpp=0.5, physical_mpp=0.5, seed=8)
    for name in list_methods():
        method = get_method(name)
        if method.trainable:
            torch.manual_seed(0)
            save_file(
                method.build_network().state_dict(),
                str(folder / f"{name}.safetensors"),
                metadata={"wsidet.method": name},
            )


def jobs(inputs: Path) -> dict[str, list[str]]:
    """Name -> ``wsidet run`` arguments (without ``--out``)."""
    runs = {
        "sample-default": [str(SAMPLE)],
        "sample-log": [str(SAMPLE), "--method", "log"],
        "cohort": [
            str(inputs / "blobs.tif"),
            str(inputs / "blobs2.tif"),
            "--cluster",
            "none",
            "--method",
            "log",
        ],
    }
    for name in ("fcrn_a", "fcrn_b", "log", "mapde", "micronet", "proximity", "voca"):
        weights = inputs / f"{name}.safetensors"
        extra = ["--weights", str(weights)] if weights.is_file() else ["--method", name]
        # Random weights give flat maps: a zero threshold keeps points to compare.
        param = ["--param", RANDOM_WEIGHT_PARAMS[name]] if name in RANDOM_WEIGHT_PARAMS else []
        runs[f"blobs-{name}"] = [str(inputs / "blobs.tif"), *extra, *param, "--chunk", "512"]
    return runs


def run_all(inputs: Path, out: Path) -> dict[str, Any]:
    """Run every job into ``out/NAME/``; the points and metadata of each output file."""
    wsidet = Path(sys.executable).with_name("wsidet")
    results: dict[str, Any] = {}
    env = {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    for name, args in jobs(inputs).items():
        folder = out / name
        command = [str(wsidet), "run", *args, "--out", str(folder), "-q", "--device", "cpu"]
        done = subprocess.run(command, capture_output=True, text=True, env=env)
        if done.returncode:
            raise SystemExit(f"{name}: {' '.join(command)}\n{done.stderr}")
        # The manifest is a plain table, not detections; its rows hold timings.
        results[name] = {
            p.name: read(p)
            for p in sorted(folder.glob("*.parquet"))
            if p.name != "manifest.parquet" and not p.name.endswith(".density.parquet")
        }
        print(
            f"{name}: " + ", ".join(f"{k} {len(v['x'])} points" for k, v in results[name].items()),
            flush=True,
        )
    return results


def read(path: Path) -> dict[str, Any]:
    from wsidet import read_detections

    frame = read_detections(path)
    meta = dict(frame.attrs.get("wsidet", {}))
    return {
        "x": frame.geometry.x.to_numpy(),
        "y": frame.geometry.y.to_numpy(),
        "score": frame["score"].to_numpy(),
        "columns": list(frame.columns),
        "meta": stable(meta),
    }


def stable(value: Any) -> Any:
    """``value`` without the fields that change from run to run, at any depth."""
    if isinstance(value, dict):
        return {k: stable(v) for k, v in value.items() if k not in VOLATILE}
    return value


def save(results: dict[str, Any], folder: Path) -> None:
    arrays = {}
    meta = {}
    for job, files in results.items():
        for file, r in files.items():
            for key in ("x", "y", "score"):
                arrays[f"{job}/{file}/{key}"] = r[key]
            meta[f"{job}/{file}"] = {"columns": r["columns"], "meta": r["meta"]}
    np.savez(folder / "points.npz", **arrays)
    (folder / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True, default=str))


def compare(results: dict[str, Any], folder: Path) -> list[str]:
    saved = np.load(folder / "points.npz")
    meta = json.loads((folder / "meta.json").read_text())
    problems = []
    seen = set()
    for job, files in results.items():
        for file, r in files.items():
            key = f"{job}/{file}"
            seen.add(key)
            if key not in meta:
                problems.append(f"{key}: new output")
                continue
            for col in ("x", "y", "score"):
                if not np.array_equal(saved[f"{key}/{col}"], r[col]):
                    problems.append(f"{key}: {col} differs")
            now = json.loads(
                json.dumps(
                    {"columns": r["columns"], "meta": r["meta"]}, sort_keys=True, default=str
                )
            )
            if now != stable(meta[key]):
                problems.append(f"{key}: metadata differs: {diff(stable(meta[key]), now)}")
    problems += [f"{key}: output missing" for key in meta if key not in seen]
    return problems


def diff(before: Any, after: Any, path: str = "") -> str:
    if isinstance(before, dict) and isinstance(after, dict):
        for k in sorted(set(before) | set(after)):
            if before.get(k) != after.get(k):
                return diff(before.get(k), after.get(k), f"{path}.{k}")
    return f"{path}: {before!r} -> {after!r}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--save", type=Path, metavar="DIR")
    mode.add_argument("--check", type=Path, metavar="DIR")
    args = parser.parse_args()
    if args.save:
        folder = args.save
        shutil.rmtree(folder, ignore_errors=True)
        (folder / "inputs").mkdir(parents=True)
        make_inputs(folder / "inputs")
        save(run_all(folder / "inputs", folder / "outputs"), folder)
        print(f"saved to {folder}")
        return
    with tempfile.TemporaryDirectory() as scratch:
        problems = compare(run_all(args.check / "inputs", Path(scratch)), args.check)
    print("\n".join(problems) if problems else "identical: every point, score and metadata field")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
