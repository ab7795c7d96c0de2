"""Run directories: round trip, and every kind of damage gives a clear error."""

import json
from pathlib import Path

import pytest
import torch
from helpers import perturb

from flowad.checkpoint import load_run, save_run
from flowad.errors import InputError
from flowad.models import build_model
from flowad.thresholds import fixed


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(0)
    model = build_model("fastflow", backbone="resnet18", weights="random", image_size=64, flow_steps=2).eval()
    perturb(model.flows, 0.01)  # off the identity, so that the round trip is meaningful
    run = tmp_path_factory.mktemp("run")
    save_run(run, model, fixed(1.0, 0.0, 2.0))
    return run, model


def test_round_trip_gives_the_same_maps(saved) -> None:
    run, model = saved
    loaded, config = load_run(run)
    assert (run / "backbone.safetensors").exists()  # random backbone: stored, not re-drawn
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x)[0], loaded(x)[0])
    assert config.model_config["weights"] == "random"


def _copy(run: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    target.mkdir()
    for p in run.iterdir():
        (target / p.name).write_bytes(p.read_bytes())
    return target


def test_truncated_weights(saved, tmp_path) -> None:
    run = _copy(saved[0], tmp_path)
    data = (run / "model.safetensors").read_bytes()
    (run / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="model.safetensors is not a readable safetensors file"):
        load_run(run)


def test_tampered_backbone(saved, tmp_path) -> None:
    run = _copy(saved[0], tmp_path)
    data = bytearray((run / "backbone.safetensors").read_bytes())
    data[-20:] = bytes(20 * [7])  # flip bytes inside a tensor, header intact
    (run / "backbone.safetensors").write_bytes(bytes(data))
    with pytest.raises(InputError, match="backbone weights of .* differ"):
        load_run(run)


def test_unknown_format_version(saved, tmp_path) -> None:
    run = _copy(saved[0], tmp_path)
    config = json.loads((run / "config.json").read_text())
    config["format_version"] = 99
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match="format version 99"):
        load_run(run)


def test_config_that_does_not_match_its_tensors(saved, tmp_path) -> None:
    run = _copy(saved[0], tmp_path)
    config = json.loads((run / "config.json").read_text())
    config["model_config"]["flow_steps"] = 3
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match="does not match the tensors its config lists|does not fit its model"):
        load_run(run)


def test_broken_json(saved, tmp_path) -> None:
    run = _copy(saved[0], tmp_path)
    (run / "config.json").write_text("{not json")
    with pytest.raises(InputError, match="config.json is not valid JSON"):
        load_run(run)


def test_missing_run(tmp_path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        load_run(tmp_path / "nothing")
