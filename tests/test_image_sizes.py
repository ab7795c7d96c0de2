"""Non-square inputs: ``image_size`` is one size (a square) or (height, width), through every model and its config."""

from __future__ import annotations

import json
import re

import pytest
import torch

from flowad.batches import BYTES_PER_FLOAT, feature_cache_bytes
from flowad.errors import InputError
from flowad.models import build_model
from flowad.models.fastflow import FastFlowConfig
from flowad.preprocess import Preprocess

SIZE = (96, 160)  # height, width: multiples of every model's largest stride (16, and 32 for CFLOW-AD and MSFlow)
# the smallest heads that still have every scale: tiny to build and run on random backbone weights
TINY_HEADS = {
    "fastflow": {"flow_steps": 1},
    "cflow": {"coupling_blocks": 1},
    "uflow": {"flow_steps": 1},
    "msflow": {"parallel_blocks": (1, 1, 1)},
}
STRIDES = {"fastflow": (4, 8, 16), "cflow": (8, 16, 32), "uflow": (4, 8, 16), "msflow": (8, 16, 32)}


def _model(name: str, image_size: object = SIZE) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(name, backbone="resnet18", weights="random", image_size=image_size, **TINY_HEADS[name]).eval()


@pytest.mark.parametrize("name", list(TINY_HEADS))
def test_every_model_takes_height_and_width(name: str) -> None:
    model = _model(name)
    height, width = SIZE
    assert model.image_size == SIZE and Preprocess.from_model(model).size == SIZE
    with torch.inference_mode():
        latents = model.latents(torch.randn(2, 3, height, width))
        maps, scores = model(torch.randn(2, 3, height, width))
    assert [tuple(z.shape[2:]) for z in latents] == [(height // s, width // s) for s in STRIDES[name]]
    assert maps.shape == (2, height, width) and scores.shape == (2,)
    shapes = model.encoder.feature_shapes(SIZE)
    assert feature_cache_bytes(model, 3) == 3 * BYTES_PER_FLOAT * sum(c * h * w for c, h, w in shapes)


def test_layer_norms_follow_height_and_width() -> None:
    model = _model("fastflow")
    assert [tuple(norm.normalized_shape) for norm in model.norms] == [
        (c, SIZE[0] // s, SIZE[1] // s) for c, s in zip(model.encoder.channels, STRIDES["fastflow"], strict=True)
    ]


def test_cflow_counts_fibers_per_height_and_width() -> None:
    model = _model("cflow")
    model.config.batch_size, model.config.fiber_batch_size = 1, 16
    # one image of 96 x 160 has 3 x 5 = 15 fibers at stride 32, fewer than a fiber batch of 16
    assert "15 at stride 32 (1 x 3 x 5)" in model.training_warnings(1)[0]


def test_a_square_stays_one_number_and_a_pair_round_trips_through_json() -> None:
    square = FastFlowConfig(image_size=64)
    assert square.image_size == 64 and square.to_dict()["image_size"] == 64
    pair = FastFlowConfig.from_dict(json.loads(json.dumps(FastFlowConfig(image_size=SIZE).to_dict())))
    assert pair == FastFlowConfig(image_size=list(SIZE)) and pair.image_size == SIZE


@pytest.mark.parametrize(
    ("image_size", "message"),
    [
        ((100, 160), "image height 100 does not fit backbone resnet18: expected a multiple of 16 of at least 32"),
        ((96, 150), "image width 150 does not fit backbone resnet18: expected a multiple of 16"),
        (70, "image size 70 does not fit backbone resnet18"),
        ((96, 160, 224), "--image-size 96 160 224: expected one size (a square) or two, height and width"),
        ((0, 160), "--image-size 0 160: expected an integer >= 1"),
        ((96.5, 160), "--image-size 96.5 160: expected an integer >= 1"),
    ],
)
def test_a_bad_size_is_named(image_size: object, message: str) -> None:
    with pytest.raises(InputError, match=re.escape(message)):
        _model("fastflow", image_size)


@pytest.mark.parametrize(
    ("model", "backbone", "named"),
    [("fastflow", "cait_m48_448", "cait_m48_448"), ("uflow", "mcait", r"mcait \(MS-CaiT\)")],
)
def test_vision_transformers_keep_their_square_size(model: str, backbone: str, named: str) -> None:
    expected = rf"backbone {named} takes 448x448 images only \(a fixed square size\); got image_size 448x224"
    with pytest.raises(InputError, match=expected):  # refused before any weights are fetched
        build_model(model, backbone=backbone, image_size=(448, 224))
