"""U-Flow: the invertible U-shaped flow, its log-determinant, shapes, schedule, MS-CaiT stand-ins and the CLI."""

from pathlib import Path

import numpy as np
import pytest
import reference
import torch
from helpers import perturb

from flowad import backbones
from flowad.backbones import MSCaiTEncoder
from flowad.cli import main
from flowad.errors import InputError
from flowad.models import UFlow, build_model
from flowad.models.uflow import UShapedFlow, upsampled_channels


@pytest.fixture(scope="module")
def model() -> UFlow:
    torch.manual_seed(0)
    m = build_model("uflow", backbone="resnet18", weights="random", image_size=64, flow_steps=2)
    perturb(m.flow, 0.05)
    return m.eval()


def test_model_is_invertible(model: UFlow) -> None:
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        features = [norm(f) for norm, f in zip(model.norms, model.extract(images), strict=True)]
        latents, _ = model.head(model.extract(images))
        rebuilt = model.inverse(latents)
    assert [tuple(f.shape) for f in rebuilt] == [tuple(f.shape) for f in features]
    for f, r in zip(features, rebuilt, strict=True):
        assert (f - r).abs().max() < 1e-4


def test_latent_shapes_follow_the_u(model: UFlow) -> None:
    # resnet18 at 64: 64x16x16, 128x8x8, 256x4x4. Coarse 256 -> 128 out, 128 up (32 at 8x8);
    # middle 128 + 32 = 160 -> 80 out, 80 up (20 at 16x16); finest 64 + 20 = 84, all out.
    assert model.flow.stage_channels == [84, 160, 256]
    with torch.no_grad():
        latents = model.latents(torch.randn(1, 3, 64, 64))
    assert [tuple(z.shape[1:]) for z in latents] == [(84, 16, 16), (80, 8, 8), (128, 4, 4)]
    # every feature value has one latent value: the flow keeps the dimension
    assert sum(z[0].numel() for z in latents) == 64 * 256 + 128 * 64 + 256 * 16


def test_log_det_matches_the_brute_force_jacobian() -> None:
    torch.manual_seed(1)
    flow = UShapedFlow([3, 8], flow_steps=2).double()
    perturb(flow, 0.3, seed=1)
    shapes = [(3, 4, 4), (8, 2, 2)]
    sizes = [3 * 16, 8 * 4]

    def run(flat: torch.Tensor) -> torch.Tensor:
        parts = flat.split(sizes)
        latents, _ = flow([p.view(1, *s) for p, s in zip(parts, shapes, strict=True)])
        return torch.cat([z.flatten() for z in latents])

    x = torch.randn(sum(sizes), dtype=torch.float64)
    jacobian = reference.jacobian_matrix(run, x)
    assert jacobian.shape == (80, 80)
    _, expected = torch.linalg.slogdet(jacobian)
    _, log_det = flow([p.view(1, *s) for p, s in zip(x.split(sizes), shapes, strict=True)])
    assert float(log_det[0].detach()) == pytest.approx(float(expected), abs=1e-8)


def test_mscait_shapes_give_the_papers_latents() -> None:
    # the U-shaped flow alone on MS-CaiT-shaped features: no CaiT is built
    flow = UShapedFlow([768, 384], flow_steps=1, hidden_ratio=0.05)
    features = [torch.randn(1, 768, 28, 28), torch.randn(1, 384, 14, 14)]
    with torch.no_grad():
        latents, log_det = flow(features)
        rebuilt = flow.inverse(latents)
    assert [tuple(z.shape[1:]) for z in latents] == [(816, 28, 28), (192, 14, 14)]
    assert log_det.shape == (1,)
    assert max((f - r).abs().max() for f, r in zip(features, rebuilt, strict=True)) < 1e-4


def test_loss_is_the_mean_negative_log_likelihood(model: UFlow) -> None:
    latents = [torch.randn(3, 4, 2, 2), torch.randn(3, 2, 1, 1)]
    log_det = torch.randn(3)
    per_image = sum(0.5 * z.pow(2).flatten(1).sum(1) for z in latents) - log_det
    assert torch.allclose(model.loss(latents, log_det), per_image.mean())


def test_mcait_needs_448_and_says_so() -> None:
    with pytest.raises(InputError, match="mcait.*takes 448x448 images only.*got image_size 256x256"):
        build_model("uflow", backbone="mcait", image_size=256)


def test_scale_without_enough_channels_is_a_clear_error() -> None:
    assert upsampled_channels(54) == 24 and upsampled_channels(384) == 192
    with pytest.raises(InputError, match="4 channels cannot send a multiple of 4 up"):
        UShapedFlow([4, 4])


def test_mismatched_feature_sizes_are_a_clear_error() -> None:
    flow = UShapedFlow([8, 8], flow_steps=1)
    with pytest.raises(InputError, match="twice the next one's resolution"):
        flow([torch.randn(1, 8, 6, 6), torch.randn(1, 8, 2, 2)])


