"""Tests of flowad.data.datasets: layouts, labels, masks, validation splits and the torch Dataset."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import DEMO_SIZES
from PIL import Image

from flowad.data.datasets import (
    DatasetSplits,
    ImageDataset,
    Sample,
    btad_splits,
    check_masks,
    folder_splits,
    list_images,
    mvtec_splits,
    split_validation,
    validation_from_folder,
)
from flowad.data.synthetic import DEFECTS
from flowad.errors import InputError
from flowad.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess


def _write(path: Path, size: tuple[int, int] = (20, 16), value: int = 128, mode: str = "RGB") -> Path:
    """Write a small constant image of (width, height) ``size``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fill = value if mode == "L" else (value,) * 3
    Image.new(mode, size, fill).save(path)
    return path


def _write_mask(path: Path, size: tuple[int, int] = (20, 16)) -> Path:
    mask = np.zeros((size[1], size[0]), dtype=np.uint8)
    mask[2:6, 3:9] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask).save(path)
    return path


def _imagenet(size: int | tuple[int, int]) -> Preprocess:
    return Preprocess(size, IMAGENET_MEAN, IMAGENET_STD)


def _escaped(path: Path) -> str:
    return re.escape(str(path.absolute()))


@pytest.fixture(scope="module")
def mvtec_root(demo_data) -> Path:
    """The session's demo data set, in the MVTec AD layout (categories fabric and pill, 64 x 64 images)."""
    return demo_data


@pytest.fixture
def mvtec_copy(demo_data_copy) -> Path:
    return demo_data_copy


# --- list_images ---------------------------------------------------------------------------------


