"""Cluster defaults the command line shows in its help, importable without dask."""

from __future__ import annotations

#: The worker resource chunk tasks ask for on a GPU cluster.
GPU_RESOURCE = "GPU"
#: Where local clusters listen: this machine only.
LOOPBACK = "127.0.0.1"
#: The dashboard of a local cluster, on this machine only (dask's default is every interface).
DEFAULT_DASHBOARD = f"{LOOPBACK}:8787"
