"""Tests of the csv layout: a manifest of images, labels, masks and splits, and its errors naming row and file."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flowad.cli import main
from flowad.data.spec import DataSpec, list_categories
from flowad.errors import InputError

HEADER = "path,label,mask,split"


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """good/0..7.png, bad/0..1.png with masks masks/0..1.png, under tmp_path/data."""
    data = tmp_path / "data"
    for folder, count in (("good", 8), ("bad", 2), ("masks", 2)):
        (data / folder).mkdir(parents=True)
        for i in range(count):
            pixels = np.zeros((16, 16), dtype=np.uint8)
            pixels[:4] = 255 if folder == "masks" else 100
            Image.fromarray(pixels).save(data / folder / f"{i}.png")
    return data


def _manifest(folder: Path, rows: list[str], header: str = HEADER, name: str = "parts.csv") -> Path:
    path = folder / name
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_explicit_splits_and_paths_relative_to_the_manifest(images: Path) -> None:
    rows = [f"good/{i}.png,good,,train" for i in range(5)]
    rows += ["good/5.png,0,,val", f"{images / 'good' / '6.png'},GOOD,,test"]  # an absolute path; any case
    rows += ["bad/0.png,anomalous,masks/0.png,test", "bad/1.png,1,masks/1.png,val"]
    manifest = _manifest(images, rows)
    assert list_categories(manifest, "csv") == ["parts"]
    splits = DataSpec(str(manifest), layout="csv").splits(seed=0)
    assert [s.path.name for s in splits.train] == [f"{i}.png" for i in range(5)]  # val rows are the validation
    assert [(s.path.parent.name, s.label) for s in splits.val] == [("good", 0), ("bad", 1)]
    assert [(s.path.name, s.label, s.defect) for s in splits.test] == [("6.png", 0, "good"), ("0.png", 1, "anomalous")]
    assert splits.test[1].mask_path == images / "masks" / "0.png"
    assert splits.name == "csv/parts"
    assert DataSpec(str(manifest), "parts", "csv").splits(0).train == splits.train  # its one category


def test_rows_without_a_split_are_divided_as_the_folder_layout_does(images: Path) -> None:
    manifest = _manifest(images, [f"good/{i}.png,good" for i in range(8)] + ["bad/0.png,anomalous"], "path,label")
    splits = DataSpec(str(manifest), layout="csv", val_fraction=0.25).splits(seed=3)
    tested = [s for s in splits.test if s.label == 0]
    assert len(tested) == 2 and len(splits.train) + len(splits.val) == 6  # 20 % of 8 good images, seeded
    assert [s.label for s in splits.test].count(1) == 1
    again = DataSpec(str(manifest), layout="csv", val_fraction=0.25).splits(seed=3)
    assert [s.path for s in again.test] == [s.path for s in splits.test]


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ("good/9.png,good,,train", r"line 3: path 'good/9.png': .*9.png does not exist; expected an image file"),
        ("good/1.png,broken,,train", r"line 3: label 'broken'; expected one of 'good', '0', 'anomalous', '1'"),
        ("good/1.png,good,,later", r"line 3: split 'later'; expected one of 'train', 'val', 'test' or empty"),
        ("bad/0.png,anomalous,,train", r"line 3: anomalous image .*0.png is in the train split; expected only good"),
        ("bad/0.png,anomalous,masks/7.png,test", r"line 3: mask 'masks/7.png': .*7.png does not exist"),
        (",good,,train", r"line 3: the path column is empty"),
    ],
)
def test_a_bad_row_is_named_with_its_file_and_line(images: Path, row: str, expected: str) -> None:
    manifest = _manifest(images, ["good/0.png,good,,train", row])
    with pytest.raises(InputError, match=re.escape(str(manifest)) + " " + expected):
        DataSpec(str(manifest), layout="csv").splits(0)


def test_bad_manifests(images: Path) -> None:
    with pytest.raises(InputError, match=r"manifest .*absent.csv does not exist; expected a CSV file"):
        DataSpec(str(images / "absent.csv"), layout="csv").splits(0)
    with pytest.raises(InputError, match=r"has no column label; expected a header line with path,label"):
        DataSpec(str(_manifest(images, ["good/0.png"], "path")), layout="csv").splits(0)
    with pytest.raises(InputError, match=r"lists no images"):
        DataSpec(str(_manifest(images, [], name="empty.csv")), layout="csv").splits(0)
    some_masks = _manifest(images, ["good/0.png,good,,train", "bad/0.png,1,masks/0.png,test", "bad/1.png,1,,test"])
    with pytest.raises(InputError, match=r"anomalous image .*1.png has no mask although others do"):
        DataSpec(str(some_masks), layout="csv").splits(0)
    only_bad = _manifest(images, ["bad/0.png,1,,test"], name="bad.csv")
    with pytest.raises(InputError, match=r"lists no good image to train on"):
        DataSpec(str(only_bad), layout="csv").splits(0)
    with pytest.raises(InputError, match=r"--category bottle: a manifest is one data set, named bad"):
        DataSpec(str(only_bad), "bottle", "csv").splits(0)


def test_a_bad_manifest_on_the_command_line_is_one_line_and_exit_2(images: Path, tmp_path: Path, capsys) -> None:
    manifest = _manifest(images, ["good/0.png,good,,train", "good/1.png,nice,,train"])
    out = tmp_path / "run"
    assert main(["train", "--layout", "csv", "--data", str(manifest), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "line 3: label 'nice'" in err and not out.exists()
