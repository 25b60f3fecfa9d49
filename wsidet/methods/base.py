"""The Method contract: four pure pieces plus the facts the pipeline needs.

A detection method is a frozen dataclass whose fields are its parameters (defaults from its
paper), so a method value is hashable, comparable and can be rebuilt from its ``params()``:

=========================================  =============================================
``encode(points_yx, shape)``               training targets from dot annotations
``build_network()``                        a fully convolutional ``torch.nn.Module``
``loss(outputs, targets)``                 the paper's loss
``decode(outputs, **params)``              maps -> (points_yx, scores), torch ops on the device
``halo``, ``mpp``, ``stride``              facts the pipeline needs
``ideal_outputs(targets)``                 what a perfectly trained network would output
``aggregate(outputs)``                     per-pixel quantities summed per chunk (counts)
=========================================  =============================================

Conventions: arrays are (row, col); points are ``yx`` float arrays of shape (n, 2) in pixel
indices (pixel centres are integers). Networks take float RGB in [0, 1] of shape (N, 3, H, W)
and return a dict of maps of shape (N, C, H, W) at the input resolution; method-specific input
normalisation lives inside the network so training and inference cannot disagree. ``decode``
takes one image's maps, a dict of (C, H, W) tensors.

The halo is computed, never guessed: the network's receptive radius plus the decoder's support
(how far a decoded point depends on map values around it). A point decoded from a block that
includes the halo is therefore the point a whole-image pass would decode. Both are pure functions
of the parameters: the receptive radius and stride come from the layer configuration
(:mod:`wsidet.nets.geometry`, which the networks use too), so reading a method's halo builds no
network and imports no torch.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import numpy.typing as npt

from wsidet.errors import NotTrainableError, ParameterError

if TYPE_CHECKING:
    import torch


@dataclasses.dataclass(frozen=True)
class Method(abc.ABC):
    """Base class of detection methods; subclasses are frozen dataclasses of parameters.

    Parameters
    ----------
    mpp : float
        Micrometres per pixel the network expects; slides are read at this scale.
    """

    #: Registry name (``wsidet run --method NAME``).
    name: ClassVar[str]
    #: One line shown by ``wsidet methods``.
    summary: ClassVar[str] = ""
    #: Paper file in ``shared/papers`` the method follows.
    paper: ClassVar[str] = ""
    #: Whether the network has parameters to learn (and so takes ``--weights``).
    trainable: ClassVar[bool] = True
    #: Names of the parameters that only change decoding (cheap to sweep in evaluation).
    decode_params: ClassVar[tuple[str, ...]] = ()
    #: The decoding parameter that trades precision for recall (chosen on validation data).
    threshold_param: ClassVar[str] = "threshold"

    mpp: float = 0.5

    def __post_init__(self) -> None:
        if not (isinstance(self.mpp, int | float) and math.isfinite(self.mpp) and self.mpp > 0):
            raise ParameterError(f"{self.name}: mpp must be a positive number, got {self.mpp!r}")

    # ---- facts -------------------------------------------------------------------------------
    @property
    @abc.abstractmethod
    def receptive_radius(self) -> int:
        """Pixels of input context on each side that one output pixel of the network uses.

        A pure function of the parameters (the methods use :mod:`wsidet.nets.geometry`, as their
        networks do): no network is built.
        """

    @property
    @abc.abstractmethod
    def decoder_radius(self) -> int:
        """Pixels of map context on each side that decoding one point uses."""

    @property
    def stride(self) -> int:
        """Input sizes and block origins must be multiples of this (network downsampling).

        1 unless a method's network downsamples; like :attr:`receptive_radius`, computed from
        the parameters without building the network.
        """
        return 1

    @property
    def halo(self) -> int:
        """Context each block needs so tiled detection equals whole-image detection."""
        total = self.receptive_radius + self.decoder_radius
        return math.ceil(total / self.stride) * self.stride

    # ---- the four pieces ---------------------------------------------------------------------
    @abc.abstractmethod
    def build_network(self) -> torch.nn.Module:
        """The network, fully convolutional, returning a dict of (N, C, H, W) maps."""

    @property
    def targets_mirror_image_edges(self) -> bool:
        """Whether training mirrors dots across their image's edges before :meth:`encode`.

        So a target keeps all of each dot's mass inside the image, for a method that counts
        by the integral of its output. Off by default.
        """
        return False

    def encode(
        self, points_yx: npt.NDArray[np.floating[Any]], shape: tuple[int, int]
    ) -> dict[str, npt.NDArray[np.float32]]:
        """Training targets from dot annotations.

        Parameters
        ----------
        points_yx : ndarray, shape (n, 2)
            Annotated centres in pixel indices of the patch.
        shape : tuple of int
            Patch size (rows, cols).

        Returns
        -------
        dict of str to ndarray, each of shape (C, rows, cols), float32
        """
        raise NotTrainableError(f"method {self.name!r} has nothing to train")

    def loss(
        self, outputs: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor]
    ) -> torch.Tensor:
        """The paper's loss of a batch of outputs against targets from :meth:`encode`."""
        raise NotTrainableError(f"method {self.name!r} has nothing to train")

    def ideal_outputs(self, targets: Mapping[str, Any]) -> dict[str, Any]:
        """The outputs a perfectly trained network would give for these targets.

        The minimiser of :meth:`loss`; by default the targets themselves (for methods whose
        network regresses its targets directly). Used to check ``decode`` against ``encode``.

        Parameters
        ----------
        targets : mapping of str to array, each (C, H, W)

        Returns
        -------
        dict of str to array, each (C, H, W)
        """
        return dict(targets)

    def aggregate(self, outputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-pixel quantities whose sums over a region are reported (e.g. a cell count).

        Parameters
        ----------
        outputs : mapping of str to Tensor, each (C, H, W)

        Returns
        -------
        dict of str to Tensor, each (H, W); empty for methods with nothing to sum.
        """
        return {}

    def decode(
        self, outputs: Mapping[str, torch.Tensor], **params: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Points from one image's maps, with torch ops on the maps' device.

        Parameters
        ----------
        outputs : mapping of str to Tensor, each of shape (C, H, W)
        **params
            Overrides of the method's decode parameters (see ``decode_params``).

        Returns
        -------
        points_yx : Tensor, shape (n, 2), float32
        scores : Tensor, shape (n,), float32

        Raises
        ------
        ParameterError
            A name is not one of ``decode_params``, or a value is invalid.
        """
        method = self.replace_decoding(**params) if params else self
        return method._decode(outputs)

    @abc.abstractmethod
    def _decode(self, outputs: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode with this method's own parameters (see :meth:`decode`)."""

    def threshold_for_score(self, score: float) -> float:
        """The value of ``threshold_param`` that keeps detections scoring above ``score``."""
        return float(score)

    def score_for_threshold(self, threshold: float) -> float:
        """Inverse of :meth:`threshold_for_score`: the score a threshold cuts at."""
        return float(threshold)

    @property
    def threshold_filters_scores(self) -> bool:
        """Whether decoding at a threshold equals decoding at 0 and keeping scores above it.

        True for decoders that apply the threshold to the final scores (peak picking, whose
        candidates above a threshold are nested, ties included; VOCA). Evaluation then decodes
        once per image and filters, instead of decoding at every threshold of a sweep.
        """
        return True

    # ---- parameters --------------------------------------------------------------------------
    @classmethod
    def param_names(cls) -> tuple[str, ...]:
        """Names of the method's parameters."""
        return tuple(f.name for f in dataclasses.fields(cls))

    def params(self) -> dict[str, Any]:
        """Parameters as a JSON-able dict (tuples become lists)."""
        return {
            f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
            for f in dataclasses.fields(self)
        }

    def replace_decoding(self, **params: Any) -> Method:
        """A copy with some decode parameters (``decode_params``) changed.

        Maps computed by this method's network stay valid for the copy, so evaluation can
        sweep these without running the network again; any other parameter would silently
        describe a network that did not make the maps.

        Raises
        ------
        ParameterError
            A name is not one of ``decode_params``, or a value is invalid.
        """
        unknown = sorted(set(params) - set(self.decode_params))
        if unknown:
            known = ", ".join(self.decode_params) or "none"
            raise ParameterError(
                f"method {self.name!r} has no decode parameter {', '.join(map(repr, unknown))}; "
                f"its decode parameters are: {known}"
            )
        return self.replace(**params)

    def replace(self, **params: Any) -> Method:
        """A copy with some parameters changed.

        Raises
        ------
        ParameterError
            A name is not a parameter of this method, or a value is invalid.
        """
        unknown = sorted(set(params) - set(self.param_names()))
        if unknown:
            raise ParameterError(
                f"method {self.name!r} has no parameter {', '.join(map(repr, unknown))}; "
                f"its parameters are: {', '.join(self.param_names())}"
            )
        coerced = {k: _coerce(getattr(self, k), v, self.name, k) for k, v in params.items()}
        return dataclasses.replace(self, **coerced)


def _finite(value: float) -> float:
    # NaN compares false with every threshold: a NaN parameter would silently decode nothing.
    if not math.isfinite(value):
        raise ValueError(value)
    return value


def _coerce(current: Any, value: Any, method: str, key: str) -> Any:
    """Convert a value (e.g. from JSON or the command line) to the type of the default."""
    try:
        if isinstance(current, bool):
            if isinstance(value, str):
                if value.lower() not in {"true", "false", "1", "0", "yes", "no"}:
                    raise ValueError(value)
                return value.lower() in {"true", "1", "yes"}
            return bool(value)
        if isinstance(current, int):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if isinstance(current, float):
            return _finite(float(value))
        if isinstance(current, tuple):
            items = value.split(",") if isinstance(value, str) else list(value)
            kind = type(current[0]) if current else float
            return tuple(_finite(v) if isinstance(v, float) else v for v in map(kind, items))
    except (TypeError, ValueError, OverflowError):
        raise ParameterError(
            f"method {method!r}: parameter {key!r} must be a finite value like {current!r}, "
            f"got {value!r}"
        ) from None
    return value
