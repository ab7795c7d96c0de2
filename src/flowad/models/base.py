"""What every model shares: the frozen encoder, the train/infer split, and the map from latents.

A model is a frozen ``encoder`` (images -> feature maps) followed by a trainable head
(feature maps -> latents and log|det|). The engine caches the encoder's output and trains the head,
so each model only says how features become latents, how latents become a loss, and how latents
become an anomaly map.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from flowad.backbones import Encoder
from flowad.errors import InputError
from flowad.flows import gaussian_nll
from flowad.preprocess import IMAGENET_MEAN, IMAGENET_STD, size_hw
from flowad.ranges import check_ranges, option_flag
from flowad.tiling import tiling_of

INPUT_STATISTICS = ("weights", "imagenet")


@dataclasses.dataclass
class ModelConfig:
    """Fields every model has; each model's config adds its own."""

    backbone: str = "tf_efficientnet_lite0"
    weights: str = "pretrained"
    image_size: int | tuple[int, int] = 256  # a square, or (height, width)
    lr: float = 1e-3
    weight_decay: float = 1e-5
    batch_size: int = 32
    epochs: int = 20
    # the a contrario segmentation (flowad.nfa) on the model's latents; U-Flow's paper defaults
    nfa_window_size: int | list[int] = 7  # several sizes: each tested, all counted (flowad.nfa)
    nfa_probability_threshold: float | list[float] = 0.5  # several levels: each tested, all counted (flowad.nfa)
    nfa_high_precision: bool = False
    nfa_rescale: bool = False  # each image's latents divided by their own spread first (flowad.nfa)
    nfa_anchor: bool = False  # several tests: the first delineates where it detects, the others add (flowad.nfa)
    # how input images are normalised: "weights" = the statistics the backbone's weights were trained with
    # (its timm configuration), "imagenet" = ImageNet's mean/std whatever the backbone (as anomalib does)
    input_statistics: str = "weights"
    # large images (flowad.tiling): tile > 0 trains on tile x tile crops of the full-resolution images and scores
    # images tile by tile, each tile resized to image_size; tile_stride 0 means half the tile
    tile: int = 0
    tile_stride: int = 0

    def __post_init__(self) -> None:
        self.image_size = _image_size_as_given(self.image_size)
        check_ranges(self)
        if self.input_statistics not in INPUT_STATISTICS:
            raise InputError(f"input_statistics={self.input_statistics!r}: expected one of {list(INPUT_STATISTICS)}")
        if self.tile_stride and not self.tile:
            raise InputError(f"--tile-stride {self.tile_stride} needs --tile: tiles of which size?")
        tiling_of(self.tile or None, self.tile_stride or None)  # a bad tile or stride fails here

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise InputError(f"unknown option(s) {unknown} for {cls.__name__}; expected some of {sorted(names)}")
        return cls(**values)


def _image_size_as_given(value: Any) -> Any:
    """An int stays an int (a square); a pair (a list from JSON or the command line) becomes a tuple (height,
    width) and one value the int it holds, so that equal sizes compare equal however they were written. The
    values' range is checked with every other field's."""
    if not isinstance(value, list | tuple):
        return value
    if len(value) not in (1, 2):
        shown = " ".join(map(str, value))
        raise InputError(f"{option_flag('image_size')} {shown}: expected one size (a square) or two, height and width")
    return value[0] if len(value) == 1 else tuple(value)


