"""Finding the images of a data set on disk and serving them to PyTorch.

Three layouts are read here (the others are in :mod:`flowad.data.layouts` and :mod:`flowad.data.manifest`):

* MVTec AD (:func:`mvtec_splits`), also written by :func:`flowad.data.synthetic.make_demo_dataset`;
* BTAD (:func:`btad_splits`);
* plain folders of good and anomalous images (:func:`folder_splits`).

Each returns a :class:`DatasetSplits` of :class:`Sample` records (paths and labels, no
pixels). Validation images are only ever taken from good training images
(:func:`split_validation`) or from a separate folder (:func:`validation_from_folder`),
never from the test set. :class:`ImageDataset` reads the samples and preprocesses them for a model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from flowad.data.images import IMAGE_SUFFIXES, read_image, read_image_size
from flowad.data.samples import DatasetSplits, Sample, read_sample_mask
from flowad.errors import InputError
from flowad.preprocess import Preprocess

_MASK_TAG = "_mask"
_SUFFIX_LIST = ", ".join(IMAGE_SUFFIXES)


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name.

    Only :data:`~flowad.data.images.IMAGE_SUFFIXES` count (case-insensitive). Files whose
    stem ends in ``_mask`` (masks stored beside their images) and hidden files such as
    macOS ``._name.png`` are skipped, and so is every entry that is not a file: folders,
    broken or looping symbolic links (symbolic links to image files count). Subfolders are
    never searched, so a directory symlink loop cannot hang it. Raises
    :class:`~flowad.errors.InputError` if the folder is missing, is not a folder or holds no images.
    """
    directory = existing_dir(folder)
    images = sorted(p for p in directory.iterdir() if _is_plain_image(p))
    if not images:
        raise InputError(f"folder {directory} contains no images (expected {_SUFFIX_LIST})")
    return images


def list_images_at_any_depth(folder: str | Path, skip: Sequence[str | Path] = ()) -> list[Path]:
    """Image files in ``folder`` and in its subfolders at any depth, in tree order.

    Tree order sorts by relative path, part by part, so each subfolder's images stay together
    (``a.png``, ``b/000.png``, ``b/001.png``, ``c.png``). Files count as in :func:`list_images`; hidden
    folders, the folders in ``skip`` (e.g. an output folder inside the input folder) and symbolic
    links to folders are not entered, so a link loop cannot hang it. Raises
    :class:`~flowad.errors.InputError` if the folder is missing, is not a folder or holds no images.
    """
    directory = existing_dir(folder)
    skipped = {_full(path).resolve() for path in skip}
    images: list[Path] = []
    pending = [directory]
    while pending:
        current = pending.pop()
        for entry in current.iterdir():
            if _is_plain_image(entry):
                images.append(entry)
            elif _is_walkable_dir(entry) and entry.resolve() not in skipped:
                pending.append(entry)
    if not images:
        raise InputError(
            f"folder {directory} holds no image files at any depth (looked for {_SUFFIX_LIST}; "
            f"files named *{_MASK_TAG}.* and hidden files do not count)"
        )
    return sorted(images, key=lambda path: path.relative_to(directory).parts)


def mvtec_splits(root: str | Path, category: str) -> DatasetSplits:
    """Samples of one MVTec AD category.

    Layout: ``<root>/<category>/train/good/*`` for training, ``<root>/<category>/test/<defect>/*``
    for testing (``good`` is label 0, every other folder label 1) and masks in
    ``<root>/<category>/ground_truth/<defect>/<stem>_mask.png``. Any image suffix and the bare
    ``<stem>.<suffix>`` are accepted for masks too; two candidates for one image (e.g. ``000_mask.png``
    and ``000.png``) raise :class:`~flowad.errors.InputError` naming both. ``val`` is empty: see
    :func:`split_validation`.
    """
    base = category_dir(root, category, required="train")
    train = good_from_folder(base / "train" / "good")
    test = defect_folders(
        base / "test", lambda images, defect: anomalous_samples(images, defect, base / "ground_truth" / defect)
    )
    return DatasetSplits(train=train, val=[], test=test, name=f"mvtec/{category}")


