"""A real-photograph object category: scikit-image's coffee cup, each image placed a little differently.

    python benchmarks/object_data.py OUT      # writes OUT/coffee in the MVTec AD layout

Every image is the same photographed object (cup, saucer and spoon on a wooden table), rotated by up to
4 degrees, shifted by up to 3 % of the crop, scaled by up to 4 % and brightened by up to 10 %, cropped square
around the cup and resized to 256 px, as parts photographed on a line vary. Half the test images get one
planted defect (texture_check.py's stains, scratches and foreign patches, here on a colour image) with its
exact mask. Counts: 64 good training images, 24 good and 24 defective test images.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image
from texture_check import CROP, DEFECTS, plant_defect, save_image

CATEGORY = "coffee"
CENTRE, SIDE = (280.0, 205.0), 340.0  # (x, y) and side in the photograph's pixels: the cup and most of the saucer
COUNTS = {"train": 64, "good": 24, "defect": 8}  # 8 of each of the 3 defect types


def photograph() -> Image.Image:
    """The photograph every view is taken from: scikit-image's coffee cup."""
    import skimage.data

    return Image.fromarray(skimage.data.coffee())


def placed(photo: Image.Image, rng: np.random.Generator) -> np.ndarray:
    """One view of the object: a random small rotation, shift, scale and brightness, CROP x CROP float pixels."""
    angle = rng.uniform(-4, 4)
    scale = rng.uniform(0.96, 1.04)
    dx, dy = rng.uniform(-0.03, 0.03, 2) * SIDE
    rotated = photo.rotate(angle, resample=Image.BILINEAR, center=CENTRE)
    half = SIDE * scale / 2
    box = (CENTRE[0] + dx - half, CENTRE[1] + dy - half, CENTRE[0] + dx + half, CENTRE[1] + dy + half)
    view = rotated.resize((CROP, CROP), Image.BILINEAR, box=box)
    return np.asarray(view, np.float32) * rng.uniform(0.9, 1.1)


def write_object_data(root: Path, seed: int = 0) -> Path:
    """The category under ``root / CATEGORY`` (MVTec AD layout); returns ``root``."""
    import skimage.data

    rng = np.random.default_rng(seed)
    photo = photograph()
    other = skimage.data.brick().astype(np.float32)  # foreign patches
    folder = root / CATEGORY
    for k in range(COUNTS["train"]):
        save_image(folder / "train" / "good" / f"{k:03d}.png", placed(photo, rng))
    for k in range(COUNTS["good"]):
        save_image(folder / "test" / "good" / f"{k:03d}.png", placed(photo, rng))
    for defect in DEFECTS:
        for k in range(COUNTS["defect"]):
            image, mask = plant_defect(placed(photo, rng), defect, rng, other)
            save_image(folder / "test" / defect / f"{k:03d}.png", image)
            save_image(folder / "ground_truth" / defect / f"{k:03d}_mask.png", mask * 255.0, mode="L")
    return root


def write_good_views(root: Path, count: int, seed: int = 1) -> None:
    """``count`` more good views of the object under ``root / CATEGORY`` (other placements: another seed)."""
    rng = np.random.default_rng(seed)
    photo = photograph()
    for k in range(count):
        save_image(root / CATEGORY / f"{k:03d}.png", placed(photo, rng))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="data set root to write")
    print(write_object_data(parser.parse_args().out))


if __name__ == "__main__":
    main()
