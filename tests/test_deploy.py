"""Deployment: the exported file alone (onnxruntime, no flowad) and every engine give torch's predictions."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import TINY_TRAIN
from PIL import Image

from flowad.cli import main
from flowad.inference import Detector

MODELS = ("fastflow", "cflow", "uflow", "msflow")
README = Path(__file__).resolve().parent.parent / "README.md"


@pytest.fixture(scope="module")
def runs(fastflow_run: Path, demo_data: Path, tmp_path_factory) -> dict[str, Path]:
    """Each model trained on the demo fabric (FastFlow: a copy of the session's run, without its exports)."""
    root = tmp_path_factory.mktemp("deploy-runs")
    found = {"fastflow": Path(shutil.copytree(fastflow_run, root / "fastflow"))}
    shutil.rmtree(found["fastflow"] / "openvino")
    (found["fastflow"] / "model.onnx").unlink()
    for model in MODELS[1:]:
        found[model] = root / model
        args = ["--data", str(demo_data), "--category", "fabric", "--model", model, "--out", str(found[model])]
        # CFLOW-AD: fiber batches that 4 images of 64 px fill at every stride (16 fibers at stride 32)
        args += ["--fiber-batch-size", "16"] if model == "cflow" else []
        assert main(["train", *args, *TINY_TRAIN]) == 0
    return found


@pytest.fixture(scope="module")
def images(demo_data: Path, tmp_path_factory) -> list[Path]:
    """Demo test images (64 x 64, the runs' size) and some of them at other sizes, larger and smaller."""
    folder = tmp_path_factory.mktemp("deploy-images")
    test = demo_data / "fabric" / "test"
    chosen = [test / "good" / "000.png", *sorted(p for p in test.rglob("*.png") if p.parent.name != "good")[:3]]
    files = []
    for i, path in enumerate(chosen):
        files.append(Path(shutil.copy(path, folder / f"{i}.png")))
    for i, (width, height) in enumerate([(97, 130), (41, 50)]):
        rescaled = Image.open(chosen[1 + i]).convert("RGB").resize((width, height), Image.Resampling.BICUBIC)
        rescaled.save(folder / f"rescaled-{i}.png")
        files.append(folder / f"rescaled-{i}.png")
    return files


@pytest.fixture(scope="module")
def non_square_run(demo_data: Path, tmp_path_factory) -> Path:
    """FastFlow trained through the command line at 96 x 160 (height x width) on the demo fabric."""
    run = tmp_path_factory.mktemp("deploy-non-square") / "fastflow"
    args = ["train", "--data", str(demo_data), "--category", "fabric", "--out", str(run), *TINY_TRAIN]
    assert main([*args, "--image-size", "96", "160"]) == 0  # the last --image-size wins over TINY_TRAIN's
    return run


def _readme_example() -> str:
    text = README.read_text(encoding="utf-8")
    block = re.search(r"<!-- deploy-example -->\n```python\n(.*?)```\n<!-- end deploy-example -->", text, re.S)
    assert block is not None, "README.md lost its deploy example"
    return block.group(1)


# runs the README's example on each image, then says what it found; flowad must not be imported on the way
_HARNESS = """
import json, sys
example, model_file, jobs = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
found = []
for image_file, mask_file in jobs:
    names = {"model_file": model_file, "image_file": image_file, "mask_file": mask_file}
    exec(example, names)
    found.append([float(names["score"][0]), float(names["normalised"][0]), bool(names["anomalous"][0])])
assert not any(m == "flowad" or m.startswith("flowad.") for m in sys.modules), "flowad was imported"
print(json.dumps(found))
"""


def _predict(run: Path, images: list[Path], out: Path, *options: str) -> list[dict]:
    assert main(["predict", "--run", str(run), "--input", *map(str, images), "--out", str(out), *options]) == 0
    return [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]


def _mask(path: str | Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image) > 127


@pytest.mark.parametrize("model", MODELS)
def test_the_exported_file_alone_gives_the_predictions_of_torch(model, runs, images, tmp_path: Path) -> None:
    run = runs[model]
    assert main(["export", "--run", str(run), "--format", "onnx", "--out", str(tmp_path / "deployed.onnx")]) == 0
    expected = _predict(run, images, tmp_path / "torch", "--engine", "torch")
    jobs = [[str(path), str(tmp_path / f"{path.stem}_mask.png")] for path in images]
    command = [sys.executable, "-c", _HARNESS, _readme_example(), str(tmp_path / "deployed.onnx"), json.dumps(jobs)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.splitlines()[-1])
    for record, (score, normalised, anomalous), (_, mask_file) in zip(expected, found, jobs, strict=True):
        assert score == pytest.approx(record["score"], abs=1e-4)
        assert normalised == pytest.approx(record["normalised_score"], abs=1e-4)
        assert anomalous == record["anomalous"]
        ours, theirs = _mask(mask_file), _mask(record["mask"])
        assert ours.shape == theirs.shape and (ours != theirs).sum() == 0, f"{record['path']}: masks differ"


def _disagreements(reference: list[dict], other: list[dict], pixel_threshold: float | None) -> list[str]:
    """Per image whose verdict or mask differs: its index and how many pixels differ. With a ``pixel_threshold``,
    pixels whose map lies within float32 agreement (1e-4, relative above 1) of it are left out: there any two
    float32 computations may fall on either side."""
    found = []
    for i, (a, b) in enumerate(zip(reference, other, strict=True)):
        differ = a["mask"] != b["mask"]
        if pixel_threshold is not None:
            differ &= np.abs(a["map"] - pixel_threshold) > 1e-4 * np.maximum(1, np.abs(a["map"]))
        if differ.any() or a["anomalous"] != b["anomalous"]:
            found.append(f"image {i}: verdict {a['anomalous']} vs {b['anomalous']}, {int(differ.sum())} mask pixels")
    return found


@pytest.mark.parametrize("threshold", ["f1", "nfa", "median"])
@pytest.mark.parametrize("model", MODELS)
def test_every_engine_gives_the_verdicts_and_masks_of_torch(model, threshold, runs, images) -> None:
    rgb = [np.asarray(Image.open(path).convert("RGB")) for path in images]
    if threshold == "median":  # a threshold inside the maps' and the scores' ranges: masks neither empty nor full
        found = Detector.load(runs[model], engine="torch").predict(rgb)
        maps = np.concatenate([r["map"].ravel() for r in found])
        # the scores' median matters where a score is not its map's maximum (MSFlow's top-k mean of another map)
        threshold = float(min(np.median(maps), np.median([r["score"] for r in found])))
    torch_results = Detector.load(runs[model], threshold, engine="torch").predict(rgb)
    for engine in ("onnx", "openvino"):
        detector = Detector.load(runs[model], threshold, engine=engine)
        assert detector.engine.name == engine
        results = detector.predict(rgb)
        pixel = None if threshold == "nfa" else detector.thresholds.pixel
        assert not _disagreements(torch_results, results, pixel), (
            engine,
            _disagreements(torch_results, results, pixel),
        )
        for a, b in zip(torch_results, results, strict=True):
            # float32 agreement: 1e-4, relative where the map is large (CFLOW's can reach 1e4, where torch alone,
            # on 1 thread or 2, differs by 0.09)
            assert a["map"].shape == b["map"].shape
            assert (np.abs(a["map"] - b["map"]) <= 1e-4 * np.maximum(1, np.abs(a["map"]))).all()
            assert a["score"] == pytest.approx(b["score"], rel=1e-4, abs=1e-4)
            if threshold == "nfa":
                assert a["log_nfa_min"] == pytest.approx(b["log_nfa_min"], abs=1e-3)
    if threshold not in ("f1", "nfa"):
        assert 0 < sum(r["mask"].mean() for r in torch_results) < len(torch_results)  # masks with something in


def test_the_metadata_describes_the_run(runs, tmp_path: Path) -> None:
    import onnxruntime as ort

    from flowad.checkpoint import read_record

    run = runs["uflow"]
    assert main(["export", "--run", str(run), "--out", str(tmp_path) + "/", "--threshold", "0.25"]) == 0
    meta = ort.InferenceSession(str(tmp_path / "model.onnx")).get_modelmeta().custom_metadata_map
    record = read_record(run)
    assert meta["flowad.model"] == "uflow" and json.loads(meta["flowad.image_size"]) == [64, 64]
    assert json.loads(meta["flowad.normalisation"]) == {
        "mean": list(record.preprocess.mean),
        "std": list(record.preprocess.std),
    }
    assert json.loads(meta["flowad.thresholds"])["image"] == 0.25
    assert json.loads(meta["flowad.thresholds"])["option"] == "0.25"
    assert json.loads(meta["flowad.nfa"])["window_size"] == record.model_config["nfa_window_size"]
    assert json.loads(meta["flowad.record"]) == record.to_json()


def test_auto_exports_on_first_use_and_again_when_the_run_changes(runs, tmp_path: Path, capsys) -> None:
    run = Path(shutil.copytree(runs["fastflow"], tmp_path / "run"))
    for leftover in (run / "model.onnx", run / "openvino"):
        shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink(missing_ok=True)
    capsys.readouterr()
    assert Detector.load(run).engine.name == "openvino"
    assert "exporting" in capsys.readouterr().err and (run / "openvino" / "model.xml").is_file()
    Detector.load(run)
    assert "exporting" not in capsys.readouterr().err  # cached
    config = json.loads((run / "config.json").read_text())
    config["thresholds"]["image"] += 0.125
    (run / "config.json").write_text(json.dumps(config))
    Detector.load(run)
    assert "exporting" in capsys.readouterr().err  # the run changed: exported again
    assert Detector.load(run, engine="onnx").engine.name == "onnx" and (run / "model.onnx").is_file()


def test_auto_falls_back_to_torch_without_the_runtimes(runs, monkeypatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    missing = {"openvino", "onnxruntime"}
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in missing else real(name, *a))
    assert Detector.load(runs["fastflow"]).engine.name == "torch"
    with pytest.raises(Exception, match=r"flowad\[onnx\]"):
        Detector.load(runs["fastflow"], engine="onnx")


def test_the_raw_graph_is_the_model_alone(runs, tmp_path: Path) -> None:
    import onnxruntime as ort
    import torch

    from flowad.checkpoint import load_run

    run = runs["cflow"]
    assert main(["export", "--run", str(run), "--raw", "--out", str(tmp_path) + "/"]) == 0
    session = ort.InferenceSession(str(tmp_path / "model_raw.onnx"))
    model, _ = load_run(run)
    images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        maps, scores = model.eval()(images)
    onnx_maps, onnx_scores = session.run(["anomaly_map", "score"], {"image": images.numpy()})
    # random images drive CFLOW's map to -1e5 and beyond: float32 agreement relative to the values
    assert np.allclose(onnx_maps, maps.numpy(), rtol=1e-4, atol=1e-4)
    assert np.allclose(onnx_scores, scores.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "options, message",
    [
        (["--format", "openvino", "--raw"], "--raw is an ONNX option"),
        (["--format", "onnx", "--precision", "fp16"], "are OpenVINO options"),
        (["--format", "openvino", "--int8"], "--int8 needs --calibration"),
        (["--format", "openvino", "--int8", "--calibration", "{empty}"], "holds no image"),
        (["--format", "openvino", "--int8", "--calibration", "{missing}"], "is not a folder"),
        (["--threshold", "high"], "--threshold 'high' is not understood"),
    ],
)
def test_export_errors_name_the_value(options, message, runs, tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    filled = [o.format(empty=tmp_path / "empty", missing=tmp_path / "missing") for o in options]
    assert main(["export", "--run", str(runs["fastflow"]), "--out", str(tmp_path / "x") + "/", *filled]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_openvino_fp16_and_int8_files_score_like_fp32(runs, demo_data: Path, images, tmp_path: Path) -> None:
    run = Path(shutil.copytree(runs["fastflow"], tmp_path / "run"))
    good = demo_data / "fabric" / "train" / "good"
    assert main(["export", "--run", str(run), "--format", "openvino", "--precision", "fp16"]) == 0
    assert main(["export", "--run", str(run), "--format", "openvino", "--int8", "--calibration", str(good)]) == 0
    rgb = [np.asarray(Image.open(path).convert("RGB")) for path in images]
    fp32 = Detector.load(run, engine="openvino").predict(rgb)
    for folder, tolerance in (("openvino-fp16", 0.05), ("openvino-int8", 0.5)):
        other = Detector.load(run, exported=run / folder / "model.xml").predict(rgb)
        spread = np.ptp([r["score"] for r in fp32]) + 1e-6
        # not equal, but close: the score order is what detection needs
        assert max(abs(a["score"] - b["score"]) for a, b in zip(fp32, other, strict=True)) < tolerance * spread + 1e-3


def test_predict_writes_the_same_files_every_time_and_what_the_detector_gives(runs, images, tmp_path: Path) -> None:
    """Reading and writing run in threads beside the scoring; the batches, and so every byte, do not depend on
    their timing, and each image gets what the in-memory detector gives it."""
    run = runs["uflow"]
    first = _predict(run, images, tmp_path / "a", "--batch-size", "3")
    again = _predict(run, images, tmp_path / "b", "--batch-size", "3")
    for a, b in zip(first, again, strict=True):
        assert {k: v for k, v in a.items() if k not in ("heatmap", "mask")} == {
            k: v for k, v in b.items() if k not in ("heatmap", "mask")
        }
        for key in ("heatmap", "mask"):
            assert Path(a[key]).read_bytes() == Path(b[key]).read_bytes()
    detector = Detector.load(run)
    detector.batch_size = 3
    expected = detector.predict([np.asarray(Image.open(path).convert("RGB")) for path in images])
    for record, result in zip(first, expected, strict=True):
        assert record["score"] == result["score"] and record["anomalous"] == result["anomalous"]
        assert np.array_equal(_mask(record["mask"]), result["mask"])


def test_a_non_square_run_keeps_its_height_and_width(non_square_run: Path) -> None:
    config = json.loads((non_square_run / "config.json").read_text())
    assert config["model_config"]["image_size"] == [96, 160] and config["preprocess"]["size"] == [96, 160]


def test_every_engine_scores_a_non_square_run_as_torch(non_square_run: Path, images, tmp_path: Path) -> None:
    """The exported graph resizes to height x width, not width x height: else the scores or shapes would differ."""
    expected = _predict(non_square_run, images, tmp_path / "torch", "--engine", "torch")
    for engine in ("onnx", "openvino"):
        found = _predict(non_square_run, images, tmp_path / engine, "--engine", engine)
        for path, a, b in zip(images, expected, found, strict=True):
            assert b["score"] == pytest.approx(a["score"], abs=1e-4), (engine, path.name)
            with Image.open(path) as image:
                assert _mask(a["mask"]).shape == _mask(b["mask"]).shape == (image.height, image.width)