def btad_splits(root: str | Path, category: str) -> DatasetSplits:
    """Samples of one BTAD category (e.g. ``"01"``).

    Layout: ``<root>/<category>/train/ok`` (training), ``test/ok`` (label 0), ``test/ko``
    (label 1) with masks in ``ground_truth/ko/<stem>.png`` (BTAD stores ``.png`` masks even for
    ``.bmp`` images; any image suffix and ``<stem>_mask.<suffix>`` are accepted as well).
    """
    base = category_dir(root, category, required="train")
    train = good_from_folder(base / "train" / "ok")
    test = good_from_folder(base / "test" / "ok")
    test += anomalous_samples(list_images(base / "test" / "ko"), "ko", base / "ground_truth" / "ko")
    return DatasetSplits(train=train, val=[], test=test, name=f"btad/{category}")


def folder_splits(
    normal_dir: str | Path,
    abnormal_dir: str | Path | None = None,
    mask_dir: str | Path | None = None,
    test_normal_dir: str | Path | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    name: str | None = None,
) -> DatasetSplits:
    """Samples from plain folders of images.

    * ``normal_dir``: good images. Unless ``test_normal_dir`` is given, a deterministic random
      ``test_fraction`` of them (chosen with ``seed``) is held out for the test set and the
      rest is used for training; with ``test_normal_dir`` all of them train and the good test
      images come from that folder.
    * ``abnormal_dir``: anomalous images, all in the test set (label 1, defect = folder name).
    * Masks: looked up in ``mask_dir`` as ``<stem>_mask.<suffix>`` or ``<stem>.<suffix>``; without
      ``mask_dir`` as ``<stem>_mask.<suffix>`` beside each anomalous image (LGG MRI style:
      ``x.tif`` with ``x_mask.tif``). Either every anomalous image has a mask or none has
      (image-level labels only, ``mask_path`` None); a partial set raises
      :class:`~flowad.errors.InputError` naming the first image without a mask, and so does a
      ``mask_dir`` that matches no image, and two candidate masks for one image (an image is
      never its own mask, so ``mask_dir`` may be ``abnormal_dir``).
    """
    _check_fraction("test_fraction", test_fraction)
    normal = good_from_folder(normal_dir)
    if test_normal_dir is None:
        test_good, train = random_split(normal, test_fraction, seed, "normal_dir", Path(normal_dir))
    else:
        train, test_good = normal, good_from_folder(test_normal_dir)
    anomalous = [] if abnormal_dir is None else _folder_anomalies(Path(abnormal_dir), mask_dir)
    return DatasetSplits(train=train, val=[], test=test_good + anomalous, name=name or _full(normal_dir).name)


