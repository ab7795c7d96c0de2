"""Training runs that stop: divergence keeps the last good epoch, and an interrupted run resumes exactly."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import DEMO_SIZES, TINY_TRAIN
from safetensors.torch import load_file

import flowad
from flowad import engine
from flowad.checkpoint import load_run, read_json, read_record
from flowad.cli import main
from flowad.data.datasets import ImageDataset
from flowad.errors import FlowadError
from flowad.latent_stats import latent_statistics
from flowad.metrics import image_auroc, pixel_auroc
from flowad.models.fastflow import FastFlow, FastFlowConfig
from flowad.nfa import log_nfa, rescaled
from flowad.preprocess import Preprocess

TINY = {"image_size": 64, "epochs": 4, "batch_size": 4, "flow_steps": 2}


@pytest.fixture(scope="module")
def data(demo_data: Path) -> Path:
    """The session's demo data set: 8 fabric images to train on, 2 to validate with."""
    return demo_data


def _train(data: Path, out: Path, **extra):
    return flowad.train(
        "fastflow", data, out=out, category="fabric", settings=engine.EngineSettings(quiet=True), **{**TINY, **extra}
    )


@pytest.mark.slow
def test_interrupted_run_resumes_to_the_same_weights(data: Path, tmp_path: Path, monkeypatch) -> None:
    whole = _train(data, tmp_path / "whole")

    real_save = engine.save_train_state

    def save_then_interrupt(run_dir, model, optimizer, scheduler, generator, log):
        real_save(run_dir, model, optimizer, scheduler, generator, log)
        if len(log["epochs"]) == 2:
            raise KeyboardInterrupt  # as a Ctrl-C right after epoch 2 was saved

    monkeypatch.setattr(engine, "save_train_state", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        _train(data, tmp_path / "cut")
    monkeypatch.setattr(engine, "save_train_state", real_save)
    assert not (tmp_path / "cut" / "model.safetensors").exists()

    assert main(["train", "--resume", str(tmp_path / "cut"), "--quiet"]) == 0
    a, b = load_file(str(whole / "model.safetensors")), load_file(str(tmp_path / "cut" / "model.safetensors"))
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    log = flowad.api.read_json(tmp_path / "cut" / "train_log.json")
    assert [e["epoch"] for e in log["epochs"]] == [1, 2, 3, 4]


def test_resume_without_state_is_a_clear_error(tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    assert main(["train", "--resume", str(tmp_path / "empty"), "--quiet"]) == 2
    assert "request.json does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_divergence_keeps_the_last_good_epoch(data: Path, tmp_path: Path, monkeypatch) -> None:
    calls = {"n": 0}
    real_loss = FastFlow.training_loss

    def loss_that_blows_up(self, batch):
        calls["n"] += 1
        loss = real_loss(self, batch)
        return loss * float("nan") if calls["n"] > 5 else loss  # 2 steps per epoch: epoch 3 diverges

    monkeypatch.setattr(FastFlow, "training_loss", loss_that_blows_up)
    with pytest.raises(FlowadError, match=r"diverged at epoch 3.*learning rate.*last good epoch \(2\)"):
        _train(data, tmp_path / "nan")
    model, config = load_run(tmp_path / "nan")  # the last good checkpoint loads ...
    assert config.train["epochs_completed"] == 2 and "diverged" in config.train["stopped"]
    records = flowad.predict(tmp_path / "nan", [data / "fabric" / "test" / "good"], tmp_path / "pred", quiet=True)
    assert len(records) == DEMO_SIZES["n_test_good"]  # ... and predicts
    assert all(torch.isfinite(torch.tensor(r["score"])) for r in records)


@pytest.mark.slow
def test_huge_learning_rate_stops_clearly_and_the_last_good_epoch_still_predicts(
    data: Path, tmp_path: Path, capsys
) -> None:
    run = tmp_path / "lr"
    args = [
        "train",
        "--data",
        str(data),
        "--category",
        "fabric",
        "--out",
        str(run),
        "--quiet",
        "--image-size",
        "64",
        "--epochs",
        "6",
        "--batch-size",
        "4",
        "--flow-steps",
        "2",
        "--lr",
        "100",
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "training diverged at epoch 2" in err and "lr=100.0" in err and "last good epoch (1)" in err
    load_run(run)
    out = tmp_path / "pred"
    assert (
        main(["predict", "--run", str(run), "--input", str(data / "fabric" / "test" / "good"), "--out", str(out)]) == 0
    )
    assert len((out / "predictions.jsonl").read_text().splitlines()) == DEMO_SIZES["n_test_good"]


@pytest.mark.slow
def test_validation_with_anomalies_keeps_the_best_and_the_last_epoch(data: Path, tmp_path: Path, capsys) -> None:
    abnormal, masks = tmp_path / "val_abnormal", tmp_path / "val_masks"
    abnormal.mkdir(), masks.mkdir()
    for defect in ("hole", "thread", "stain", "scratch"):
        shutil.copy(data / "fabric" / "test" / defect / "000.png", abnormal / f"{defect}.png")
        shutil.copy(data / "fabric" / "ground_truth" / defect / "000_mask.png", masks / f"{defect}_mask.png")
    run = tmp_path / "run"
    args = ["--data", str(data), "--category", "fabric", "--out", str(run), "--quiet", "--image-size", "64"]
    args += ["--epochs", "4", "--batch-size", "4", "--flow-steps", "2", "--lr", "0.003"]
    assert main(["train", *args, "--val-abnormal", str(abnormal), "--val-masks", str(masks)]) == 0
    printed = capsys.readouterr().out

    log = flowad.api.read_json(run / "train_log.json")
    vals = [e["val"] for e in log["epochs"]]
    assert len(vals) == 4 and all(set(v) == {"image_auroc", "pixel_auroc"} for v in vals)
    best = max(range(4), key=lambda i: (vals[i]["image_auroc"], -i))  # the earliest of equals
    summary = flowad.api.read_json(run / "config.json")["train"]
    assert summary["best"]["epoch"] == best + 1 and summary["last"]["epoch"] == 4
    assert f"best epoch {best + 1} " in printed and "last epoch 4 " in printed
    text = (run / "flowad.log").read_text()
    assert all(f"epoch {i}/4 loss " in text for i in range(1, 5)) and "val image_auroc" in text

    # each saved run scores the validation split as its epoch did: the best weights really were kept
    spec = flowad.DataSpec(str(data), "fabric", val_abnormal_dir=str(abnormal), val_mask_dir=str(masks))
    val_samples = spec.splits(0).val
    labels = [s.label for s in val_samples]
    for path, expected in ((run / "best", vals[best]), (run, vals[3])):
        net, config = load_run(path)
        assert config.thresholds.method == "f1"
        dataset = ImageDataset(val_samples, Preprocess.from_model(net))
        out = engine.infer(net, dataset, engine.EngineSettings(quiet=True), keep_latents=True)
        assert image_auroc(out["scores"], labels) == pytest.approx(expected["image_auroc"], abs=1e-6)
        assert pixel_auroc(out["maps"], out["masks"]) == pytest.approx(expected["pixel_auroc"], abs=1e-6)
        # and its readiness for the NFA is its own weights', on the good validation images
        good = torch.tensor(labels) == 0
        own = [s.mean_z2 for s in latent_statistics([z[good] for z in out["latents"]])]
        stored = [scale["mean_z2"] for scale in read_json(path / "config.json")["train"]["latents"]]
        assert stored == pytest.approx(own, abs=2e-4)
    assert not (run / "best_state.safetensors").exists() and not (run / "train_state.json").exists()

    shutil.rmtree(abnormal)  # testing reads only the test split: the validation folders may be gone
    assert main(["test", "--run", str(run), "--quiet"]) == 0
    assert main(["train", *args, "--val-masks", str(masks), "--force"]) == 2
    assert "given without anomalous validation images" in capsys.readouterr().err


@pytest.mark.slow
def test_the_best_epoch_is_the_one_kept(tmp_path: Path, monkeypatch) -> None:
    """With validation figures that peak at epoch 2 of 4, best_state holds epoch 2's head, not the last."""
    heads = []
    real_save = engine.save_train_state

    def save_and_remember(run_dir, model, optimizer, scheduler, generator, log):
        heads.append({k: v.clone() for k, v in model.trainable_state().items()})
        real_save(run_dir, model, optimizer, scheduler, generator, log)

    monkeypatch.setattr(engine, "save_train_state", save_and_remember)
    figures = iter([0.6, 0.9, 0.9, 0.7])  # epoch 3 ties epoch 2: the earlier one stays best
    torch.manual_seed(0)
    model = FastFlow(FastFlowConfig(weights="random", image_size=64, epochs=4, batch_size=4, flow_steps=1))
    features = torch.utils.data.TensorDataset(torch.randn(8, 3, 64, 64))
    images = [{"image": x} for (x,) in features]
    log = engine.train(
        model, images, engine.EngineSettings(quiet=True), tmp_path, validate=lambda m: {"score": next(figures)}
    )
    assert log["best"] == {"epoch": 2, "val": {"score": 0.9}}
    best = load_file(str(tmp_path / "best_state.safetensors"))
    assert all(torch.equal(best[k], heads[1][k]) for k in best)
    assert not all(torch.equal(best[k], heads[3][k]) for k in best)


def test_every_good_image_can_train_with_the_threshold_from_the_training_images(data: Path, tmp_path: Path) -> None:
    held_out, every = tmp_path / "held-out", tmp_path / "every"
    common = ["train", "--data", str(data), "--category", "fabric", *TINY_TRAIN]
    assert main([*common, "--out", str(held_out)]) == 0
    assert main([*common, "--out", str(every), "--val-fraction", "0"]) == 0
    kept, reused = read_json(held_out / "config.json")["train"], read_json(every / "config.json")["train"]
    assert kept["thresholds_from"] == "held-out validation images"
    assert reused["thresholds_from"] == "training images"
    assert reused["images"] == DEMO_SIZES["n_train"] == kept["images"] + kept["validation_images"]
    assert len(reused["latents"]) == 3  # the latents' statistics, on the training images here


def test_a_run_counts_the_good_validation_images_its_nfa_flags_as_predict_does(
    fastflow_run: Path, tmp_path: Path
) -> None:
    record = read_record(fastflow_run)
    good = [s.path for s in record.data.splits(record.seed).val if s.label == 0]
    folder = tmp_path / "good validation images"
    folder.mkdir()
    for i, path in enumerate(good):
        shutil.copy(path, folder / f"{i:02d}{Path(path).suffix}")
    out = tmp_path / "predicted"
    predict = ["predict", "--run", str(fastflow_run), "--input", str(folder), "--out", str(out)]
    assert main([*predict, "--threshold", "nfa", "--engine", "torch"]) == 0
    lines = (out / "predictions.jsonl").read_text().splitlines()
    by_predict = sum(json.loads(line)["log_nfa_min"] < 0 for line in lines)
    counted = read_json(fastflow_run / "config.json")["train"]["nfa_flagged"]
    assert counted == {"good_images": len(good), "flagged": by_predict}
    assert len(lines) == len(good) > 0


def test_readiness_warnings_are_printed_once_each_and_not_when_quiet(data: Path, tmp_path: Path, capsys) -> None:
    loud = [a for a in TINY_TRAIN if a != "--quiet"]
    common = ["train", "--data", str(data), "--category", "fabric"]
    assert main([*common, "--out", str(tmp_path / "loud"), *loud]) == 0
    err = capsys.readouterr().err.replace("\r", "\n")  # the progress bars end their lines with \r
    printed = [line for line in err.splitlines() if line.startswith("warning: ")]
    stored = read_json(tmp_path / "loud" / "config.json")["train"]["nfa_warnings"]
    assert stored  # a one-epoch run's latents are far from N(0, 1)
    assert printed == [f"warning: {message}" for message in stored]
    assert main([*common, "--out", str(tmp_path / "quiet"), *TINY_TRAIN]) == 0
    assert "warning: " not in capsys.readouterr().err


def test_a_validation_split_without_good_images_is_named(data: Path, tmp_path: Path, capsys) -> None:
    abnormal, masks = tmp_path / "val_abnormal", tmp_path / "val_masks"
    abnormal.mkdir(), masks.mkdir()
    for defect in ("hole", "stain"):
        shutil.copy(data / "fabric" / "test" / defect / "000.png", abnormal / f"{defect}.png")
        shutil.copy(data / "fabric" / "ground_truth" / defect / "000_mask.png", masks / f"{defect}_mask.png")
    args = ["train", "--data", str(data), "--category", "fabric", "--out", str(tmp_path / "run"), *TINY_TRAIN]
    assert main([*args, "--val-fraction", "0", "--val-abnormal", str(abnormal), "--val-masks", str(masks)]) == 2
    assert "the validation split holds 2 anomalous images and no good one" in capsys.readouterr().err


def test_the_nfa_options_are_kept_in_the_run_and_used_wherever_its_nfa_is_computed(data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    common = ["train", "--data", str(data), "--category", "fabric", "--out", str(run), *TINY_TRAIN]
    nfa_flags = ["--nfa-rescale", "--nfa-anchor", "--nfa-window-size", "3", "7"]
    assert main([*common, *nfa_flags, "--nfa-probability-threshold", "0.5", "0.9"]) == 0
    record = read_record(run)
    assert record.model_config["nfa_rescale"] is True and record.model_config["nfa_window_size"] == [3, 7]
    assert record.model_config["nfa_anchor"] is True
    assert record.model_config["nfa_probability_threshold"] == [0.5, 0.9]
    net, _ = load_run(run)
    good = [s for s in record.data.splits(record.seed).val if s.label == 0]
    dataset = ImageDataset(good, record.preprocess)
    latents = engine.infer(net, dataset, engine.EngineSettings(quiet=True), keep_latents=True)["latents"]
    size = record.preprocess.size
    expected = log_nfa(latents, size, window_size=(3, 7), probability_threshold=(0.5, 0.9), rescale=True, anchor=True)
    assert np.array_equal(net.log_nfa(latents), expected)
    # a one-epoch run's latents are wider than N(0, 1): rescaling changes the test
    plain = log_nfa(latents, size, window_size=(3, 7), probability_threshold=(0.5, 0.9), anchor=True)
    assert not np.array_equal(plain, expected)
    train = read_json(run / "config.json")["train"]
    flagged = int((expected < 0).any(axis=(1, 2)).sum())
    assert train["nfa_flagged"] == {"good_images": len(good), "flagged": flagged}
    # the readiness statistics are those of the latents the test counts on
    own = latent_statistics(rescaled(latents), 0.5)  # the candidate rate at the lowest of several levels
    assert [scale["mean_z2"] for scale in train["latents"]] == pytest.approx([s.mean_z2 for s in own], abs=2e-4)
    assert [scale["candidate_rate"] for scale in train["latents"]] == pytest.approx(
        [s.candidate_rate for s in own], abs=2e-4
    )
