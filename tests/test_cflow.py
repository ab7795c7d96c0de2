"""CFLOW-AD: conditional decoders, the fiber likelihood, batch-independent maps, fiber batches, checkpoints."""

import json
from pathlib import Path

import numpy as np
import pytest
import reference
import torch
from helpers import perturb

from flowad.checkpoint import load_run, save_run
from flowad.cli import main
from flowad.errors import InputError
from flowad.models import build_model
from flowad.models.cflow import CFlow, CFlowConfig, cflow_decoder, log_likelihood, positional_encoding_2d
from flowad.thresholds import fixed

SIZE = 64


@pytest.fixture(scope="module")
def model() -> CFlow:
    torch.manual_seed(0)
    net = CFlow(CFlowConfig(image_size=SIZE)).eval()  # the offline default backbone
    perturb(net.decoders, 0.05)
    with torch.no_grad():
        net.calibrate(iter([net.extract(torch.randn(6, 3, SIZE, SIZE))]))
    return net


@pytest.mark.parametrize("permute_soft", [False, True])
def test_decoder_inverts_given_its_condition(permute_soft: bool) -> None:
    decoder = cflow_decoder(10, 8, blocks=8, clamp=1.9, permute_soft=permute_soft, seed=3)
    perturb(decoder, 0.2, seed=1)
    x, c = torch.randn(50, 10), torch.randn(50, 8)
    z, log_det = decoder(x, c)
    assert z.shape == x.shape and log_det.shape == (50,)
    assert (decoder.inverse(z, c) - x).abs().max() < 1e-4
    assert (decoder.inverse(z, c + 1) - x).abs().max() > 1e-2  # the condition matters


def test_identity_decoder_gives_the_gaussian_log_likelihood() -> None:
    net = CFlow(CFlowConfig(image_size=SIZE)).eval()
    with torch.no_grad():
        for decoder in net.decoders:
            for block in decoder.blocks:
                block.subnet[-1].weight.zero_()  # a = 0 -> s = 0, t = 0: only the permutation is left
                block.subnet[-1].bias.zero_()
        features = net.extract(torch.randn(2, 3, SIZE, SIZE))
        latents, log_dets = net.head(features)
    for feature, z, log_det in zip(features, latents, log_dets, strict=True):
        expected = torch.distributions.Normal(0.0, 1.0).log_prob(feature).sum(1)  # (B, H, W)
        lp = log_likelihood(z, log_det)
        assert lp.shape == expected.shape
        assert torch.allclose(lp * feature.shape[1], expected, rtol=1e-5, atol=1e-3)


def test_vectorised_head_matches_the_decoder_fiber_by_fiber(model: CFlow) -> None:
    with torch.no_grad():
        features = model.extract(torch.randn(2, 3, SIZE, SIZE))
        latents, log_dets = model.head(features)
        for feature, decoder, z, log_det in zip(features, model.decoders, latents, log_dets, strict=True):
            _, c, h, w = feature.shape
            pe = positional_encoding_2d(128, h, w)
            for b, y, x in [(0, 0, 0), (1, h - 1, 0), (1, 0, w - 1)]:
                zi, ldi = decoder(feature[b, :, y, x][None], pe[:, y, x][None])
                assert torch.allclose(z[b, :, y, x], zi[0], atol=1e-5)
                assert torch.allclose(log_det[b, y, x], ldi[0], atol=1e-4)


def test_a_score_does_not_depend_on_the_batch(model: CFlow) -> None:
    images = torch.randn(16, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        alone_map, alone_score = model(images[3:4])
        batch_maps, batch_scores = model(images)
    assert alone_map.shape == (1, SIZE, SIZE) and batch_scores.shape == (16,)
    assert (alone_map[0] - batch_maps[3]).abs().max() < 1e-5
    assert abs(alone_score.item() - batch_scores[3].item()) < 1e-5
    assert batch_scores.std() > 0  # the maps are not trivially constant


def _upsample_corners_aligned(grid: np.ndarray, size: int) -> np.ndarray:
    """Bilinear upsampling of an (h, w) grid to (size, size) that puts the grid's corners on the output's
    corners: output pixel i samples the grid at i * (h - 1) / (size - 1), written out by hand."""
    h, w = grid.shape
    out = np.empty((size, size))
    for i in range(size):
        y = i * (h - 1) / (size - 1)
        y0 = min(int(y), h - 2)
        for j in range(size):
            x = j * (w - 1) / (size - 1)
            x0 = min(int(x), w - 2)
            fy, fx = y - y0, x - x0
            top = grid[y0, x0] * (1 - fx) + grid[y0, x0 + 1] * fx
            bottom = grid[y0 + 1, x0] * (1 - fx) + grid[y0 + 1, x0 + 1] * fx
            out[i, j] = top * (1 - fy) + bottom * fy
    return out


def test_map_upsamples_each_layer_with_corners_aligned_as_the_reference(model: CFlow) -> None:
    with torch.inference_mode():
        latents = model.latents(torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(7)))
        produced = model.anomaly_map(latents)[0].double().numpy()
    total = np.zeros((SIZE, SIZE))
    for layer, (z, log_det) in enumerate(zip(latents, latents.log_det, strict=True)):
        lp = log_likelihood(z, log_det)[0].double().numpy()
        total += _upsample_corners_aligned(np.exp(lp - model.max_log_likelihood[layer].item()), SIZE)
    expected = model.max_score.item() - total
    assert np.abs(produced - expected).max() < 1e-6 * np.abs(total).max()  # float32 rounding of S
    assert expected[0, 0] != pytest.approx(expected[1, 1])  # the layers' grids are not flat


