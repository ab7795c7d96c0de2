"""MSFlow: the invertible head, its log-determinant, the two aggregations, the schedule, resume and the CLI."""

import json
from pathlib import Path

import numpy as np
import pytest
import reference
import torch
from helpers import TINY_TRAIN, perturb

import flowad
from flowad import engine
from flowad.cli import main
from flowad.data.datasets import ImageDataset
from flowad.errors import InputError
from flowad.models import MSFlow, MSFlowConfig, build_model
from flowad.models.msflow import MultiScaleFlow
from flowad.preprocess import Preprocess

TINY_HEAD = {"parallel_blocks": (1, 2, 1), "condition_vector": 8}


@pytest.fixture(scope="module")
def model() -> MSFlow:
    torch.manual_seed(0)
    m = build_model("msflow", weights="random", image_size=64, **TINY_HEAD)
    perturb(m.flow, 0.05)
    return m.eval()


def test_head_is_invertible(model: MSFlow) -> None:
    with torch.no_grad():
        features = model.extract(torch.randn(2, 3, 64, 64))
        latents, _ = model.head(features)
        rebuilt = model.inverse(latents)
    for f, r in zip(features, rebuilt, strict=True):
        assert f.shape == r.shape and (f - r).abs().max() < 1e-4


def test_features_are_pooled_to_strides_8_16_32(model: MSFlow) -> None:
    assert model.encoder.strides == [8, 16, 32]
    with torch.no_grad():
        latents = model.latents(torch.randn(1, 3, 64, 64))
    # EfficientNet-Lite0's stages at strides 4, 8, 16 have 24, 40 and 112 channels
    assert [tuple(z.shape[1:]) for z in latents] == model.encoder.feature_shapes((64, 64))
    assert model.encoder.feature_shapes((64, 64)) == [(24, 8, 8), (40, 4, 4), (112, 2, 2)]


def test_log_det_matches_the_brute_force_jacobian() -> None:
    torch.manual_seed(1)
    # the fewest channels at which the fusion's mixing LayerNorm sees more than one channel
    flow = MultiScaleFlow([4, 6, 8], [8, 16, 32], (1, 2, 1), clamp=1.9, condition=4).double()
    perturb(flow, 0.3, seed=1)
    shapes = [(4, 4, 4), (6, 2, 2), (8, 1, 1)]
    sizes = [4 * 16, 6 * 4, 8]

    def features(flat: torch.Tensor) -> list[torch.Tensor]:
        return [p.view(1, *s) for p, s in zip(flat.split(sizes), shapes, strict=True)]

    x = torch.randn(sum(sizes), dtype=torch.float64)
    jacobian = reference.jacobian_matrix(lambda v: torch.cat([z.flatten() for z in flow(features(v))[0]]), x)
    _, expected = torch.linalg.slogdet(jacobian)
    latents, log_det = flow(features(x))
    assert float(log_det[0].detach()) == pytest.approx(float(expected), abs=1e-8)
    rebuilt = flow.inverse(latents)
    assert max((a - b).abs().max() for a, b in zip(features(x), rebuilt, strict=True)) < 1e-10


def test_the_fusion_flow_exchanges_the_scales() -> None:
    torch.manual_seed(2)
    flow = perturb(MultiScaleFlow([8, 8, 8], [8, 16, 32], (1, 1, 1), condition=4), 0.3, seed=2)
    features = [torch.randn(1, 8, 8, 8), torch.randn(1, 8, 4, 4), torch.randn(1, 8, 2, 2)]
    with torch.no_grad():
        before = flow(features)[0]
        features[2] = features[2] + 1  # the coarsest scale only
        after = flow(features)[0]
    assert not torch.allclose(before[0], after[0])  # reaches the finest scale's latent


def test_maps_and_scores_do_not_depend_on_batch_mates(model: MSFlow) -> None:
    images = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        maps, scores = model(images)
        alone = [model(images[i : i + 1]) for i in range(4)]
    assert maps.shape == (4, 64, 64) and scores.shape == (4,)
    for i, (one_map, one_score) in enumerate(alone):
        assert torch.allclose(maps[i], one_map[0], atol=1e-5)
        assert torch.allclose(scores[i], one_score[0], atol=1e-6)


def test_map_adds_probabilities_and_score_multiplies_them(model: MSFlow) -> None:
    shapes = [(2, 24, 8, 8), (2, 40, 4, 4), (2, 112, 2, 2)]
    latents = [torch.zeros(s) for s in shapes]
    latents[0][1, :, 2:4, 2:4] = 3.0  # image 1: unlikely at a 2x2 block of the finest scale
    with torch.no_grad():
        maps = model.anomaly_map(latents)
        scores = model.image_scores(latents, maps)
    assert maps[0].abs().max() < 1e-6 and scores[0].abs() < 1e-6  # equally likely everywhere: nothing stands out
    peak = np.unravel_index(int(maps[1].argmax()), (64, 64))
    assert 16 <= peak[0] < 32 and 16 <= peak[1] < 32  # the block, at the input size
    # one scale of three lost its probability there (exp(-4.5)): max S - S = 1 - exp(-4.5), where S = 3 elsewhere
    assert float(maps[1].max()) == pytest.approx(1 - np.exp(-4.5), abs=1e-5)
    # the score: the mean of the top 3 % (122 of 64 x 64 pixels) of 1 - exp(L - max L); L = -4.5 on the block's
    # 10 x 10 pixels between its cells' centres, and the rest of the 122 on the ramp around them
    assert 0.95 < float(scores[1]) <= 1 - np.exp(-4.5) + 1e-6


