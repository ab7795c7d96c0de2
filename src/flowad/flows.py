"""Invertible building blocks shared by every model: the affine coupling block and flow chains.

One image (or one feature fiber) goes in, a latent of the same shape comes out, together with the
per-sample log|det| of the Jacobian. Every block has an exact inverse, so the models can be checked
by reconstructing their input from their latents.

The coupling block is the Glow-style "all in one" block described in the project's model notes:
an affine coupling with a soft-clamped scale, then a learned global affine and a fixed channel
permutation (a shuffle, or a random rotation with ``permute_soft``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

SubnetFactory = Callable[[int, int], nn.Module]
"""Builds a subnet from (input channels, output channels)."""

# softplus_beta=0.5 scaled by 0.1 is 1 at this raw value, so the global scale starts as identity.
_GLOBAL_SCALE_INIT = 2.0 * math.log(math.exp(5.0) - 1.0)


class PointwiseConv(nn.Conv2d):
    """A 1x1 convolution computed as one batched matrix product (the same weights and initialisation as
    ``nn.Conv2d(c_in, c_out, 1)``): PyTorch's CPU convolution takes a slow path for 1x1 kernels with few
    channels, several times slower than the product."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        weight = self.weight.view(1, self.out_channels, c).expand(b, -1, -1)
        return torch.baddbmm(self.bias.view(1, -1, 1), weight, x.reshape(b, c, h * w)).view(b, -1, h, w)


def conv_subnet(kernel_size: int, hidden_ratio: float) -> SubnetFactory:
    """conv(k) -> ReLU -> conv(k) with 'same' padding; hidden channels = input channels * ratio."""

    def conv(c_in: int, c_out: int) -> nn.Module:
        return PointwiseConv(c_in, c_out) if kernel_size == 1 else nn.Conv2d(c_in, c_out, kernel_size, padding="same")

    def make(in_channels: int, out_channels: int) -> nn.Module:
        hidden = max(int(in_channels * hidden_ratio), 1)
        return nn.Sequential(conv(in_channels, hidden), nn.ReLU(), conv(hidden, out_channels))

    return make


def linear_subnet(hidden_ratio: float = 2.0) -> SubnetFactory:
    """Linear -> ReLU -> Linear for flows over feature vectors (CFLOW-AD's fibers)."""

    def make(in_channels: int, out_channels: int) -> nn.Module:
        hidden = max(int(in_channels * hidden_ratio), 1)
        return nn.Sequential(nn.Linear(in_channels, hidden), nn.ReLU(), nn.Linear(hidden, out_channels))

    return make


