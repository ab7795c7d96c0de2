"""Images listed in a CSV file: the ``csv`` layout's manifest, and the checked reading of CSV rows that the
VisA layout's split file shares (:class:`Row`, :func:`read_rows`, :func:`row_sample`).

A manifest (``--layout csv --data manifest.csv``) has a header line with ``path`` and ``label`` (``good`` or
``anomalous``, or ``0`` or ``1``) and optionally ``mask`` (the mask file of an anomalous image; values above
127 are defect) and ``split`` (``train``, ``val`` or ``test``). Relative paths are relative to the manifest's
folder. ``val`` rows are the validation images (good ones set the thresholds, anomalous ones pick the best
epoch). Rows without a split are divided as the folder layout divides its images: every anomalous one is
tested, and so is a seeded 20 % of the good ones (at least one, when there are two or more); the rest train.
A manifest is one data set: its one category is named after the file.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from flowad.data.datasets import random_split
from flowad.data.samples import DatasetSplits, Sample
from flowad.errors import InputError

T = TypeVar("T")

MANIFEST_LABELS = {"good": 0, "0": 0, "anomalous": 1, "1": 1}
MANIFEST_SPLITS = ("train", "val", "test", "")
HELD_OUT = 0.2  # of the good rows without a split, tested: the folder layout's share


@dataclass(frozen=True)
class Row:
    """One data row of a CSV file, and where it is (errors name the file and line)."""

    file: Path
    line: int
    values: dict[str, str]

    def where(self) -> str:
        return f"{self.file} line {self.line}"

    def choice(self, column: str, choices: Mapping[str, T]) -> T:
        """The value of ``column`` looked up (case-insensitively) in ``choices``; any other value is an error."""
        value = self.values.get(column, "")
        if value.lower() not in choices:
            expected = ", ".join(repr(c) for c in choices if c) + (" or empty" if "" in choices else "")
            raise InputError(f"{self.where()}: {column} {value!r}; expected one of {expected}")
        return choices[value.lower()]

    def file_at(self, column: str, base: Path) -> Path | None:
        """The file named in ``column``, relative to ``base`` unless absolute; None for an empty cell."""
        value = self.values.get(column, "")
        if not value:
            return None
        path = (base / Path(value).expanduser()).absolute()
        if not path.is_file():
            raise InputError(f"{self.where()}: {column} {value!r}: {path} does not exist; expected an image file")
        return path


def read_rows(file: str | Path, columns: Sequence[str], what: str) -> list[Row]:
    """The data rows of the CSV ``file``, whose header must name ``columns``; ``what`` names it in errors."""
    path = Path(file).expanduser().absolute()
    if not path.is_file():
        raise InputError(f"{what} {path} does not exist; expected a CSV file with the columns {','.join(columns)}")
    try:
        with path.open(newline="", encoding="utf-8-sig") as stream:
            reader = csv.DictReader(stream)
            reader.fieldnames = [name.strip().lower() for name in reader.fieldnames or []]
            missing = [c for c in columns if c not in reader.fieldnames]
            if missing:
                raise InputError(
                    f"{what} {path} has no column {', '.join(missing)}; expected a header line with {','.join(columns)}"
                )
            rows = [Row(path, reader.line_num, _cleaned(record)) for record in reader]
    except (UnicodeDecodeError, csv.Error) as err:
        raise InputError(f"{what} {path} is not a readable CSV file: {err}") from err
    if not rows:
        raise InputError(f"{what} {path} lists no images; expected a row per image below its header")
    return rows


def row_sample(
    row: Row, image_column: str, labels: Mapping[str, int], base: Path, defect: str, mask_nonzero: bool = False
) -> Sample:
    """The sample a row names: its image (``image_column``), label and optional mask, paths relative to
    ``base``; ``defect`` names the anomalous ones' defect type."""
    label = row.choice("label", labels)
    image = row.file_at(image_column, base)
    if image is None:
        raise InputError(f"{row.where()}: the {image_column} column is empty; expected the image's path")
    mask = row.file_at("mask", base)
    return Sample(image, label, mask, defect if label else "good", mask_nonzero=mask_nonzero)


def row_split(row: Row, sample: Sample, splits: Sequence[str]) -> str:
    """The row's split, one of ``splits``; an anomalous image to train on is an error."""
    split = row.choice("split", {s: s for s in splits})
    if split == "train" and sample.label:
        raise InputError(
            f"{row.where()}: anomalous image {sample.path} is in the train split; expected only good images "
            "there (put it in test or val)"
        )
    return split


def manifest_splits(file: str | Path, category: str | None, seed: int) -> DatasetSplits:
    """The samples a manifest lists (module docstring); ``seed`` picks the held-out good rows without a split."""
    rows = read_rows(file, ("path", "label"), "manifest")
    name = manifest_categories(file)[0]
    if category not in (None, name):
        raise InputError(f"--category {category}: a manifest is one data set, named {name} after its file")
    parts: dict[str, list[Sample]] = {split: [] for split in MANIFEST_SPLITS}
    for row in rows:
        sample = row_sample(row, "path", MANIFEST_LABELS, row.file.parent, "anomalous")
        parts[row_split(row, sample, MANIFEST_SPLITS)].append(sample)
    _masks_all_or_none(rows[0].file, [s for part in parts.values() for s in part])
    tested, trained = _held_out([s for s in parts[""] if s.label == 0], seed)
    train = parts["train"] + trained
    if not train:
        raise InputError(
            f"manifest {rows[0].file} lists no good image to train on; "
            "expected rows of label good and split train or empty"
        )
    test = parts["test"] + tested + [s for s in parts[""] if s.label]
    return DatasetSplits(train=train, val=parts["val"], test=test, name=f"csv/{name}")


def manifest_categories(file: str | Path) -> list[str]:
    """A manifest's one category: its file's stem."""
    path = Path(file).expanduser().absolute()
    if not path.is_file():
        raise InputError(f"manifest {path} does not exist; expected a CSV file with the columns path,label")
    return [path.stem]


def _held_out(good: list[Sample], seed: int) -> tuple[list[Sample], list[Sample]]:
    """``(tested, trained)``: a seeded share of the good rows without a split is tested, if two or more."""
    if len(good) < 2:
        return [], good
    return random_split(good, HELD_OUT, seed, "held-out share", None)


def _masks_all_or_none(file: Path, samples: list[Sample]) -> None:
    """Pixel metrics need a mask for every anomalous image, or none at all (image labels only)."""
    anomalous = [s for s in samples if s.label]
    if any(s.mask_path for s in anomalous) and not all(s.mask_path for s in anomalous):
        first = next(s for s in anomalous if s.mask_path is None)
        raise InputError(
            f"manifest {file}: anomalous image {first.path} has no mask although others do; "
            "expected a mask for every anomalous image, or none"
        )


def _cleaned(record: dict[str | None, str | list[str] | None]) -> dict[str, str]:
    # cells beyond the header land under None; a short row's missing cells are None
    return {k: (v or "").strip() for k, v in record.items() if isinstance(k, str) and not isinstance(v, list)}
