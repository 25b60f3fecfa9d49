"""Checkpoints: weights that carry their method, and a JSON record of how they were made.

``NAME.safetensors`` holds the network's tensors and, in its header metadata, the method name and
all its parameters (the decoding threshold chosen on validation data among them), so that
``wsidet run --weights NAME.safetensors`` rebuilds exactly the method the weights belong to.
``NAME.json`` records the training: data, configuration, metrics, git commit, versions.
``state.pt`` holds what resuming needs (optimiser, scheduler, epoch, history); it contains only
tensors and plain values and is read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import torch

from wsidet._version import __version__
from wsidet.io import atomic_path
from wsidet.methods.base import Method


def git_commit() -> str | None:
    """The commit of the wsidet source tree, if it is a git checkout."""
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def save_weights(network: torch.nn.Module, method: Method, path: str | Path) -> Path:
    """Write a network's tensors with the method's name and parameters in the header."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    metadata = {"wsidet.method": method.name, "wsidet.params": json.dumps(method.params())}
    with atomic_path(path, overwrite=True) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return Path(path)


def save_record(record: dict[str, Any], path: str | Path) -> Path:
    """Write the JSON record of a training run (atomically)."""
    full = {
        "wsidet_version": __version__,
        "torch_version": torch.__version__,
        "git_commit": git_commit(),
        "written": time.strftime("%Y-%m-%dT%H:%M:%S"),
        **record,
    }
    with atomic_path(path, overwrite=True) as tmp:
        tmp.write_text(json.dumps(full, indent=2, default=str))
    return Path(path)
