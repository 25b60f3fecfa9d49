"""Receptive-field bookkeeping for the networks in :mod:`wsidet.nets`.

Each architecture's receptive radius is computed from its layer configuration, without torch,
in :mod:`wsidet.nets.geometry` (which its network uses too). A :class:`Reach` tracks, for
feature pixel ``i`` of a map with stride ``jump``, the interval of input pixels
``[jump * i + lo, jump * i + hi]`` it depends on; layers transform the interval exactly
(pooling and stride-2 transposed convolutions are asymmetric, so a symmetric radius would
overstate them), and paths that meet at a concatenation or sum take the union. The receptive
radius is the farther end of the final interval. Tests check every method against its network
(perturbing the input beyond the radius changes nothing) and against a linearised probe (the
radius is not overstated).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Reach:
    """Input interval ``[jump * i + lo, jump * i + hi]`` that feature pixel ``i`` depends on.

    Parameters
    ----------
    lo, hi : float
        Offsets in input pixels.
    jump : int
        Input pixels per feature pixel.
    """

    lo: float = 0.0
    hi: float = 0.0
    jump: int = 1

    def conv(self, kernel: int, *, stride: int = 1, dilation: int = 1) -> Reach:
        """A convolution with "same" padding ``kernel // 2`` (even kernels: the larger side)."""
        half = (kernel // 2) * dilation * self.jump
        return Reach(self.lo - half, self.hi + half, self.jump * stride)

    def pool(self, kernel: int = 2, stride: int = 2) -> Reach:
        """Max or average pooling without padding: output ``i`` covers inputs ``s*i .. s*i+k-1``."""
        return Reach(self.lo, self.hi + (kernel - 1) * self.jump, self.jump * stride)

    def up(self, factor: int = 2, kernel: int | None = None) -> Reach:
        """Upsampling: a transposed conv of ``kernel`` (stride ``factor``), or bilinear if None.

        A transposed conv with ``kernel == factor`` gives output ``p`` exactly input
        ``p // factor``; bilinear interpolation (``align_corners=False``) reads the two inputs
        around ``p / factor - 0.25``.
        """
        if self.jump % factor:
            raise ValueError(f"cannot upsample a jump of {self.jump} by {factor}")
        fine = self.jump // factor
        if kernel is None:
            return Reach(self.lo - 1.5 * fine, self.hi + 1.5 * fine, fine)
        # p = factor * i + t with t in [0, kernel): i spans (p - kernel + 1) / factor .. p / factor.
        return Reach(self.lo - (kernel - 1) * fine, self.hi, fine)

    def union(self, *others: Reach) -> Reach:
        """Paths meeting at a concatenation or sum (all at the same jump)."""
        for other in others:
            if other.jump != self.jump:
                raise ValueError(f"cannot merge jumps {self.jump} and {other.jump}")
        every = (self, *others)
        return Reach(min(r.lo for r in every), max(r.hi for r in every), self.jump)

    def widen(self, radius: float) -> Reach:
        """A fixed filter of ``radius`` input pixels at this resolution."""
        return Reach(self.lo - radius, self.hi + radius, self.jump)

    @property
    def pixels(self) -> int:
        """Receptive radius in whole input pixels."""
        return math.ceil(max(-self.lo, self.hi))
