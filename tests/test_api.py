"""The Python API: the same verbs as the CLI, plus in-memory scoring."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import flowad
from flowad.data.images import read_image
from flowad.errors import InputError
from flowad.models import build_model


@pytest.fixture(scope="module")
def run(fastflow_run: Path, tmp_path_factory) -> Path:
    """A copy of the session's FastFlow run: these tests write their results into it."""
    return Path(shutil.copytree(fastflow_run, tmp_path_factory.mktemp("runs") / "api"))


def test_test_returns_the_metrics(run: Path) -> None:
    result = flowad.test(run)
    assert set(result) >= {"image_auroc", "pixel_auroc", "aupro", "image_f1", "pixel_f1", "iou"}
    assert (run / "metrics.json").exists()


def test_detector_predicts_at_the_image_size(run: Path) -> None:
    detector = flowad.load(run)
    image = (np.random.default_rng(0).random((50, 70, 3)) * 255).astype(np.uint8)
    (result,) = detector.predict([image])
    assert result["map"].shape == (50, 70) and result["mask"].shape == (50, 70)
    assert result["mask"].dtype == bool
    assert result["anomalous"] == (result["score"] >= detector.thresholds.image)
    assert result["anomalous"] or not result["mask"].any()  # a normal verdict never comes with a mask


def test_detector_agrees_with_the_model_on_files(run: Path) -> None:
    detector = flowad.load(run)
    data = detector.record.data
    path = next((Path(data.root) / data.category / "test" / "good").iterdir())
    (result,) = detector.predict([read_image(path)])
    records = flowad.predict(run, [path], run / "one", quiet=True)
    assert records[0]["score"] == pytest.approx(result["score"], abs=1e-6)


def test_detector_rejects_wrong_arrays(run: Path) -> None:
    with pytest.raises(InputError, match=r"expected \(H, W, 3\) uint8 RGB"):
        flowad.load(run).predict([np.zeros((10, 10), dtype=np.uint8)])


def test_scores_do_not_depend_on_the_batch(run: Path) -> None:
    model = flowad.load(run, engine="torch").engine.model
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        together = model(x)[0]
        alone = torch.cat([model(x[i : i + 1])[0] for i in range(4)])
    assert (together - alone).abs().max() < 1e-5


@pytest.mark.slow
def test_imagenet_input_statistics_reach_the_run_and_the_detector(demo_data: Path, tmp_path: Path) -> None:
    options = {"image_size": 64, "epochs": 1, "batch_size": 4, "input_statistics": "imagenet"}
    run = flowad.train("fastflow", demo_data, out=tmp_path / "imagenet", category="pill", **options)
    detector = flowad.load(run)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    assert detector.record.preprocess.mean == pytest.approx(mean)
    assert detector.record.preprocess.std == pytest.approx(std)
    image = read_image(next((demo_data / "pill" / "test" / "good").iterdir()))  # 64 x 64: no resizing
    pixels = torch.from_numpy(image).permute(2, 0, 1).float() / 255
    x = (pixels - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    with torch.no_grad():
        score = flowad.load(run, engine="torch").engine.model(x[None])[1].item()
    assert detector.predict([image])[0]["score"] == pytest.approx(score, abs=1e-5)


def test_unknown_input_statistics_are_named() -> None:
    with pytest.raises(InputError, match=r"input_statistics='coco'.*'weights', 'imagenet'"):
        build_model("fastflow", weights="random", input_statistics="coco")