def test_learning_rate_falls_linearly_over_its_own_horizon_not_the_runs(model: UFlow, monkeypatch) -> None:
    monkeypatch.setattr(model.config, "lr_decay_epochs", 10)
    optimizer = model.optimizer()
    scheduler = model.scheduler(optimizer, epochs=3)  # the run's length does not set the horizon
    lrs = []
    for _ in range(12):
        optimizer.step()
        scheduler.step()
        lrs.append(optimizer.param_groups[0]["lr"])
    assert lrs[4] == pytest.approx(1e-3 * (1 - 0.6 * 5 / 10))
    assert lrs[9] == pytest.approx(0.4e-3)
    assert lrs[-1] == pytest.approx(0.4e-3)  # then stays


def _small_cait(monkeypatch) -> None:
    """Stand-ins for cait_m48_448 / cait_s24_224: tiny CaiTs at 64 and 32 pixels, random weights."""
    real = backbones.create_timm_model
    sizes = {"cait_xxs24_224": 64, "cait_xxs36_224": 32}

    def small(name: str, weights: str, **kwargs):
        return real(name, weights, img_size=sizes[name], depth=3, **kwargs)

    monkeypatch.setattr(backbones, "create_timm_model", small)


def _bicubic_corners_aligned(images: np.ndarray, size: int) -> np.ndarray:
    """(..., H, W) -> (..., size, size), written out by hand: output pixel i samples the input at
    i * (H - 1) / (size - 1) with Keys' cubic convolution (a = -0.75), indices clamped at the border."""
    a = -0.75

    def weights(t: float) -> list[float]:
        def kernel(x: float) -> float:
            x = abs(x)
            if x <= 1:
                return (a + 2) * x**3 - (a + 3) * x**2 + 1
            return a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a if x < 2 else 0.0

        return [kernel(t + 1), kernel(t), kernel(1 - t), kernel(2 - t)]

    def along(x: np.ndarray, axis: int) -> np.ndarray:
        n = x.shape[axis]
        rows = []
        for i in range(size):
            position = i * (n - 1) / (size - 1)
            left = int(np.floor(position))
            taps = [min(max(left + k, 0), n - 1) for k in (-1, 0, 1, 2)]
            rows.append(
                sum(w * np.take(x, tap, axis=axis) for w, tap in zip(weights(position - left), taps, strict=True))
            )
        return np.stack(rows, axis=axis)

    return along(along(images, -2), -1)


def test_mscait_encoder_with_small_stand_ins(monkeypatch, tmp_path: Path) -> None:
    _small_cait(monkeypatch)
    torch.manual_seed(0)
    args = {"large": "cait_xxs24_224", "small": "cait_xxs36_224", "blocks": (2, 3)}
    encoder = MSCaiTEncoder("random", **args)
    images = torch.randn(2, 3, 64, 64)
    features = encoder(images)
    assert [tuple(f.shape) for f in features] == [(2, 192, 4, 4), (2, 192, 2, 2)]
    assert encoder.strides == [16, 32] and encoder.channels == [192, 192]
    assert encoder.feature_shapes((64, 64)) == [(192, 4, 4), (192, 2, 2)]
    assert encoder.mean == (0.485, 0.456, 0.406)
    assert not any(p.requires_grad for p in encoder.parameters())
    # the coarse scale is the small model on the image resized as the reference does (bicubic, corners aligned)
    resized = torch.from_numpy(_bicubic_corners_aligned(images.double().numpy(), 32)).float()
    assert torch.allclose(features[1], encoder.small(resized)[0], atol=1e-4)

    from safetensors.torch import save_file

    state = {f"cait_xxs24_224.{k}": v for k, v in encoder.large.vit.state_dict().items()}
    state |= {f"cait_xxs36_224.{k}": v for k, v in encoder.small.vit.state_dict().items()}
    save_file(state, str(tmp_path / "both.safetensors"))
    loaded = MSCaiTEncoder(str(tmp_path / "both.safetensors"), **args)
    assert all(torch.equal(a, b) for a, b in zip(loaded(images), features, strict=True))

    only_large = {k: v for k, v in state.items() if k.startswith("cait_xxs24_224.")}
    save_file(only_large, str(tmp_path / "large.safetensors"))
    with pytest.raises(InputError, match="no tensors prefixed 'cait_xxs36_224.'"):
        MSCaiTEncoder(str(tmp_path / "large.safetensors"), **args)


@pytest.mark.slow
def test_cli_trains_and_tests_uflow(demo_data: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "uflow"
    tiny = ["--image-size", "64", "--epochs", "2", "--batch-size", "4", "--quiet"]
    assert (
        main(["train", "--model", "uflow", "--data", str(demo_data), "--category", "fabric", "--out", str(out), *tiny])
        == 0
    )
    assert main(["test", "--run", str(out), "--quiet"]) == 0
    assert "pixel_auroc" in capsys.readouterr().out
