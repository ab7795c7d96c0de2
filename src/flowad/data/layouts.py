"""The layouts of three more public data sets, each read into :class:`~flowad.data.samples.DatasetSplits`:

* VisA (:func:`visa_splits`): the split file ``ROOT/split_csv/1cls.csv`` that ships with it says which image
  trains and which tests;
* MVTec LOCO AD (:func:`loco_splits`): several masks per anomalous image, merged;
* MVTec AD 2 (:func:`ad2_splits`): its public test set (the private ones have no labels).

LOCO and AD 2 bring their own good validation images (``validation/good``). VisA and LOCO masks mark defects
with small values (1, or one value per defect): any nonzero value is defect there.
"""

from __future__ import annotations

from pathlib import Path

from flowad.data.datasets import (
    anomalous_samples,
    category_dir,
    defect_folders,
    existing_dir,
    good_from_folder,
    list_images,
)
from flowad.data.manifest import Row, read_rows, row_sample, row_split
from flowad.data.samples import DatasetSplits, Sample
from flowad.errors import InputError

VISA_SPLIT_FILE = Path("split_csv") / "1cls.csv"
VISA_COLUMNS = ("object", "split", "label", "image", "mask")
VISA_LABELS = {"normal": 0, "anomaly": 1}


def visa_splits(root: str | Path, category: str) -> DatasetSplits:
    """Samples of one VisA category (e.g. ``"candle"``), as ``ROOT/split_csv/1cls.csv`` splits them.

    The file's columns are ``object,split,label,image,mask``: ``split`` is ``train`` or ``test``, ``label``
    ``normal`` or ``anomaly``, and the paths (``<object>/Data/Images/{Normal,Anomaly}/*.JPG``, masks
    ``<object>/Data/Masks/Anomaly/*.png``) are relative to ROOT. Every anomalous image needs its mask.
    """
    rows = _visa_rows(root)
    mine = [row for row in rows if row.values["object"] == category]
    if not mine:
        listing = ", ".join(sorted({row.values["object"] for row in rows}))
        raise InputError(f"category {category!r} not found in {rows[0].file}; expected one of {listing}")
    parts: dict[str, list[Sample]] = {"train": [], "test": []}
    for row in mine:
        sample = row_sample(row, "image", VISA_LABELS, row.file.parent.parent, "anomaly", mask_nonzero=True)
        if sample.label and sample.mask_path is None:
            raise InputError(f"{row.where()}: anomalous image {sample.path} has no mask; expected its path there")
        parts[row_split(row, sample, tuple(parts))].append(sample)
    return DatasetSplits(train=parts["train"], val=[], test=parts["test"], name=f"visa/{category}")


def visa_categories(root: str | Path) -> list[str]:
    """The objects VisA's split file lists, sorted."""
    return sorted({row.values["object"] for row in _visa_rows(root)})


def loco_splits(root: str | Path, category: str) -> DatasetSplits:
    """Samples of one MVTec LOCO AD category (e.g. ``"breakfast_box"``).

    Layout: ``<root>/<category>/train/good``, ``validation/good`` (the validation images),
    ``test/{good,logical_anomalies,structural_anomalies}`` and, per anomalous image ``<stem>.png``, a folder
    of masks ``ground_truth/<defect>/<stem>/000.png, 001.png, ...``, merged by union.
    """
    base = category_dir(root, category, required="train")
    test = defect_folders(base / "test", lambda images, defect: _loco_anomalies(images, defect, base))
    val = good_from_folder(base / "validation" / "good")
    return DatasetSplits(good_from_folder(base / "train" / "good"), val, test, name=f"mvtec_loco/{category}")


def ad2_splits(root: str | Path, category: str) -> DatasetSplits:
    """Samples of one MVTec AD 2 category (e.g. ``"can"``).

    Layout: ``<root>/<category>/train/good``, ``validation/good`` (the validation images) and the public test
    set ``test_public/{good,bad}`` with masks ``test_public/ground_truth/bad/<stem>_mask.png``; the unlabelled
    ``test_private*`` folders are not read.
    """
    base = category_dir(root, category, required="train")
    public = base / "test_public"
    bad = anomalous_samples(list_images(public / "bad"), "bad", public / "ground_truth" / "bad")
    test = good_from_folder(public / "good") + bad
    val = good_from_folder(base / "validation" / "good")
    return DatasetSplits(good_from_folder(base / "train" / "good"), val, test, name=f"mvtec_ad2/{category}")


def _visa_rows(root: str | Path) -> list[Row]:
    split_file = existing_dir(root) / VISA_SPLIT_FILE
    if not split_file.is_file():
        raise InputError(
            f"VisA root {split_file.parent.parent} has no {VISA_SPLIT_FILE}; expected the split file that ships "
            f"with VisA (columns {','.join(VISA_COLUMNS)})"
        )
    return read_rows(split_file, VISA_COLUMNS, "VisA split file")


def _loco_anomalies(images: list[Path], defect: str, base: Path) -> list[Sample]:
    """LOCO's anomalous test images, each with the masks in its own folder."""
    samples = []
    for image in images:
        folder = base / "ground_truth" / defect / image.stem
        if not folder.is_dir():
            raise InputError(
                f"anomalous image {image} has no mask folder {folder}; expected its masks there (000.png, ...)"
            )
        masks = list_images(folder)
        samples.append(Sample(image, 1, masks[0], defect, tuple(masks[1:]), mask_nonzero=True))
    return samples
