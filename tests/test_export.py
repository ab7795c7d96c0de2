"""ONNX export: every model's graph gives the maps and scores of PyTorch, at any batch size."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import perturb

from flowad.checkpoint import save_run
from flowad.errors import InputError
from flowad.export import OnnxDetector, export_onnx
from flowad.models import AnomalyModel, build_model
from flowad.thresholds import fixed

SIZE = 64
SMALL = {
    "fastflow": {"flow_steps": 2},
    "cflow": {"coupling_blocks": 2, "condition_vector": 16},
    "uflow": {"flow_steps": 2},
}


def _tiny_model(name: str) -> AnomalyModel:
    torch.manual_seed(0)
    model = build_model(name, backbone="resnet18", weights="random", image_size=SIZE, **SMALL[name]).eval()
    perturb(model, 0.05)  # the flows; the backbone is frozen
    with torch.no_grad():
        model.calibrate(iter([model.extract(torch.randn(4, 3, SIZE, SIZE))]))  # CFLOW's constants; others: no-op
    return model


@pytest.fixture(scope="module", params=sorted(SMALL))
def exported(request, tmp_path_factory) -> tuple[AnomalyModel, Path]:
    run = tmp_path_factory.mktemp(request.param)
    model = _tiny_model(request.param)
    save_run(run, model, fixed(1.0, 0.0, 2.0))
    assert export_onnx(run) == run / "model.onnx"
    return model, run


@pytest.mark.parametrize("batch", [3, 1])
def test_onnx_matches_torch_at_any_batch_size(exported, batch: int) -> None:
    model, run = exported
    images = torch.randn(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(batch))
    with torch.inference_mode():
        maps, scores = model(images)
    onnx_maps, onnx_scores = OnnxDetector.load(run).maps_and_scores(images.numpy())
    assert onnx_maps.shape == (batch, SIZE, SIZE) and onnx_scores.shape == (batch,)
    assert np.abs(onnx_maps - maps.numpy()).max() < 1e-4
    assert np.abs(onnx_scores - scores.numpy()).max() < 1e-4
    assert maps.std() > 0  # not a trivially constant map


def test_export_to_a_chosen_path_and_clear_errors(exported, tmp_path: Path, monkeypatch) -> None:
    _, run = exported
    out = export_onnx(run, tmp_path / "sub" / "m.onnx")
    assert out.is_file() and not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]
    detector = OnnxDetector.load(run, out)
    with pytest.raises(InputError, match=r"expected \(N, 3, 64, 64\)"):
        detector.maps_and_scores(np.zeros((1, 3, 32, 32), np.float32))
    with pytest.raises(InputError, match="does not exist"):
        OnnxDetector.load(run, tmp_path / "missing.onnx")
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    with pytest.raises(InputError, match="not a readable ONNX model"):
        OnnxDetector.load(run, tmp_path / "bad.onnx")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if it were not installed
    with pytest.raises(InputError, match=r"flowad\[onnx\]"):
        OnnxDetector.load(run, out)
