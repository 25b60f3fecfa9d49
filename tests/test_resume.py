"""Run signatures, what existing outputs mean for a rerun, and a tolerant manifest."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from wsidet.cohort.resume import (
    differences,
    output_state,
    run_signature,
    slide_fingerprint,
    stored_signature,
)
from wsidet.methods import get_method
from wsidet.output.detections import detections_frame, output_paths, write_detections
from wsidet.output.manifest import MANIFEST, ManifestWriter, SlideResult, load_rows

LOG = get_method("log")


def _outputs(folder: Path, signature: dict, formats=("parquet", "geojson")) -> dict[str, Path]:
    frame = detections_frame(
        np.array([[10.0, 20.0], [30.5, 40.25]]),
        np.array([0.5, 0.7]),
        method="log",
        slide_id="s",
        metadata={"slide": {"slide_id": "s"}, "signature": signature, "chunk_totals": [0] * 9999},
    )
    return write_detections(frame, folder, formats=formats, overwrite=True)


def test_fingerprint_follows_content_not_name(tmp_path: Path) -> None:
    a = tmp_path / "a.tif"
    a.write_bytes(bytes(range(256)) * 1000)
    moved = tmp_path / "elsewhere" / "a.tif"
    moved.parent.mkdir()
    shutil.copy(a, moved)
    assert slide_fingerprint(a) == slide_fingerprint(moved)
    other = tmp_path / "b.tif"
    other.write_bytes(bytes(range(256)) * 999 + bytes(range(255, -1, -1)))  # same size
    assert slide_fingerprint(other) != slide_fingerprint(a)


def test_signature_is_stored_in_every_format(tmp_path: Path) -> None:
    sig = run_signature("1:abc", LOG, None, mpp=None, tissue=True)
    paths = _outputs(tmp_path, sig, formats=("parquet", "geojson", "geojson.gz"))
    # The GeoJSON's metadata is read from its head even when it is large.
    for path in paths.values():
        assert stored_signature(path) == json.loads(json.dumps(sig))
    (tmp_path / "plain.parquet").write_bytes(b"not parquet")
    assert stored_signature(tmp_path / "plain.parquet") is None


def test_output_state_reuses_completes_or_refuses(tmp_path: Path) -> None:
    sig = run_signature("1:abc", LOG, None, mpp=None, tissue=True)
    targets = output_paths(tmp_path, "s", ["parquet", "geojson"])
    assert output_state(targets, sig, overwrite=False).action == "compute"
    _outputs(tmp_path, sig)
    assert output_state(targets, sig, overwrite=False).action == "reuse"
    targets["geojson"].unlink()
    state = output_state(targets, sig, overwrite=False)
    assert (state.action, state.missing) == ("reuse", ("geojson",))
    # A GeoJSON an interrupted run of the same signature left (Parquet comes last): compute.
    targets["parquet"].unlink()
    _outputs(tmp_path, sig, formats=("geojson",))
    assert output_state(targets, sig, overwrite=False).action == "compute"
    changes = {
        "another slide file": run_signature("2:def", LOG, None, mpp=None, tissue=True),
        "other parameters": run_signature(
            "1:abc", LOG.replace(threshold=0.5), None, mpp=None, tissue=True
        ),
        "another --mpp": run_signature("1:abc", LOG, None, mpp=0.25, tissue=True),
        "another tissue setting": run_signature("1:abc", LOG, None, mpp=None, tissue=False),
        "other weights": run_signature("1:abc", LOG, "sha256:0", mpp=None, tissue=True),
        "another stain normalisation": run_signature(
            "1:abc", LOG, None, mpp=None, tissue=True, stain=True
        ),
    }  # fmt: skip
    _outputs(tmp_path, sig)
    for words, other in changes.items():
        state = output_state(targets, other, overwrite=False)
        assert (
            state.action == "conflict" and words in state.reason and "--overwrite" in state.reason
        )
        assert output_state(targets, other, overwrite=True).action == "compute"
    assert differences(None, sig).endswith("(no signature)")


def test_manifest_reads_old_and_foreign_rows(tmp_path: Path) -> None:
    pd.DataFrame(
        {
            "slide": ["a.svs", None, "c.svs"],  # an older layout: 'slide', no 'path'
            "slide_id": ["a", None, "c"],
            "status": ["done", "done", None],
            "n_points": [12.0, 3.0, float("nan")],
            "surprise": [1, 2, 3],
        }
    ).to_parquet(tmp_path / MANIFEST)
    rows = load_rows(tmp_path)
    assert sorted(rows) == ["a", "c"]
    assert (rows["a"].path, rows["a"].n_points, rows["a"].status) == ("a.svs", 12, "done")
    assert (rows["c"].n_points, rows["c"].status) == (0, "failed")
    (tmp_path / MANIFEST).write_bytes(b"garbage")
    assert load_rows(tmp_path) == {}


def test_manifest_is_written_only_with_a_done_slide(tmp_path: Path) -> None:
    out = tmp_path / "out"
    writer = ManifestWriter(out, interval=0.0)
    writer.put(SlideResult("x.svs", "x", "failed", error="bad"))
    writer.flush()
    assert not out.exists()
    writer.put(SlideResult("y.svs", "y", "done", n_points=4))
    assert set(load_rows(out)) == {"x", "y"}
    slow = ManifestWriter(out, load_rows(out), interval=3600.0)
    slow.put(SlideResult("z.svs", "z", "done"))  # first put writes; later ones wait
    slow.put(SlideResult("w.svs", "w", "done"))
    assert "w" not in load_rows(out)
    slow.flush()
    assert set(load_rows(out)) == {"x", "y", "z", "w"}


def test_derived_outputs_follow_their_parquet(tmp_path: Path) -> None:
    """A density grid carries no signature: it never blocks a reuse and is redrawn if missing."""
    sig = run_signature("1:abc", LOG, None, mpp=None, tissue=True)
    targets = output_paths(tmp_path, "s", ["parquet", "density.geojson"])
    targets["density.geojson"].write_text("{}")  # from an earlier run, unsigned
    assert output_state(targets, sig, overwrite=False).action == "compute"
    _outputs(tmp_path, sig, formats=("parquet",))
    assert output_state(targets, sig, overwrite=False).action == "reuse"
    targets["density.geojson"].unlink()
    state = output_state(targets, sig, overwrite=False)
    assert (state.action, state.missing) == ("reuse", ("density.geojson",))
    other = run_signature("2:def", LOG, None, mpp=None, tissue=True)
    assert output_state(targets, other, overwrite=False).action == "conflict"  # by its Parquet
