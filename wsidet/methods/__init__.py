"""Registry of detection methods.

>>> from wsidet.methods import get_method, list_methods
>>> list_methods()  # doctest: +SKIP
['log', ...]
>>> get_method("log", threshold=0.2)  # doctest: +SKIP

Importing this package does not import torch: methods import it when a network is built or
maps are decoded.
"""

from __future__ import annotations

from typing import Any, TypeVar

from wsidet.errors import UnknownMethodError
from wsidet.methods.base import Method

_REGISTRY: dict[str, type[Method]] = {}

#: The method ``wsidet run`` uses when none is named; its trained weights ship in
#: :mod:`wsidet.weights` (made as ``wsidet/weights/voca.json`` records).
DEFAULT_METHOD = "voca"

M = TypeVar("M", bound=type[Method])


def register(cls: M) -> M:
    """Class decorator adding a :class:`Method` subclass to the registry under ``cls.name``."""
    name = cls.name
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise ValueError(f"a method named {name!r} is already registered")
    _REGISTRY[name] = cls
    return cls


def list_methods() -> list[str]:
    """Names of all registered methods, sorted."""
    return sorted(_REGISTRY)


def method_class(name: str) -> type[Method]:
    """The class registered under ``name``.

    Raises
    ------
    UnknownMethodError
        No method has that name; the message lists the known ones.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownMethodError(
            f"unknown method {name!r}; known methods: {', '.join(list_methods())}"
        ) from None


def get_method(name: str, **params: Any) -> Method:
    """An instance of method ``name`` with its default parameters, some overridden.

    Parameters
    ----------
    name : str
        A name from :func:`list_methods`.
    **params
        Parameter overrides (validated; see ``Method.replace``).

    Returns
    -------
    Method
    """
    method = method_class(name)()
    return method.replace(**params) if params else method


# Built-in methods register themselves on import (none of them imports torch at import time).
from wsidet.methods import fcrn as _fcrn  # noqa: E402
from wsidet.methods import log as _log  # noqa: E402
from wsidet.methods import mapde as _mapde  # noqa: E402
from wsidet.methods import micronet as _micronet  # noqa: E402
from wsidet.methods import proximity as _proximity  # noqa: E402
from wsidet.methods import voca as _voca  # noqa: E402

__all__ = [
    "DEFAULT_METHOD",
    "Method",
    "get_method",
    "list_methods",
    "method_class",
    "register",
]
del _fcrn, _log, _mapde, _micronet, _proximity, _voca
