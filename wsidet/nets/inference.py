"""A trained network made cheaper to run: batch norm folded into convolutions, in-place ReLUs.

Both are exact up to floating-point rounding: in eval mode a batch norm is an affine map per
channel, which folds into the weights and bias of the convolution before it; an activation
whose input nothing else reads can overwrite it. Folding saves one pass over every feature map
and the memory of its output; in-place activations save another. Only adjacent
(convolution, batch norm) pairs inside an ``nn.Sequential`` are folded, and only activations
inside an ``nn.Sequential`` right after a convolution (their input is its fresh output) or the
activation of a residual sum are made in-place, so no tensor a ``forward`` reuses is
overwritten.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from wsidet.nets.blocks import ResidualUnit

_INPLACE = (nn.ReLU, nn.ELU, nn.LeakyReLU, nn.ReLU6)


def fold_batch_norms(network: nn.Module) -> int:
    """Fold every batch norm that follows a convolution in a ``Sequential``, in place.

    The network must be in eval mode (the running statistics are folded).

    Returns
    -------
    int
        Batch norms folded.
    """
    if network.training:
        raise ValueError("fold batch norms of a network in eval mode only")
    folded = 0
    for module in network.modules():
        if not isinstance(module, nn.Sequential):
            continue
        layers = list(module)
        for i in range(len(layers) - 1):
            conv, bn = layers[i], layers[i + 1]
            if isinstance(conv, nn.Conv2d | nn.ConvTranspose2d) and isinstance(bn, nn.BatchNorm2d):
                fused = fuse_conv_bn_eval(conv, bn, transpose=isinstance(conv, nn.ConvTranspose2d))
                module[i] = fused
                module[i + 1] = nn.Identity()
                layers[i], layers[i + 1] = fused, module[i + 1]
                folded += 1
    return folded


def inplace_activations(network: nn.Module) -> int:
    """Make activations whose input nothing else reads work in place.

    Returns
    -------
    int
        Activations changed.
    """
    changed = 0
    for module in network.modules():
        candidates: list[nn.Module] = []
        if isinstance(module, nn.Sequential):
            candidates = [layer for i, layer in enumerate(module) if _fresh_input(module, i)]
        elif isinstance(module, ResidualUnit):
            candidates = [module.act]
        for layer in candidates:
            if isinstance(layer, _INPLACE) and not layer.inplace:
                layer.inplace = True
                changed += 1
    return changed


def _fresh_input(sequence: nn.Sequential, index: int) -> bool:
    """Whether layer ``index`` receives a tensor made by a layer before it in ``sequence``."""
    for layer in reversed(list(sequence)[:index]):
        if isinstance(layer, nn.Identity):
            continue  # a folded batch norm passes its convolution's output through
        return isinstance(layer, nn.Conv2d | nn.ConvTranspose2d | nn.BatchNorm2d | nn.Linear)
    return False


def prepare_for_inference(network: nn.Module, *, channels_last: bool) -> nn.Module:
    """Eval mode, batch norms folded, in-place activations, optionally channels-last weights.

    Modifies ``network`` and returns it; use on a network built for inference only.
    """
    network.eval()
    with torch.no_grad():
        fold_batch_norms(network)
    inplace_activations(network)
    if channels_last:
        network = network.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return network
