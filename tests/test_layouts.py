"""Tests of the VisA, MVTec LOCO AD and MVTec AD 2 layouts, each on a tiny copy of its layout written here, and
of `flowad benchmark --seeds` end to end on the VisA copy."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from helpers import DEMO_SIZES, TINY_TRAIN
from PIL import Image

from flowad.checkpoint import read_record
from flowad.cli import main
from flowad.data.datasets import ImageDataset
from flowad.data.images import read_mask
from flowad.data.spec import DataSpec, list_categories
from flowad.data.synthetic import CATEGORIES, DEFECTS
from flowad.errors import InputError
from flowad.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess

SIZE = 32  # LOCO and AD 2 copies: 32 x 32 images
VISA_HEADER = "object,split,label,image,mask"


def _image(path: Path, value: int = 128) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (SIZE, SIZE), (value,) * 3).save(path)
    return path


def _mask(path: Path, rows: slice, value: int) -> Path:
    """A mask whose ``rows`` hold ``value`` (1 as VisA and LOCO write it, or 255)."""
    pixels = np.zeros((SIZE, SIZE), dtype=np.uint8)
    pixels[rows] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def _mask_of(sample, size: int) -> np.ndarray:
    item = ImageDataset([sample], Preprocess(size, IMAGENET_MEAN, IMAGENET_STD))[0]
    return item["mask"][0].numpy() > 0


@pytest.fixture(scope="module")
def visa_root(demo_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo data set rewritten in VisA's layout: JPEG images, masks of 0 and 1, split_csv/1cls.csv."""
    root = tmp_path_factory.mktemp("visa") / "VisA"
    rows = [VISA_HEADER]
    for category in CATEGORIES:
        source, data = demo_data / category, Path(category) / "Data"
        normal = [(p, "train") for p in sorted((source / "train" / "good").iterdir())]
        normal += [(p, "test") for p in sorted((source / "test" / "good").iterdir())]
        for i, (path, split) in enumerate(normal):
            image = data / "Images" / "Normal" / f"{i:04d}.JPG"
            _as_jpeg(path, root / image)
            rows.append(f"{category},{split},normal,{image},")
        anomalous = [p for d in DEFECTS[category] for p in sorted((source / "test" / d).iterdir())]
        for i, path in enumerate(anomalous):
            image, mask = data / "Images" / "Anomaly" / f"{i:03d}.JPG", data / "Masks" / "Anomaly" / f"{i:03d}.png"
            _as_jpeg(path, root / image)
            defect = np.asarray(Image.open(source / "ground_truth" / path.parent.name / f"{path.stem}_mask.png"))
            (root / mask).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray((defect > 127).astype(np.uint8)).save(root / mask)  # 0/1, as some VisA releases
            rows.append(f"{category},test,anomaly,{image},{mask}")
    (root / "split_csv").mkdir()
    (root / "split_csv" / "1cls.csv").write_text("\n".join(rows) + "\n")
    return root


