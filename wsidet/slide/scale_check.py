"""Is the slide's pixel size right? An estimate from its nuclei, and a density plausibility rule.

A slide read at the wrong pixel size gives nuclei of the wrong size to a detector that was
trained at one scale, and it fails quietly (0 or a few hundred nuclei reported as success).
:func:`estimate_slide_mpp` measures the nuclei of a few tissue windows of level 0
(:mod:`wsidet.slide.nucleus_scale`); :func:`check_mpp` compares a pixel size with it;
:func:`density_problem` flags a detection density no H&E tissue has.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from wsidet.slide.nucleus_scale import ScaleEstimate, estimate_from_energies, scale_energy
from wsidet.slide.wsi import Slide

#: Windows read (level 0, pixels a side), how many, and how many must show nuclei.
WINDOW = 512
WINDOWS = 6
MIN_WINDOWS = 3

#: Beyond this factor between a pixel size and the estimate, a run warns.
DISAGREEMENT = 1.5

#: Nuclei per mm² of tissue outside which a run warns. H&E tissue holds about 1,000
#: (fat, loose stroma) to 20,000 (lymphoid tissue, dense tumour) nuclei per mm²: nuclei are
#: 5-10 µm across, and packed edge to edge (10 µm apart) they would be 10,000 per mm² in a
#: square grid, up to ~25,000 for small lymphocytes. CRCHisto's annotated images hold 300-4,800
#: per mm² (1 to 1,191 nuclei on 0.0625 mm²), MoNuSeg's 13 annotated images 3,000-10,000.
#: The bounds leave a factor of 3-4 below and above before calling a density implausible: a
#: pixel size wrong by 2× moves the density 4× and usually drives the detector to near zero.
DENSITY_PER_MM2 = (100.0, 60_000.0)


def _window_origins(slide: Slide, count: int, size: int, seed: int) -> list[tuple[int, int]]:
    """Level-0 origins of ``count`` windows centred on tissue (random, reproducible).

    None when the slide has no tissue.
    """
    mask = slide.tissue_mask()
    h, w = slide.shape
    ys, xs = np.nonzero(mask.mask)
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(ys), size=min(count, len(ys)), replace=False)
    dy, dx = mask.downsample
    origins = []
    for i in picks:
        cy, cx = (ys[i] + 0.5) * dy, (xs[i] + 0.5) * dx
        y0 = int(min(max(0, cy - size / 2), max(0, h - size)))
        x0 = int(min(max(0, cx - size / 2), max(0, w - size)))
        origins.append((y0, x0))
    return origins


def estimate_slide_mpp(
    slide: Slide, *, windows: int = WINDOWS, size: int = WINDOW, seed: int = 0
) -> ScaleEstimate:
    """Estimate a slide's level-0 pixel size from the nuclei of a few tissue windows.

    Parameters
    ----------
    slide : Slide
    windows : int
        Windows read (random tissue positions, fixed by ``seed``).
    size : int
        Window edge in level-0 pixels.
    seed : int

    Returns
    -------
    ScaleEstimate
        ``mpp`` is nan when fewer than :data:`MIN_WINDOWS` windows show nuclei (a slide
        without tissue, or not H&E).
    """
    energies: list[npt.NDArray[np.float64]] = []
    for y0, x0 in _window_origins(slide, windows, size, seed):
        rgb = slide.read_region(y0, x0, size, size)
        if min(rgb.shape[:2]) >= 32:
            energies.append(scale_energy(rgb))
    return estimate_from_energies(energies, min_windows=min(MIN_WINDOWS, windows))


def mpp_disagreement(mpp: float, estimate: ScaleEstimate, what: str) -> str | None:
    """A one-line warning when ``mpp`` is more than :data:`DISAGREEMENT` off the estimate.

    Parameters
    ----------
    mpp : float
        Level-0 µm/px in use.
    estimate : ScaleEstimate
    what : str
        Where ``mpp`` came from ("the file's", "--mpp"), for the message.
    """
    if not estimate.disagrees(mpp, DISAGREEMENT):
        return None
    return (
        f"{what} pixel size {mpp:.3g} µm/px is {_factor(mpp, estimate.mpp)} the "
        f"{estimate.mpp:.2g} µm/px its nuclei suggest; detections are likely wrong "
        "(check the scan's magnification, or pass --mpp auto)"
    )


def _factor(a: float, b: float) -> str:
    ratio = a / b
    return f"{ratio:.1f}x" if ratio >= 1 else f"1/{1 / ratio:.1f} of"


def density_problem(count: int, tissue_mm2: float) -> str | None:
    """A one-line warning when ``count`` nuclei on ``tissue_mm2`` is implausible for H&E.

    See :data:`DENSITY_PER_MM2` for the rule and where its bounds come from. Too little
    tissue (under 0.05 mm², a few hundred nuclei) says nothing and is not judged.
    """
    if tissue_mm2 < 0.05 or not math.isfinite(tissue_mm2):
        return None
    density = count / tissue_mm2
    lo, hi = DENSITY_PER_MM2
    if lo <= density <= hi:
        return None
    side = "below" if density < lo else "above"
    return (
        f"{count} nuclei on {tissue_mm2:.3g} mm² of tissue is {density:,.0f} per mm², "
        f"{side} what H&E tissue holds ({lo:,.0f}-{hi:,.0f}); is the pixel size right?"
    )


#: ``mpp`` value asking for the pixel size to be estimated from the slide's nuclei.
AUTO = "auto"


def resolve_mpp(
    slide: Slide, mpp: float | str | None, *, check: bool = True
) -> tuple[Slide, ScaleEstimate | None, tuple[str, ...]]:
    """The slide at the pixel size a run should use, the estimate, and warnings about it.

    Parameters
    ----------
    slide : Slide
        As opened (with a numeric ``mpp`` override already applied, if any).
    mpp : float, "auto" or None
        What the caller asked: a number (already applied), :data:`AUTO` (use the file's
        value where the nuclei agree with it, else the estimate), or None (the file's).
    check : bool
        Estimate and compare even when the pixel size is known (a few windows are read).

    Returns
    -------
    slide, estimate, warnings
        ``estimate`` is None when not computed.

    Raises
    ------
    MppUnknownError
        No pixel size and none asked (the message names the estimate), or ``"auto"`` and
        the slide's nuclei give none.
    """
    from wsidet.errors import MppUnknownError, ParameterError

    if isinstance(mpp, str) and mpp != AUTO:
        raise ParameterError(f"mpp must be a number or {AUTO!r}, got {mpp!r}")
    if slide.mpp is not None and not check and mpp != AUTO:
        return slide, None, ()
    estimate = estimate_slide_mpp(slide)
    known = math.isfinite(estimate.mpp)
    if mpp == AUTO:
        agrees = not known or not estimate.disagrees(slide.mpp or 0.0, DISAGREEMENT)
        if slide.mpp is not None and slide.mpp_source == "file" and agrees:
            return slide, estimate, ()
        if not known:
            raise MppUnknownError(
                f"slide {str(slide.path)!r}: no nucleus-like structure to estimate its pixel "
                "size from; give it with --mpp"
            )
        warnings: tuple[str, ...] = ()
        if slide.mpp is not None:
            warnings = (
                f"the file's pixel size {slide.mpp:.3g} µm/px is {_factor(slide.mpp, estimate.mpp)}"
                f" the {estimate.mpp:.2g} µm/px its nuclei suggest; using the estimate "
                "(--mpp auto)",
            )
        return slide.with_mpp(round(estimate.mpp, 4), "estimated"), estimate, warnings
    if slide.mpp is None:
        hint = (
            f"its nuclei suggest about {estimate.mpp:.2g} µm/px: pass --mpp {estimate.mpp:.2g}, "
            "or --mpp auto to use the estimate"
            if known
            else "no estimate could be made from its nuclei"
        )
        raise MppUnknownError(
            f"slide {str(slide.path)!r} has no pixel size in its metadata; {hint}"
        )
    what = "the file's" if slide.mpp_source == "file" else "the given (--mpp)"
    problem = mpp_disagreement(slide.mpp, estimate, what)
    return slide, estimate, (problem,) if problem else ()
