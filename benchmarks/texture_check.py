"""On real textures, which input statistics serve each model better: the weights' own or ImageNet's?

    python benchmarks/texture_check.py --out runs/textures --models fastflow cflow --append benchmarks/RESULTS.md
    python benchmarks/texture_check.py runs/textures --models fastflow cflow   # OUT positionally, as before

Writes an MVTec-layout data set from scikit-image's photographs of brick, grass and gravel (real texture,
real variation): 160 px crops resized to 256, training crops from the top two thirds of the photograph,
test crops from the bottom third, horizontal flips. Half the test crops get one planted defect, with its
mask: a darker soft ellipse ("stain", intensity x 0.75-0.85), a thin line ("scratch", +-40 grey levels)
or a square of another photograph ("patch"). Then trains and tests every model with
``input_statistics`` "weights" and "imagenet" (the demo's presets otherwise) and prints one row each. The data
set is written once and reused by later calls with the same ``--out``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from _harness import (
    add_append_argument,
    add_models_argument,
    machine_description,
    markdown_table,
    parse_run_arguments,
    publish,
    run_argument_parser,
    run_metrics,
    section,
    train_run,
)
from PIL import Image

TEXTURES = ("brick", "grass", "gravel")
DEFECTS = ("stain", "scratch", "patch")
CROP, SIZE = 160, 256
COUNTS = {"train": 48, "good": 12, "defect": 8}  # the demo's 48 training images; 8 per defect type
KEYS = ("image_auroc", "pixel_auroc", "aupro", "oracle_iou")


def _photo(name: str) -> np.ndarray:
    import skimage.data

    return getattr(skimage.data, name)().astype(np.float32)


def _crop(photo: np.ndarray, rng: np.random.Generator, rows: tuple[int, int]) -> np.ndarray:
    top = int(rng.integers(rows[0], rows[1] - CROP + 1))
    left = int(rng.integers(0, photo.shape[1] - CROP + 1))
    crop = photo[top : top + CROP, left : left + CROP]
    return crop[:, ::-1] if rng.random() < 0.5 else crop


def plant_defect(
    crop: np.ndarray, defect: str, rng: np.random.Generator, other: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``crop`` (CROP x CROP, grey or colour) with one planted ``defect`` (DEFECTS) and its boolean mask; a
    "patch" is a square cut from the grey photograph ``other``."""
    yy, xx = np.mgrid[:CROP, :CROP].astype(np.float32)
    cy, cx = rng.uniform(0.25, 0.75, 2) * CROP
    if defect == "stain":
        ry, rx = rng.uniform(0.08, 0.16, 2) * CROP
        weight = np.clip(1.5 - np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2), 0, 1)  # soft edge
        return crop * (1 - _per_pixel(weight, crop) * rng.uniform(0.15, 0.25)), weight > 0.5
    if defect == "scratch":
        angle, length = rng.uniform(0, np.pi), rng.uniform(0.3, 0.5) * CROP
        dy, dx = np.sin(angle), np.cos(angle)
        along = (yy - cy) * dy + (xx - cx) * dx
        mask = (np.abs((yy - cy) * dx - (xx - cx) * dy) <= 1.5) & (np.abs(along) <= length / 2)
        return np.where(_per_pixel(mask, crop), crop + rng.choice([-40.0, 40.0]), crop), mask
    side = int(rng.uniform(0.2, 0.3) * CROP)
    top, left = int(cy - side / 2), int(cx - side / 2)
    mask = np.zeros((CROP, CROP), bool)
    mask[top : top + side, left : left + side] = True
    out = crop.copy()
    out[top : top + side, left : left + side] = _per_pixel(_crop(other, rng, (0, other.shape[0]))[:side, :side], out)
    return out, mask


def _per_pixel(values: np.ndarray, image: np.ndarray) -> np.ndarray:
    """A (H, W) weight or mask shaped to broadcast over a grey (H, W) or colour (H, W, 3) image."""
    return values[..., None] if image.ndim == 3 else values


