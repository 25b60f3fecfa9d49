"""The registry of detection methods: names to :class:`Method` classes, and which ship weights.

Private: users go through :mod:`wsidet.methods`; method modules register themselves here, so
that importing one never imports the package's other methods (no import cycle).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
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


def list_methods(pretrained: bool = False) -> list[str]:
    """Names of the registered methods, sorted.

    Parameters
    ----------
    pretrained : bool
        Only the methods whose trained weights ship with wsidet (:mod:`wsidet.weights`), which
        ``wsidet run --method NAME`` uses when given no ``--weights``.

    Returns
    -------
    list of str
    """
    names = sorted(_REGISTRY)
    if pretrained:
        folder = _weights_folder()
        names = [name for name in names if (folder / f"{name}.safetensors").is_file()]
    return names


def _weights_folder() -> Path:
    # The files of wsidet.weights, found rather than imported: that package builds on this one.
    return Path(str(resources.files("wsidet"))) / "weights"


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
