"""The data a run asks for: where the images are, in which layout, and how validation images are chosen."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from flowad.data.datasets import (
    DatasetSplits,
    anomalies_from_folder,
    btad_splits,
    folder_splits,
    mvtec_splits,
    split_validation,
    validation_from_folder,
)
from flowad.errors import InputError
from flowad.ranges import check_ranges

LAYOUTS = ("mvtec", "btad", "folder")


@dataclasses.dataclass
class DataSpec:
    """Where the images are. ``root`` is the data set root (mvtec, btad) or the good-images folder."""

    root: str
    category: str | None = None
    layout: str = "mvtec"
    abnormal_dir: str | None = None  # folder layout: anomalous test images
    mask_dir: str | None = None  # folder layout: their masks (else <stem>_mask beside them)
    val_dir: str | None = None  # good validation images; else a fraction of the training images
    val_fraction: float = 0.2
    val_abnormal_dir: str | None = None  # anomalous validation images: F1 thresholds, best-epoch selection
    val_mask_dir: str | None = None  # their masks (else <stem>_mask beside them)

    def __post_init__(self) -> None:
        check_ranges(self)
        if self.layout not in LAYOUTS:
            raise InputError(f"--layout {self.layout}: expected one of {', '.join(LAYOUTS)}")

    def splits(self, seed: int) -> DatasetSplits:
        """The train, validation and test samples; ``seed`` picks the validation (and folder test) images."""
        if self.layout in ("mvtec", "btad") and not self.category:
            raise InputError(
                f"layout {self.layout} needs a category (e.g. --category {'01' if self.layout == 'btad' else 'bottle'})"
            )
        if self.layout == "mvtec":
            splits = mvtec_splits(self.root, self.category)
        elif self.layout == "btad":
            splits = btad_splits(self.root, self.category)
        else:
            splits = folder_splits(self.root, self.abnormal_dir, self.mask_dir, seed=seed)
        if self.val_dir is not None:
            splits.val = validation_from_folder(self.val_dir)
        else:
            splits.train, splits.val = split_validation(splits.train, self.val_fraction, seed)
        if self.val_mask_dir is not None and self.val_abnormal_dir is None:
            raise InputError(f"validation masks {self.val_mask_dir} given without anomalous validation images")
        if self.val_abnormal_dir is not None:
            splits.val += anomalies_from_folder(self.val_abnormal_dir, self.val_mask_dir)
        return splits


def list_categories(root: str | Path, layout: str = "mvtec") -> list[str]:
    """The category folders of an MVTec AD (``train/good``) or BTAD (``train/ok``) root, sorted."""
    good = "good" if layout == "mvtec" else "ok"
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"data set root {root} does not exist")
    found = sorted(p.name for p in root.iterdir() if (p / "train" / good).is_dir())
    if not found:
        raise InputError(f"{root} holds no category folder with train/{good}; expected the {layout} layout")
    return found
