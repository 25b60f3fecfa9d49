"""Atomic writes into an output folder, and the temporaries a killed run leaves behind.

Every file wsidet writes is written under a temporary name in the same folder and renamed into
place, so a crash never leaves half a file under the final name; an existing file is replaced
only when the caller says so.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import os
import re
import socket
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from wsidet.errors import OutputExistsError

if TYPE_CHECKING:
    pass

#: QuPath class of every detection, and its display colour.


@functools.cache
def _file_mode() -> int:
    """Mode a plain ``open()`` would give a new file (mkstemp makes them 0600)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def _exists_error(path: str | os.PathLike[str]) -> OutputExistsError:
    return OutputExistsError(f"output exists: {str(path)!r} (use --overwrite to replace it)")


def ensure_free(paths: Sequence[str | os.PathLike[str]]) -> None:
    """Raise :class:`OutputExistsError` naming the first of ``paths`` that exists."""
    for path in paths:
        if Path(path).exists():
            raise _exists_error(path)


#: A temporary file of :func:`atomic_path`: ``.NAME.RANDOM.wsidet-HOST-PID.tmp``.
_TEMP = re.compile(r"^\..+\.[^.]+\.wsidet-(?P<host>[^/]+)-(?P<pid>\d+)\.tmp$")
#: Temporary files of another machine (a shared file system) are stale after this long.
FOREIGN_TEMP_AGE = 24 * 3600.0


def _temp_suffix() -> str:
    return f".wsidet-{socket.gethostname()}-{os.getpid()}.tmp"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def clean_stale_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Remove temporary files that a killed wsidet process left in ``folder``.

    Only files named by :func:`atomic_path` are touched: those of a process of this machine
    that no longer runs, and those of other machines older than :data:`FOREIGN_TEMP_AGE`.
    A live run's temporary files (another run into the same folder) are left alone.

    Returns
    -------
    list of pathlib.Path
        The files removed.
    """
    import time

    removed: list[Path] = []
    host = socket.gethostname()
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP.match(entry.name)
        if match is None:
            continue
        try:
            if match["host"] == host:
                stale = not _alive(int(match["pid"]))
            else:
                stale = time.time() - entry.stat().st_mtime > FOREIGN_TEMP_AGE
            if stale:
                entry.unlink()
                removed.append(entry)
        except OSError:
            continue
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it to ``path`` on success.

    Raises
    ------
    OutputExistsError
        ``path`` exists and ``overwrite`` is False (checked before and after writing).
    """
    target = Path(path)
    if not overwrite:
        ensure_free([target])
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=_temp_suffix(), dir=target.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, _file_mode())
        if overwrite:
            os.replace(tmp, target)
        else:
            # link() fails if the target appeared meanwhile: never clobber without consent.
            try:
                os.link(tmp, target)
            except FileExistsError:
                raise _exists_error(target) from None
            except OSError:  # file systems without hard links
                os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def open_text(
    path: str | os.PathLike[str], mode: str = "rt", *, compressed: bool | None = None
) -> IO[str]:
    """A UTF-8 text file, gzip-compressed when ``compressed`` (default: its name ends in .gz)."""
    if compressed is None:
        compressed = os.fspath(path).endswith(".gz")
    opener: Any = gzip.open if compressed else open
    handle: IO[str] = opener(path, mode, encoding="utf-8")
    return handle