class AffineCoupling(nn.Module):
    """Affine coupling + global affine + fixed permutation, exactly invertible.

    Works on (B, C) vectors and on (B, C, H, W) maps alike; a condition, if given, is concatenated
    to the untouched half before the subnet (same layout as the input).
    """

    def __init__(
        self,
        channels: int,
        subnet: SubnetFactory,
        clamp: float = 2.0,
        permute_soft: bool = False,
        condition_channels: int = 0,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        if channels < 2:
            raise ValueError(f"a coupling block needs at least 2 channels, got {channels}")
        self.channels = channels
        self.keep = channels - channels // 2  # x1: the first ceil(C/2) channels pass through
        self.change = channels // 2
        self.clamp = clamp
        self.subnet = subnet(self.keep + condition_channels, 2 * self.change)
        self.global_scale = nn.Parameter(torch.full((channels,), _GLOBAL_SCALE_INIT))
        self.global_offset = nn.Parameter(torch.zeros(channels))

        rng = np.random.default_rng(seed)
        if permute_soft:
            if channels > 512:
                warnings.warn(
                    f"permute_soft with {channels} channels: a dense {channels}x{channels} rotation "
                    "per block is slow; consider permute_soft=False",
                    stacklevel=2,
                )
            rotation = _random_rotation(channels, rng)
            self.register_buffer("rotation", torch.from_numpy(rotation).float())
            self.register_buffer("perm", None)
        else:
            perm = torch.from_numpy(rng.permutation(channels))
            self.register_buffer("perm", perm)
            self.register_buffer("perm_inverse", torch.argsort(perm))
            self.register_buffer("rotation", None)

    def _scale(self) -> torch.Tensor:
        # 0.1 * softplus with beta 0.5, written with the plain softplus so it exports to ONNX
        return 0.2 * F.softplus(0.5 * self.global_scale)

    def _coefficients(self, x1: torch.Tensor, condition: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        inp = x1 if condition is None else torch.cat([x1, condition], dim=1)
        a = 0.1 * self.subnet(inp)  # scaled down so a fresh block is close to the identity
        log_scale = self.clamp * torch.tanh(a[:, : self.change])
        return log_scale, a[:, self.change :]

    def _mix(self, x: torch.Tensor, inverse: bool) -> torch.Tensor:
        if self.perm is not None:
            return x[:, self.perm_inverse if inverse else self.perm]
        w = self.rotation.t() if inverse else self.rotation  # orthogonal: inverse is the transpose
        if x.dim() == 2:
            return x @ w.t()
        return torch.einsum("oc,bc...->bo...", w, x)

    def forward(self, x: torch.Tensor, condition: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (y, log|det J|) with log|det J| of shape (B,)."""
        if _exporting():
            return self.reference_forward(x, condition)
        x1, x2 = x[:, : self.keep], x[:, self.keep :]
        inp = x1 if condition is None else torch.cat([x1, condition], dim=1)
        y2, log_det = _ScaleAndShift.apply(self.subnet(inp), x2, self.clamp)
        scale = self._scale()
        log_det = log_det + x[0, 0].numel() * torch.log(scale).sum()
        if self.perm is None:
            y = torch.addcmul(_per_channel(self.global_offset, x), torch.cat([x1, y2], dim=1), _per_channel(scale, x))
            return self._mix(y, inverse=False), log_det
        return _AffineShuffle.apply(x1, y2, scale, self.global_offset, self.perm, self.perm_inverse), log_det

    def reference_forward(
        self, x: torch.Tensor, condition: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``forward`` op by op with autograd's own gradients: what the fused path is tested against,
        and what ONNX export traces."""
        x1, x2 = x[:, : self.keep], x[:, self.keep :]
        log_scale, shift = self._coefficients(x1, condition)
        y2 = torch.addcmul(shift, x2, torch.exp(log_scale))  # fused x2 * exp(s) + t
        log_det = log_scale.flatten(1).sum(1)

        scale = self._scale()
        y = torch.addcmul(_per_channel(self.global_offset, x), torch.cat([x1, y2], dim=1), _per_channel(scale, x))
        pixels = x[0, 0].numel()
        log_det = log_det + pixels * torch.log(scale).sum()
        return self._mix(y, inverse=False), log_det

    def inverse(self, y: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        y = self._mix(y, inverse=True)
        y = (y - _per_channel(self.global_offset, y)) / _per_channel(self._scale(), y)
        y1, y2 = y[:, : self.keep], y[:, self.keep :]
        log_scale, shift = self._coefficients(y1, condition)
        return torch.cat([y1, (y2 - shift) * torch.exp(-log_scale)], dim=1)


def _exporting() -> bool:
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


def _per_channel(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(1, -1, *([1] * (like.dim() - 2)))


# The coupling's elementwise work (tanh, exp, scale, shift, shuffle) costs as much as its convolutions when
# autograd records it op by op: each op allocates its output and its gradient. The two functions below do
# the same maths with a hand-written backward and a third of the allocations; tests compare both paths.


class _ScaleAndShift(torch.autograd.Function):
    """(a, x2) -> (x2 * exp(s) + 0.1 a_t, sum of s per sample), s = clamp * tanh(0.1 a_s), a = [a_s, a_t]."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, x2: torch.Tensor, clamp: float) -> tuple[torch.Tensor, torch.Tensor]:
        change = x2.shape[1]
        t = torch.tanh(a[:, :change] * 0.1)
        e = torch.exp(t * clamp)
        y2 = torch.mul(a[:, change:], 0.1).addcmul_(x2, e)
        ctx.save_for_backward(x2, t, e)
        ctx.clamp = clamp
        return y2, t.flatten(1).sum(1) * clamp

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y2: torch.Tensor, grad_log_det: torch.Tensor):
        x2, t, e = ctx.saved_tensors
        change = x2.shape[1]
        grad_a = grad_y2.new_empty((x2.shape[0], 2 * change, *x2.shape[2:]))
        grad_x2 = grad_y2 * e
        grad_s = torch.mul(grad_x2, x2, out=grad_a[:, :change])  # d/ds of x2 * exp(s)
        grad_s.add_(grad_log_det.view(-1, *([1] * (x2.dim() - 1))))  # autograd passes zeros when unused
        grad_s.mul_(torch.square(t).neg_().add_(1.0)).mul_(0.1 * ctx.clamp)  # through clamp * tanh(0.1 a_s)
        torch.mul(grad_y2, 0.1, out=grad_a[:, change:])
        return grad_a, grad_x2, None


class _AffineShuffle(torch.autograd.Function):
    """(x1, y2) -> (scale * [x1, y2] + offset)[:, perm]: the global affine and the channel shuffle at once."""

    @staticmethod
    def forward(ctx, x1, y2, scale, offset, perm, perm_inverse) -> torch.Tensor:
        keep = x1.shape[1]
        out = x1.new_empty((x1.shape[0], keep + y2.shape[1], *x1.shape[2:]))
        out.index_copy_(1, perm_inverse[:keep], x1)  # input channel j lands at output channel perm_inverse[j]
        out.index_copy_(1, perm_inverse[keep:], y2)
        out.mul_(_per_channel(scale[perm], out)).add_(_per_channel(offset[perm], out))
        ctx.save_for_backward(x1, y2, scale, perm_inverse)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        x1, y2, scale, perm_inverse = ctx.saved_tensors
        keep = x1.shape[1]
        grad = grad_out.index_select(1, perm_inverse)  # back to the input's channel order
        dims = [0, *range(2, grad.dim())]
        grad_offset = grad.sum(dims)
        grad_scale = torch.cat([(grad[:, :keep] * x1).sum(dims), (grad[:, keep:] * y2).sum(dims)])
        grad.mul_(_per_channel(scale, grad))
        return grad[:, :keep], grad[:, keep:], grad_scale, grad_offset, None, None


def _random_rotation(n: int, rng: np.random.Generator) -> np.ndarray:
    """A random orthogonal matrix (QR of a Gaussian matrix with the sign fix for uniformity)."""
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))


class FlowChain(nn.Module):
    """A sequence of coupling blocks; log-determinants add up."""

    def __init__(self, blocks: Sequence[AffineCoupling]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor, condition: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        log_det = x.new_zeros(x.shape[0])
        for block in self.blocks:
            x, block_log_det = block(x, condition)
            log_det = log_det + block_log_det
        return x, log_det

    def inverse(self, z: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        for block in reversed(self.blocks):
            z = block.inverse(z, condition)
        return z


def conv_flow(
    channels: int,
    steps: int,
    clamp: float = 2.0,
    hidden_ratio: float = 1.0,
    conv3x3_only: bool = False,
    permute_soft: bool = False,
    seed: int = 0,
) -> FlowChain:
    """A 2D flow: ``steps`` coupling blocks whose conv subnets alternate kernels 3 and 1."""
    blocks = []
    for i in range(steps):
        kernel = 3 if conv3x3_only or i % 2 == 0 else 1
        blocks.append(AffineCoupling(channels, conv_subnet(kernel, hidden_ratio), clamp, permute_soft, seed=seed + i))
    return FlowChain(blocks)


def gaussian_nll(z: torch.Tensor) -> torch.Tensor:
    """0.5 * sum(z^2) per sample: the negative log-density of N(0, I) up to its constant."""
    return 0.5 * z.pow(2).flatten(1).sum(1)
