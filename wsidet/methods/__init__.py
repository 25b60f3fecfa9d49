"""Registry of detection methods.

>>> from wsidet.methods import get_method, list_methods
>>> list_methods()  # doctest: +SKIP
['fcrn_a', ..., 'voca']
>>> list_methods(pretrained=True)  # those whose trained weights ship with wsidet
['voca']
>>> get_method("log", threshold=0.2)  # doctest: +SKIP

Importing this package does not import torch: methods import it when a network is built or
maps are decoded.
"""

from __future__ import annotations

# Built-in methods register themselves on import (none of them imports torch at import time).
from wsidet.methods import fcrn, log, mapde, micronet, proximity, voca
from wsidet.methods._registry import (
    DEFAULT_METHOD,
    get_method,
    list_methods,
    method_class,
    register,
)
from wsidet.methods.base import Method

__all__ = [
    "DEFAULT_METHOD",
    "Method",
    "get_method",
    "list_methods",
    "method_class",
    "register",
]
del fcrn, log, mapde, micronet, proximity, voca