def test_list_images_sorts_filters_and_skips_masks(tmp_path):
    for name in ["b.png", "a.JPG", "c.tiff", "a_mask.png", "notes.txt", "._a.png", "d.gif"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub.png").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["a.JPG", "b.png", "c.tiff"]


def test_list_images_errors(tmp_path):
    with pytest.raises(InputError, match=rf"folder {_escaped(tmp_path)} contains no images \(expected \.png"):
        list_images(tmp_path)
    with pytest.raises(InputError, match=rf"{_escaped(tmp_path / 'gone')} does not exist"):
        list_images(tmp_path / "gone")
    file = _write(tmp_path / "x.png")
    with pytest.raises(InputError, match=rf"{_escaped(file)} is not a folder"):
        list_images(file)


# --- MVTec ---------------------------------------------------------------------------------------


def test_mvtec_counts_labels_and_masks(mvtec_root):
    splits = mvtec_splits(mvtec_root, "pill")
    assert isinstance(splits, DatasetSplits) and splits.name == "mvtec/pill"
    assert len(splits.train) == DEMO_SIZES["n_train"]
    assert all(s.label == 0 and s.mask_path is None for s in splits.train)
    assert splits.val == []
    good = [s for s in splits.test if s.label == 0]
    bad = [s for s in splits.test if s.label == 1]
    assert len(good) == DEMO_SIZES["n_test_good"] and all(s.defect == "good" and s.mask_path is None for s in good)
    assert sorted(s.defect for s in bad) == sorted(DEFECTS["pill"] * DEMO_SIZES["n_test_per_defect"])
    for sample in bad:
        assert sample.mask_path == mvtec_root / "pill" / "ground_truth" / sample.defect / f"{sample.path.stem}_mask.png"
    check_masks(splits.test)


def test_mvtec_missing_category_lists_available(mvtec_root):
    with pytest.raises(
        InputError, match=r"category 'carpet' not found.*expected one of the categories in .*: fabric, pill"
    ):
        mvtec_splits(mvtec_root, "carpet")


def test_mvtec_missing_mask_names_image_and_expected_mask(mvtec_copy):
    mask = mvtec_copy / "pill" / "ground_truth" / "crack" / "000_mask.png"
    mask.unlink()
    image = mvtec_copy / "pill" / "test" / "crack" / "000.png"
    with pytest.raises(InputError, match=rf"image {_escaped(image)} has no mask; expected {_escaped(mask)}"):
        mvtec_splits(mvtec_copy, "pill")


def test_mvtec_accepts_bare_stem_mask(mvtec_copy):
    folder = mvtec_copy / "pill" / "ground_truth" / "crack"
    (folder / "000_mask.png").rename(folder / "000.png")
    crack = [s for s in mvtec_splits(mvtec_copy, "pill").test if s.defect == "crack"]
    assert crack[0].mask_path == folder / "000.png"


def test_check_masks_reports_size_mismatch(mvtec_copy):
    mask = mvtec_copy / "pill" / "ground_truth" / "color" / "000_mask.png"
    _write_mask(mask, size=(20, 30))
    splits = mvtec_splits(mvtec_copy, "pill")
    image = mvtec_copy / "pill" / "test" / "color" / "000.png"
    pattern = rf"mask {_escaped(mask)} is 20x30 but its image {_escaped(image)} is 64x64; expected the same size"
    with pytest.raises(InputError, match=pattern):
        check_masks(splits.test)


def test_check_masks_reports_missing_mask_file(tmp_path):
    image = _write(tmp_path / "a.png")
    with pytest.raises(InputError, match=rf"mask .*b_mask.png of image {_escaped(image)} does not exist"):
        check_masks([Sample(image, 1, tmp_path / "b_mask.png", "x")])


# --- BTAD ----------------------------------------------------------------------------------------


def _btad(root: Path) -> Path:
    for i in range(3):
        _write(root / "01" / "train" / "ok" / f"{i:04d}.bmp")
    for i in range(2):
        _write(root / "01" / "test" / "ok" / f"{i:04d}.bmp")
    for i in range(2):
        _write(root / "01" / "test" / "ko" / f"{i:04d}.bmp")
        _write_mask(root / "01" / "ground_truth" / "ko" / f"{i:04d}.png")
    return root


def test_btad_layout(tmp_path):
    splits = btad_splits(_btad(tmp_path), "01")
    assert splits.name == "btad/01"
    assert len(splits.train) == 3 and len(splits.test) == 4
    assert [s.label for s in splits.test] == [0, 0, 1, 1]
    assert splits.test[2].mask_path == tmp_path / "01" / "ground_truth" / "ko" / "0000.png"
    check_masks(splits.test)


def test_btad_missing_category_and_mask(tmp_path):
    root = _btad(tmp_path)
    with pytest.raises(InputError, match=r"category '02' not found.*: 01"):
        btad_splits(root, "02")
    (root / "01" / "ground_truth" / "ko" / "0001.png").unlink()
    with pytest.raises(InputError, match=r"0001.bmp has no mask; expected .*0001_mask.png"):
        btad_splits(root, "01")


# --- plain folders -------------------------------------------------------------------------------


def _folders(root: Path, n_normal: int = 10, n_abnormal: int = 3) -> tuple[Path, Path, Path]:
    for i in range(n_normal):
        _write(root / "normal" / f"n{i:02d}.png")
    for i in range(n_abnormal):
        _write(root / "abnormal" / f"a{i}.png")
        _write_mask(root / "masks" / f"a{i}.png")
    return root / "normal", root / "abnormal", root / "masks"


def test_folder_splits_holds_out_normal_images(tmp_path):
    normal, abnormal, masks = _folders(tmp_path)
    splits = folder_splits(normal, abnormal, mask_dir=masks)
    good = [s for s in splits.test if s.label == 0]
    bad = [s for s in splits.test if s.label == 1]
    assert len(splits.train) == 8 and len(good) == 2 and len(bad) == 3
    assert not {s.path for s in splits.train} & {s.path for s in good}
    assert {s.path for s in splits.train} | {s.path for s in good} == set(list_images(normal))
    assert all(s.mask_path == masks / f"{s.path.stem}.png" and s.defect == "abnormal" for s in bad)
    again = folder_splits(normal, abnormal, mask_dir=masks)
    assert again.train == splits.train and again.test == splits.test
    other = folder_splits(normal, abnormal, mask_dir=masks, seed=1)
    assert other.train != splits.train


def test_folder_splits_with_separate_test_normals(tmp_path):
    normal, abnormal, masks = _folders(tmp_path)
    _write(tmp_path / "test_normal" / "t.png")
    splits = folder_splits(normal, abnormal, mask_dir=masks, test_normal_dir=tmp_path / "test_normal")
    assert len(splits.train) == 10
    assert [s.path.name for s in splits.test if s.label == 0] == ["t.png"]


def test_folder_splits_lgg_style_masks_beside_images(tmp_path):
    for stem in ["TCGA_1", "TCGA_2"]:
        _write(tmp_path / "tumour" / f"{stem}.tif")
        _write_mask(tmp_path / "tumour" / f"{stem}_mask.tif")
    _folders(tmp_path, n_abnormal=0)
    splits = folder_splits(tmp_path / "normal", tmp_path / "tumour")
    bad = [s for s in splits.test if s.label == 1]
    assert [(s.path.name, s.mask_path.name) for s in bad] == [
        ("TCGA_1.tif", "TCGA_1_mask.tif"),
        ("TCGA_2.tif", "TCGA_2_mask.tif"),
    ]


def test_folder_splits_image_level_labels_without_masks(tmp_path):
    normal, abnormal, _ = _folders(tmp_path)
    splits = folder_splits(normal, abnormal)
    bad = [s for s in splits.test if s.label == 1]
    assert len(bad) == 3 and all(s.mask_path is None for s in bad)


def test_folder_splits_partial_masks_is_an_error(tmp_path):
    normal, abnormal, masks = _folders(tmp_path)
    (masks / "a1.png").unlink()
    image = abnormal / "a1.png"
    with pytest.raises(InputError, match=rf"image {_escaped(image)} has no mask in .* although other images do"):
        folder_splits(normal, abnormal, mask_dir=masks)


def test_folder_splits_mask_folder_matching_nothing(tmp_path):
    normal, abnormal, _ = _folders(tmp_path)
    _write_mask(tmp_path / "other" / "zzz.png")
    with pytest.raises(InputError, match=r"mask folder .*other has no mask for any image in"):
        folder_splits(normal, abnormal, mask_dir=tmp_path / "other")


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5])
def test_folder_splits_bad_fraction(tmp_path, fraction):
    normal, _, _ = _folders(tmp_path, n_abnormal=0)
    with pytest.raises(InputError, match=rf"test_fraction is {fraction}; expected a number in \[0, 1\)"):
        folder_splits(normal, test_fraction=fraction)


