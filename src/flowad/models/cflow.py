"""CFLOW-AD: conditional normalizing flows over the feature vectors ("fibers") of a frozen CNN.

Gudovskiy et al., "CFLOW-AD: Real-Time Unsupervised Anomaly Detection with Localization via Conditional
Normalizing Flows". The encoder's three deepest stages (strides 8, 16, 32) are used as they are (no
LayerNorm). Each position of each stage is one fiber: a C-vector, conditioned on a 2D sin/cos positional
encoding of its (x, y). One decoder per stage, a chain of conditional coupling blocks with Linear subnets,
maps fibers to N(0, I) latents.

Per fiber: lp = (C * -0.5 ln 2pi - 0.5 * sum_c z^2 + log|det|) / C (the log-likelihood per channel);
the loss is -logsigmoid(lp), averaged over a fiber batch, one Adam step per fiber batch.

The map is p_l = exp(lp_l - M_l) per layer, upsampled bilinearly (align_corners=True, as the reference:
the corner fibers sit on the image's corner pixels) and summed over layers into S, then
map = S_max - S, image score = max of the map. The reference takes both maxima (M_l and S_max) over the
test batch, so an image's score depends on its batch-mates. Here both are constants of the model, set by
``calibrate`` from the training images after training and saved with the checkpoint:

- ``max_log_likelihood[l]`` = M_l, the largest lp over every position of every training image at layer l;
- ``max_score`` = S_max, the largest S over every pixel of every training image (with those M_l).

A map is then a function of its image alone; both constants only shift and scale it (exp(-M_l) weighs the
layers against each other as the reference's batch maxima do), and on training images it lies in [0, S_max].
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from flowad.backbones import CNNEncoder
from flowad.errors import InputError
from flowad.flows import AffineCoupling, FlowChain, check_positional_channels, linear_subnet, positional_encoding_2d
from flowad.models.base import AnomalyModel, ModelConfig, check_image_size

FiberBatch = tuple[int, torch.Tensor, torch.Tensor]
"""(layer index, fibers (N, C), their conditions (N, condition_vector))."""


@dataclasses.dataclass
class CFlowConfig(ModelConfig):
    strides: tuple[int, ...] = (8, 16, 32)  # the three deepest stages (layer2..4 of a ResNet)
    fiber_batch_size: int = 64
    condition_vector: int = 128
    coupling_blocks: int = 8
    clamp_alpha: float = 1.9
    permute_soft: bool = False
    lr: float = 1e-4
    weight_decay: float = 0.0  # the reference's Adam has none
    batch_size: int = 32
    epochs: int = 20  # ~4 minutes for 48 images at 256 px on 2 CPU cores; pixel AUROC still rises slowly after

    def __post_init__(self) -> None:
        super().__post_init__()
        self.strides = tuple(self.strides)  # JSON gives a list
        check_positional_channels(self.condition_vector)


def cflow_decoder(
    channels: int, condition: int, blocks: int, clamp: float, permute_soft: bool, seed: int = 0
) -> FlowChain:
    """``blocks`` conditional coupling blocks; subnet Linear(in -> 2 in) -> ReLU -> Linear, in = ceil(C/2) + cond."""
    return FlowChain(
        [
            AffineCoupling(channels, linear_subnet(2.0), clamp, permute_soft, condition, seed=seed + i)
            for i in range(blocks)
        ]
    )


def log_likelihood(z: torch.Tensor, log_det: torch.Tensor) -> torch.Tensor:
    """log p(x) / C under N(0, I) through the flow; channels on dim 1: (N, C) -> (N,), (B, C, H, W) -> (B, H, W)."""
    c = z.shape[1]
    return (-0.5 * c * math.log(2 * math.pi) - 0.5 * z.pow(2).sum(1) + log_det) / c


class FlowLatents(list):
    """The z maps (B, C, H, W) per layer, as every model's ``latents`` returns, plus the per-position
    log|det| maps (B, H, W) in ``log_det``, which CFLOW's likelihood map needs beside z."""

    def __init__(self, latents: list[torch.Tensor], log_det: list[torch.Tensor]) -> None:
        super().__init__(latents)
        self.log_det = log_det


