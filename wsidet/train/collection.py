"""Several annotated datasets in one training run, each with its own pixel size and share.

A *sources file* (TOML) lists them; paths are relative to the file::

    [[dataset]]
    name = "crchisto"
    images = "crchisto/images"
    points = "crchisto/detection"
    mpp = 0.5            # µm/px of the images (required: never assumed)
    one_based = true     # MATLAB-style CSV coordinates
    share = 1.0          # relative probability of drawing a patch from this dataset
    split = "crchisto/splits.csv"   # optional: use one fold of a split file
    fold = "1"
    group = "^train_[0-9]+"         # optional: images whose keys share this match are
                                    # held out together (tiles of one original image)

Each dataset's images are resampled to the method's pixel size (:func:`load_sources`), a
fraction of each is held out for validation (so the pooled validation set has every dataset
in it), and patches are drawn per dataset by share, then per image by area
(:func:`~wsidet.train.dataset.mixture_weights`).
"""

from __future__ import annotations

import math
import random
import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from wsidet.annotations.files import Annotated, AnnotationError, find_pairs, select_fold
from wsidet.annotations.sources import Source, load_sources
from wsidet.limits import MPP
from wsidet.methods.base import Method
from wsidet.train.dataset import mixture_weights


@dataclass(frozen=True)
class AnnotatedSet:
    """One annotated dataset.

    Attributes
    ----------
    name : str
    images, points : pathlib.Path
        Folders (see :func:`wsidet.annotations.files.find_pairs`).
    mpp : float
        µm per pixel of the images (slides that state their own must agree with it).
    share : float
        Relative probability of drawing a training patch from this dataset.
    one_based : bool
    split : pathlib.Path, optional
    fold : str, optional
        With ``split``: use only this fold.
    fold_column : str, optional
    group : str, optional
        Regular expression: images whose keys have the same match are tiles of one original
        and are held out for validation together (else each image is its own group).
    """

    name: str
    images: Path
    points: Path
    mpp: float
    share: float = 1.0
    one_based: bool = False
    split: Path | None = None
    fold: str | None = None
    fold_column: str | None = None
    group: str | None = None

    def __post_init__(self) -> None:
        MPP.check(f"mpp of dataset {self.name!r}", self.mpp)
        if self.group is not None:
            try:
                re.compile(self.group)
            except re.error as exc:
                raise ValueError(f"dataset {self.name!r}: group is not a pattern: {exc}") from exc
        if not (self.share > 0 and math.isfinite(self.share)):
            raise ValueError(f"share of dataset {self.name!r} must be > 0, got {self.share}")
        if (self.split is None) != (self.fold is None):
            raise ValueError(f"dataset {self.name!r}: split and fold go together")

    def pairs(self) -> list[Annotated]:
        """The dataset's annotated images (of its fold, when it names one)."""
        pairs = find_pairs(self.images, self.points)
        if self.split is not None and self.fold is not None:
            pairs = select_fold(pairs, self.split, self.fold, column=self.fold_column)
        return pairs

    def load(self, method: Method, pairs: Sequence[Annotated]) -> list[Source]:
        """``pairs`` of this dataset as sources at the method's pixel size."""
        return [
            s
            for p in pairs
            for s in load_sources(p, method, one_based=self.one_based, image_mpp=self.mpp)
        ]

    def record(self) -> dict[str, Any]:
        """A JSON-able description."""
        return {
            "name": self.name,
            "images": str(self.images),
            "points": str(self.points),
            "mpp": self.mpp,
            "share": self.share,
            "one_based": self.one_based,
            "split": None if self.split is None else str(self.split),
            "fold": self.fold,
            "group": self.group,
        }


_KEYS = {
    "name", "images", "points", "mpp", "share", "one_based", "split", "fold", "fold_column",
    "group",
}  # fmt: skip


