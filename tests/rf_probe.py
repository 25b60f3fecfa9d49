"""Exact receptive radius of a network by a linearised probe (tests only).

Activations become identities, max pooling becomes average pooling (same window), batch norm an
identity, weights positive constants: every path from an input pixel to an output pixel then
carries a positive gradient, so the gradient's support is the full dependency support of the
original network (which can only be smaller where ReLUs are off).
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def linearised(net: nn.Module) -> nn.Module:
    net = copy.deepcopy(net).double().eval()
    for module in list(net.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.ReLU | nn.ELU | nn.Dropout | nn.Dropout2d | nn.Sigmoid):
                setattr(module, name, nn.Identity())
            elif isinstance(child, nn.MaxPool2d):
                setattr(module, name, nn.AvgPool2d(child.kernel_size, child.stride))
            elif isinstance(child, nn.BatchNorm2d):
                setattr(module, name, nn.Identity())
    for name, p in net.named_parameters():
        if p.dim() > 1:
            p.data = torch.full_like(p.data, 1.0 / p.data[0].numel())
        else:
            p.data = torch.zeros_like(p.data) if name.endswith("bias") else torch.ones_like(p.data)
    return net


def probe_radius(net: nn.Module, stride: int, radius_hint: int) -> int:
    """Largest Chebyshev distance of an input pixel any output pixel depends on (all phases)."""
    lin = linearised(net)
    size = 2 * radius_hint + 4 * stride + 16
    size += (-size) % stride
    base = (size // 2) // stride * stride
    worst = 0
    for phase in range(stride):
        c = base + phase
        x = torch.ones(1, 3, size, size, dtype=torch.float64, requires_grad=True)
        out = lin(x)
        sum(v[0, :, c, c].sum() for v in out.values()).backward()
        grad = x.grad[0].abs().sum(0)
        # Relative threshold: sums of +1 and -1 (cumulative-sum box filters) leave ~1e-17.
        ys, xs = torch.nonzero(grad > grad.max() * 1e-9, as_tuple=True)
        worst = max(worst, int(torch.maximum((ys - c).abs(), (xs - c).abs()).max()))
    return worst
