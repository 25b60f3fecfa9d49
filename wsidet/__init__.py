"""wsidet: whole-slide cell detection.

``import wsidet`` is cheap: torch, dask and geopandas are imported only when a function that
needs them is first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from wsidet._version import __version__

if TYPE_CHECKING:
    from wsidet.cohort.run import run_cohort
    from wsidet.inference.pipeline import detect_slide
    from wsidet.methods import get_method, list_methods
    from wsidet.output.detections import read_detections, write_detections
    from wsidet.slide.wsi import Slide, open_slide

# Public name -> module that defines it; resolved on first access (PEP 562).
_LAZY = {
    "detect_slide": "wsidet.inference.pipeline",
    "run_cohort": "wsidet.cohort.run",
    "open_slide": "wsidet.slide.wsi",
    "Slide": "wsidet.slide.wsi",
    "read_detections": "wsidet.output.detections",
    "write_detections": "wsidet.output.detections",
    "get_method": "wsidet.methods",
    "list_methods": "wsidet.methods",
}

__all__ = [
    "Slide",
    "__version__",
    "detect_slide",
    "get_method",
    "list_methods",
    "open_slide",
    "read_detections",
    "run_cohort",
    "write_detections",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'wsidet' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
