"""The records a data layout returns: :class:`Sample` (one image, its label and masks) and
:class:`DatasetSplits`, and how a sample's masks become one defect mask (:func:`read_sample_mask`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flowad.data.images import read_mask


@dataclass(frozen=True)
class Sample:
    """One image of a data set: its path, label (0 good, 1 anomalous) and optional mask."""

    path: Path
    label: int
    mask_path: Path | None = None
    defect: str = "good"
    more_masks: tuple[Path, ...] = ()  # further masks of the same image, merged by union (MVTec LOCO)
    mask_nonzero: bool = False  # any nonzero mask value is defect (VisA, MVTec LOCO), not only values above 127

    @property
    def mask_files(self) -> tuple[Path, ...]:
        """Every mask file of the image: none, one, or several to merge."""
        return () if self.mask_path is None else (self.mask_path, *self.more_masks)


@dataclass
class DatasetSplits:
    """Train (good only), validation (good, plus anomalies when given) and test samples of one data set."""

    train: list[Sample]
    val: list[Sample]
    test: list[Sample]
    name: str


def read_sample_mask(sample: Sample, size: tuple[int, int]) -> np.ndarray:
    """The defect mask of ``sample``'s image of ``(H, W)`` ``size``: the union of its mask files, all False
    without any."""
    mask = np.zeros(size, dtype=bool)
    for path in sample.mask_files:
        mask |= read_mask(path, expected_size=size, any_nonzero=sample.mask_nonzero)
    return mask
