"""How the engine runs a model: mixed-precision backbone and torch.compile give the float32 eager results."""

import numpy as np
import pytest
import torch
from helpers import perturb

from flowad.data.datasets import ImageDataset, mvtec_splits
from flowad.engine import EngineSettings, infer
from flowad.errors import FlowadError
from flowad.models import build_model
from flowad.preprocess import Preprocess


@pytest.fixture(scope="module")
def scored(demo_data):
    torch.manual_seed(0)
    model = build_model("fastflow", backbone="resnet18", weights="random", image_size=64, flow_steps=2)
    perturb(model, 0.05)  # the flows; the backbone is frozen
    dataset = ImageDataset(mvtec_splits(demo_data, "pill").test, Preprocess.from_model(model))
    return model, dataset, infer(model, dataset, EngineSettings(quiet=True), keep_latents=True)


def test_bf16_backbone_keeps_float32_flows_and_close_maps(scored) -> None:
    model, dataset, fp32 = scored
    bf16 = infer(model, dataset, EngineSettings(quiet=True, precision="bf16"), keep_latents=True)
    assert all(z.dtype == torch.float32 for z in bf16["latents"])
    assert not np.array_equal(bf16["maps"], fp32["maps"])  # the backbone really ran in bfloat16
    assert np.corrcoef(bf16["maps"].ravel(), fp32["maps"].ravel())[0, 1] > 0.99
    assert model.encoder_dtype is None  # the precision lasts for the call only


@pytest.mark.slow
def test_compiled_model_gives_the_eager_maps(scored) -> None:
    model, dataset, eager = scored
    compiled = infer(model, dataset, EngineSettings(quiet=True, compile=True))
    assert np.abs(compiled["maps"] - eager["maps"]).max() < 1e-4


def test_unknown_precision_is_a_clear_error(scored) -> None:
    model, dataset, _ = scored
    with pytest.raises(FlowadError, match="--precision fp8: expected one of fp32, bf16, fp16"):
        infer(model, dataset, EngineSettings(quiet=True, precision="fp8"))
