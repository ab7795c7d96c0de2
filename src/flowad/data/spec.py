"""The data a run asks for: where the images are, in which layout, and how validation images are chosen."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from flowad.data.datasets import (
    DatasetSplits,
    anomalies_from_folder,
    btad_splits,
    existing_dir,
    folder_splits,
    mvtec_splits,
    split_validation,
    validation_from_folder,
)
from flowad.data.layouts import ad2_splits, loco_splits, visa_categories, visa_splits
from flowad.data.manifest import manifest_categories, manifest_splits
from flowad.errors import InputError
from flowad.ranges import check_ranges

# layouts of one category at a time: how to read one, and a category to show when none is given
CATEGORY_LAYOUTS: dict[str, tuple[Callable[[str, str], DatasetSplits], str]] = {
    "mvtec": (mvtec_splits, "bottle"),
    "btad": (btad_splits, "01"),
    "visa": (visa_splits, "candle"),
    "mvtec_loco": (loco_splits, "breakfast_box"),
    "mvtec_ad2": (ad2_splits, "can"),
}
LAYOUTS = (*CATEGORY_LAYOUTS, "folder", "csv")


@dataclasses.dataclass
class DataSpec:
    """Where the images are. ``root`` is the data set root, the good-images folder (folder) or the manifest (csv)."""

    root: str
    category: str | None = None
    layout: str = "mvtec"
    abnormal_dir: str | None = None  # folder layout: anomalous test images
    mask_dir: str | None = None  # folder layout: their masks (else <stem>_mask beside them)
    val_dir: str | None = None  # good validation images; else the layout's own, else a fraction of the training images
    val_fraction: float = 0.2
    val_abnormal_dir: str | None = None  # anomalous validation images: F1 thresholds, best-epoch selection
    val_mask_dir: str | None = None  # their masks (else <stem>_mask beside them)

    def __post_init__(self) -> None:
        check_ranges(self)
        _check_layout(self.layout)

    def splits(self, seed: int) -> DatasetSplits:
        """The train, validation and test samples; ``seed`` picks the validation (and folder, csv test) images."""
        splits = self._layout_splits(seed)
        own_good = [s for s in splits.val if s.label == 0]
        own_anomalous = [s for s in splits.val if s.label == 1]
        if self.val_dir is not None:
            good = validation_from_folder(self.val_dir)
        elif own_good:  # the layout's own validation images (MVTec LOCO, MVTec AD 2, a manifest's val rows)
            good = own_good
        else:
            splits.train, good = split_validation(splits.train, self.val_fraction, seed)
        splits.val = good + own_anomalous
        if self.val_mask_dir is not None and self.val_abnormal_dir is None:
            raise InputError(f"validation masks {self.val_mask_dir} given without anomalous validation images")
        if self.val_abnormal_dir is not None:
            splits.val += anomalies_from_folder(self.val_abnormal_dir, self.val_mask_dir)
        return splits

    def _layout_splits(self, seed: int) -> DatasetSplits:
        if self.layout == "folder":
            return folder_splits(self.root, self.abnormal_dir, self.mask_dir, seed=seed)
        if self.layout == "csv":
            return manifest_splits(self.root, self.category, seed)
        read, example = CATEGORY_LAYOUTS[self.layout]
        if not self.category:
            raise InputError(f"layout {self.layout} needs a category (e.g. --category {example})")
        return read(self.root, self.category)


def list_categories(root: str | Path, layout: str = "mvtec") -> list[str]:
    """The categories of a data set root, sorted: its category folders (``train/good``, BTAD ``train/ok``),
    the objects of VisA's split file, or a manifest's one category."""
    _check_layout(layout)
    if layout == "folder":
        raise InputError("the folder layout has no categories; expected a layout such as mvtec (or flowad train)")
    if layout == "csv":
        return manifest_categories(root)
    if not Path(root).is_dir():
        raise InputError(f"data set root {root} does not exist")
    if layout == "visa":
        return visa_categories(root)
    good = "ok" if layout == "btad" else "good"
    found = sorted(p.name for p in existing_dir(root).iterdir() if (p / "train" / good).is_dir())
    if not found:
        raise InputError(f"{root} holds no category folder with train/{good}; expected the {layout} layout")
    return found


def _check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise InputError(f"--layout {layout}: expected one of {', '.join(LAYOUTS)}")