def test_latents_are_z_maps_and_the_map_needs_their_log_dets(model: CFlow) -> None:
    with torch.inference_mode():
        z = model.latents(torch.randn(2, 3, SIZE, SIZE))
        shapes = model.encoder.feature_shapes((SIZE, SIZE))
        assert [tuple(t.shape) for t in z] == [(2, *s) for s in shapes]
        assert [tuple(t.shape) for t in z.log_det] == [(2, h, w) for _, h, w in shapes]
        assert model.anomaly_map(z).shape == (2, SIZE, SIZE)
        with pytest.raises(InputError, match="log-determinants"):
            model.anomaly_map(list(z))


def test_positional_encoding_matches_the_formula() -> None:
    d, h, w = 8, 2, 3
    pe = positional_encoding_2d(d, h, w)
    assert pe.shape == (d, h, w)
    expected = reference.positional_encoding_2d(d, h, w)
    for k in range(d):
        for y in range(h):
            for x in range(w):
                assert abs(pe[k, y, x].item() - expected[k][y][x]) < 1e-6, (k, y, x)
    with pytest.raises(InputError, match="multiple of 4"):
        positional_encoding_2d(6, 2, 2)


def test_training_batches_cover_every_fiber_of_the_image_batch_once_per_layer(model: CFlow) -> None:
    model.config.fiber_batch_size = 7
    try:
        shapes = [(40, 5, 4), (112, 3, 2)]  # (C, H, W) per layer, C as the decoders expect
        features = []
        for c, h, w in shapes:  # channel 0 holds the fiber's index, so every fiber can be traced back
            f = torch.zeros(5, c, h, w)
            f[:, 0] = torch.arange(5 * h * w, dtype=torch.float32).view(5, h, w)
            features.append(f)
        batches = list(model.training_batches(features, torch.Generator().manual_seed(0)))
    finally:
        model.config.fiber_batch_size = 64
    for layer, (_, h, w) in enumerate(shapes):
        mine = [(f, cond) for i, f, cond in batches if i == layer]
        sizes = [len(f) for f, _ in mine]
        assert all(s == 7 for s in sizes[:-1]) and 0 < sizes[-1] <= 7
        ids = torch.cat([f[:, 0] for f, _ in mine]).long()
        assert sorted(ids.tolist()) == list(range(5 * h * w))
        assert not torch.equal(ids, torch.arange(5 * h * w))  # shuffled
        pe = positional_encoding_2d(128, h, w)
        pos = ids % (h * w)
        assert torch.equal(torch.cat([cond for _, cond in mine]), pe[:, pos // w, pos % w].t())
    loss = model.training_loss(batches[0])
    assert loss.ndim == 0 and torch.isfinite(loss)


def test_fewer_fibers_than_one_fiber_batch_is_reported_with_the_numbers(model: CFlow) -> None:
    # at 64 px the stages at strides 8, 16, 32 are 8x8, 4x4, 2x2: 2 images give 128, 32 and 8 fibers
    assert model.training_warnings(100) == []  # batches of 32 images: 128 fibers at stride 32
    (message,) = model.training_warnings(2)
    assert "fiber_batch_size=64" in message and "2 images" in message
    assert "32 at stride 16 (2 x 4 x 4)" in message and "8 at stride 32 (2 x 2 x 2)" in message
    assert "stride 8" not in message and "--fiber-batch-size" in message


def test_calibrated_constants_survive_a_checkpoint(model: CFlow, tmp_path: Path) -> None:
    assert torch.isfinite(model.max_log_likelihood).all() and torch.isfinite(model.max_score)
    assert model.max_log_likelihood.shape == (3,) and model.max_score > 0
    assert not torch.equal(model.max_log_likelihood, torch.zeros(3))
    save_run(tmp_path / "run", model, fixed(1.0, 0.0, 2.0))
    assert {"max_log_likelihood", "max_score"} <= set(
        json.loads((tmp_path / "run" / "config.json").read_text())["tensors"]
    )
    loaded, _ = load_run(tmp_path / "run")
    assert torch.equal(loaded.max_log_likelihood, model.max_log_likelihood)
    assert torch.equal(loaded.max_score, model.max_score)
    assert loaded.config.strides == (8, 16, 32)
    images = torch.randn(2, 3, SIZE, SIZE)
    with torch.inference_mode():
        assert torch.allclose(loaded(images)[0], model(images)[0])


def test_config_checks_and_json_round_trip() -> None:
    config = CFlowConfig.from_dict(json.loads(json.dumps(CFlowConfig(image_size=SIZE).to_dict())))
    assert config.strides == (8, 16, 32) and config.lr == 1e-4 and config.weight_decay == 0.0
    with pytest.raises(InputError, match="condition_vector=6"):
        CFlowConfig(condition_vector=6)
    with pytest.raises(InputError, match="image size 70 does not fit"):
        build_model("cflow", image_size=70)


@pytest.mark.slow
def test_train_and_test_through_the_cli(demo_data: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    tiny = ["--image-size", str(SIZE), "--epochs", "1", "--batch-size", "4", "--quiet"]
    args = ["train", "--model", "cflow", "--data", str(demo_data), "--category", "fabric", "--out", str(out), *tiny]
    with pytest.warns(UserWarning, match=r"16 at stride 32 \(4 x 2 x 2\)"):  # 4 images of 2x2 fibers < 64
        assert main(args) == 0
    assert "fewer fibers than one fiber batch (fiber_batch_size=64)" in (out / "flowad.log").read_text()
    config = json.loads((out / "config.json").read_text())
    assert config["model"] == "cflow" and config["model_config"]["strides"] == [8, 16, 32]
    assert main(["test", "--run", str(out), "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics["image_auroc"] <= 1 and 0 <= metrics["pixel_auroc"] <= 1
    assert "image_auroc" in capsys.readouterr().out
