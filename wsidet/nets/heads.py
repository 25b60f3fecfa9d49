"""Small wrappers that give every network the contract's output type: a dict of maps."""

from __future__ import annotations

import torch
from torch import nn


class DictOutput(nn.Module):
    """Wrap a module returning one (N, C, H, W) tensor so it returns ``{name: tensor}``.

    Parameters
    ----------
    body : nn.Module
    name : str
        Key of the output map.
    """

    def __init__(self, body: nn.Module, name: str) -> None:
        super().__init__()
        self.body = body
        self.name = name

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run the body and name its output."""
        return {self.name: self.body(x)}
