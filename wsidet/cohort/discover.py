"""Finding the slides of a cohort and naming their outputs uniquely.

Folders are searched for files with a slide ending (:data:`SLIDE_ENDINGS`), in their top level
or, with ``recursive``, in every subfolder (TCGA keeps one folder per case). A slide's id names
its outputs: its file name without the extension, or, where two slides share a file name, the
path that tells them apart (:func:`slide_ids`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from wsidet.errors import WsidetError
from wsidet.slide.wsi import slide_id_for

#: File endings taken as slides when a folder is given.
SLIDE_ENDINGS = (
    ".svs", ".tif", ".tiff", ".ndpi", ".scn", ".bif", ".ome.tif", ".ome.tiff",
    # Read through OpenSlide (wsidet.slide.openslide_reader) when it is installed.
    ".mrxs", ".vms", ".vmu", ".svslide",
)  # fmt: skip
#: Joins the folders of a slide id made from a path (``site1__slide``): ids are file names.
ID_SEPARATOR = "__"


class CohortError(WsidetError, ValueError):
    """The cohort itself is unusable (no slides, no output folder)."""


def _is_slide_name(name: str) -> bool:
    return name.lower().endswith(SLIDE_ENDINGS)


def _search(folder: Path, recursive: bool) -> list[Path]:
    """Slides in ``folder`` (sorted; subfolders after the files, depth first)."""
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return [folder]  # fails as a slide, saying why
    found = [e for e in entries if _is_slide_name(e.name) and not e.is_dir()]
    if recursive:
        for sub in entries:
            # A symlinked folder may loop back up: followed only if it is not a link.
            if sub.is_dir() and not sub.is_symlink() and not _is_slide_name(sub.name):
                found += _search(sub, recursive)
    return found


def _nested(folder: Path) -> Path | None:
    """A slide somewhere under ``folder``'s subfolders, for a hint (None if there is none)."""
    for _root, _dirs, files in os.walk(folder):
        for name in files:
            if _is_slide_name(name):
                return Path(_root) / name
    return None


def find_slides(paths: Iterable[str | os.PathLike[str]], *, recursive: bool = False) -> list[Path]:
    """Slides named directly, or found in named folders, in order.

    A file named twice (also under different spellings of its path) counts once. Entries
    that cannot be slides (a symlink loop, a FIFO, a device, a broken link) are kept: each
    then fails as its own slide, with the reason, while the others run.

    Parameters
    ----------
    paths : iterable of path
        Slide files and folders.
    recursive : bool
        Search folders' subfolders too.

    Raises
    ------
    CohortError
        Nothing was found (the message says where subfolders hold slides).
    """
    found: list[Path] = []
    folders: list[Path] = []
    for item in paths:
        p = Path(item)
        if p.is_dir():
            folders.append(p)
            found += _search(p, recursive)
        else:
            found.append(p)  # a missing or unreadable file fails later, as that slide's error
    seen: set[str] = set()
    unique: list[Path] = []
    for p in found:
        real = os.path.realpath(p)  # unlike Path.resolve, never raises on a symlink loop
        if real not in seen:
            seen.add(real)
            unique.append(p)
    if not unique:
        hint = next((s for s in map(_nested, folders) if s is not None), None)
        where = f"; subfolders hold slides (e.g. {str(hint)!r}): search recursively" if hint else ""
        raise CohortError(f"no slides found in the paths given{where}")
    return unique


def slide_ids(slides: Sequence[Path]) -> dict[Path, str]:
    """A unique id per slide: its file name without extension, or its path where names clash.

    Slides whose names clash are told apart by their paths relative to the folder they
    share, joined with :data:`ID_SEPARATOR` (``site1/slide.svs`` and ``site2/slide.svs``:
    ``site1__slide`` and ``site2__slide``); the others keep their plain names. Should a
    path-made id clash with another slide's name, a number is added.

    Parameters
    ----------
    slides : sequence of Path
        Distinct slide files (as :func:`find_slides` returns them).

    Returns
    -------
    dict
        Slide path -> id, for every slide.
    """
    by_name: dict[str, list[Path]] = {}
    for path in slides:
        by_name.setdefault(slide_id_for(path), []).append(path)
    ids: dict[Path, str] = {}
    for name, group in by_name.items():
        if len(group) == 1:
            ids[group[0]] = name
            continue
        absolute = [Path(os.path.abspath(p)) for p in group]
        root = Path(os.path.commonpath([p.parent for p in absolute]))
        for path, full in zip(group, absolute, strict=True):
            parts = [*full.parent.relative_to(root).parts, name]
            ids[path] = ID_SEPARATOR.join(parts)
    taken: set[str] = set()
    for path in slides:  # in order, so the first slide keeps its id
        slide_id, n = ids[path], 2
        while slide_id in taken:
            slide_id, n = f"{ids[path]}{ID_SEPARATOR}{n}", n + 1
        ids[path] = slide_id
        taken.add(slide_id)
    return ids


def keep_earlier_ids(ids: dict[Path, str], earlier: dict[str, str]) -> dict[Path, str]:
    """``ids``, except that a slide an earlier run into the folder named keeps that name.

    Ids made from paths depend on which slides a run is given (``slide`` alone, ``site1__slide``
    beside ``site2/slide``): without this, rerunning a folder with more slides would make the
    same slide again under a second name, and its points would be read twice.

    Parameters
    ----------
    ids : dict of Path to str
        From :func:`slide_ids`.
    earlier : dict of str to str
        Real path of each slide of the folder's manifest -> its id there.

    Returns
    -------
    dict
        Slide path -> id, still unique.
    """
    out = dict(ids)
    for path in ids:
        before = earlier.get(os.path.realpath(path))
        if before is not None and before != out[path] and before not in out.values():
            out[path] = before
    return out
