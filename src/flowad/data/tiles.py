"""The data sets of a tiled run (:mod:`flowad.tiling`): training tiles, and whole images to score tile by tile.

:class:`TileDataset` serves every tile of every training image as one item, so the feature cache holds tile
features (and its memory limit counts them). :class:`WholeImages` serves each image at full resolution, as
uint8, with its full-resolution mask, for validation and testing. :func:`image_dataset` and
:func:`training_dataset` pick the data set a run's preprocessing asks for.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from flowad.data.datasets import ImageDataset, Sample
from flowad.data.images import read_image, read_image_size
from flowad.data.samples import read_sample_mask
from flowad.errors import InputError
from flowad.preprocess import Preprocess
from flowad.tiling import Tiling


class TileDataset(torch.utils.data.Dataset):
    """Every tile of every image of ``samples``, in image order, each an item ``{"image": (3, h, w), "index"}``
    preprocessed like a whole image (resized to the model's size, normalised).

    The last image read is kept: reading the tiles in order decodes each file once.
    """

    def __init__(self, samples: Sequence[Sample], preprocess: Preprocess) -> None:
        if preprocess.tiling is None:
            raise InputError("TileDataset needs a preprocessing with a tile size")
        self.samples, self.preprocess = list(samples), preprocess
        self.tiling: Tiling = preprocess.tiling
        self.tiles: list[tuple[int, int, int]] = []  # (sample index, top, left)
        for index, sample in enumerate(self.samples):
            height, width = read_image_size(sample.path)
            try:
                positions = self.tiling.positions(height, width)
            except InputError as err:
                raise InputError(f"training image {sample.path}: {err}") from err
            self.tiles += [(index, y, x) for y, x in positions]
        self._last: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.tiles)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        sample, top, left = self.tiles[index]
        if self._last is None or self._last[0] != sample:
            self._last = (sample, read_image(self.samples[sample].path))
        t = self.tiling.tile
        return {"image": self.preprocess.tensor(self._last[1][top : top + t, left : left + t]), "index": index}


class WholeImages(torch.utils.data.Dataset):
    """Images at full resolution for scoring tile by tile: items ``{"rgb": uint8 (H, W, 3), "mask": float32
    (1, H, W) of 0/1, "label", "index"}``."""

    def __init__(self, samples: Sequence[Sample], preprocess: Preprocess) -> None:
        if preprocess.tiling is None:
            raise InputError("WholeImages needs a preprocessing with a tile size")
        self.samples, self.preprocess = list(samples), preprocess
        self.tiling: Tiling = preprocess.tiling

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        sample = self.samples[index]
        rgb = read_image(sample.path)
        mask = read_sample_mask(sample, rgb.shape[:2]).astype(np.float32)
        return {
            "rgb": torch.from_numpy(rgb),
            "mask": torch.from_numpy(mask[None]),
            "label": torch.tensor(sample.label, dtype=torch.int64),
            "index": index,
        }


def image_dataset(samples: Sequence[Sample], preprocess: Preprocess) -> ImageDataset | WholeImages:
    """The images to score (validation, test): resized whole, or at full resolution for a tiled run."""
    return ImageDataset(samples, preprocess) if preprocess.tiling is None else WholeImages(samples, preprocess)


def training_dataset(samples: Sequence[Sample], preprocess: Preprocess) -> ImageDataset | TileDataset:
    """The training items: whole images resized, or every tile of every image for a tiled run."""
    return ImageDataset(samples, preprocess) if preprocess.tiling is None else TileDataset(samples, preprocess)
