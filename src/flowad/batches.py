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
    """Stands in for the cache when it does not fit: computes the features of a batch on demand."""

    def __init__(self, model: AnomalyModel, dataset: Dataset, device: torch.device) -> None:
        self.model, self.dataset, self.device = model, dataset, device
        self.shape0 = len(dataset)

    @torch.no_grad()
    def take(self, idx: torch.Tensor) -> list[torch.Tensor]:
        images = torch.stack([self.dataset[int(i)]["image"] for i in idx]).to(self.device)
        return self.model.extract(images)


FeatureSource = list[torch.Tensor] | StreamedFeatures  # cached features, or features made per batch


def _epoch_batches(
    model: AnomalyModel, cache: FeatureSource, generator: torch.Generator
) -> Iterator[list[torch.Tensor]]:
    if isinstance(cache, list):
        yield from model.training_batches(cache, model.config.batch_size, generator)
        return
    # streaming: the same shuffled image order as the cached path, features made per batch
    order = torch.randperm(cache.shape0, generator=generator)
    for start in range(0, len(order), model.config.batch_size):
        features = cache.take(order[start : start + model.config.batch_size])
        # the model may regroup features (fibers); it shuffles within the batch with the same generator
        yield from model.training_batches(features, features[0].shape[0], generator)


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
        for (ids,) in model.training_batches([torch.arange(n_images)], model.config.batch_size, generator):
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


def _take(source: FeatureSource, rows: torch.Tensor) -> list[torch.Tensor]:
    return [f[rows] for f in source] if isinstance(source, list) else source.take(rows)


def calibration_batches(model: AnomalyModel, source: FeatureSource) -> Iterator[list[torch.Tensor]]:
    """The training features in image batches, in order, for ``AnomalyModel.calibrate``."""
    n = source[0].shape[0] if isinstance(source, list) else source.shape0
    for start in range(0, n, model.config.batch_size):
        idx = torch.arange(start, min(start + model.config.batch_size, n))
        yield _take(source, idx)
