"""Exceptions raised by wsidet.

Every error is a :class:`WsidetError` and also inherits the built-in exception it refines, so
callers that already catch ``FileNotFoundError`` or ``ValueError`` keep working. Messages are one
line that names the argument, the value received and what is allowed; the CLI prints them as they
are. All classes take a single message argument so that they pickle across dask workers.
"""

from __future__ import annotations


class WsidetError(Exception):
    """Base class of every error wsidet raises on purpose."""


class SlideError(WsidetError):
    """A slide cannot be opened or read."""


class SlideNotFoundError(SlideError, FileNotFoundError):
    """The slide path does not exist or is not a file."""

    def __str__(self) -> str:
        # FileNotFoundError formats (errno, strerror) pairs; keep our one-line message.
        return str(self.args[0]) if self.args else ""


class SlideFormatError(SlideError, ValueError):
    """The file is not a slide wsidet can read (not TIFF-based, or a malformed TIFF)."""


class SlideCorruptError(SlideFormatError):
    """A TIFF slide whose structure is damaged (truncated, forged header): never read around."""


class SlideReadError(SlideError, OSError):
    """Pixel data of an opened slide cannot be read (truncated or corrupt tiles)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class MppUnknownError(SlideError, ValueError):
    """A physical pixel size is needed but the slide has none and no override was given."""


class ScaleError(SlideError, ValueError):
    """A slide cannot be read at the scale a method needs (far too coarse for it)."""


class UnknownMethodError(WsidetError, KeyError):
    """No detection method is registered under the requested name."""

    def __str__(self) -> str:
        # KeyError would quote the message; keep it readable.
        return str(self.args[0]) if self.args else ""


class WeightsError(WsidetError, ValueError):
    """A weights file is missing, unreadable, or does not match the method."""


class GridError(WsidetError, ValueError):
    """A chunking cannot honour the halo or tile alignment it was asked for."""


class OutputExistsError(WsidetError, FileExistsError):
    """An output file exists and overwriting was not requested."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class DetectionsFormatError(WsidetError, ValueError):
    """A file given as detections is in no format wsidet reads."""


class DeviceError(WsidetError, RuntimeError):
    """The requested compute device is not available."""


class ParameterError(WsidetError, ValueError):
    """A method parameter is unknown or has an invalid value."""


class NotTrainableError(WsidetError, TypeError):
    """Training was requested from a method with nothing to learn (e.g. ``log``)."""


class PartialCohortWarning(UserWarning):
    """An output folder read as a cohort is missing slides (failed, unlisted or out of bounds)."""


class MppWarning(UserWarning):
    """A slide's pixel size looks wrong (see :mod:`wsidet.slide.scale_check`).

    Far from what its nuclei suggest, or a detection density no H&E tissue has.
    """
