"""Trained weights shipped with wsidet, so that a new user gets detections without training.

Each method with bundled weights has ``NAME.safetensors`` (tensors, with the method's parameters
in the header) and ``NAME.json`` (how they were made) in this folder.
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

from wsidet.errors import WeightsError
from wsidet.methods import DEFAULT_METHOD, get_method, list_methods, method_class
from wsidet.methods.base import Method
from wsidet.slide.stain import StainStats
from wsidet.weights.files import weights_metadata


def bundled_weights(name: str) -> Path | None:
    """Path of bundled weights, or None if none ship under that name.

    ``name`` is a method (its default weights, e.g. ``voca``) or one of
    :func:`bundled_names` (``METHOD-VARIANT``, e.g. ``voca-crchisto``).
    """
    if not name or "/" in name or "\\" in name or name.startswith("."):
        return None
    path = Path(str(resources.files(__name__))) / f"{name}.safetensors"
    return path if path.is_file() else None


def bundled_names() -> list[str]:
    """Every bundled weights file by name: methods' defaults and their variants."""
    folder = Path(str(resources.files(__name__)))
    return sorted(p.stem for p in folder.glob("*.safetensors"))


def bundled_methods() -> list[str]:
    """Methods with bundled default weights (``wsidet.list_methods(pretrained=True)``)."""
    return list_methods(pretrained=True)


def stain_reference(
    path: str | os.PathLike[str], *, allow_pickle: bool = False
) -> StainStats | None:
    """The stain statistics of the data a weights file was trained on, if it records them.

    Read from the safetensors header (``wsidet.stain_reference``), else from the training
    record beside the file (``NAME.json``, key ``stain_reference``).
    """
    text = weights_metadata(path, allow_pickle=allow_pickle).get("wsidet.stain_reference")
    data: Any = json.loads(text) if text else None
    record = Path(path).with_suffix(".json")
    if data is None and record.is_file():
        try:
            data = json.loads(record.read_text()).get("stain_reference")
        except (OSError, ValueError):
            data = None
    if not data:
        return None
    try:
        stats = StainStats.from_dict(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise WeightsError(
            f"weights {os.fspath(path)!r} record unusable stain statistics: {exc}"
        ) from None
    return stats if stats.pixels > 0 else None


def normalises_stain(weights: str | os.PathLike[str] | None, *, allow_pickle: bool = False) -> bool:
    """Whether weights were trained on stain-normalised colours (and so want them at inference).

    Such weights record ``wsidet.stain_normalised`` in their header; others (and no weights)
    see colours as they are unless asked.
    """
    if weights is None:
        return False
    meta = weights_metadata(weights, allow_pickle=allow_pickle)
    return meta.get("wsidet.stain_normalised") == "true"


def resolve_stain(
    stain: bool | StainStats | None,
    weights: str | os.PathLike[str] | None,
    method: str,
    *,
    allow_pickle: bool = False,
) -> StainStats | None:
    """The reference to normalise a slide's colours to, or None to leave them.

    ``stain`` None: as the weights ask (:func:`normalises_stain`); True: to the weights'
    reference (:func:`required_stain_reference`); False: not; statistics: to those.
    """
    if stain is None:
        stain = normalises_stain(weights, allow_pickle=allow_pickle)
    if stain is False:
        return None
    if stain is True:
        return required_stain_reference(weights, method, allow_pickle=allow_pickle)
    return stain


def required_stain_reference(
    weights: str | os.PathLike[str] | None, method: str, *, allow_pickle: bool = False
) -> StainStats:
    """The stain reference of weights asked to normalise with (see :func:`stain_reference`).

    Raises
    ------
    WeightsError
        No weights, or weights that record none.
    """
    found = stain_reference(weights, allow_pickle=allow_pickle) if weights is not None else None
    if found is None:
        what = repr(os.fspath(weights)) if weights is not None else f"method {method!r}"
        raise WeightsError(
            "stain normalisation needs the colour statistics of the data the weights were "
            f"trained on; {what} records none (weights trained with wsidet train do)"
        )
    return found


def method_from_weights(
    path: str | os.PathLike[str],
    name: str | None = None,
    *,
    allow_pickle: bool = False,
    **overrides: Any,
) -> Method:
    """The method a weights file was trained as, with optional parameter overrides.

    Parameters
    ----------
    path : path
        A safetensors file written by :func:`save_weights`.
    name : str, optional
        The method the caller asked for; must match the file's if the file names one.
    allow_pickle : bool
        Accept a torch pickle file (see :mod:`wsidet.weights.files`).
    **overrides
        Parameters to change (decoding parameters such as a threshold; others must match the
        weights).

    Raises
    ------
    WeightsError
        The file names another method, or names none and ``name`` is not given; it is
        missing, corrupt, or a torch file without ``allow_pickle``.
    """
    meta = weights_metadata(path, allow_pickle=allow_pickle)
    owner = meta.get("wsidet.method")
    if owner is None:
        if name is None:
            raise WeightsError(
                f"weights {os.fspath(path)!r} do not name their method; pass one (--method)"
            )
        return get_method(name, **overrides)
    if name is not None and name != owner:
        raise WeightsError(
            f"weights {os.fspath(path)!r} were trained for method {owner!r}, not {name!r}"
        )
    params = json.loads(meta.get("wsidet.params", "{}"))
    return get_method(owner, **{**params, **overrides})


def resolve_method(
    name: str | None = None,
    weights: str | os.PathLike[str] | None = None,
    *,
    allow_pickle: bool = False,
    **params: Any,
) -> tuple[Method, Path | None]:
    """The method to run and its weights, from what a user named.

    * weights given: the method they were trained as (``name``, if given, must agree), with
      ``params`` overriding decoding parameters;
    * a trainable method without weights: its bundled weights, if wsidet ships some;
    * otherwise the method with default parameters and no weights (a trainable method then
      fails when a detector is built, asking for weights).

    Parameters
    ----------
    name : str, optional
        Method name (default :data:`~wsidet.methods.DEFAULT_METHOD`).
    weights : path, optional
        A weights file, or the name of bundled weights (:func:`bundled_names`) where no file
        of that name exists.
    allow_pickle : bool
        Accept torch pickle weights (see :mod:`wsidet.weights.files`).
    **params
        Parameter overrides.

    Returns
    -------
    (Method, Path or None)
    """
    if weights is not None:
        if not Path(weights).exists():
            # A bundled variant by name (``voca-crchisto``) where no such file is here.
            weights = bundled_weights(os.fspath(weights)) or weights
        method = method_from_weights(weights, name, allow_pickle=allow_pickle, **params)
        return method, Path(weights)
    name = name or DEFAULT_METHOD
    if method_class(name).trainable:
        bundled = bundled_weights(name)
        if bundled is not None:
            return method_from_weights(bundled, name, **params), bundled
    return get_method(name, **params), None
