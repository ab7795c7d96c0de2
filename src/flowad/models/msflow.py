"""MSFlow: asymmetrical parallel flows over three CNN scales, then one fusion flow that exchanges them.

Zhou et al., "MSFlow: Multi-Scale Flow-based Framework for Unsupervised Anomaly Detection", IEEE TNNLS 2024
(arXiv 2308.15300; the authors' code: github.com/cool-xuan/msflow, "the reference" below).

Features: the CNN's stages at strides 4, 8, 16 (a ResNet's layer1..3), each pooled 3x3 with stride 2 and
padding 1 (``pool_type``: average by default, as the reference) -> strides 8, 16, 32, with no LayerNorm.

Parallel flows: per scale s a chain of ``parallel_blocks[s]`` coupling blocks (2, 5, 8: deeper where the scale
is coarser), each conditioned on a 2D sin/cos positional encoding of ``condition_vector`` channels joined to
its untouched half; subnets conv3x3 -> LayerNorm over channels -> ReLU -> conv3x3 (hidden = input channels).

Fusion flow: one :class:`~flowad.flows.MultiMapCoupling` over the three scales' outputs. Its subnet pools every
scale to the coarsest one's size, mixes them all (conv3x3 to a quarter of the channels -> LayerNorm -> ReLU ->
conv3x3 -> ReLU), hands each scale its share back at its own size (bilinear, corners aligned) added to its
input, and a conv3x3 per scale gives that scale's log-scales and shifts: every scale's change sees all scales.
Every step is invertible, so ``inverse`` rebuilds the pooled features from the latents.

Loss, as the reference: mean over the batch of sum_s 0.5 * sum(z_s^2) - log|det| (parallel and fusion flows).

Maps, as the reference's post-processing: per scale the log-likelihood map l_s = -0.5 * mean_c z_s^2 (no
log|det|), brought to the input size bilinearly with corners aligned. Two aggregations:

- pixel map (added probabilities): S = sum_s upsampled exp(l_s - max l_s); map = max S - S;
- image score (multiplied probabilities): L = sum_s upsampled l_s, m = 1 - exp(L - max L); score = the mean of
  the ``top_k`` share of m's largest pixels.

Every maximum is the image's own (the reference takes it per image, never over a batch), so an image's map and
score depend on it alone and there is nothing to calibrate from the training images.
"""

from __future__ import annotations

import dataclasses
import functools

import torch
import torch.nn.functional as F
from torch import nn

from flowad.backbones import CNNEncoder
from flowad.errors import InputError
from flowad.flows import (
    AffineCoupling,
    ChannelNorm,
    FlowChain,
    MultiMapCoupling,
    check_positional_channels,
    conv_subnet,
    positional_encoding_2d,
)
from flowad.models.base import AnomalyModel, ModelConfig, check_image_size

STAGE_STRIDES = (4, 8, 16)  # a ResNet's layer1..3, as the reference reads them
POOL_TYPES = ("avg", "max", "none")
WARMUP_START = 0.1  # the warm-up starts at this fraction of lr, as the reference's


@dataclasses.dataclass
class MSFlowConfig(ModelConfig):
    parallel_blocks: tuple[int, ...] = (2, 5, 8)  # coupling blocks of each scale's parallel flow, finest first
    clamp_alpha: float = 1.9
    condition_vector: int = 64
    pool_type: str = "avg"
    top_k: float = 0.03  # the share of pixels whose mean is the image score
    # lr and epochs suit the offline backbone on a CPU (about a minute per demo category); the reference trains
    # WideResNet-50 features at 512 px with 1e-4 for 100 epochs (configs/msflow.yaml)
    lr: float = 1e-3
    weight_decay: float = 0.0  # the reference's Adam has none
    batch_size: int = 8
    epochs: int = 40
    # the reference's schedule as shares of the run: a linear warm-up from 0.1 lr over 12 % of it (3 of 25 meta
    # epochs), then lr x 0.33 at 70 % and 90 %; and the gradients' norm clipped to 2 before every step
    lr_warmup_fraction: float = 0.12
    lr_decay_milestones: tuple[float, ...] = (0.7, 0.9)
    lr_decay_factor: float = 0.33
    max_grad_norm: float = 2.0

    def __post_init__(self) -> None:
        super().__post_init__()
        self.parallel_blocks = tuple(self.parallel_blocks)  # JSON gives lists
        self.lr_decay_milestones = tuple(self.lr_decay_milestones)
        check_positional_channels(self.condition_vector)
        if len(self.parallel_blocks) != len(STAGE_STRIDES):
            shown = " ".join(map(str, self.parallel_blocks))
            raise InputError(f"--parallel-blocks {shown}: expected {len(STAGE_STRIDES)} counts, one per scale")
        if self.pool_type not in POOL_TYPES:
            raise InputError(f"pool_type={self.pool_type!r}: expected one of {list(POOL_TYPES)}")


