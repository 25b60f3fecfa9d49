"""Reading weights files: safetensors by default, a torch pickle only when the caller says so.

A safetensors file is a length, a JSON header and raw tensors: reading it runs no code. A torch
checkpoint is a pickle, and unpickling can run code (``torch.load(weights_only=True)`` narrows
what it builds, but it is still an unpickler fed by the file). So wsidet reads torch files only
with ``allow_pickle=True`` (CLI: ``--allow-pickle``), and says which of the three a bad file is:
corrupt safetensors, a torch pickle not allowed, or neither.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping
from typing import Any, Literal

from wsidet.errors import WeightsError

Format = Literal["safetensors", "torch", "unknown"]

#: How to allow a torch file, for messages.
ALLOW_HINT = (
    "pass --allow-pickle (allow_pickle=True) only if you trust the file, or convert it with "
    "safetensors.torch.save_file"
)


def weights_format(path: str | os.PathLike[str]) -> Format:
    """What a weights file looks like from its first bytes.

    ``"safetensors"``: an 8-byte little-endian header length followed by ``{``;
    ``"torch"``: a zip archive (torch >= 1.6) or a bare pickle; else ``"unknown"``.

    Raises
    ------
    WeightsError
        The file is missing or unreadable.
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(9)
    except FileNotFoundError:
        raise WeightsError(f"weights file not found: {os.fspath(path)!r}") from None
    except OSError as exc:
        raise WeightsError(f"cannot read weights {os.fspath(path)!r}: {exc.strerror}") from None
    if len(head) == 9 and head[8:9] == b"{":
        return "safetensors"
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return "torch"
    return "unknown"


def _safetensors_error(path: str, exc: BaseException) -> WeightsError:
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return WeightsError(f"weights {path!r} are a corrupt safetensors file ({detail})")


def _check_readable(path: str, allow_pickle: bool) -> Format:
    fmt = weights_format(path)
    if fmt == "torch" and not allow_pickle:
        raise WeightsError(
            f"weights {path!r} are a torch pickle file, which can run code when loaded; "
            f"wsidet reads safetensors: {ALLOW_HINT}"
        )
    if fmt == "unknown":
        raise WeightsError(f"weights {path!r} are not a safetensors file (nor a torch file)")
    return fmt


def weights_metadata(path: str | os.PathLike[str], *, allow_pickle: bool = False) -> dict[str, str]:
    """The string metadata in a safetensors header (empty for an allowed torch file).

    Raises
    ------
    WeightsError
        Missing, corrupt, not a weights file, or a torch file without ``allow_pickle``.
    """
    path = os.fspath(path)
    if _check_readable(path, allow_pickle) == "torch":
        return {}
    try:
        with open(path, "rb") as fh:
            (length,) = struct.unpack("<Q", fh.read(8))
            if length > os.path.getsize(path) - 8:
                raise ValueError(f"header of {length} bytes runs past the end of the file")
            header = json.loads(fh.read(length))
    except (OSError, ValueError, struct.error) as exc:
        raise _safetensors_error(path, exc) from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return {str(k): str(v) for k, v in (meta or {}).items()}


def read_weights(
    path: str | os.PathLike[str], *, allow_pickle: bool = False
) -> tuple[dict[str, Any], dict[str, str]]:
    """Tensors and string metadata of a weights file.

    Parameters
    ----------
    path : path
        A safetensors file, or (with ``allow_pickle``) a torch state dict file.
    allow_pickle : bool
        Read torch pickle files (``torch.load(weights_only=True)``).

    Returns
    -------
    tensors : dict of str to torch.Tensor
    metadata : dict of str to str

    Raises
    ------
    WeightsError
        Missing, corrupt, not a weights file, a torch file without ``allow_pickle``, or a
        torch file that holds no state dict.
    """
    path = os.fspath(path)
    if _check_readable(path, allow_pickle) == "safetensors":
        from safetensors import safe_open

        try:
            with safe_open(path, framework="pt") as fh:
                meta = dict(fh.metadata() or {})
                tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
        except Exception as exc:  # the Rust reader raises its own exception types
            raise _safetensors_error(path, exc) from None
        return tensors, meta
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"weights {path!r} are a corrupt torch file ({exc})") from None
    if isinstance(obj, Mapping) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(k, str) for k in obj):
        raise WeightsError(f"weights {path!r} do not hold a state dict")
    return dict(obj), {}
