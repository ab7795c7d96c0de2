"""How an image becomes a model's input: resized, scaled to [0, 1], normalised per RGB channel.

One :class:`Preprocess` serves training, testing, the in-memory detector and the exported graphs, and a run
stores it in its config.json, so every path feeds the model the same pixels, bit for bit.

The resize is flowad's own, so that a deployed graph can repeat it exactly (:mod:`flowad.onnx_graph`) and a
new Pillow cannot change a run's input: Pillow's antialiased bilinear filter for uint8 images (a triangle
stretched by the scale factor when reducing, rows first, then columns, weights in 22-bit fixed point, each pass
rounded to uint8), with the weights computed exactly in integers. A pass's weights are the triangle's values at
the input pixels' centres (:func:`bilinear_taps`). Pillow computes the same weights in float64 and, up to
Pillow 12, resamples in the same order; Pillow 13 sometimes resamples columns first, which moves some pixels by
one grey level, so :func:`resize_uint8` runs Pillow one axis at a time.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from flowad.errors import InputError
from flowad.tiling import Tiling, tiling_of

if TYPE_CHECKING:
    from flowad.models.base import AnomalyModel

# the usual input statistics of ImageNet weights (timm's default when a configuration gives none)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESAMPLING = ("bilinear",)
PRECISION_BITS = 22  # fixed-point weights for 8-bit images, as Pillow's: 32 - 8 - 2 bits


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """The input of a model: ``size`` (height, width), or one int for a square; ``mean`` and ``std`` per RGB
    channel of the image scaled to [0, 1]; ``resize``, the PIL filter that brings an image to ``size``.

    ``tile`` > 0: the model sees ``tile`` x ``tile`` crops of the full-resolution image, every ``tile_stride``
    pixels (0: half the tile), each brought to ``size`` as a whole image would be (:mod:`flowad.tiling`)."""

    size: tuple[int, int] | int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize: str = "bilinear"
    tile: int = 0
    tile_stride: int = 0

    def __post_init__(self) -> None:
        # settings are kept in one form (tuples of Python numbers) so that equal ones compare and serialise alike
        object.__setattr__(self, "size", size_hw(self.size))
        object.__setattr__(self, "mean", _channel_stats("mean", self.mean, positive=False))
        object.__setattr__(self, "std", _channel_stats("std", self.std, positive=True))
        if self.resize not in RESAMPLING:
            raise InputError(f"resize filter {self.resize!r} is not known; expected one of {sorted(RESAMPLING)}")
        self.tiling  # noqa: B018 - a bad tile or stride fails here

    @property
    def tiling(self) -> Tiling | None:
        """Where the tiles of an image lie, or None when whole images are resized."""
        return tiling_of(self.tile or None, self.tile_stride or None)

    @classmethod
    def from_model(cls, model: AnomalyModel) -> Preprocess:
        """What ``model`` takes: its input size, and the statistics its ``input_statistics`` option picks."""
        mean, std = model.input_statistics
        return cls(model.image_size, mean, std, tile=model.config.tile, tile_stride=model.config.tile_stride)

    def to_dict(self) -> dict[str, Any]:
        values = {"size": list(self.size), "mean": list(self.mean), "std": list(self.std), "resize": self.resize}
        if self.tile:  # written only when tiling, so the records of whole-image runs keep their form
            values.update(tile=self.tile, tile_stride=self.tile_stride)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Preprocess:
        missing = sorted({"size", "mean", "std"} - set(values))
        if missing:
            raise InputError(f"preprocessing settings {values!r} lack {missing}")
        return cls(
            tuple(values["size"]),
            tuple(values["mean"]),
            tuple(values["std"]),
            values.get("resize", "bilinear"),
            values.get("tile", 0),
            values.get("tile_stride", 0),
        )

    # float32, as the arithmetic below runs: (x / 255 - mean) / std in float32 numpy
    @functools.cached_property
    def _mean32(self) -> np.ndarray:
        return np.asarray(self.mean, dtype=np.float32)

    @functools.cached_property
    def _std32(self) -> np.ndarray:
        return np.asarray(self.std, dtype=np.float32)

    def resized(self, rgb: np.ndarray) -> np.ndarray:
        """RGB uint8 (H, W, 3) of any size -> uint8 (height, width, 3): what an exported graph takes."""
        return resize_uint8(rgb, self.size)

    def normalised(self, resized: np.ndarray) -> np.ndarray:
        """uint8 (..., height, width, 3) at ``size`` -> float32 (x / 255 - mean) / std, per channel."""
        return (resized.astype(np.float32) / 255.0 - self._mean32) / self._std32

    def array(self, rgb: np.ndarray) -> np.ndarray:
        """RGB uint8 (H, W, 3) of any size -> normalised float32 (height, width, 3) at ``size``."""
        return self.normalised(self.resized(rgb))

    def tensor(self, rgb: np.ndarray) -> torch.Tensor:
        """RGB uint8 (H, W, 3) of any size -> the model's input: normalised float32 (3, height, width)."""
        return torch.from_numpy(np.ascontiguousarray(self.array(rgb).transpose(2, 0, 1)))

    __call__ = tensor

    def mask(self, defect: np.ndarray) -> np.ndarray:
        """A defect mask (H, W) of its image's size -> float32 0/1 (height, width), beside the resized image."""
        height, width = self.size
        # nearest keeps the mask binary; bilinear would invent fractional labels
        small = Image.fromarray(defect.astype(np.uint8) * 255).resize((width, height), Image.Resampling.NEAREST)
        return (np.asarray(small) > 127).astype(np.float32)


