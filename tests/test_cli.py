"""End to end through the command line: demo data -> train -> test -> predict, and its errors."""

import html
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import DEMO_SIZES, DEMO_TEST_IMAGES, TINY_TRAIN
from PIL import Image

from flowad.cli import main


def _pixels(path: str) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


@pytest.fixture(scope="module")
def demo(demo_data: Path) -> Path:
    """The session's demo data set, both categories."""
    return demo_data


@pytest.fixture(scope="module")
def run(fastflow_run: Path, tmp_path_factory) -> Path:
    """A copy of the session's FastFlow run (``flowad train`` with TINY_TRAIN): these tests write into it."""
    return Path(shutil.copytree(fastflow_run, tmp_path_factory.mktemp("runs") / "ff"))


def test_train_writes_a_complete_run_directory(run: Path) -> None:
    names = {p.name for p in run.iterdir()}
    assert {"config.json", "model.safetensors", "train_log.json"} <= names
    assert "backbone.safetensors" not in names  # the offline backbone ships with flowad
    config = json.loads((run / "config.json").read_text())
    assert config["model"] == "fastflow" and config["model_config"]["image_size"] == 64
    assert config["normalisation"] == {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
    assert config["thresholds"]["method"] == "fpr=0.01"
    assert config["train"]["images"] == 8 and config["train"]["validation_images"] == 2


def test_test_prints_and_writes_metrics(run: Path, capsys) -> None:
    assert main(["test", "--run", str(run), "--quiet"]) == 0
    printed = capsys.readouterr().out
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("image_auroc", "pixel_auroc", "aupro", "image_f1", "pixel_f1", "iou", "train_seconds", "test_seconds"):
        assert key in metrics
    for key in ("image_auroc", "pixel_auroc", "aupro", "image_f1"):
        assert 0 <= metrics[key] <= 1
        assert f"{metrics[key]:.4f}" in printed
    assert metrics["test_images"] == DEMO_TEST_IMAGES["fabric"]


def test_predict_writes_one_heatmap_mask_and_line_per_image(run: Path, demo: Path, tmp_path: Path, capsys) -> None:
    folder = demo / "fabric" / "test" / "hole"
    (tmp_path / "in").mkdir()
    for p in folder.iterdir():
        (tmp_path / "in" / p.name).write_bytes(p.read_bytes())
    (tmp_path / "in" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    out = tmp_path / "out"
    assert main(["predict", "--run", str(run), "--input", str(tmp_path / "in"), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "warning: skipped" in err and "broken.png" in err
    lines = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(lines) == DEMO_SIZES["n_test_per_defect"]
    for line in lines:
        assert 0 <= line["normalised_score"] <= 1
        assert line["anomalous"] == (line["normalised_score"] >= 0.5)
        with Image.open(line["heatmap"]) as heat:
            assert heat.size == (64, 64) and heat.mode == "RGB"
        mask = _pixels(line["mask"])
        assert mask.shape == (64, 64) and set(np.unique(mask)) <= {0, 255}


def test_existing_run_directory_needs_force(run: Path, demo: Path, capsys) -> None:
    args = ["train", "--data", str(demo), "--category", "fabric", "--out", str(run), *TINY_TRAIN]
    assert main(args) == 2
    assert "already exists" in capsys.readouterr().err
    assert (run / "model.safetensors").exists()  # the finished run is untouched


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--data", "/no/such/root", "--category", "x", "--out", "OUT"], "/no/such/root"),
        (["train", "--data", "DEMO", "--category", "nope", "--out", "OUT"], "nope"),
        (["train", "--data", "DEMO", "--category", "fabric", "--out", "OUT", "--image-size", "70"], "image size 70"),
        (
            ["train", "--data", "DEMO", "--category", "fabric", "--out", "OUT", "--image-size", "100", "160"],
            "image height 100 does not fit backbone tf_efficientnet_lite0: expected a multiple of 16",
        ),
        (["train", "--model", "nomodel", "--data", "DEMO", "--category", "fabric", "--out", "OUT"], "unknown model"),
        (  # FastFlow's couplings shuffle channels only, as the reference's
            [
                "train",
                "--model",
                "fastflow",
                "--data",
                "DEMO",
                "--category",
                "fabric",
                "--out",
                "OUT",
                "--permute-soft",
            ],
            "unknown option(s) ['permute_soft'] for FastFlowConfig",
        ),
        (["test", "--run", "/no/such/run"], "/no/such/run does not exist"),
        (["predict", "--run", "RUN", "--input", "/no/such/file", "--out", "OUT"], "/no/such/file"),
        (["test", "--run", "RUN", "--threshold", "high"], "--threshold 'high'"),
    ],
)
def test_bad_input_exits_2_with_a_message(args, message, demo, run, tmp_path, capsys) -> None:
    subst = {"DEMO": str(demo), "OUT": str(tmp_path / "o"), "RUN": str(run)}
    code = main([subst.get(a, a) for a in args] + ["--quiet"] * (args[0] != "predict"))
    assert code == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_same_seed_same_weights(demo: Path, run: Path, tmp_path: Path) -> None:
    out = tmp_path / "again"
    assert main(["train", "--data", str(demo), "--category", "fabric", "--out", str(out), *TINY_TRAIN]) == 0
    assert (out / "model.safetensors").read_bytes() == (run / "model.safetensors").read_bytes()


def test_nfa_threshold_for_test_and_predict(run: Path, demo: Path, tmp_path: Path, capsys) -> None:
    assert main(["test", "--run", str(run), "--threshold", "nfa", "--quiet"]) == 0
    printed = capsys.readouterr().out
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["threshold"]["method"] == "nfa" and "log NFA < 0" in printed
    assert 0 <= metrics["iou_nfa"] <= 1 and metrics["iou"] == metrics["iou_nfa"]
    with np.load(run / "test_outputs.npz") as outputs:  # the NFA's masks, as --threshold nfa predicts them
        good = outputs["labels"] == 0
        assert metrics["nfa_good_flagged"] == outputs["pred_masks"][good].any(axis=(1, 2)).mean()
    assert "nfa_good_flagged" in printed
    out = tmp_path / "nfa"
    folder = demo / "fabric" / "test" / "good"
    assert main(["predict", "--run", str(run), "--input", str(folder), "--out", str(out), "--threshold", "nfa"]) == 0
    for line in (out / "predictions.jsonl").read_text().splitlines():
        record = json.loads(line)
        mask = _pixels(record["mask"]) > 0
        assert record["anomalous"] == bool(mask.any()) == (record["log_nfa_min"] < 0)


def test_the_nfa_is_tested_otherwise_than_trained_without_retraining(
    fastflow_run: Path, demo: Path, tmp_path: Path, capsys
) -> None:
    from flowad.api import Detector, read_record
    from flowad.checkpoint import load_run
    from flowad.data.datasets import ImageDataset
    from flowad.engine import EngineSettings, infer
    from flowad.nfa import log_nfa
    from flowad.resize import resize_bilinear
    from flowad.serve import model_info

    run = Path(shutil.copytree(fastflow_run, tmp_path / "run"))  # this test rewrites its metrics and report
    config = (run / "config.json").read_bytes()
    chosen = {"window_size": [3, 7], "probability_threshold": [0.5, 0.99], "high_precision": False, "rescale": True}
    chosen["anchor"] = True
    flags = ["--nfa-window-size", "3", "7", "--nfa-probability-threshold", "0.5", "0.99", "--nfa-rescale"]
    flags.append("--nfa-anchor")
    assert main(["test", "--run", str(run), "--threshold", "nfa", "--quiet", *flags]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["nfa"] == chosen and (run / "config.json").read_bytes() == config  # the run's record unchanged
    said = "windows 3 7, levels 0.5 0.99, rescaled, anchored"
    assert f"nfa test          {said}" in capsys.readouterr().out
    assert f"<dt>NFA test</dt><dd>{html.escape(said)}</dd>" in (run / "report.html").read_text()
    # the masks of the chosen test, computed directly from the test images' latents
    net, record = load_run(run)
    test = record.data.splits(record.seed).test
    latents = infer(net, ImageDataset(test, record.preprocess), EngineSettings(quiet=True), keep_latents=True)
    size = record.preprocess.size
    chosen_test = {"window_size": (3, 7), "probability_threshold": (0.5, 0.99), "rescale": True, "anchor": True}
    expected = log_nfa(latents["latents"], size, **chosen_test)
    with np.load(run / "test_outputs.npz") as outputs:
        assert np.array_equal(outputs["pred_masks"], expected < 0)
    assert main(["test", "--run", str(run), "--threshold", "nfa", "--quiet"]) == 0  # the run's own again
    assert (
        json.loads((run / "metrics.json").read_text())["nfa"]["window_size"]
        == read_record(run).model_config["nfa_window_size"]
    )
    # predict and the Detector: the same options, every engine's latents through the same test
    detector = Detector.load(run, "nfa", "onnx", nfa_options={"nfa_probability_threshold": [0.5, 0.99]})
    image = _pixels(str(demo / "fabric" / "test" / "hole" / "000.png"))
    scored = detector.score_resized(detector.preprocess.resized(image)[None])
    small = log_nfa(scored.latents, size, probability_threshold=(0.5, 0.99))
    found = detector.predict([image])[0]["mask"]
    assert np.array_equal(found, resize_bilinear(small[0].astype(np.float32), image.shape[:2]) < 0)
    # the service says which test it runs
    assert model_info(str(run), detector)["nfa"]["probability_threshold"] == [0.5, 0.99]
    assert model_info(str(run), Detector.load(run, "f1", "onnx"))["nfa"] is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["test", "--nfa-probability-threshold", "0.5", "1.5"], "--nfa-probability-threshold 0.5 1.5: expected"),
        (["test", "--nfa-window-size", "0"], "--nfa-window-size 0: expected an integer >= 1"),
        (["predict", "--nfa-rescale", "--input", "DEMO", "--out", "OUT"], "--nfa-rescale: NFA options apply with"),
        (["predict", "--no-nfa-anchor", "--input", "DEMO", "--out", "OUT"], "--no-nfa-anchor: NFA options apply with"),
        (["serve", "--nfa-window-size", "3", "15", "--port", "0"], "--nfa-window-size 3 15: NFA options apply with"),
    ],
)
def test_bad_nfa_options_at_test_time_exit_2(args, message, demo, run, tmp_path, capsys) -> None:
    subst = {"DEMO": str(demo), "OUT": str(tmp_path / "o")}
    before = (run / "metrics.json").read_bytes()
    assert main([args[0], "--run", str(run), *(subst.get(a, a) for a in args[1:])]) == 2
    assert message in capsys.readouterr().err
    assert (run / "metrics.json").read_bytes() == before and not (tmp_path / "o").exists()


