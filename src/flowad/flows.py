"""Invertible building blocks shared by every model: the affine coupling block, flow chains, the coupling over
several maps at once, and the positional encoding that conditions a flow on where a feature lies.

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

from flowad.errors import InputError

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


class ChannelNorm(nn.LayerNorm):
    """A LayerNorm over the channels of each position of a (B, C, H, W) map: no statistic crosses images or
    positions, so a map's output never depends on its batch-mates."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def conv_subnet(kernel_size: int, hidden_ratio: float, channel_norm: bool = False) -> SubnetFactory:
    """conv(k) -> ReLU -> conv(k) with 'same' padding; hidden channels = input channels * ratio.
    ``channel_norm`` puts a :class:`ChannelNorm` before the ReLU (MSFlow's subnets)."""

    def conv(c_in: int, c_out: int) -> nn.Module:
        return PointwiseConv(c_in, c_out) if kernel_size == 1 else nn.Conv2d(c_in, c_out, kernel_size, padding="same")

    def make(in_channels: int, out_channels: int) -> nn.Module:
        hidden = max(int(in_channels * hidden_ratio), 1)
        norm = [ChannelNorm(hidden)] if channel_norm else []
        return nn.Sequential(conv(in_channels, hidden), *norm, nn.ReLU(), conv(hidden, out_channels))

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


MultiSubnetFactory = Callable[[list[int], list[int]], nn.Module]
"""Builds a subnet over several maps from (each map's input channels, each map's output channels); the module
takes a list of maps and returns one map per input map, at its size."""


class MultiMapCoupling(nn.Module):
    """An affine coupling over several maps of different sizes at once, exactly invertible (MSFlow's fusion flow).

    Each map's channels go through a fixed shuffle, then split into a (the first C // 2) and b. Every a is scaled
    and shifted by coefficients that one subnet computes from all the b's, then every b by coefficients that a
    second subnet computes from all the new a's: each map's change depends on every map. The log-scale is
    soft-clamped to (-clamp, clamp) with an arctangent, as CS-Flow's and MSFlow's fusion couplings do.
    """

    def __init__(
        self, channels: Sequence[int], subnet: MultiSubnetFactory, clamp: float = 1.9, seed: int | None = None
    ) -> None:
        super().__init__()
        if min(channels) < 2:
            raise ValueError(f"a coupling block needs at least 2 channels per map, got {list(channels)}")
        self.first = [c // 2 for c in channels]
        self.second = [c - c // 2 for c in channels]
        self.clamp = clamp
        self.subnet_first = subnet(self.second, [2 * c for c in self.first])  # the b's -> the a's coefficients
        self.subnet_second = subnet(self.first, [2 * c for c in self.second])
        rng = np.random.default_rng(seed)
        for i, c in enumerate(channels):
            perm = torch.from_numpy(rng.permutation(c))
            self.register_buffer(f"perm_{i}", perm)
            self.register_buffer(f"perm_inverse_{i}", torch.argsort(perm))

    def forward(self, maps: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Return (the maps' outputs, log|det J| of shape (B,))."""
        a, b = self._split(self._shuffle(maps, inverse=False))
        a, log_det_a = self._affine(a, self.subnet_first(b), inverse=False)
        b, log_det_b = self._affine(b, self.subnet_second(a), inverse=False)
        return [torch.cat(pair, dim=1) for pair in zip(a, b, strict=True)], log_det_a + log_det_b

    def inverse(self, outputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        a, b = self._split(outputs)
        b, _ = self._affine(b, self.subnet_second(a), inverse=True)
        a, _ = self._affine(a, self.subnet_first(b), inverse=True)
        return self._shuffle([torch.cat(pair, dim=1) for pair in zip(a, b, strict=True)], inverse=True)

    def _shuffle(self, maps: Sequence[torch.Tensor], inverse: bool) -> list[torch.Tensor]:
        name = "perm_inverse" if inverse else "perm"
        return [x[:, getattr(self, f"{name}_{i}")] for i, x in enumerate(maps)]

    def _split(self, maps: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        halves = [x.split([c, x.shape[1] - c], dim=1) for x, c in zip(maps, self.first, strict=True)]
        return [h[0] for h in halves], [h[1] for h in halves]

    def _affine(
        self, parts: list[torch.Tensor], coefficients: list[torch.Tensor], inverse: bool
    ) -> tuple[list[torch.Tensor], torch.Tensor | float]:
        changed, log_det = [], 0.0
        for x, st in zip(parts, coefficients, strict=True):
            s, t = st.chunk(2, dim=1)
            log_scale = self.clamp * (2 / math.pi) * torch.atan(s / self.clamp)
            changed.append((x - t) * torch.exp(-log_scale) if inverse else x * torch.exp(log_scale) + t)
            log_det = log_det + log_scale.flatten(1).sum(1)
        return changed, log_det


def check_positional_channels(channels: int) -> None:
    """A 2D sin/cos encoding splits its channels four ways: sin and cos of x, sin and cos of y."""
    if channels <= 0 or channels % 4:
        raise InputError(
            f"condition_vector={channels}: expected a positive multiple of 4 (a 2D positional encoding's channels)"
        )


def positional_encoding_2d(channels: int, height: int, width: int) -> torch.Tensor:
    """(channels, H, W) sin/cos encoding: the first half encodes x (the column), the second half y (the row).

    Within each half, channel 2k is sin(pos * f_k) and 2k + 1 is cos(pos * f_k), f_k = 10000^(-2k / (channels/2)).
    """
    check_positional_channels(channels)
    half = channels // 2
    freq = torch.exp(torch.arange(0, half, 2, dtype=torch.float32) * -(math.log(10000.0) / half))
    x = torch.arange(width, dtype=torch.float32)[:, None] * freq  # (W, half / 2)
    y = torch.arange(height, dtype=torch.float32)[:, None] * freq  # (H, half / 2)
    pe = torch.zeros(channels, height, width)
    pe[0:half:2] = x.sin().t()[:, None, :]
    pe[1:half:2] = x.cos().t()[:, None, :]
    pe[half::2] = y.sin().t()[:, :, None]
    pe[half + 1 :: 2] = y.cos().t()[:, :, None]
    return pe
