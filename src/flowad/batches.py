"""Training batches from the frozen encoder's features: cached once, or made per batch when the cache would
not fit; an epoch's shuffled batches, a data-parallel process's part of each, and calibration's, in order."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import Dataset

from flowad import distributed
from flowad.models.base import AnomalyModel

BYTES_PER_FLOAT = 4


def feature_cache_bytes(model: AnomalyModel, n_images: int) -> int:
    """Memory the feature cache of ``n_images`` needs, from the encoder's feature shapes."""
    per_image = sum(math.prod(s) for s in model.encoder.feature_shapes(model.image_size))
    return per_image * n_images * BYTES_PER_FLOAT


class StreamedFeatures:
    """Stands in for the cache when it does not fit: computes the features of a batch on demand.

    The encoder sees ``chunk`` images at a time, as when the cache is filled: its float rounding can
    depend on how many images a call holds, and at the default (1) the features are then bit for bit
    those of the cache (with larger chunks they agree to rounding).
    """

    def __init__(self, model: AnomalyModel, dataset: Dataset, device: torch.device, chunk: int = 1) -> None:
        self.model, self.dataset, self.device, self.chunk = model, dataset, device, chunk
        self.shape0 = len(dataset)

    @torch.no_grad()
    def take(self, idx: torch.Tensor) -> list[torch.Tensor]:
        parts = []
        for ids in idx.split(self.chunk):
            images = torch.stack([self.dataset[int(i)]["image"] for i in ids]).to(self.device)
            parts.append(self.model.extract(images))
        return [torch.cat(scale) for scale in zip(*parts, strict=True)]


FeatureSource = list[torch.Tensor] | StreamedFeatures  # cached features, or features made per batch


def _image_batches(n_images: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """One epoch's image indices: one shuffled order (one draw from ``generator``), cut into batches."""
    order = torch.randperm(n_images, generator=generator)
    return iter(order.split(batch_size))


def _epoch_batches(model: AnomalyModel, source: FeatureSource, generator: torch.Generator) -> Iterator[Any]:
    """One epoch of training batches. Cached or streamed, ``source`` gives the same features, and these are
    the only draws from ``generator`` besides the model's own per image batch, so both paths train alike."""
    for idx in _image_batches(_length(source), model.config.batch_size, generator):
        yield from model.training_batches(_take(source, idx), generator)


def epoch_steps(
    model: AnomalyModel, source: FeatureSource, generator: torch.Generator, n_images: int
) -> Iterator[tuple[Any, float]]:
    """One epoch of optimiser steps: (this process's batch, or None when it has no part, and its share of the step).

    ``source`` holds this process's share of the ``n_images`` training images: image i is row i // world of
    process i % world (see :func:`flowad.distributed.shard`).
    """
    world, rank = distributed.world_size(), distributed.rank()
    if world == 1:
        for batch in _epoch_batches(model, source, generator):
            yield batch, 1.0
        return
    if model.image_batches:
        # every process draws the global batches of a one-process run, and keeps its own images of each
        for ids in _image_batches(n_images, model.config.batch_size, generator):
            rows = ids[ids % world == rank] // world
            yield (_take(source, rows) if len(rows) else None), len(rows) / len(ids)
        return
    # batches the model regroups (fibers) come from this process's images, shuffled by a generator of its
    # own drawn from the shared one (so a resumed run goes on alike); a step averages the processes with a batch
    seed = int(torch.randint(2**62, (), generator=generator))
    own = _epoch_batches(model, source, torch.Generator().manual_seed(seed + rank))
    while True:
        batch = next(own, None)
        active = int(distributed.all_sum(torch.tensor(float(batch is not None))).item())
        if not active:
            return
        yield batch, (1 / active if batch is not None else 0.0)


def _length(source: FeatureSource) -> int:
    return source[0].shape[0] if isinstance(source, list) else source.shape0


def _take(source: FeatureSource, rows: torch.Tensor) -> list[torch.Tensor]:
    return [f[rows] for f in source] if isinstance(source, list) else source.take(rows)


def calibration_batches(model: AnomalyModel, source: FeatureSource) -> Iterator[list[torch.Tensor]]:
    """The training features in image batches, in order, for ``AnomalyModel.calibrate``."""
    n = _length(source)
    for start in range(0, n, model.config.batch_size):
        idx = torch.arange(start, min(start + model.config.batch_size, n))
        yield _take(source, idx)
