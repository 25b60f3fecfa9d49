"""Whether a slide's outputs in a folder can be reused, must be made, or would be clobbered.

Every output wsidet writes for a cohort carries a *signature* in its metadata: what determines
its points. That is the slide's content (a fingerprint, so moving a slide or its folder does not
invalidate its outputs, and another slide of the same name does), the method, its parameters
and weights, the pixel size override, tissue, stain normalisation, precision and (when given)
the regions. Chunk size,
model tile, batch size and device do not change the points (tiled detection equals a
whole-image pass) and are not part of it.

Parquet is written after every other format, so a Parquet file with the signature of this run
means the slide is done; a missing GeoJSON beside it is written from it. A file with another
signature is never replaced without ``overwrite``. Files drawn from the Parquet file (density
grid, preview, region table) carry no signature and never decide anything.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The resume key is the run's own (RunSpec.signature); re-exported for the resume checks.
from wsidet.inference.spec import run_signature as run_signature
from wsidet.output.files import open_text
from wsidet.output.metadata import read_parquet_metadata

#: Bytes hashed at each end of a slide file for its fingerprint: TIFF headers and directories
#: (dimensions, scanner metadata with dates, tile offsets) sit at the ends.
_FINGERPRINT_BYTES = 1 << 16


def slide_fingerprint(path: str | os.PathLike[str]) -> str:
    """A content fingerprint of a slide file: its size and a hash of its first and last 64 KiB.

    Cheap for gigabyte files, unchanged when the file is copied or moved, and different for
    another scan saved under the same name.

    Raises
    ------
    OSError
        The file cannot be read.
    """
    size = os.path.getsize(path)
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as fh:
        digest.update(fh.read(_FINGERPRINT_BYTES))
        if size > _FINGERPRINT_BYTES:
            fh.seek(max(_FINGERPRINT_BYTES, size - _FINGERPRINT_BYTES))
            digest.update(fh.read(_FINGERPRINT_BYTES))
    return f"{size}:{digest.hexdigest()[:20]}"


#: Signature entries older versions did not record, as they behaved: without stain
#: normalisation, and in the precision "auto" names now (fp16 on CUDA, fp32 on a CPU).
_DEFAULTS = {"stain": False, "precision": "auto"}


def _with_defaults(signature: Mapping[str, Any]) -> dict[str, Any]:
    return {**_DEFAULTS, **signature}


def _normal(signature: Mapping[str, Any]) -> str:
    return json.dumps(signature, sort_keys=True, default=str)


def differences(stored: Mapping[str, Any] | None, wanted: Mapping[str, Any]) -> str:
    """What differs between two signatures, in a few words for an error message."""
    if not stored:
        return "made by another wsidet run (no signature)"
    names = {
        "slide": "another slide file",
        "method": "another method",
        "params": "other parameters",
        "weights_hash": "other weights",
        "mpp": "another --mpp",
        "tissue": "another tissue setting",
        "stain": "another stain normalisation",
        "precision": "another --precision",
    }
    stored = _with_defaults(stored)
    changed = [
        names.get(k, k)
        for k in wanted
        if json.dumps(stored.get(k), sort_keys=True) != json.dumps(wanted[k], sort_keys=True)
    ]
    return "made from " + ", ".join(changed) if changed else "made by another run"


def stored_signature(path: Path) -> dict[str, Any] | None:
    """The signature in an output file's metadata (None if it has none or is unreadable)."""
    try:
        if path.name.endswith(".parquet"):
            meta: Any = read_parquet_metadata(path)[0]
        else:
            meta = _geojson_meta(path)
    except (OSError, ValueError, KeyError, TypeError, EOFError):
        return None
    signature = meta.get("signature") if isinstance(meta, dict) else None
    return signature if isinstance(signature, dict) else None


def _geojson_meta(path: Path, limit: int = 1 << 26) -> Any:
    """The ``"wsidet"`` member of a GeoJSON written by wsidet, read from the file's head only.

    :func:`wsidet.output.detections.write_geojson` writes it before the features, so a
    million-point file is not parsed to find it.
    """
    decoder = json.JSONDecoder()
    with open_text(path) as fh:
        text = ""
        while len(text) < limit:
            block = fh.read(1 << 16)
            text += block
            key = text.find('"wsidet":')
            if key >= 0:
                try:
                    value, _ = decoder.raw_decode(text, key + len('"wsidet":'))
                    return value
                except json.JSONDecodeError:
                    if not block:
                        raise
            elif '"features"' in text or not block:
                return None
    return None


@dataclass(frozen=True)
class OutputState:
    """What to do with a slide's outputs.

    Attributes
    ----------
    action : str
        ``"reuse"`` (done: its Parquet has this run's signature), ``"compute"`` (nothing to
        keep; any existing file may be replaced) or ``"conflict"`` (a file from another run
        is in the way).
    missing : tuple of str
        For ``"reuse"``: formats to write from the Parquet file.
    reason : str
        For ``"conflict"``: which file and what differs.
    """

    action: str
    missing: tuple[str, ...] = ()
    reason: str = ""


def output_state(
    paths: Mapping[str, Path], signature: Mapping[str, Any], *, overwrite: bool
) -> OutputState:
    """Decide what to do with a slide whose outputs would go to ``paths``.

    Parameters
    ----------
    paths : mapping of format to path
        The outputs this run asks for; must include ``"parquet"``.
    signature : mapping
        This run's :func:`run_signature` for the slide.
    overwrite : bool
        Replace outputs of other runs instead of refusing.
    """
    if overwrite:
        return OutputState("compute")
    from wsidet.output.detections import SIGNED_FORMATS

    wanted = _normal(signature)
    present = {f for f, p in paths.items() if p.exists()}
    # Drawn from the Parquet file, derived outputs beside a reusable one were made from it.
    existing = {f: stored_signature(paths[f]) for f in present if f in SIGNED_FORMATS}
    for fmt, stored in existing.items():
        if stored is None or _normal(_with_defaults(stored)) != wanted:
            return OutputState(
                "conflict",
                reason=f"{str(paths[fmt])!r} exists, {differences(stored, signature)}; "
                "use --overwrite to replace it, or another --out",
            )
    if "parquet" in existing:
        return OutputState("reuse", tuple(f for f in paths if f not in present))
    # Nothing, or only files that an interrupted run with this very signature left behind.
    return OutputState("compute")