def read_sets(path: str | Path) -> tuple[AnnotatedSet, ...]:
    """The datasets of a sources file (see the module docstring).

    Raises
    ------
    AnnotationError
        The file cannot be read, names an unknown key, or lacks a required one.
    """
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise AnnotationError(f"cannot read sources file {str(path)!r}: {exc}") from exc
    entries = doc.get("dataset")
    if not isinstance(entries, list) or not entries:
        raise AnnotationError(f"{str(path)!r} lists no [[dataset]]")
    sets = []
    base = path.parent
    for i, entry in enumerate(entries):
        where = f"{str(path)!r}, dataset {i + 1}"
        unknown = set(entry) - _KEYS
        if unknown:
            raise AnnotationError(f"{where}: unknown keys {sorted(unknown)}")
        missing = {"images", "points", "mpp"} - set(entry)
        if missing:
            raise AnnotationError(f"{where}: needs {', '.join(sorted(missing))}")
        try:
            sets.append(
                AnnotatedSet(
                    name=str(entry.get("name", Path(entry["images"]).parent.name or i)),
                    images=base / entry["images"],
                    points=base / entry["points"],
                    mpp=float(entry["mpp"]),
                    share=float(entry.get("share", 1.0)),
                    one_based=bool(entry.get("one_based", False)),
                    split=base / entry["split"] if "split" in entry else None,
                    fold=str(entry["fold"]) if "fold" in entry else None,
                    fold_column=entry.get("fold_column"),
                    group=entry.get("group"),
                )
            )
        except (TypeError, ValueError) as exc:
            raise AnnotationError(f"{where}: {exc}") from exc
    names = [s.name for s in sets]
    if len(set(names)) != len(names):
        raise AnnotationError(f"{str(path)!r}: dataset names repeat ({names})")
    return tuple(sets)


def hold_out(
    pairs: Sequence[Annotated], fraction: float, seed: int, *, group: str | None = None
) -> tuple[list[Annotated], list[Annotated]]:
    """Split pairs into (train, validation): about ``fraction`` of them, at random.

    With ``group`` (a regular expression), images whose keys have the same match go to the
    same side: whole groups are held out until ``fraction`` of the images is reached.

    Raises
    ------
    AnnotationError
        Fewer than two pairs, or fewer than two groups.
    """
    groups: dict[str, list[Annotated]] = {}
    for pair in pairs:
        match = re.match(group, pair.key) if group else None
        groups.setdefault(match.group(0) if match else pair.key, []).append(pair)
    if len(groups) < 2:
        raise AnnotationError(
            f"need at least 2 annotated images (one to validate), got {len(groups)}"
            + (f" groups of {group!r}" if group else "")
        )
    names = sorted(groups)
    random.Random(seed).shuffle(names)
    wanted = max(1, round(fraction * len(pairs)))
    val: list[Annotated] = []
    for name in names[:-1]:  # at least one group trains
        if len(val) >= wanted:
            break
        val += groups[name]
    held = {id(p) for p in val}
    return [p for n in names for p in groups[n] if id(p) not in held], val


@dataclass(frozen=True)
class TrainingData:
    """Sources of several datasets, ready for :func:`wsidet.train.loop.train`.

    Attributes
    ----------
    train, validation : list of Source
    weights : ndarray, shape (len(train),)
        Drawing probability of each training source.
    record : dict
        Datasets and the validation image keys of each.
    """

    train: list[Source]
    validation: list[Source]
    weights: npt.NDArray[np.float64]
    record: dict[str, Any]


def load_sets(
    sets: Sequence[AnnotatedSet], method: Method, *, val_fraction: float = 0.15, seed: int = 0
) -> TrainingData:
    """Load every dataset at the method's pixel size and hold out ``val_fraction`` of each."""
    groups, validation, record = [], [], []
    for s in sets:
        train_pairs, val_pairs = hold_out(s.pairs(), val_fraction, seed, group=s.group)
        groups.append(s.load(method, train_pairs))
        validation += s.load(method, val_pairs)
        record.append({**s.record(), "validation_keys": [p.key for p in val_pairs]})
    weights = mixture_weights(groups, [s.share for s in sets])
    return TrainingData(
        [src for g in groups for src in g], validation, weights, {"datasets": record}
    )
