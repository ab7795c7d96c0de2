"""Feature extractors and where their weights come from."""

import numpy as np
import pytest
import torch
from skimage import data

from flowad import backbones
from flowad.backbones import CNNEncoder, ViTEncoder, create_timm_model, fingerprint
from flowad.errors import FlowadError, InputError


@pytest.fixture(scope="module")
def lite0() -> torch.nn.Module:
    return create_timm_model("tf_efficientnet_lite0", "pretrained").eval()


def test_offline_weights_classify_a_real_photo(lite0: torch.nn.Module) -> None:
    # The offline package's tensors are mapped by position: a wrong mapping cannot recognise a cat.
    cat = torch.from_numpy(data.chelsea()).permute(2, 0, 1)[None].float() / 255
    x = torch.nn.functional.interpolate(cat, size=(224, 224), mode="bilinear")
    mean, std = lite0.pretrained_cfg["mean"], lite0.pretrained_cfg["std"]
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        top = int(lite0(x).argmax())
    assert 281 <= top <= 285, f"ImageNet class {top} is not a cat"


def test_cnn_encoder_gives_strides_4_8_16() -> None:
    encoder = CNNEncoder("tf_efficientnet_lite0", (4, 8, 16))
    features = encoder(torch.randn(2, 3, 128, 96))
    assert [tuple(f.shape) for f in features] == [(2, 24, 32, 24), (2, 40, 16, 12), (2, 112, 8, 6)]
    assert encoder.strides == [4, 8, 16]
    assert encoder.feature_shapes((128, 96)) == [(24, 32, 24), (40, 16, 12), (112, 8, 6)]
    assert not any(p.requires_grad for p in encoder.parameters())
    encoder.train()
    assert not encoder.training  # frozen batch norms never switch to training mode


def test_missing_stride_is_a_clear_error() -> None:
    with pytest.raises(InputError, match="no stage at stride 3"):
        CNNEncoder("resnet18", (3,), "random")


def test_unknown_backbone_is_a_clear_error() -> None:
    with pytest.raises(InputError, match="unknown backbone 'no_such_net'"):
        create_timm_model("no_such_net", "random")


def test_pretrained_weights_that_cannot_be_had_never_fall_back_to_random(monkeypatch) -> None:
    timm = backbones._timm()
    real = timm.create_model

    def offline(name, pretrained=False, **kwargs):
        if pretrained:
            raise ConnectionError("hub unreachable")
        return real(name, pretrained=False, **kwargs)

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(FlowadError, match="could not get pretrained weights for 'resnet18'.*--weights FILE"):
        create_timm_model("resnet18", "pretrained")


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_weights_from_a_file(tmp_path, suffix: str) -> None:
    source = create_timm_model("resnet18", "random")
    path = tmp_path / f"w{suffix}"
    if suffix == ".pth":
        torch.save({"state_dict": source.state_dict()}, path)
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    loaded = create_timm_model("resnet18", str(path))
    assert fingerprint(loaded) == fingerprint(source)
    assert fingerprint(create_timm_model("resnet18", "random")) != fingerprint(source)


def test_bad_weights_files_are_clear_errors(tmp_path) -> None:
    with pytest.raises(InputError, match="missing.pth does not exist"):
        create_timm_model("resnet18", str(tmp_path / "missing.pth"))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="cannot read weights file .*junk.pth"):
        create_timm_model("resnet18", str(junk))
    other = tmp_path / "other.pth"
    torch.save(create_timm_model("resnet34", "random").state_dict(), other)
    with pytest.raises(InputError, match="do not fit this backbone"):
        create_timm_model("resnet18", str(other))


def test_pickled_code_in_a_weights_file_is_refused(tmp_path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"weights": np.array([1, 2, 3]), "fn": print}, path)  # not a plain tensor dict
    with pytest.raises(InputError, match="cannot read weights file"):
        create_timm_model("resnet18", str(path))


@pytest.mark.parametrize(("name", "blocks"), [("deit_tiny_distilled_patch16_224", 8), ("cait_xxs24_224", 20)])
def test_vit_encoder_gives_one_token_map(name: str, blocks: int) -> None:
    encoder = ViTEncoder(name, blocks, "random")
    (features,) = encoder(torch.randn(1, 3, 224, 224))
    assert features.shape == (1, 192, 14, 14)
    assert encoder.strides == [16] and encoder.channels == [192]
