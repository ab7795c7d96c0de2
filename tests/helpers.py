"""What several test modules share: the tiny demo data set's sizes, the tiny training options, weight perturbation.

The session fixtures built from these live in conftest.py.
"""

from __future__ import annotations

import torch

from flowad.data.synthetic import CATEGORIES, DEFECTS

DEMO_SEED = 1
DEMO_SIZES = {"image_size": 64, "n_train": 10, "n_test_good": 3, "n_test_per_defect": 2}
"""The shared demo data set: both categories, 64 x 64 images, 10 good training images (8 train, 2 validate)."""
DEMO_TEST_IMAGES = {
    c: DEMO_SIZES["n_test_good"] + len(DEFECTS[c]) * DEMO_SIZES["n_test_per_defect"] for c in CATEGORIES
}
"""The number of test images of each category of the demo data set."""

TINY_TRAIN = ["--image-size", "64", "--epochs", "1", "--batch-size", "4", "--quiet"]
"""Command line options of a tiny training run: one epoch of two steps on the demo data set."""


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