def resize_uint8(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 RGB (H, W, 3) or grey (H, W) of any size -> uint8 at (height, width): flowad's bilinear resize
    (module docstring), rows first, then columns.

    Each pass is one of Pillow's single-axis resizes, whose order cannot vary: its float64 weights round to
    the exact integers of :func:`bilinear_taps` whenever their sum is below 2^23 (inputs up to ~20 000 pixels
    for a 256-pixel output), as a test checks against a direct computation.
    """
    height, width = size
    picture = Image.fromarray(np.asarray(image))
    if picture.width != width:
        picture = picture.resize((width, picture.height), Image.Resampling.BILINEAR)
    if picture.height != height:
        picture = picture.resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(picture)


def bilinear_taps(in_len: int, out_len: int) -> tuple[np.ndarray, np.ndarray]:
    """One pass's window per output pixel: input indices (out_len, T) and int64 fixed-point weights (out_len, T).

    With M = max(in_len, out_len), output pixel i weighs input pixel j by
    max(0, 2M - |(2j + 1) out_len - (2i + 1) in_len|), normalised over the j inside the image and rounded half
    up to ``PRECISION_BITS`` bits, exactly. T covers every input pixel of positive weight; taps past the image
    get weight 0 (and a valid index). The exported graphs compute the same integers (:mod:`flowad.onnx_graph`).
    """
    longest = max(in_len, out_len)
    n_taps = (2 * longest + out_len - 1) // out_len + 1
    i = np.arange(out_len)[:, None]
    start = np.maximum(((2 * i + 1) * in_len - 2 * longest) // (2 * out_len), 0)
    j = start + np.arange(n_taps)[None, :]
    weight = np.maximum(2 * longest - np.abs((2 * j + 1) * out_len - (2 * i + 1) * in_len), 0)
    weight = np.where(j < in_len, weight, 0)
    total = weight.sum(1, keepdims=True)
    fixed = (weight * (1 << (PRECISION_BITS + 1)) + total) // (2 * total)  # round half up, exactly
    return np.minimum(j, in_len - 1), fixed


def size_hw(image_size: int | Sequence[int]) -> tuple[int, int]:
    """(height, width) of a size given as one int (a square) or as a pair."""
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(size) != 2 or not all(isinstance(v, int) and v > 0 for v in size):
        raise InputError(f"image_size is {image_size!r}; expected a positive int or (height, width)")
    return size[0], size[1]


def _channel_stats(what: str, values: Sequence[float], positive: bool) -> tuple[float, float, float]:
    array = np.asarray(values, dtype=np.float32).reshape(-1)
    if array.shape != (3,) or (positive and not np.all(array > 0)):
        kind = "three positive numbers" if positive else "three numbers"
        raise InputError(f"{what} is {tuple(values)!r}; expected {kind}, one per RGB channel")
    return tuple(float(v) for v in np.asarray(values, dtype=np.float64).reshape(-1))