class AnomalyModel(nn.Module):
    """Base class: subclasses set ``name``/``config_class`` and implement ``head`` and ``loss``."""

    name: ClassVar[str]
    config_class: ClassVar[type[ModelConfig]]
    encoder: Encoder
    # True when training_batches yields the image batch itself (one row per image): data-parallel training can
    # then split every batch by image and match a one-process run exactly
    image_batches: ClassVar[bool] = True

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of the model's input, whether the config gives a square or a pair."""
        return size_hw(self.config.image_size)

    @property
    def input_statistics(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, std) per RGB channel that images in [0, 1] are normalised with before the encoder."""
        if self.config.input_statistics == "imagenet":
            return IMAGENET_MEAN, IMAGENET_STD
        return tuple(self.encoder.mean), tuple(self.encoder.std)

    # how the frozen encoder runs, set by the engine (not part of the model): None = float32, else an
    # autocast dtype. The flows always run in float32: their exp and log-determinants need its range.
    encoder_dtype: torch.dtype | None = None

    @torch.no_grad()
    def extract(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Frozen encoder features of a normalised image batch, float32."""
        if self.encoder_dtype is None:
            return self.encoder(images)
        with torch.autocast(images.device.type, dtype=self.encoder_dtype):
            features = self.encoder(images)
        return [f.float() for f in features]

    def head(self, features: list[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Features -> (latent maps, log|det| per image)."""
        raise NotImplementedError

    def loss(self, latents: list[torch.Tensor], log_det: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood under N(0, I) up to its constant: mean over the batch of
        sum over scales of 0.5 * sum(z^2), minus log|det| (FastFlow's and U-Flow's loss)."""
        return (sum(gaussian_nll(z) for z in latents) - log_det).mean()

    def anomaly_map(self, latents: list[torch.Tensor]) -> torch.Tensor:
        """(B, H, W) map at the input size; higher means more anomalous."""
        return mean_probability_map(latents, self.image_size)

    def image_scores(self, latents: list[torch.Tensor], maps: torch.Tensor) -> torch.Tensor:
        """(B,) image scores from a batch's latents and its ``anomaly_map``: here the maximum of the map."""
        return maps.flatten(1).amax(1)

    def training_batches(self, features: list[torch.Tensor], generator: torch.Generator) -> Iterator[Any]:
        """The optimiser steps' batches made from one image batch's features: here the image batch itself.

        The engine shuffles the images and cuts the image batches; a model that regroups them (CFLOW-AD's
        fibers) shuffles within each image batch with ``generator``. Drawing nothing else keeps training
        on cached features and on features streamed per image batch the same.
        """
        yield features

    def training_warnings(self, n_images: int) -> list[str]:
        """What is unusual about training this model on ``n_images`` images (the engine reports it)."""
        return []

    def training_loss(self, batch: list[torch.Tensor]) -> torch.Tensor:
        return self.loss(*self.head(batch))

    def clip_gradients(self) -> None:
        """Called between each step's backward pass and the optimiser's step (MSFlow clips the gradients' norm)."""

    def calibrate(self, batches: Iterator[list[torch.Tensor]]) -> None:
        """Called once after training with the training set's feature batches (no grad).

        Models whose maps need constants from normal data (CFLOW-AD's normalisation) store them here.
        """

    def optimizer(self) -> torch.optim.Optimizer:
        params = [p for p in self.parameters() if p.requires_grad]
        # the fused kernel: one pass over all tensors instead of ~10 ops per tensor (CFLOW's many small steps)
        fused = all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in params)
        return torch.optim.Adam(params, lr=self.config.lr, weight_decay=self.config.weight_decay, fused=fused)

    def scheduler(self, optimizer: torch.optim.Optimizer, epochs: int) -> Any | None:
        """A learning-rate schedule stepped once per epoch, or None."""
        return None

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised images -> (anomaly maps (B, H, W), image scores (B,))."""
        latents = self.latents(images)
        maps = self.anomaly_map(latents)
        return maps, self.image_scores(latents, maps)

    def latents(self, images: torch.Tensor) -> list[torch.Tensor]:
        return self.head(self.extract(images))[0]

    def log_nfa(self, latents: list[torch.Tensor] | list[np.ndarray]) -> np.ndarray:
        """log10 NFA per pixel, a float64 numpy array (B, H, W) at the input size: < 0 means anomalous, with no
        threshold to tune. ``latents`` may be tensors (any device) or an exported model's numpy outputs."""
        from flowad.nfa import log_nfa, settings_of

        return log_nfa(latents, self.image_size, **settings_of(self.config.to_dict()))

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Everything but the frozen encoder: what a checkpoint must keep."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("encoder.")}


def mean_probability_map(latents: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """1 - mean over scales of upsampled exp(-0.5 * mean_c z^2): 0 where normal, towards 1 where not.

    (The FastFlow paper's map, -mean p, is this minus one: the same ranking and thresholds shift by 1.)
    """
    total = 0
    for z in latents:
        p = torch.exp(-0.5 * z.pow(2).mean(1, keepdim=True))
        total = total + F.interpolate(p, size=size, mode="bilinear", align_corners=False)
    return 1 - (total / len(latents))[:, 0]


def check_image_size(size: tuple[int, int], stride: int, backbone: str) -> None:
    """Feature sizes must be whole numbers at every stage, and a per-stage LayerNorm fixes them: each of
    ``size`` (height, width) must be a multiple of the backbone's largest ``stride``."""
    height, width = size
    dimensions = {"size": height} if height == width else {"height": height, "width": width}
    for dimension, value in dimensions.items():
        if value < 2 * stride or value % stride:
            raise InputError(
                f"image {dimension} {value} does not fit backbone {backbone}: expected a multiple of {stride} "
                f"of at least {2 * stride} (e.g. 256)"
            )


def check_fixed_size(size: tuple[int, int], fixed: int, backbone: str) -> None:
    """A ViT's positional embedding fixes its input to one square size."""
    if size != (fixed, fixed):
        raise InputError(
            f"backbone {backbone} takes {fixed}x{fixed} images only (a fixed square size); "
            f"got image_size {size[0]}x{size[1]}"
        )


class StageNorms(nn.ModuleList):
    """One norm per feature scale: a LayerNorm over (C, H, W) for CNN stages, Identity for ViT maps.

    A LayerNorm's normalisation is fixed preprocessing, but its trainable elementwise affine y = w * x + b is
    an invertible layer in front of the flow, so its log|det| = sum log|w| belongs in the likelihood.
    Without it the loss falls without bound as w shrinks (the density of squeezed features grows): trained
    long, w collapses towards 0 and the latents of normal images shrink far below N(0, 1) (seen: median
    |w| 0.004 and latent variance 0.24 after 300 epochs), which breaks every test that assumes N(0, 1).
    """

    def forward(self, features: list[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor | float]:
        """(normalised features, log|det| of the affines: one value, the same for every image)."""
        normalised = [norm(f) for norm, f in zip(self, features, strict=True)]
        return normalised, self.log_det()

    def log_det(self) -> torch.Tensor | float:
        total = 0.0
        for norm in self:
            if isinstance(norm, nn.LayerNorm) and norm.weight is not None:
                total = total + norm.weight.abs().log().sum()
        return total


def stage_norms(encoder: Encoder, image_size: tuple[int, int], backbone: str) -> StageNorms:
    """A trainable LayerNorm over (C, H / s, W / s) per CNN stage of stride s; this locks the input size
    (height, width), so check it first."""
    check_image_size(image_size, max(encoder.strides), backbone)
    shapes = encoder.feature_shapes(image_size)
    return StageNorms([nn.LayerNorm(list(shape)) for shape in shapes])