def test_folder_splits_needs_a_training_image(tmp_path):
    normal, _, _ = _folders(tmp_path, n_normal=1, n_abnormal=0)
    with pytest.raises(InputError, match=r"leaves no training image"):
        folder_splits(normal, test_fraction=0.5)
    assert len(folder_splits(normal, test_fraction=0.0).train) == 1


# --- validation ----------------------------------------------------------------------------------


def test_split_validation_is_deterministic_and_disjoint(mvtec_root):
    splits = mvtec_splits(mvtec_root, "pill")
    train, val = split_validation(splits.train, 0.4, seed=3)
    assert len(val) == 4 and len(train) == 6  # of the 10 training images
    assert set(train).isdisjoint(val) and set(train) | set(val) == set(splits.train)
    assert not {s.path for s in val} & {s.path for s in splits.test}
    assert split_validation(splits.train, 0.4, seed=3) == (train, val)
    assert [s for s in splits.train if s in val] == val  # input order kept


def test_split_validation_edge_cases(tmp_path):
    samples = [Sample(tmp_path / f"{i}.png", 0) for i in range(3)]
    assert split_validation(samples, 0.0, seed=0) == (samples, [])
    assert len(split_validation(samples, 0.01, seed=0)[1]) == 1  # a positive fraction takes one at least
    with pytest.raises(InputError, match=r"validation fraction is 1.0; expected a number in \[0, 1\)"):
        split_validation(samples, 1.0, seed=0)
    with pytest.raises(InputError, match=r"leaves no training image"):
        split_validation(samples[:1], 0.5, seed=0)
    with pytest.raises(InputError, match=r"has label 1; expected only good"):
        split_validation([*samples, Sample(tmp_path / "bad.png", 1)], 0.5, seed=0)


