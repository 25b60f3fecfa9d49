"""A run's settings, resolved once at the edge into two frozen values.

:class:`RunSpec` holds what decides the points (method and parameters, weights and their hash,
pixel-size override, tissue, stain normalisation, precision): its :meth:`~RunSpec.signature`
is the key resuming compares. :class:`ExecOptions` holds what does not (chunk, model tile,
batch size, device, trust in pickled weights, the pixel-size check): tiled detection equals a
whole-image pass, so these change speed and memory, never the points.

The command line, :func:`wsidet.detect_slide`, :func:`wsidet.run_cohort` and resuming all
build or take these two values; nothing below them threads option dictionaries.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from wsidet.inference.detector import DEFAULT_TILE, DetectorSpec, weights_hash
from wsidet.inference.precision import check_precision
from wsidet.limits import check_run_numbers
from wsidet.methods.base import Method
from wsidet.slide.regions import Regions
from wsidet.slide.stain import StainStats
from wsidet.tiling import DEFAULT_CHUNK


@dataclass(frozen=True)
class ExecOptions:
    """How a run computes; none of it changes the points.

    Attributes
    ----------
    chunk : int
        Dask chunk edge in working pixels (aligned to the TIFF tiles).
    tile : int
        Model tile edge.
    batch_size : int, optional
        Tiles per forward pass (default 4 on CUDA, 1 on CPU).
    device : str, optional
        ``cpu``, ``cuda`` or ``cuda:N``; default CUDA when available.
    allow_pickle : bool
        Accept weights in a torch pickle file (loading one can run code).
    check_mpp : bool
        Estimate the pixel size from the slide's nuclei and warn when the one used is far off.

    Raises
    ------
    ParameterError
        A number out of the ranges of :mod:`wsidet.limits`.
    """

    chunk: int = DEFAULT_CHUNK
    tile: int = DEFAULT_TILE
    batch_size: int | None = None
    device: str | None = None
    allow_pickle: bool = False
    check_mpp: bool = True

    def __post_init__(self) -> None:
        check_run_numbers(chunk=self.chunk, tile=self.tile, batch_size=self.batch_size)


@dataclass(frozen=True)
class RunSpec:
    """What decides a slide's points; build it with :meth:`resolve`.

    Attributes
    ----------
    method : Method
        The configured method.
    weights : str, optional
        Path of its weights (None for a method without parameters to learn).
    weights_hash : str, optional
        Content hash of the weights file (computed from ``weights`` when not given).
    mpp : float or "auto", optional
        Level-0 µm/px overriding the slides' own, or ``"auto"`` (see
        :mod:`wsidet.slide.scale_check`).
    tissue : bool
        Only chunks and points on tissue.
    stain : bool or StainStats
        Normalise colours to the weights' reference (True), to given statistics, or not.
    precision : str
        ``auto``, ``fp32``, ``bf16`` or ``fp16`` (:mod:`wsidet.inference.precision`).
    regions : Regions, optional
        Only chunks and points inside these level-0 polygons (:mod:`wsidet.slide.regions`).
    """

    method: Method
    weights: str | None = None
    weights_hash: str | None = None
    mpp: float | str | None = None
    tissue: bool = True
    stain: bool | StainStats = False
    precision: str = "auto"
    regions: Regions | None = None

    def __post_init__(self) -> None:
        # Hashed once, here: the resume key and the outputs' metadata both carry it. A missing
        # file is left to the detector, whose error says what is wrong with the weights.
        if self.weights is not None and self.weights_hash is None and os.path.isfile(self.weights):
            object.__setattr__(self, "weights_hash", weights_hash(self.weights))

    @classmethod
    def resolve(
        cls,
        method: Method | str | None = None,
        weights: str | os.PathLike[str] | None = None,
        *,
        mpp: float | str | None = None,
        tissue: bool = True,
        stain: bool | StainStats | None = None,
        precision: str = "auto",
        allow_pickle: bool = False,
        regions: Regions | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> RunSpec:
        """The spec of what a user named: a method name or instance, weights, settings.

        A name (or None, the default method) is resolved as
        :func:`wsidet.weights.resolve_method` does (a trainable method without weights takes
        its bundled weights), ``params`` overriding its parameters; ``stain=None`` becomes
        what the weights ask for (:func:`wsidet.weights.normalises_stain`).

        Raises
        ------
        ParameterError
            ``mpp`` or ``precision`` out of range.
        WeightsError, UnknownMethodError
            The weights cannot be read, or name another method.
        """
        from wsidet.weights import normalises_stain, resolve_method

        check_run_numbers(mpp=mpp)
        if not isinstance(method, Method):
            method, resolved = resolve_method(
                method, weights, allow_pickle=allow_pickle, **(params or {})
            )
            weights = resolved if weights is None else weights
        elif params:
            method = method.replace(**params)
        path = os.fspath(weights) if weights is not None else None
        if stain is None:
            stain = normalises_stain(path, allow_pickle=allow_pickle)
        return cls(
            method,
            weights=path,
            mpp=mpp,
            tissue=tissue,
            stain=stain,
            precision=check_precision(precision),
            regions=regions,
        )

    def signature(self, fingerprint: str) -> dict[str, Any]:
        """The resume key of a slide with content ``fingerprint``.

        See :mod:`wsidet.cohort.resume`: outputs with this key are reused, others are not.
        """
        signature = run_signature(
            fingerprint,
            self.method,
            self.weights_hash,
            mpp=self.mpp,
            tissue=self.tissue,
            stain=self.stain.as_dict() if isinstance(self.stain, StainStats) else self.stain,
            precision=self.precision,
        )
        if self.regions is not None:  # absent otherwise, as in outputs made before regions
            signature["regions"] = self.regions.digest()
        return signature

    def detector(self, options: ExecOptions) -> DetectorSpec:
        """The picklable recipe of the resident detector that computes this run."""
        return DetectorSpec(
            self.method,
            weights=self.weights,
            device=options.device,
            tile=options.tile,
            batch_size=options.batch_size,
            allow_pickle=options.allow_pickle,
            precision=self.precision,
        )


def run_signature(
    fingerprint: str,
    method: Method,
    weights_hash: str | None,
    *,
    mpp: float | str | None,
    tissue: bool,
    stain: bool | dict[str, Any] = False,
    precision: str = "auto",
) -> dict[str, Any]:
    """What determines a slide's detections (a JSON-able dict, compared for equality).

    ``stain`` is False, True (normalised to the weights' own reference, which their hash
    identifies) or the reference statistics given. ``precision`` is the one asked for
    (``auto`` means fp16 on CUDA and fp32 or bf16 on a CPU, see :mod:`wsidet.inference.precision`).
    ``mpp="auto"`` is recorded with what decides the estimate (its calibration and windows),
    so outputs made by another estimator are not reused.
    """
    if mpp == "auto":
        from wsidet.slide.nucleus_scale import NUCLEUS_SIGMA_UM
        from wsidet.slide.scale_check import MIN_WINDOWS, WINDOW, WINDOWS

        mpp = f"auto (σ {NUCLEUS_SIGMA_UM} µm, {MIN_WINDOWS}/{WINDOWS} windows of {WINDOW})"
    return {
        "slide": fingerprint,
        "method": method.name,
        "params": method.params(),
        "weights_hash": weights_hash,
        "mpp": mpp,
        "tissue": bool(tissue),
        "stain": stain,
        "precision": precision,
    }
