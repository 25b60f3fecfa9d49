"""glibc heap settings for a process that runs detectors on the CPU.

A forward pass allocates feature maps of tens to hundreds of MB and frees them a moment later.
glibc serves every allocation over its mmap threshold (at most 32 MB) with a fresh ``mmap`` and
returns it with ``munmap``, and a dask thread's own arena cannot hold blocks over 64 MB at all:
so every feature map of every model tile was mapped, faulted in page by page, and unmapped.
Measured on VOCA, one 2272 x 2444 px block in a worker thread (2 AVX2 cores): 5.5 M page
faults, 20.9 s of system time beside 16.1 s of user time.

:func:`configure_heap` makes the heap keep what it frees instead: one arena for all threads
(so large blocks come from the main heap, which can grow), no ``mmap`` for allocations, and no
trimming. Freed feature maps are then reused by the next tile: the same block took 54 k faults
and 1.4 s of system time. The price is that the process keeps its peak heap until it exits
(measured peak resident memory is reported by the benchmarks).

It is a process-wide choice, so the library never makes it on import: the ``wsidet`` program
calls it at start, and so do local dask workers (:class:`wsidet.cohort.cluster.WorkerSetup`). A
program that embeds wsidet may call it too.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

logger = logging.getLogger(__name__)

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8


def configure_heap() -> bool:
    """Keep freed memory for reuse (glibc only; elsewhere nothing changes).

    Returns
    -------
    bool
        Whether the settings were applied.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl or another libc without mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1))
    applied = all(mallopt(param, value) == 1 for param, value in settings)
    logger.debug("heap settings %s", "applied" if applied else "refused")
    return applied