@pytest.mark.slow
def test_benchmark_prints_and_writes_the_category_table(demo: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "bench"
    assert main(["benchmark", "--data", str(demo), "--out", str(out), *TINY_TRAIN]) == 0  # both demo categories
    printed = capsys.readouterr().out
    csv = (out / "table.csv").read_text().splitlines()
    assert csv[0] == "category,image_auroc,pixel_auroc,aupro,iou"
    assert [line.split(",")[0] for line in csv[1:]] == ["fabric", "pill", "mean"]
    per_category = [json.loads((out / c / "metrics.json").read_text()) for c in ("fabric", "pill")]
    mean = sum(m["pixel_auroc"] for m in per_category) / 2
    assert csv[3].split(",")[2] == f"{mean:.4f}" and f"{mean:.4f}" in printed
    assert (out / "table.md").read_text().startswith("| category | image_auroc")


def test_test_writes_the_report_and_report_re_renders_it(run: Path, capsys) -> None:
    assert main(["test", "--run", str(run), "--quiet"]) == 0
    report = run / "report.html"
    assert report.exists() and str(report) in capsys.readouterr().out
    report.unlink()
    assert main(["report", str(run)]) == 0
    assert report.exists() and 'id="metrics"' in report.read_text()
    assert (report.stat().st_mode & 0o777) != 0o600  # written atomically, but readable like any output


def test_demo_takes_the_model_options_over_its_presets() -> None:
    from flowad.cli import build_parser

    args = build_parser().parse_args(["demo", "--model", "cflow", "--epochs", "3", "--input-statistics", "imagenet"])
    assert (args.epochs, args.input_statistics, args.fiber_batch_size) == (3, "imagenet", None)
