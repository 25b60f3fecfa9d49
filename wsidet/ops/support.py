"""How far each decoder reads its maps: the decoders' half of a method's halo (no torch).

Pure integer functions, kept apart from the torch decoders they describe
(:mod:`wsidet.ops.peaks`, :mod:`wsidet.ops.deconv`, which re-export them) so that a method's
halo can be computed without importing torch.
"""

from __future__ import annotations


def support(min_distance: int) -> int:
    """Map context (px each side) that deciding one peak of :func:`.peaks.local_maxima` reads.

    A peak reads its own window (``m``); breaking a tie reads whether its tied neighbours (up
    to ``m`` away) are candidates, which reads their windows (``2 m``); the sub-pixel fit reads
    the 3×3 neighbourhood.
    """
    return max(2 * int(min_distance), 1)


def deconv_support(psf_radius: int, iterations: int) -> int:
    """Pixels of context one output pixel of :func:`~wsidet.ops.deconv.richardson_lucy` reads."""
    return 2 * psf_radius * iterations


def region_support(max_extent: int) -> int:
    """Pixels of context deciding whether a pixel's region is small reads (labels, then size)."""
    return 3 * max_extent + 2


def centroid_support(max_extent: int, min_distance: int) -> int:
    """Pixels of context one point of :func:`~wsidet.ops.deconv.region_centroids` reads.

    A point of a large component is a peak, and a peak's fate reads whether each pixel within
    :func:`support` of it belongs to a large component, which reads that pixel's own
    :func:`region_support`: the two add up.
    """
    return region_support(max_extent) + support(min_distance)
