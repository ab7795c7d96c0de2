"""One preprocessing for every path into a model: data sets, the detector, the ONNX graph, stored runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import reference
import torch
from PIL import Image

from flowad.checkpoint import read_record, save_run
from flowad.data.datasets import ImageDataset, Sample
from flowad.errors import InputError
from flowad.models import build_model
from flowad.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess, resize_uint8
from flowad.records import RunRecord
from flowad.thresholds import fixed


def _random_rgb(height: int, width: int, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).random((height, width, 3)) * 255).astype(np.uint8)


@pytest.mark.parametrize(("shape", "size"), [((50, 70), (32, 32)), ((64, 64), (64, 64)), ((31, 17), (16, 24))])
def test_tensor_is_the_written_out_arithmetic_bit_for_bit(shape: tuple[int, int], size: tuple[int, int]) -> None:
    rgb = _random_rgb(*shape, seed=sum(shape))
    preprocess = Preprocess(size, IMAGENET_MEAN, IMAGENET_STD)
    scaled = reference.resize_uint8(rgb, size).astype(np.float32) / 255.0
    in_numpy = (scaled - np.float32(IMAGENET_MEAN)) / np.float32(IMAGENET_STD)
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    in_torch = (torch.from_numpy(scaled).permute(2, 0, 1) - mean) / std
    x = preprocess(rgb)
    assert x.shape == (3, *size) and x.dtype == torch.float32 and x.is_contiguous()
    assert torch.equal(x, torch.from_numpy(in_numpy.transpose(2, 0, 1).copy()))
    assert torch.equal(x, in_torch)
    assert torch.equal(x, preprocess.tensor(rgb))


@pytest.mark.parametrize("seed", range(6))
def test_the_resize_is_the_written_out_filter_and_pillow_on_one_axis(seed: int) -> None:
    rng = np.random.default_rng(seed)
    height, width, out_height, out_width = (int(v) for v in rng.integers(1, 90, 4))
    rgb = _random_rgb(height, width, seed)
    assert np.array_equal(
        resize_uint8(rgb, (out_height, out_width)), reference.resize_uint8(rgb, (out_height, out_width))
    )
    # one axis at a time, Pillow's bilinear filter is this one (the module docstring)
    for size in ((height, out_width), (out_height, width)):
        pillow = np.asarray(Image.fromarray(rgb).resize(size[::-1], Image.Resampling.BILINEAR))
        assert np.array_equal(resize_uint8(rgb, size), pillow)


def test_settings_round_trip_through_json() -> None:
    preprocess = Preprocess((48, 64), (0.5, 0.25, 0.125), (0.5, 0.5, 1.0))
    assert preprocess.size == (48, 64) and Preprocess(32, IMAGENET_MEAN, IMAGENET_STD).size == (32, 32)
    assert Preprocess.from_dict(json.loads(json.dumps(preprocess.to_dict()))) == preprocess
    with pytest.raises(InputError, match="resize filter 'lanczos'"):
        Preprocess(8, IMAGENET_MEAN, IMAGENET_STD, resize="lanczos")
    with pytest.raises(InputError, match=r"lack \['std'\]"):
        Preprocess.from_dict({"size": [8, 8], "mean": [0, 0, 0]})


def test_a_dataset_needs_a_preprocess(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="expected a flowad.preprocess.Preprocess"):
        ImageDataset([Sample(tmp_path / "a.png", 0)], 64)


def test_a_run_stores_its_preprocess_and_older_runs_still_give_it(tmp_path: Path) -> None:
    model = build_model("fastflow", backbone="resnet18", weights="random", image_size=64, input_statistics="imagenet")
    save_run(tmp_path, model, fixed(1.0, 0.0, 2.0))
    config = json.loads((tmp_path / "config.json").read_text())
    expected = Preprocess.from_model(model)
    assert expected == Preprocess(64, IMAGENET_MEAN, IMAGENET_STD)
    assert read_record(tmp_path).preprocess == expected
    assert config["normalisation"] == {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
    del config["preprocess"]  # as runs written before the key existed
    assert RunRecord.from_json(config).preprocess == expected
