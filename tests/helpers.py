"""What several test modules share: weight perturbation."""

from __future__ import annotations

import torch


def perturb(module: torch.nn.Module, scale: float, seed: int = 0) -> torch.nn.Module:
    """Add ``scale`` times standard normal noise to every trainable parameter of ``module``; returns ``module``.

    A fresh flow is close to the identity, where many mistakes cancel out: the noise moves it away, so that the
    checks mean something. It is drawn from a generator of its own (``seed``), in each parameter's dtype; frozen
    parameters (a backbone's) are left alone.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad:
                p.add_(scale * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    return module