class CFlow(AnomalyModel):
    name = "cflow"
    config_class = CFlowConfig
    image_batches = False  # fiber batches

    def __init__(self, config: CFlowConfig) -> None:
        super().__init__(config)
        check_image_size(self.image_size, max(config.strides), config.backbone)
        self.encoder = CNNEncoder(config.backbone, config.strides, config.weights)
        blocks = config.coupling_blocks
        self.decoders = nn.ModuleList(
            cflow_decoder(c, config.condition_vector, blocks, config.clamp_alpha, config.permute_soft, seed=i * blocks)
            for i, c in enumerate(self.encoder.channels)
        )
        # the map's normalising constants (see the module docstring); 0 until calibrate
        self.register_buffer("max_log_likelihood", torch.zeros(len(self.decoders)))
        self.register_buffer("max_score", torch.zeros(()))

    def _conditions(self, height: int, width: int, like: torch.Tensor) -> torch.Tensor:
        """(H * W, condition_vector), row-major positions like a flattened (H, W) map."""
        return positional_encoding_2d(self.config.condition_vector, height, width).to(like).flatten(1).t()

    def head(self, features: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Features -> (z maps (B, C, H, W), log|det| maps (B, H, W)) per layer: all fibers in one pass."""
        latents, log_dets = [], []
        for feature, decoder in zip(features, self.decoders, strict=True):
            b, c, h, w = feature.shape
            conditions = self._conditions(h, w, feature).repeat(b, 1)
            z, log_det = decoder(feature.permute(0, 2, 3, 1).reshape(-1, c), conditions)
            latents.append(z.view(b, h, w, c).permute(0, 3, 1, 2))
            log_dets.append(log_det.view(b, h, w))
        return latents, log_dets

    def latents(self, images: torch.Tensor) -> FlowLatents:
        return FlowLatents(*self.head(self.extract(images)))

    def loss(self, z: torch.Tensor, log_det: torch.Tensor) -> torch.Tensor:
        return -F.logsigmoid(log_likelihood(z, log_det)).mean()

    def training_batches(self, features: list[torch.Tensor], generator: torch.Generator) -> Iterator[FiberBatch]:
        """The fibers of one image batch, layer after layer, each layer's shuffled, in fiber batches.

        Fibers are shuffled within each image batch, as the reference does (one permutation of the
        B * H * W fibers per layer and image batch), never over the whole training set: this needs only
        the image batch's features, so training on cached and on streamed features draws the same
        permutations. The reference drops the fibers that do not fill a last fiber batch; here that short
        batch is kept, so every fiber is trained on in every epoch. The decoders share no parameter and
        Adam skips parameters without a gradient, so the order of layers changes nothing a decoder learns.
        """
        size = self.config.fiber_batch_size
        for layer, feature in enumerate(features):
            b, c, h, w = feature.shape
            fibers = feature.permute(0, 2, 3, 1).reshape(-1, c)  # row i: image i // (h w), position i % (h w)
            conditions = self._conditions(h, w, feature).repeat(b, 1)
            order = torch.randperm(len(fibers), generator=generator).to(feature.device)
            for idx in order.split(size):
                yield layer, fibers[idx], conditions[idx]

    def training_warnings(self, n_images: int) -> list[str]:
        """Layers whose image batch holds fewer fibers than one fiber batch (the reference stops there)."""
        images = min(self.config.batch_size, n_images)
        size = self.config.fiber_batch_size
        shapes = self.encoder.feature_shapes(self.image_size)
        short = [
            f"{images * h * w} at stride {stride} ({images} x {h} x {w})"
            for (_, h, w), stride in zip(shapes, self.encoder.strides, strict=True)
            if images * h * w < size
        ]
        if not short:
            return []
        return [
            f"CFLOW-AD: an image batch of {images} images has fewer fibers than one fiber batch "
            f"(fiber_batch_size={size}): {', '.join(short)}; the steps on those layers take fewer fibers. "
            "Raise --batch-size or --image-size, or lower --fiber-batch-size"
        ]

    def training_loss(self, batch: FiberBatch) -> torch.Tensor:
        layer, fibers, conditions = batch
        return self.loss(*self.decoders[layer](fibers, conditions))

    def _likelihood_sum(self, log_likelihoods: list[torch.Tensor]) -> torch.Tensor:
        """S: sum over layers of the upsampled exp(lp - M_l), (B, H, W) at the input size."""
        total = 0
        for layer, lp in enumerate(log_likelihoods):
            p = torch.exp(lp - self.max_log_likelihood[layer])[:, None]
            # as the reference: align_corners=True puts the corner fibers exactly on the image's corner pixels
            total = total + F.interpolate(p, size=self.image_size, mode="bilinear", align_corners=True)
        return total[:, 0]

    def anomaly_map(self, latents: FlowLatents) -> torch.Tensor:
        log_dets = getattr(latents, "log_det", None)
        if log_dets is None:
            raise InputError("CFLOW's anomaly map needs the log-determinants: pass what CFlow.latents returns")
        lps = [log_likelihood(z, log_det) for z, log_det in zip(latents, log_dets, strict=True)]
        return self.max_score - self._likelihood_sum(lps)

    @torch.no_grad()
    def calibrate(self, batches: Iterator[list[torch.Tensor]]) -> None:
        """Set M_l and S_max from the training images' features (see the module docstring)."""
        per_layer: list[list[torch.Tensor]] = [[] for _ in self.decoders]
        for features in batches:
            for layer, (z, log_det) in enumerate(zip(*self.head(features), strict=True)):
                per_layer[layer].append(log_likelihood(z, log_det))
        lps = [torch.cat(chunks) for chunks in per_layer]
        self.max_log_likelihood.copy_(torch.stack([lp.amax() for lp in lps]))
        step = self.config.batch_size  # S is at full resolution: compute it a batch at a time
        self.max_score.copy_(
            max(self._likelihood_sum([lp[i : i + step] for lp in lps]).amax() for i in range(0, len(lps[0]), step))
        )