def split_validation(train: list[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Split good training samples into ``(train, val)``; deterministic for a given ``seed``.

    ``fraction`` must be in ``[0, 1)``; a positive fraction takes at least one sample, and at
    least one training sample must remain. Both lists keep the input order.
    """
    _check_fraction("validation fraction", fraction)
    bad = next((s for s in train if s.label != 0), None)
    if bad is not None:
        raise InputError(
            f"training sample {bad.path} has label {bad.label}; expected only good (label 0) images "
            "to split a validation set from"
        )
    val, rest = random_split(train, fraction, seed, "validation fraction", None)
    return rest, val


def defect_folders(test_dir: Path, anomalous: Callable[[list[Path], str], list[Sample]]) -> list[Sample]:
    """The test samples of an MVTec-style ``test_dir``: ``good/`` holds label 0, every other subfolder is a
    defect type whose images ``anomalous(images, defect)`` makes samples of (with their masks)."""
    test: list[Sample] = []
    for defect_dir in subfolders(test_dir):
        if defect_dir.name == "good":
            test += good_from_folder(defect_dir)
        else:
            test += anomalous(list_images(defect_dir), defect_dir.name)
    return test


def good_from_folder(folder: str | Path) -> list[Sample]:
    """Good samples (label 0) of the images in ``folder``."""
    return [Sample(path, 0) for path in list_images(folder)]


def validation_from_folder(folder: str | Path) -> list[Sample]:
    """Good validation samples (label 0) from a separate folder of images."""
    return good_from_folder(folder)


def anomalies_from_folder(folder: str | Path, mask_dir: str | Path | None = None) -> list[Sample]:
    """Anomalous samples (label 1) of a folder, with masks found as :func:`folder_splits` finds them."""
    return _folder_anomalies(existing_dir(folder), mask_dir)


def check_masks(samples: Sequence[Sample]) -> None:
    """Check that every sample's mask exists and has the size of its image (headers only)."""
    for sample in samples:
        for mask in sample.mask_files:
            if not mask.is_file():
                raise InputError(
                    f"mask {_full(mask)} of image {_full(sample.path)} does not exist; "
                    "expected a mask file of the same size as the image"
                )
            mask_size, image_size = read_image_size(mask), read_image_size(sample.path)
            if mask_size != image_size:
                raise InputError(
                    f"mask {_full(mask)} is {_wxh(mask_size)} but its image {_full(sample.path)} "
                    f"is {_wxh(image_size)}; expected the same size"
                )


class ImageDataset(torch.utils.data.Dataset):
    """Images and masks of a list of samples, as ``preprocess`` makes a model's input of them.

    Items are dicts with ``"image"`` (float32 ``3xHxW``, see :class:`~flowad.preprocess.Preprocess`),
    ``"mask"`` (float32 ``1xHxW`` of 0/1, zeros without a mask), ``"label"`` (int64 tensor) and ``"index"``
    (int; the path is ``dataset.samples[index].path``, kept out of the dict so default collation works).
    """

    def __init__(self, samples: Sequence[Sample], preprocess: Preprocess) -> None:
        if not isinstance(preprocess, Preprocess):  # the model's statistics must be chosen, never defaulted
            raise InputError(f"preprocess is {preprocess!r}; expected a flowad.preprocess.Preprocess")
        self.samples = list(samples)
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        sample = self.samples[index]
        rgb = read_image(sample.path)
        image = self.preprocess.tensor(rgb)
        mask = np.zeros(self.preprocess.size, dtype=np.float32)
        if sample.mask_path is not None:
            mask = self.preprocess.mask(read_sample_mask(sample, rgb.shape[:2]))
        return {
            "image": image,
            "mask": torch.from_numpy(mask[None]),
            "label": torch.tensor(sample.label, dtype=torch.int64),
            "index": index,
        }


def anomalous_samples(images: list[Path], defect: str, mask_folder: Path) -> list[Sample]:
    """Anomalous test samples whose masks must exist in ``mask_folder``."""
    index = _mask_index(mask_folder)
    samples = []
    for image in images:
        mask = _find_mask(index, image, allow_bare=True)
        if mask is None:
            expected = mask_folder / f"{image.stem}{_MASK_TAG}.png"
            raise InputError(
                f"anomalous image {_full(image)} has no mask; expected {_full(expected)} "
                f"(or {image.stem}.png, any of {_SUFFIX_LIST})"
            )
        samples.append(Sample(image, 1, mask, defect))
    return samples


def _folder_anomalies(folder: Path, mask_dir: str | Path | None) -> list[Sample]:
    """Anomalous samples of :func:`folder_splits`, with all masks or none."""
    images = list_images(folder)
    if mask_dir is None:
        index = _mask_index(folder)
        masks = [_find_mask(index, path, allow_bare=False) for path in images]
    else:
        mask_folder = existing_dir(mask_dir)
        index = _mask_index(mask_folder)
        masks = [_find_mask(index, path, allow_bare=True) for path in images]
        if not any(masks):
            raise InputError(
                f"mask folder {mask_folder} has no mask for any image in {_full(folder)}; expected "
                f"<stem>.png or <stem>{_MASK_TAG}.png (any of {_SUFFIX_LIST})"
            )
    if any(masks) and not all(masks):
        first = images[masks.index(None)]
        where = _full(mask_dir) if mask_dir is not None else _full(folder)
        raise InputError(
            f"anomalous image {_full(first)} has no mask in {where} although other images do; expected "
            f"{first.stem}{_MASK_TAG}.png (any of {_SUFFIX_LIST}) for every image, or no masks at all"
        )
    return [Sample(path, 1, mask, folder.name) for path, mask in zip(images, masks, strict=True)]


def _mask_index(folder: Path) -> dict[str, list[Path]]:
    """The image files in ``folder`` (any suffix case, hidden files skipped) by stem; empty if no folder."""
    index: dict[str, list[Path]] = {}
    if folder.is_dir():
        for path in sorted(_full(folder).iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".") and path.is_file():
                index.setdefault(path.stem, []).append(path)
    return index


def _find_mask(index: dict[str, list[Path]], image: Path, allow_bare: bool) -> Path | None:
    """The one ``<stem>_mask.<suffix>`` (or, if allowed, ``<stem>.<suffix>``) of ``index``, if any.

    Two candidates (``a_mask.png`` and ``a.png``, or ``a_mask.png`` and ``a_mask.tif``) are an error
    naming both; the image itself never counts as its own mask.
    """
    names = [image.stem + _MASK_TAG] + ([image.stem] if allow_bare else [])
    found = [path for name in names for path in index.get(name, []) if path != _full(image)]
    if len(found) > 1:
        listing = " and ".join(str(path) for path in found)
        raise InputError(
            f"image {_full(image)} has {len(found)} candidate masks: {listing}; expected exactly one "
            "mask per image (remove or rename the others)"
        )
    return found[0] if found else None


def random_split(
    samples: list[Sample], fraction: float, seed: int, what: str, folder: Path | None
) -> tuple[list[Sample], list[Sample]]:
    """Deterministically pick ``fraction`` of ``samples``; returns ``(picked, rest)`` in input order."""
    count = round(fraction * len(samples))
    if fraction > 0:
        count = max(count, 1)
    if len(samples) - count < 1:
        source = f" in {_full(folder)}" if folder is not None else ""
        raise InputError(
            f"{what} {fraction} of {len(samples)} good images{source} leaves no training image; "
            "expected more good images or a smaller fraction"
        )
    order = np.random.default_rng(seed).permutation(len(samples))
    picked = set(order[:count].tolist())
    return (
        [s for i, s in enumerate(samples) if i in picked],
        [s for i, s in enumerate(samples) if i not in picked],
    )


def category_dir(root: str | Path, category: str, required: str) -> Path:
    """``<root>/<category>``; a missing category lists the available ones."""
    base_root = existing_dir(root)
    base = base_root / category
    if not (base / required).is_dir():
        available = sorted(p.name for p in base_root.iterdir() if (p / required).is_dir())
        listing = ", ".join(available) if available else "none"
        raise InputError(
            f"category {category!r} not found: {base} has no '{required}' folder; "
            f"expected one of the categories in {base_root}: {listing}"
        )
    return base


def subfolders(folder: Path) -> list[Path]:
    """The visible subfolders of ``folder``, sorted; none is an error."""
    directory = existing_dir(folder)
    subfolders = sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not subfolders:
        raise InputError(f"folder {directory} has no subfolders; expected one folder per defect type")
    return subfolders


def existing_dir(folder: str | Path) -> Path:
    """``folder`` as an absolute path; an error unless it is an existing folder."""
    directory = _full(folder)
    if not directory.exists():
        raise InputError(f"folder {directory} does not exist; expected a folder of images")
    if not directory.is_dir():
        raise InputError(f"{directory} is not a folder; expected a folder of images")
    return directory


def _is_plain_image(path: Path) -> bool:
    return (
        path.suffix.lower() in IMAGE_SUFFIXES
        and not path.name.startswith(".")
        and not path.stem.endswith(_MASK_TAG)
        and path.is_file()
    )


def _is_walkable_dir(path: Path) -> bool:
    # symbolic links to folders are not followed: "up -> .." would walk the parent, outputs included
    return not path.name.startswith(".") and not path.is_symlink() and path.is_dir()


def _check_fraction(what: str, fraction: float) -> None:
    if not 0 <= fraction < 1:
        raise InputError(f"{what} is {fraction}; expected a number in [0, 1)")


def _wxh(hw: tuple[int, int]) -> str:
    return f"{hw[1]}x{hw[0]}"


def _full(path: str | Path) -> Path:
    return Path(path).expanduser().absolute()
