"""U-Flow: a U-shaped normalizing flow over multi-scale features, with an a contrario threshold.

Tailanian et al., "U-Flow: A U-shaped Normalizing Flow for Anomaly Detection with Unsupervised Threshold".
Features: MS-CaiT ("mcait": two CaiTs at 448 and 224 -> 768x28x28 and 384x14x14) or the stages of a timm
CNN at strides 4, 8, 16, each with a trainable LayerNorm over (C, H/s, W/s). A CNN takes any height and width
that are multiples of 16: then each scale is twice the next one's size in both directions, as the U needs.

The flow runs coarse to fine. The coarsest features go through a flow stage (``flow_steps`` coupling
blocks); its output is split: one part is that scale's latent, the other is up-sampled invertibly
(pixel shuffle: channels / 4, height and width x 2, log|det| = 0) and concatenated to the next finer
scale's features, which go through the next stage, and so on; the finest stage's whole output is its
latent. With MS-CaiT at 448 the latents are 816x28x28 (816 = 768 + 384 / 2 / 4) and 192x14x14.
Every step is invertible, so ``inverse`` rebuilds the (normalised) features from the latents.

Loss: mean over the batch of sum_s 0.5 * sum(z_s^2) - log|det| (the LayerNorms' affines included:
see :class:`flowad.models.base.StageNorms`). Map: 1 - mean over scales of the
upsampled exp(-0.5 * mean_c z^2). Image score: max of the map. The a contrario segmentation
(log NFA < 0) works on ``model.latents(images)``: see :mod:`flowad.nfa`.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from flowad.backbones import CNNEncoder, MSCaiTEncoder
from flowad.errors import InputError
from flowad.flows import conv_flow
from flowad.models.base import AnomalyModel, ModelConfig, StageNorms, check_fixed_size, stage_norms

MCAIT_SIZE = 448  # MS-CaiT's input size: cait_m48_448's fixed positional embedding


@dataclasses.dataclass
class UFlowConfig(ModelConfig):
    flow_steps: int = 4
    affine_clamp: float = 2.0
    affine_subnet_channels_ratio: float = 1.0
    permute_soft: bool = False
    epochs: int = 120  # ~2 minutes on 2 CPU cores for 48 images at 256 (lite0); the paper trains 200-500
    # LinearLR from 1.0 to lr_end_factor of lr, reached after lr_decay_epochs (the paper's longest runs) whatever
    # the run's length: a short run keeps nearly the full rate, as the reference's 25000-step horizon does, and
    # the rate at an epoch never depends on how many epochs follow it
    lr_end_factor: float = 0.4
    lr_decay_epochs: int = 500


def upsampled_channels(channels: int) -> int:
    """Channels of a stage's output that go up to the next scale: the largest multiple of 4 <= half.

    Exactly half when ``channels`` is a multiple of 8 (as with MS-CaiT); the rest is the scale's latent.
    """
    up = channels // 8 * 4
    if up == 0:
        raise InputError(f"a U-Flow stage with {channels} channels cannot send a multiple of 4 up; need at least 8")
    return up


class UShapedFlow(nn.Module):
    """The invertible U: features (fine first) -> latents (fine first) and log|det| per image."""

    def __init__(
        self,
        channels: list[int],
        flow_steps: int = 4,
        clamp: float = 2.0,
        hidden_ratio: float = 1.0,
        permute_soft: bool = False,
    ) -> None:
        super().__init__()
        # stage i takes scale i's features plus what comes up from scale i + 1 (none for the coarsest)
        stage_channels, incoming = [], 0
        for i in reversed(range(len(channels))):
            stage_channels.append(channels[i] + incoming)
            incoming = upsampled_channels(stage_channels[-1]) // 4 if i > 0 else 0
        self.feature_channels = list(channels)
        self.stage_channels = stage_channels[::-1]
        self.stages = nn.ModuleList(
            conv_flow(c, flow_steps, clamp, hidden_ratio, permute_soft=permute_soft, seed=100 * i)
            for i, c in enumerate(self.stage_channels)
        )

    def forward(self, features: list[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
        self._check(features)
        latents, log_det, carried = [], 0, None
        for i in reversed(range(len(features))):
            x = features[i] if carried is None else torch.cat([features[i], carried], dim=1)
            y, ld = self.stages[i](x)
            log_det = log_det + ld
            if i == 0:
                latents.append(y)
            else:
                up = upsampled_channels(y.shape[1])
                carried = F.pixel_shuffle(y[:, :up], 2)  # a permutation of values: log|det| = 0
                latents.append(y[:, up:])
        return latents[::-1], log_det

    def inverse(self, latents: list[torch.Tensor]) -> list[torch.Tensor]:
        features, carried = [], None
        for i in range(len(latents)):
            y = latents[i] if i == 0 else torch.cat([F.pixel_unshuffle(carried, 2), latents[i]], dim=1)
            x = self.stages[i].inverse(y)
            c = self.feature_channels[i]
            features.append(x[:, :c])
            carried = x[:, c:]
        return features

    def _check(self, features: list[torch.Tensor]) -> None:
        shapes = [tuple(f.shape[1:]) for f in features]
        if [s[0] for s in shapes] != self.feature_channels:
            raise InputError(f"U-Flow built for feature channels {self.feature_channels}, got shapes {shapes}")
        for fine, coarse in zip(shapes[:-1], shapes[1:], strict=True):
            if fine[1:] != (2 * coarse[1], 2 * coarse[2]):
                raise InputError(f"U-Flow needs each scale at twice the next one's resolution; got shapes {shapes}")


class UFlow(AnomalyModel):
    name = "uflow"
    config_class = UFlowConfig

    def __init__(self, config: UFlowConfig) -> None:
        super().__init__(config)
        if config.backbone == "mcait":
            check_fixed_size(self.image_size, MCAIT_SIZE, "mcait (MS-CaiT)")
            self.encoder = MSCaiTEncoder(config.weights)
            self.norms = StageNorms([nn.Identity(), nn.Identity()])  # the ViTs' own final norms are kept
        else:
            self.encoder = CNNEncoder(config.backbone, (4, 8, 16), config.weights)
            self.norms = stage_norms(self.encoder, self.image_size, config.backbone)
        self.flow = UShapedFlow(
            self.encoder.channels,
            config.flow_steps,
            config.affine_clamp,
            config.affine_subnet_channels_ratio,
            config.permute_soft,
        )

    def head(self, features: list[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
        normalised, norm_log_det = self.norms(features)
        latents, log_det = self.flow(normalised)
        return latents, log_det + norm_log_det

    def inverse(self, latents: list[torch.Tensor]) -> list[torch.Tensor]:
        """Latents -> the normalised features they came from (the inverse of ``head``)."""
        return self.flow.inverse(latents)

    def scheduler(self, optimizer: torch.optim.Optimizer, epochs: int) -> torch.optim.lr_scheduler.LinearLR:
        return torch.optim.lr_scheduler.LinearLR(
            optimizer, start_factor=1.0, end_factor=self.config.lr_end_factor, total_iters=self.config.lr_decay_epochs
        )