def test_validation_from_folder(tmp_path):
    _write(tmp_path / "val" / "v1.png")
    _write(tmp_path / "val" / "v0.png")
    assert validation_from_folder(tmp_path / "val") == [
        Sample(tmp_path.absolute() / "val" / "v0.png", 0),
        Sample(tmp_path.absolute() / "val" / "v1.png", 0),
    ]


# --- ImageDataset --------------------------------------------------------------------------------


def test_dataset_items_are_resized_normalised_tensors(mvtec_root):
    samples = mvtec_splits(mvtec_root, "pill").test
    dataset = ImageDataset(samples, _imagenet((16, 24)))
    assert len(dataset) == len(samples)
    index = next(i for i, s in enumerate(samples) if s.label == 1)
    item = dataset[index]
    assert item["image"].shape == (3, 16, 24) and item["image"].dtype == torch.float32
    assert item["mask"].shape == (1, 16, 24) and item["mask"].dtype == torch.float32
    assert set(item["mask"].unique().tolist()) <= {0.0, 1.0} and item["mask"].sum() > 0
    assert item["label"].dtype == torch.int64 and item["label"].item() == 1
    assert item["index"] == index and dataset.samples[index].path == samples[index].path
    good = dataset[next(i for i, s in enumerate(samples) if s.label == 0)]
    assert good["mask"].sum() == 0 and good["label"].item() == 0


def test_dataset_normalisation_and_square_size(tmp_path):
    path = _write(tmp_path / "gray.png", size=(40, 30), value=128)
    item = ImageDataset([Sample(path, 0)], _imagenet(8))[0]
    assert item["image"].shape == (3, 8, 8)
    expected = (128 / 255 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(item["image"].mean(dim=(1, 2)).numpy(), expected, atol=1e-5)
    plain = ImageDataset([Sample(path, 0)], Preprocess(8, mean=(0, 0, 0), std=(1, 1, 1)))[0]
    np.testing.assert_allclose(plain["image"].numpy(), 128 / 255, atol=1e-6)


def test_dataset_batches_with_default_collate(mvtec_root):
    samples = mvtec_splits(mvtec_root, "pill").test
    loader = torch.utils.data.DataLoader(ImageDataset(samples, _imagenet(16)), batch_size=3)
    batch = next(iter(loader))
    assert batch["image"].shape == (3, 3, 16, 16) and batch["index"].tolist() == [0, 1, 2]


def test_dataset_mask_size_mismatch(tmp_path):
    image = _write(tmp_path / "a.png", size=(20, 16))
    mask = _write_mask(tmp_path / "a_mask.png", size=(16, 20))
    dataset = ImageDataset([Sample(image, 1, mask, "x")], _imagenet(8))
    with pytest.raises(InputError, match=rf"mask {_escaped(mask)} is 16x20 but its image is 20x16"):
        dataset[0]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"size": 0}, "image_size is 0"),
        ({"size": (8, 8, 8)}, "expected a positive int or"),
        ({"size": 8, "std": (1, 0, 1)}, "std is .*expected three positive numbers"),
        ({"size": 8, "mean": (0, 0)}, "mean is .*expected three numbers"),
    ],
)
def test_dataset_rejects_bad_settings(kwargs, message):
    with pytest.raises(InputError, match=message):
        ImageDataset([], Preprocess(**{"mean": IMAGENET_MEAN, "std": IMAGENET_STD, **kwargs}))