def feature_strides(pool_type: str) -> tuple[int, ...]:
    """The strides of the features the flows see: the stages', doubled by the pooling."""
    return STAGE_STRIDES if pool_type == "none" else tuple(2 * s for s in STAGE_STRIDES)


class PooledCNNEncoder(CNNEncoder):
    """A CNN's stages, each pooled 3x3 with stride 2 and padding 1 (half the resolution, twice the stride).
    The average counts the padding as zeros, as PyTorch's default and the reference do."""

    def __init__(self, name: str, weights: str, pool_type: str) -> None:
        super().__init__(name, STAGE_STRIDES, weights)
        pools = {"avg": nn.AvgPool2d(3, 2, 1), "max": nn.MaxPool2d(3, 2, 1), "none": nn.Identity()}
        self.pool = pools[pool_type]
        self.strides = list(feature_strides(pool_type))

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return [self.pool(f) for f in super().forward(images)]


class ScaleFusionSubnet(nn.Module):
    """The fusion coupling's subnet: maps of several sizes -> each map's coefficients.

    Map i is ``ratios[i]`` times as large as the coarsest in each direction. All maps are average-pooled to the
    coarsest one's size, concatenated and mixed; each map gets its share of the mix back at its own size, added
    to it, and a conv3x3 of its own turns that into its output.
    """

    def __init__(self, in_channels: list[int], out_channels: list[int], ratios: list[int]) -> None:
        super().__init__()
        total = sum(in_channels)
        hidden = max(total // 4, 1)
        self.in_channels, self.ratios = list(in_channels), list(ratios)
        self.mix = nn.Sequential(
            nn.Conv2d(total, hidden, 3, padding=1),
            ChannelNorm(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, total, 3, padding=1),
            nn.ReLU(),
        )
        self.heads = nn.ModuleList(
            nn.Conv2d(c_in, c_out, 3, padding=1) for c_in, c_out in zip(in_channels, out_channels, strict=True)
        )

    def forward(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        # pooling windows fixed when built (not read from the shapes): the ONNX export needs them constant
        pooled = [F.avg_pool2d(x, ratio) for x, ratio in zip(maps, self.ratios, strict=True)]
        mixed = self.mix(torch.cat(pooled, dim=1))
        shares = mixed.split(self.in_channels, dim=1)
        return [
            head(x + F.interpolate(share, size=x.shape[-2:], mode="bilinear", align_corners=True))
            for head, x, share in zip(self.heads, maps, shares, strict=True)
        ]


def parallel_flow(channels: int, blocks: int, clamp: float, condition: int, seed: int = 0) -> FlowChain:
    """One scale's flow: ``blocks`` coupling blocks conditioned on ``condition`` channels, LayerNorm subnets."""
    subnet = conv_subnet(3, 1.0, channel_norm=True)
    return FlowChain(
        [AffineCoupling(channels, subnet, clamp, condition_channels=condition, seed=seed + i) for i in range(blocks)]
    )


class MultiScaleFlow(nn.Module):
    """The parallel flows, then the fusion flow: features (fine first) -> latents (fine first), log|det| per image.

    ``strides``: the features' strides, each a whole number of times smaller than the coarsest one's.
    """

    def __init__(
        self,
        channels: list[int],
        strides: list[int],
        parallel_blocks: tuple[int, ...],
        clamp: float = 1.9,
        condition: int = 64,
    ) -> None:
        super().__init__()
        self.condition = condition
        self.parallel = nn.ModuleList(
            parallel_flow(c, n, clamp, condition, seed=100 * i)
            for i, (c, n) in enumerate(zip(channels, parallel_blocks, strict=True))
        )
        subnet = functools.partial(ScaleFusionSubnet, ratios=[max(strides) // s for s in strides])
        self.fusion = MultiMapCoupling(channels, subnet, clamp, seed=1000)

    def forward(self, features: list[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
        outputs, log_det = [], 0
        for x, flow in zip(features, self.parallel, strict=True):
            z, flow_log_det = flow(x, self._position(x))
            outputs.append(z)
            log_det = log_det + flow_log_det
        latents, fusion_log_det = self.fusion(outputs)
        return latents, log_det + fusion_log_det

    def inverse(self, latents: list[torch.Tensor]) -> list[torch.Tensor]:
        outputs = self.fusion.inverse(latents)
        return [flow.inverse(z, self._position(z)) for z, flow in zip(outputs, self.parallel, strict=True)]

    def _position(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        return positional_encoding_2d(self.condition, h, w).to(x).expand(b, -1, -1, -1)


def log_likelihood_maps(latents: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per scale, -0.5 * mean_c z^2 (B, h, w): the reference's log-likelihood map, without log|det|."""
    return [-0.5 * z.pow(2).mean(1) for z in latents]


def image_max(maps: torch.Tensor) -> torch.Tensor:
    """Each image's maximum of (B, H, W) maps, (B, 1, 1)."""
    return maps.amax(dim=(1, 2), keepdim=True)


class MSFlow(AnomalyModel):
    name = "msflow"
    config_class = MSFlowConfig

    def __init__(self, config: MSFlowConfig) -> None:
        super().__init__(config)
        check_image_size(self.image_size, max(feature_strides(config.pool_type)), config.backbone)
        self.encoder = PooledCNNEncoder(config.backbone, config.weights, config.pool_type)
        self.flow = MultiScaleFlow(
            self.encoder.channels,
            self.encoder.strides,
            config.parallel_blocks,
            config.clamp_alpha,
            config.condition_vector,
        )

    def head(self, features: list[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
        return self.flow(features)

    def inverse(self, latents: list[torch.Tensor]) -> list[torch.Tensor]:
        """Latents -> the pooled features they came from (the inverse of ``head``)."""
        return self.flow.inverse(latents)

    def anomaly_map(self, latents: list[torch.Tensor]) -> torch.Tensor:
        """max S - S, S the sum over scales of the upsampled exp(l_s - max l_s) (module docstring)."""
        total = 0
        for log_likelihood in log_likelihood_maps(latents):
            total = total + self._upsampled(torch.exp(log_likelihood - image_max(log_likelihood)))
        return image_max(total) - total

    def image_scores(self, latents: list[torch.Tensor], maps: torch.Tensor) -> torch.Tensor:
        """The mean of the top_k share of 1 - exp(L - max L), L the sum of the upsampled l_s."""
        total = sum(self._upsampled(log_likelihood) for log_likelihood in log_likelihood_maps(latents))
        contrast = 1 - torch.exp(total - image_max(total))
        height, width = self.image_size
        k = max(int(height * width * self.config.top_k), 1)
        return contrast.flatten(1).topk(k, dim=1).values.mean(1)

    def _upsampled(self, maps: torch.Tensor) -> torch.Tensor:
        # as the reference: corners aligned, so the corner positions sit on the image's corner pixels
        return F.interpolate(maps[:, None], size=self.image_size, mode="bilinear", align_corners=True)[:, 0]

    def scheduler(self, optimizer: torch.optim.Optimizer, epochs: int) -> torch.optim.lr_scheduler.LambdaLR:
        """The reference's warm-up and step decay, placed as shares of ``epochs`` (see the config)."""
        c = self.config
        warmup = c.lr_warmup_fraction * epochs
        milestones = [m * epochs for m in c.lr_decay_milestones]

        def factor(epoch: int) -> float:
            ramp = WARMUP_START + (1 - WARMUP_START) * epoch / warmup if epoch < warmup else 1.0
            return ramp * c.lr_decay_factor ** sum(epoch >= m for m in milestones)

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

    def clip_gradients(self) -> None:
        if self.config.max_grad_norm > 0:
            params = [p for p in self.parameters() if p.grad is not None]
            nn.utils.clip_grad_norm_(params, self.config.max_grad_norm)
