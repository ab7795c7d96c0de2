"""The coupling block and flow chains: exact inverse, exact log-determinant."""

import pytest
import reference
import torch
from helpers import perturb

from flowad.flows import AffineCoupling, FlowChain, PointwiseConv, conv_flow, conv_subnet, linear_subnet


@pytest.mark.parametrize("permute_soft", [False, True])
@pytest.mark.parametrize("channels", [2, 5, 8])
def test_conv_block_inverts_and_log_det_matches_jacobian(channels: int, permute_soft: bool) -> None:
    torch.manual_seed(0)
    block = AffineCoupling(channels, conv_subnet(3, 1.0), clamp=2.0, permute_soft=permute_soft, seed=1).double()
    perturb(block, 0.5)
    x = torch.randn(3, channels, 4, 5, dtype=torch.float64)
    y, log_det = block(x)
    assert y.shape == x.shape and log_det.shape == (3,)
    # the soft rotation is stored in float32, so it is orthogonal to ~1e-7 only
    tol = 1e-6 if permute_soft else 1e-10
    assert torch.allclose(block.inverse(y), x, atol=tol)
    for i in range(3):
        expected = reference.log_abs_det_jacobian(lambda v: block(v[None])[0][0], x[i])
        assert torch.allclose(log_det[i], expected, atol=100 * tol), (log_det[i], expected)


def test_conditional_vector_block_inverts_and_log_det_matches_jacobian() -> None:
    block = AffineCoupling(7, linear_subnet(2.0), clamp=1.9, permute_soft=True, condition_channels=4, seed=3)
    block = block.double()
    perturb(block, 0.5, seed=2)
    x = torch.randn(6, 7, dtype=torch.float64)
    c = torch.randn(6, 4, dtype=torch.float64)
    y, log_det = block(x, c)
    assert torch.allclose(block.inverse(y, c), x, atol=1e-6)
    for i in range(6):
        expected = reference.log_abs_det_jacobian(lambda v, i=i: block(v[None], c[i : i + 1])[0][0], x[i])
        assert torch.allclose(log_det[i], expected, atol=1e-5)
    # a different condition gives a different output: the condition is used
    assert not torch.allclose(block(x, c + 1)[0], y)


def test_chain_float32_round_trip_and_log_det() -> None:
    flow = conv_flow(6, steps=8, clamp=2.0, hidden_ratio=1.0, seed=0)
    perturb(flow, 0.5, seed=5)
    for block in flow.blocks:  # keep the float32 round trip well conditioned
        block.global_scale.data.fill_(10.0)
    x = torch.randn(2, 6, 8, 8)
    z, log_det = flow(x)
    assert (flow.inverse(z) - x).abs().max() < 1e-4
    flow64 = flow.double()
    x64 = torch.randn(1, 6, 3, 3, dtype=torch.float64)
    expected = reference.log_abs_det_jacobian(lambda v: flow64(v[None])[0][0], x64[0])
    assert torch.allclose(flow64(x64)[1][0], expected, atol=1e-7)


def test_fresh_block_is_close_to_identity_up_to_permutation() -> None:
    block = AffineCoupling(4, conv_subnet(1, 1.0), seed=0)
    x = torch.randn(2, 4, 3, 3)
    y, log_det = block(x)
    # global scale starts at exactly 1 and the offset at 0; the coupling is 0.1-scaled
    assert torch.allclose(block._scale(), torch.ones(4))
    assert torch.allclose(y.sort(dim=1).values, x.sort(dim=1).values, atol=0.5)


def test_kernels_alternate_unless_conv3x3_only() -> None:
    kernels = [b.subnet[0].kernel_size[0] for b in conv_flow(4, 4).blocks]
    assert kernels == [3, 1, 3, 1]
    assert [b.subnet[0].kernel_size[0] for b in conv_flow(4, 3, conv3x3_only=True).blocks] == [3, 3, 3]


def test_soft_permutation_warns_above_512_channels() -> None:
    with pytest.warns(UserWarning, match="permute_soft with 513 channels"):
        AffineCoupling(513, linear_subnet(0.1), permute_soft=True)


def test_chain_of_nothing_is_identity() -> None:
    x = torch.randn(2, 3)
    z, log_det = FlowChain([])(x)
    assert torch.equal(z, x) and torch.equal(log_det, torch.zeros(2))


@pytest.mark.parametrize(
    ("shape", "condition", "permute_soft"),
    [((3, 5, 6, 7), 0, False), ((3, 6, 4, 4), 0, True), ((9, 7), 4, False), ((9, 8), 4, True)],
)
def test_fused_block_matches_the_op_by_op_reference(shape, condition: int, permute_soft: bool) -> None:
    channels = shape[1]
    subnet = linear_subnet(2.0) if len(shape) == 2 else conv_subnet(3, 1.0)
    block = perturb(AffineCoupling(channels, subnet, 1.9, permute_soft, condition, seed=3), 0.5, seed=1).double()
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    c = torch.randn(shape[0], condition, dtype=torch.float64) if condition else None
    results = []
    for forward in (block.forward, block.reference_forward):
        y, log_det = forward(x, c)
        loss = (y.square() * torch.linspace(0.5, 1.5, y.numel(), dtype=y.dtype).view_as(y)).sum() - 3 * log_det.sum()
        grads = torch.autograd.grad(loss, [x, *block.parameters()])
        results.append((y, log_det, grads))
    (y, ld, g), (y_ref, ld_ref, g_ref) = results
    assert torch.allclose(y, y_ref, atol=1e-12) and torch.allclose(ld, ld_ref, atol=1e-10)
    for a, b in zip(g, g_ref, strict=True):
        assert torch.allclose(a, b, atol=1e-10, rtol=1e-9)


def test_fused_block_passes_gradcheck() -> None:
    block = perturb(AffineCoupling(5, conv_subnet(1, 1.0), 2.0, seed=0), 0.5, seed=1).double()
    x = torch.randn(2, 5, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: block(v), (x,))
    assert torch.autograd.gradcheck(lambda v: block(v)[0].sum(), (x,))  # the log-det's gradient unused


def test_pointwise_conv_is_a_1x1_convolution() -> None:
    torch.manual_seed(0)
    pointwise = PointwiseConv(5, 7)
    torch.manual_seed(0)
    reference = torch.nn.Conv2d(5, 7, 1)
    assert torch.equal(pointwise.weight, reference.weight) and torch.equal(pointwise.bias, reference.bias)
    x = torch.randn(3, 5, 4, 6, requires_grad=True)
    y, y_ref = pointwise(x), reference(x)
    assert torch.allclose(y, y_ref, atol=1e-6)
    grads = torch.autograd.grad(y.square().sum(), [x, pointwise.weight, pointwise.bias])
    grads_ref = torch.autograd.grad(y_ref.square().sum(), [x, reference.weight, reference.bias])
    for a, b in zip(grads, grads_ref, strict=True):
        assert torch.allclose(a, b, atol=1e-4)
