"""The feature cache is a speed choice only: training on cached features and on features recomputed per batch
(streaming, what ``--cache auto`` falls back to for large data) must give the same model."""

from pathlib import Path

import pytest
import torch

import flowad
from flowad import engine
from flowad.data.datasets import ImageDataset
from flowad.models import model_class
from flowad.preprocess import Preprocess

# 10 training images in batches of 4: two full image batches and a short one per epoch
TINY = {
    "fastflow": {"flow_steps": 2},
    "cflow": {"coupling_blocks": 2, "fiber_batch_size": 16, "condition_vector": 16},
    "uflow": {"flow_steps": 2},
    "msflow": {"parallel_blocks": (1, 1, 1), "condition_vector": 8},
}


@pytest.fixture(scope="module")
def train_samples(demo_data: Path) -> list:
    samples = flowad.DataSpec(str(demo_data), "fabric", val_fraction=0.2).splits(0).train
    assert len(samples) == 8  # two image batches of 4 per epoch
    return samples


def _trained_state(name: str, samples: list, cache: str) -> dict[str, torch.Tensor]:
    cls = model_class(name)
    config = cls.config_class(image_size=64, epochs=3, batch_size=4, **TINY[name])
    torch.manual_seed(0)  # the same initial flow weights for both runs
    model = cls(config)
    images = ImageDataset(samples, Preprocess.from_model(model))
    log = engine.train(model, images, engine.EngineSettings(seed=1, cache=cache, quiet=True))
    assert log["cache"] is (cache == "on") and len(log["epochs"]) == 3
    return {k: v.detach().clone() for k, v in model.trainable_state().items()}


@pytest.mark.parametrize("name", list(TINY))
def test_cached_and_streamed_training_give_the_same_weights(name: str, train_samples: list) -> None:
    cached = _trained_state(name, train_samples, "on")
    streamed = _trained_state(name, train_samples, "off")
    assert cached.keys() == streamed.keys()
    worst = max((cached[k] - streamed[k]).abs().max().item() for k in cached)
    assert worst < 1e-6, f"{name}: cached and streamed weights differ by up to {worst:.3g}"
