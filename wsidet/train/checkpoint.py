"""Checkpoints: weights that carry their method, and a JSON record of how they were made.

``NAME.safetensors`` holds the network's tensors and, in its header metadata, the method name and
all its parameters (the decoding threshold chosen on validation data among them), so that
``wsidet run --weights NAME.safetensors`` rebuilds exactly the method the weights belong to.
``NAME.json`` records the training: data, configuration, metrics, git commit (and whether the
checkout had uncommitted changes), versions.
``state.pt`` holds what resuming needs (network, optimiser, AMP scaler, epoch, history); it
contains only tensors and plain values and is read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import torch

from wsidet._version import __version__
from wsidet.methods.base import Method
from wsidet.output.files import atomic_path

#: The folder that holds the ``wsidet`` package: a git checkout's root in a development install.
_SOURCE_ROOT = Path(__file__).resolve().parents[2]


def _git(*args: str) -> str | None:
    """Output of a git command in the wsidet checkout; None without git or outside a checkout."""
    try:
        # No optional locks: `git status` would otherwise refresh the index under a lock that
        # a concurrent git command in the same checkout may be holding.
        out = subprocess.run(
            ["git", "--no-optional-locks", "-C", str(_SOURCE_ROOT), *args],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout


def _in_checkout() -> bool:
    """Whether wsidet's source is itself a git checkout.

    An installed wsidet sits in ``site-packages``, which may lie inside some other repository
    (a virtual environment in a project folder): that repository's commit says nothing about
    wsidet's code.
    """
    top = _git("rev-parse", "--show-toplevel")
    return top is not None and Path(top.strip()).resolve() == _SOURCE_ROOT


def git_commit() -> str | None:
    """The commit of the wsidet source tree, if it is a git checkout."""
    out = _git("rev-parse", "HEAD") if _in_checkout() else None
    return (out or "").strip() or None


def git_dirty() -> bool | None:
    """Whether the wsidet checkout has uncommitted changes to tracked files.

    Returns
    -------
    bool or None
        None when it cannot be told (no git, not a checkout, git failed).
    """
    out = _git("status", "--porcelain", "--untracked-files=no") if _in_checkout() else None
    return None if out is None else bool(out.strip())


def save_weights(
    network: torch.nn.Module,
    method: Method,
    path: str | Path,
    *,
    stain_reference: dict[str, Any] | None = None,
    stain_normalised: bool = False,
) -> Path:
    """Write a network's tensors with the method's name and parameters in the header.

    ``stain_reference`` (:meth:`wsidet.slide.stain.StainStats.as_dict` of the training data) goes
    in the header too, for stain normalisation at inference; ``stain_normalised`` records
    that the network was trained on colours normalised to it, so inference normalises by
    default (:func:`wsidet.weights.normalises_stain`).
    """
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    metadata = {"wsidet.method": method.name, "wsidet.params": json.dumps(method.params())}
    if stain_reference is not None:
        metadata["wsidet.stain_reference"] = json.dumps(stain_reference)
    if stain_normalised:
        metadata["wsidet.stain_normalised"] = "true"
    with atomic_path(path, overwrite=True) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return Path(path)


def save_record(record: dict[str, Any], path: str | Path) -> Path:
    """Write the JSON record of a training run (atomically).

    Versions, the git commit and whether the checkout was dirty are added; keys of ``record``
    take precedence (a training loop passes the git state it started from).
    """
    full = {
        "wsidet_version": __version__,
        "torch_version": torch.__version__,
        "git_commit": git_commit(),
        "git_dirty": git_dirty(),
        "written": time.strftime("%Y-%m-%dT%H:%M:%S"),
        **record,
    }
    with atomic_path(path, overwrite=True) as tmp:
        tmp.write_text(json.dumps(full, indent=2, default=str))
    return Path(path)
