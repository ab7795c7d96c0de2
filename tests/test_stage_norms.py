"""The trainable LayerNorms in front of FastFlow's and U-Flow's flows: their affines are part of the likelihood."""

import pytest
import reference
import torch
import torch.nn.functional as F
from helpers import perturb
from torch import nn

from flowad.flows import conv_flow
from flowad.models import build_model
from flowad.models.base import StageNorms
from flowad.models.uflow import UShapedFlow

SHAPES = [(4, 4, 4), (8, 2, 2)]  # tiny (C, H, W) per scale: the Jacobian below is 80 x 80


def _tiny(name: str) -> nn.Module:
    """The model's head (its own ``head`` method) on tiny scales, with random LayerNorm affines of both signs."""
    torch.manual_seed(0)
    model = build_model(name, backbone="resnet18", weights="random", image_size=64, flow_steps=2)
    model.norms = StageNorms([nn.LayerNorm(list(s)) for s in SHAPES])
    if name == "uflow":
        model.flow = UShapedFlow([s[0] for s in SHAPES], flow_steps=2)
    else:
        model.flows = nn.ModuleList(conv_flow(s[0], 2, seed=i) for i, s in enumerate(SHAPES))
    model = perturb(model.double(), 0.2, seed=1)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for norm in model.norms:
            size = torch.empty(norm.weight.shape, dtype=torch.float64).uniform_(0.3, 2.0, generator=g)
            sign = torch.where(torch.rand(norm.weight.shape, generator=g) < 0.3, -1.0, 1.0).double()
            norm.weight.copy_(size * sign)
    return model


@pytest.mark.parametrize("name", ["fastflow", "uflow"])
def test_head_log_det_includes_the_layer_norm_affines(name: str) -> None:
    # the head's log|det| is that of the map (normalised features, before the affines) -> latents:
    # checked against the brute-force Jacobian of affine-then-flow
    model = _tiny(name)
    features = [torch.randn(1, *s, dtype=torch.float64) for s in SHAPES]
    normalised = [F.layer_norm(f, list(f.shape[1:])) for f in features]  # what the LayerNorm sees past its mean/std
    sizes = [f.numel() for f in features]

    def affine_then_flow(flat: torch.Tensor) -> torch.Tensor:
        parts = [p.view(1, *s) for p, s in zip(flat.split(sizes), SHAPES, strict=True)]
        affine = [norm.weight * p + norm.bias for norm, p in zip(model.norms, parts, strict=True)]
        if name == "uflow":
            latents, _ = model.flow(affine)
        else:
            latents = [flow(a)[0] for flow, a in zip(model.flows, affine, strict=True)]
        return torch.cat([z.flatten() for z in latents])

    x = torch.cat([n.flatten() for n in normalised])
    expected = reference.log_abs_det_jacobian(affine_then_flow, x)
    latents, log_det = model.head(features)
    assert float(log_det[0].detach()) == pytest.approx(float(expected), abs=1e-8)
    # the affines' share is not negligible here, so a head that left it out would fail
    assert abs(float(model.norms.log_det().detach())) > 1.0
    assert torch.allclose(torch.cat([z.flatten() for z in latents]), affine_then_flow(x))


def test_identity_norms_add_nothing() -> None:
    norms = StageNorms([nn.Identity(), nn.Identity()])
    features = [torch.randn(2, 3, 4, 4), torch.randn(2, 5, 2, 2)]
    out, log_det = norms(features)
    assert all(torch.equal(a, b) for a, b in zip(out, features, strict=True))
    assert log_det == 0.0