def _as_jpeg(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    Image.open(source).convert("RGB").save(target, "JPEG", quality=95)


def _visa_with_rows(tmp_path: Path, rows: list[str]) -> Path:
    """A VisA root whose split file holds ``rows`` (paths may point into another root)."""
    (tmp_path / "split_csv").mkdir(parents=True)
    (tmp_path / "split_csv" / "1cls.csv").write_text("\n".join([VISA_HEADER, *rows]) + "\n")
    return tmp_path


# --- VisA ------------------------------------------------------------------------------------------------


def test_visa_follows_its_split_file(visa_root: Path) -> None:
    assert list_categories(visa_root, "visa") == sorted(CATEGORIES)
    splits = DataSpec(str(visa_root), "fabric", "visa").splits(seed=0)
    n_train = DEMO_SIZES["n_train"]
    assert (len(splits.train), len(splits.val)) == (n_train - 2, 2)  # no validation in VisA: 20 % of train
    n_anomalous = len(DEFECTS["fabric"]) * DEMO_SIZES["n_test_per_defect"]
    assert [s.label for s in splits.test] == [0] * DEMO_SIZES["n_test_good"] + [1] * n_anomalous
    assert all(s.path.suffix == ".JPG" and s.path.parent.name == "Normal" for s in splits.train + splits.val)
    assert all(s.mask_path is not None and s.mask_path.parent.name == "Anomaly" for s in splits.test if s.label)
    assert splits.name == "visa/fabric"


def test_visa_masks_of_zero_and_one_are_defects(visa_root: Path, demo_data: Path) -> None:
    anomalous = next(s for s in DataSpec(str(visa_root), "fabric", "visa").splits(0).test if s.label)
    assert not read_mask(anomalous.mask_path).any()  # 1 is below the usual cut at 127...
    defect = DEFECTS["fabric"][0]
    original = read_mask(demo_data / "fabric" / "ground_truth" / defect / "000_mask.png")
    assert np.array_equal(_mask_of(anomalous, DEMO_SIZES["image_size"]), original)  # ...but VisA's rule keeps it


def test_visa_errors_name_the_file_and_line(visa_root: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"has no split_csv/1cls.csv; expected the split file that ships with VisA"):
        DataSpec(str(tmp_path), "candle", "visa").splits(0)
    with pytest.raises(InputError, match=r"category 'candle' not found in .*1cls.csv; expected one of fabric, pill"):
        DataSpec(str(visa_root), "candle", "visa").splits(0)
    image, mask = visa_root / "fabric/Data/Images/Anomaly/000.JPG", visa_root / "fabric/Data/Masks/Anomaly/000.png"
    cases = {
        f"c,train,anomaly,{image},{mask}": rf"line 2: anomalous image {re.escape(str(image))} is in the train split",
        f"c,test,broken,{image},{mask}": r"line 2: label 'broken'; expected one of 'normal', 'anomaly'",
        f"c,valid,normal,{image},": r"line 2: split 'valid'; expected one of 'train', 'test'",
        "c,test,normal,c/gone.JPG,": r"line 2: image 'c/gone.JPG': .*gone.JPG does not exist",
        f"c,test,anomaly,{image},": r"line 2: anomalous image .*000.JPG has no mask",
    }
    for number, (row, expected) in enumerate(cases.items()):
        root = _visa_with_rows(tmp_path / str(number), [row])
        with pytest.raises(InputError, match=rf"1cls.csv {expected}"):
            DataSpec(str(root), "c", "visa").splits(0)


def test_a_visa_root_without_split_file_is_refused_on_the_command_line(tmp_path: Path, capsys) -> None:
    out = tmp_path / "bench"
    assert main(["benchmark", "--layout", "visa", "--data", str(tmp_path), "--out", str(out), "--seeds", "0"]) == 2
    assert "split_csv/1cls.csv" in capsys.readouterr().err and not out.exists()


# --- MVTec LOCO AD ---------------------------------------------------------------------------------------


@pytest.fixture
def loco_root(tmp_path: Path) -> Path:
    """A LOCO category: a logical anomaly with two masks (values 1 and 255), a structural one with one."""
    base = tmp_path / "loco" / "juice_bottle"
    for folder, count in (("train/good", 5), ("validation/good", 2), ("test/good", 2)):
        for i in range(count):
            _image(base / folder / f"{i:03d}.png")
    _image(base / "test/logical_anomalies/000.png", 200)
    _mask(base / "ground_truth/logical_anomalies/000/000.png", slice(0, 4), 1)
    _mask(base / "ground_truth/logical_anomalies/000/001.png", slice(10, 12), 255)
    _image(base / "test/structural_anomalies/000.png", 30)
    _mask(base / "ground_truth/structural_anomalies/000/000.png", slice(20, 30), 7)
    return tmp_path / "loco"


def test_loco_validates_on_its_own_images_and_merges_masks(loco_root: Path) -> None:
    assert list_categories(loco_root, "mvtec_loco") == ["juice_bottle"]
    splits = DataSpec(str(loco_root), "juice_bottle", "mvtec_loco").splits(seed=0)
    assert len(splits.train) == 5  # nothing taken for validation:
    assert [s.path.parent.parent.name for s in splits.val] == ["validation"] * 2
    assert [(s.label, s.defect) for s in splits.test] == [
        (0, "good"),
        (0, "good"),
        (1, "logical_anomalies"),
        (1, "structural_anomalies"),
    ]
    logical, structural = splits.test[2:]
    assert [p.name for p in logical.mask_files] == ["000.png", "001.png"]
    expected = np.zeros((SIZE, SIZE), dtype=bool)
    expected[0:4] = expected[10:12] = True
    assert np.array_equal(_mask_of(logical, SIZE), expected)  # the union, value 1 included
    assert _mask_of(structural, SIZE)[20:30].all() and not _mask_of(structural, SIZE)[:20].any()


def test_loco_without_a_mask_folder_is_an_error(loco_root: Path) -> None:
    _image(loco_root / "juice_bottle/test/logical_anomalies/001.png")
    with pytest.raises(InputError, match=r"001.png has no mask folder .*logical_anomalies/001; expected its masks"):
        DataSpec(str(loco_root), "juice_bottle", "mvtec_loco").splits(0)


def test_val_dir_replaces_a_layouts_own_validation_images(loco_root: Path) -> None:
    other = loco_root / "juice_bottle" / "test" / "good"
    splits = DataSpec(str(loco_root), "juice_bottle", "mvtec_loco", val_dir=str(other)).splits(0)
    assert {s.path.parent for s in splits.val} == {other.absolute()}


# --- MVTec AD 2 ------------------------------------------------------------------------------------------


def test_ad2_reads_the_public_test_set_only(tmp_path: Path) -> None:
    base = tmp_path / "ad2" / "vial"
    for folder in ("train/good", "validation/good", "test_public/good", "test_private", "test_private_mixed"):
        for i in range(3):
            _image(base / folder / f"{i:03d}_regular.png")
    _image(base / "test_public/bad/000_regular.png", 250)
    _mask(base / "test_public/ground_truth/bad/000_regular_mask.png", slice(5, 9), 255)
    assert list_categories(tmp_path / "ad2", "mvtec_ad2") == ["vial"]
    splits = DataSpec(str(tmp_path / "ad2"), "vial", "mvtec_ad2").splits(seed=0)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (3, 3, 4)
    assert {s.path.parent.parent.name for s in splits.test} == {"test_public"}
    bad = splits.test[-1]
    assert (bad.label, bad.defect, bad.mask_path.name) == (1, "bad", "000_regular_mask.png")
    assert _mask_of(bad, SIZE)[5:9].all() and _mask_of(bad, SIZE).sum() == 4 * SIZE


# --- benchmark --seeds, end to end -----------------------------------------------------------------------


@pytest.mark.slow
def test_benchmark_over_seeds_on_visa(visa_root: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "bench"
    argv = ["benchmark", "--data", str(visa_root), "--layout", "visa", "--seeds", "0", "1", "--out", str(out)]
    assert main([*argv, *TINY_TRAIN]) == 0
    printed = capsys.readouterr().out
    results = {}
    for category in CATEGORIES:
        for seed in (0, 1):
            run = out / category / f"seed-{seed}"
            assert read_record(run).seed == seed
            results[category, seed] = json.loads((run / "metrics.json").read_text())
    with open(out / "table.csv", newline="") as stream:
        table = list(csv.DictReader(stream))
    assert [row["category"] for row in table] == [*CATEGORIES, "mean"]
    assert list(table[0])[:4] == ["category", "seeds", "image_auroc_mean", "image_auroc_std"]
    for key in ("image_auroc", "pixel_auroc", "aupro", "iou"):
        first = [results[CATEGORIES[0], s][key] for s in (0, 1)]
        means = [sum(results[c, s][key] for c in CATEGORIES) / len(CATEGORIES) for s in (0, 1)]
        for row, values in ((table[0], first), (table[-1], means)):
            assert row[f"{key}_mean"] == f"{sum(values) / 2:.4f}"
            assert row[f"{key}_std"] == f"{abs(values[0] - values[1]) / math.sqrt(2):.4f}"  # ddof=1 of two values
    assert f"{table[-1]['image_auroc_mean']} ± {table[-1]['image_auroc_std']}" in printed
    markdown = (out / "table.md").read_text()
    assert markdown.startswith("| category | seeds | image_auroc") and " ± " in markdown
    seeds_csv = (out / "table_seeds.csv").read_text().splitlines()
    assert seeds_csv[0] == "category,seed,image_auroc,pixel_auroc,aupro,iou"
    assert [line.split(",")[:2] for line in seeds_csv[1:3]] == [[CATEGORIES[0], "0"], [CATEGORIES[0], "1"]]
    assert len(seeds_csv) == 1 + 2 * (len(CATEGORIES) + 1)