def save_image(path: Path, pixels: np.ndarray, mode: str = "RGB") -> None:
    """``pixels`` (grey or colour, 0-255) resized to SIZE as an RGB image, or as a binary mask with ``mode`` "L"."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).resize((SIZE, SIZE), Image.BILINEAR)
    (image.convert("RGB") if mode == "RGB" else image.point(lambda v: 255 if v >= 128 else 0)).save(path)


def _rows(photo: np.ndarray, split: bool) -> tuple[tuple[int, int], tuple[int, int]]:
    """The training and the test crops' rows: the top two thirds and the bottom third, or with ``split`` False
    the whole photograph for both (crops at random anywhere, so test crops overlap training crops' areas)."""
    if not split:
        return (0, photo.shape[0]), (0, photo.shape[0])
    return (0, photo.shape[0] * 2 // 3), (photo.shape[0] * 2 // 3, photo.shape[0])


def write_data(root: Path, seed: int = 0, split: bool = True) -> None:
    """The data set under ``root``; ``split`` False takes every crop from the whole photograph (:func:`_rows`)."""
    rng = np.random.default_rng(seed)
    for i, name in enumerate(TEXTURES):
        photo, other = _photo(name), _photo(TEXTURES[(i + 1) % len(TEXTURES)])
        train_rows, test_rows = _rows(photo, split)
        for k in range(COUNTS["train"]):
            save_image(root / name / "train" / "good" / f"{k:03d}.png", _crop(photo, rng, train_rows))
        for k in range(COUNTS["good"]):
            save_image(root / name / "test" / "good" / f"{k:03d}.png", _crop(photo, rng, test_rows))
        for defect in DEFECTS:
            for k in range(COUNTS["defect"]):
                image, mask = plant_defect(_crop(photo, rng, test_rows), defect, rng, other)
                save_image(root / name / "test" / defect / f"{k:03d}.png", image)
                save_image(root / name / "ground_truth" / defect / f"{k:03d}_mask.png", mask * 255.0, mode="L")


def write_good_crops(root: Path, count: int, seed: int = 1, split: bool = True) -> None:
    """``count`` more good crops per texture from the test rows, as ``root/<texture>/NNN.png`` (another seed than
    :func:`write_data`'s, so other crops): for measuring false detections on many good images."""
    rng = np.random.default_rng(seed)
    for name in TEXTURES:
        photo = _photo(name)
        rows = _rows(photo, split)[1]
        for k in range(count):
            save_image(root / name / f"{k:03d}.png", _crop(photo, rng, rows))


def main() -> None:
    from flowad.cli_commands import DEMO_PRESETS

    parser = run_argument_parser(__doc__, ("out",), device="cpu", helps={"out": "folder for the data set and the runs"})
    add_models_argument(parser)
    add_append_argument(parser)
    args = parse_run_arguments(parser, ("out",))
    data = args.out / "data"
    if not (data / TEXTURES[-1] / "ground_truth").is_dir():
        write_data(data)
    rows = []
    for model in args.models:
        for texture in TEXTURES:
            cells = {}
            for stats in ("weights", "imagenet"):
                options = {**DEMO_PRESETS.get(model, {}), "input_statistics": stats}
                run = train_run(args.out / model / f"{texture}_{stats}", model, data, texture, options, args.device)
                result = run_metrics(run, args.device)
                cells[stats] = " / ".join(f"{result[k]:.3f}" for k in KEYS)
            rows.append([model, texture, cells["weights"], cells["imagenet"]])
            print(" | ".join(rows[-1]), flush=True)
    text = section(
        "Input statistics on real textures",
        machine_description(args.threads),
        ".",
        [
            "Cells: " + " / ".join(KEYS) + ".",
            "",
            *markdown_table(["model", "texture", "weights' own statistics", "ImageNet's"], rows),
        ],
    )
    publish(text, args.append)


if __name__ == "__main__":
    main()
