"""FastFlow: 2D normalizing flows over multi-scale CNN features (or one ViT scale).

Yu et al., "FastFlow: Unsupervised Anomaly Detection and Localization via 2D Normalizing Flows".
CNN path: stages at strides 4, 8, 16, each followed by a trainable LayerNorm over (C, H/s, W/s), then one
2D flow per scale. ViT path (CaiT m48 at 448, DeiT-base-distilled at 384): one token map, one flow.
Loss: sum over scales of mean over the batch of 0.5 * sum(z^2) - log|det| (the LayerNorms' affines
included: see :class:`flowad.models.base.StageNorms`).
Map: 1 - mean over scales of the upsampled exp(-0.5 * mean_c z^2). Image score: max of the map.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from flowad.backbones import CNNEncoder, ViTEncoder
from flowad.flows import conv_flow
from flowad.models.base import AnomalyModel, ModelConfig, StageNorms, check_fixed_size, stage_norms

# ViT backbones of the paper: how many transformer blocks feed the flow, and their input size.
VIT_BLOCKS = {"cait_m48_448": (41, 448), "deit_base_distilled_patch16_384": (8, 384)}


@dataclasses.dataclass
class FastFlowConfig(ModelConfig):
    flow_steps: int = 8
    conv3x3_only: bool = False
    hidden_ratio: float = 1.0
    clamp: float = 2.0
    epochs: int = 100


class FastFlow(AnomalyModel):
    name = "fastflow"
    config_class = FastFlowConfig

    def __init__(self, config: FastFlowConfig) -> None:
        super().__init__(config)
        if config.backbone in VIT_BLOCKS:
            blocks, size = VIT_BLOCKS[config.backbone]
            check_fixed_size(self.image_size, size, config.backbone)
            self.encoder = ViTEncoder(config.backbone, blocks, config.weights)
            self.norms = StageNorms([nn.Identity()])  # the ViT's own final norm is kept
        else:
            self.encoder = CNNEncoder(config.backbone, (4, 8, 16), config.weights)
            self.norms = stage_norms(self.encoder, self.image_size, config.backbone)
        self.flows = nn.ModuleList(
            conv_flow(c, config.flow_steps, config.clamp, config.hidden_ratio, config.conv3x3_only, seed=10 * i)
            for i, c in enumerate(self.encoder.channels)
        )

    def head(self, features: list[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
        normalised, log_det = self.norms(features)
        latents = []
        for feature, flow in zip(normalised, self.flows, strict=True):
            z, ld = flow(feature)
            latents.append(z)
            log_det = log_det + ld
        return latents, log_det