def test_schedule_warms_up_then_decays(model: MSFlow) -> None:
    optimizer = model.optimizer()
    scheduler = model.scheduler(optimizer, epochs=100)
    lrs = []
    for _ in range(100):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    lr = model.config.lr
    # the reference: 0.1 lr -> lr linearly over 12 epochs, then x 0.33 at epochs 70 and 90
    assert lrs[0] == pytest.approx(0.1 * lr) and lrs[6] == pytest.approx(0.55 * lr)
    assert lrs[12] == lrs[69] == pytest.approx(lr)
    assert lrs[70] == pytest.approx(0.33 * lr) and lrs[90] == pytest.approx(0.33**2 * lr)


def test_gradients_are_clipped_to_the_norm(model: MSFlow) -> None:
    clipped = build_model("msflow", weights="random", image_size=64, max_grad_norm=0.5, **TINY_HEAD)
    clipped.load_state_dict(model.state_dict())
    clipped.training_loss(clipped.extract(torch.randn(2, 3, 64, 64))).backward()
    clipped.clip_gradients()
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in clipped.parameters() if p.grad is not None]))
    assert float(norm) == pytest.approx(0.5, rel=1e-4)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"parallel_blocks": (2, 5)}, "--parallel-blocks 2 5: expected 3 counts"),
        ({"pool_type": "median"}, "pool_type='median'"),
        ({"condition_vector": 6}, "condition_vector=6"),
        ({"top_k": 0}, "--top-k 0"),
        ({"lr_decay_milestones": (0.5, 70)}, "--lr-decay-milestones 0.5 70"),
    ],
)
def test_bad_options_are_named(options: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        MSFlowConfig(**options)


def test_an_image_size_off_the_pooled_stride_is_refused() -> None:
    with pytest.raises(InputError, match="expected a multiple of 32"):
        build_model("msflow", weights="random", image_size=48)
    build_model("msflow", weights="random", image_size=48, pool_type="none", **TINY_HEAD)  # stride 16 then


def _train(demo_data: Path, state_dir: Path) -> dict[str, torch.Tensor]:
    samples = flowad.DataSpec(str(demo_data), "fabric", val_fraction=0.2).splits(0).train
    config = MSFlowConfig(image_size=64, epochs=4, batch_size=4, lr_warmup_fraction=0.5, **TINY_HEAD)
    torch.manual_seed(0)
    net = MSFlow(config)
    images = ImageDataset(samples, Preprocess.from_model(net))
    settings = engine.EngineSettings(seed=1, quiet=True)
    log = engine.train(net, images, settings, state_dir=state_dir, resume=(state_dir / "train_state.json").exists())
    assert len(log["epochs"]) == 4
    return {k: v.detach().clone() for k, v in net.trainable_state().items()}


def test_an_interrupted_run_resumes_to_the_same_weights(demo_data: Path, tmp_path: Path, monkeypatch) -> None:
    whole = _train(demo_data, tmp_path / "whole")
    real_save = engine.save_train_state

    def save_then_interrupt(run_dir, model, optimizer, scheduler, generator, log):
        real_save(run_dir, model, optimizer, scheduler, generator, log)
        if len(log["epochs"]) == 2:  # mid warm-up: the schedule's place must come back too
            raise KeyboardInterrupt

    monkeypatch.setattr(engine, "save_train_state", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        _train(demo_data, tmp_path / "cut")
    monkeypatch.setattr(engine, "save_train_state", real_save)
    resumed = _train(demo_data, tmp_path / "cut")
    assert max((whole[k] - resumed[k]).abs().max().item() for k in whole) < 1e-5


def _predictions(run: Path, images: Path, out: Path, engine_name: str) -> list[dict]:
    argv = ["predict", "--run", str(run), "--input", str(images), "--out", str(out), "--engine", engine_name]
    assert main([*argv, "--quiet"]) == 0
    return [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_cli_trains_tests_exports_and_predicts_msflow(demo_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "msflow"
    data = ["--data", str(demo_data), "--category", "fabric", "--model", "msflow", "--out", str(run)]
    assert main(["train", *data, *TINY_TRAIN, "--parallel-blocks", "1", "2", "2"]) == 0
    assert main(["test", "--run", str(run), "--quiet"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"image_auroc", "pixel_auroc", "iou_nfa"} <= metrics.keys() and (run / "report.html").is_file()
    assert main(["export", "--run", str(run), "--format", "onnx"]) == 0
    images = demo_data / "fabric" / "test" / "hole"
    by_torch = _predictions(run, images, tmp_path / "torch", "torch")
    by_onnx = _predictions(run, images, tmp_path / "onnx", "onnx")
    assert len(by_torch) == len(by_onnx) > 0
    for a, b in zip(by_torch, by_onnx, strict=True):
        assert a["path"] == b["path"] and a["anomalous"] == b["anomalous"]
        assert a["score"] == pytest.approx(b["score"], abs=1e-4)


@pytest.mark.slow
def test_benchmark_runs_msflow(demo_data: Path, tmp_path: Path) -> None:
    argv = ["benchmark", "--model", "msflow", "--data", str(demo_data), "--categories", "pill", "--out", str(tmp_path)]
    assert main([*argv, *TINY_TRAIN, "--parallel-blocks", "1", "1", "1"]) == 0
    table = (tmp_path / "table.csv").read_text().splitlines()
    assert table[0].startswith("category") and table[1].startswith("pill")
