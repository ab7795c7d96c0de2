"""Synthetic inspection images: the demo and test data of flowad.

:func:`make_demo_dataset` writes a small data set in the MVTec AD layout with two categories:

* ``fabric``: a 2/1 twill weave (denim-like) filling the frame, with per-image random phase,
  slight rotation and scale jitter, yarn irregularities, an illumination gradient and sensor
  noise. Defects: ``hole``, ``stain``, ``thread`` (a loose thread lying on the cloth) and
  ``scratch`` (a line of abraded, lighter fibres).
* ``pill``: a white capsule-shaped tablet with a score line and faint speckles on a dark
  matte background, with small pose and lighting jitter and a soft shadow. Defects (always on
  the tablet): ``crack``, ``missing`` (a chipped-off piece), ``contamination`` (a foreign spot)
  and ``color`` (a discoloured patch).

Masks are exact: a pixel is in the mask if and only if the defect changed it. Each defect is
rendered as a full "defective" image plus a weight map (the defect's opacity); pixels whose
weight exceeds :data:`ALPHA_THRESHOLD` *and* whose colour visibly changes (by at least
:data:`MIN_VISIBLE_CHANGE` grey levels in some channel: ground truth marks what an inspector can see)
form the mask, and every other pixel is copied unchanged from the good rendering. Sensor noise
is drawn once per image and added to the good and the defective rendering alike, so outside the
mask the saved defective image equals the good one byte for byte. The demo's defect areas lie between
:data:`MIN_DEFECT_AREA` and :data:`MAX_DEFECT_AREA` of the image.

Large frames: an ``image_size`` of ``(width, height)`` (any shape, e.g. 2048 x 2048 or a 4000 x 1000
line-scan strip) renders the ``fabric`` web at the scale of the 256-pixel demo, as a camera of fixed
resolution would: the weave's period stays about 8.5 pixels, so a larger frame shows more cloth. Its
defects are small (a few pixels wide scratches and threads, small holes and stains): they cover
0.01 % to 0.08 % of any frame of at least 256 x 256 pixels (see :data:`FRAME_DEFECT_SPAN`), with
masks exact by the same rule.

Everything is drawn from :class:`numpy.random.Generator` objects seeded per image, so a data set
is a pure function of its arguments. The renderers live in :mod:`~flowad.data.synthetic.fabric` (on
the weave of :mod:`~flowad.data.synthetic.weave`) and :mod:`~flowad.data.synthetic.pill`, on the
primitives of :mod:`~flowad.data.synthetic.drawing`; :mod:`~flowad.data.synthetic.defects` puts a
defect into a scene.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from flowad.data.synthetic import fabric, pill
from flowad.data.synthetic.defects import (
    ALPHA_THRESHOLD,
    MAX_DEFECT_AREA,
    MIN_DEFECT_AREA,
    MIN_VISIBLE_CHANGE,
    apply_defect,
    area_bounds,
)
from flowad.data.synthetic.drawing import Scene
from flowad.errors import InputError

__all__ = [
    "ALPHA_THRESHOLD",
    "CATEGORIES",
    "DEFECTS",
    "DEMO_COUNTS",
    "FRAME_COUNTS",
    "FRAME_CATEGORIES",
    "MAX_DEFECT_AREA",
    "MIN_DEFECT_AREA",
    "MIN_IMAGE_SIZE",
    "MIN_VISIBLE_CHANGE",
    "apply_defect",
    "area_bounds",
    "finish",
    "image_rng",
    "make_demo_dataset",
    "render_good",
    "render_sample",
]

CATEGORIES = ("fabric", "pill")
DEFECTS: dict[str, tuple[str, ...]] = {
    "fabric": ("hole", "stain", "thread", "scratch"),
    "pill": ("crack", "missing", "contamination", "color"),
}
MIN_IMAGE_SIZE = 32

FRAME_CATEGORIES = ("fabric",)
"""The categories a (width, height) frame can show: a texture fills any frame, an object does not."""
FRAME_TEXTURE_SIZE = 256
"""Frames show the cloth at the scale of the 256-pixel demo images: a larger frame shows more of it."""
FRAME_DEFECT_SPAN = 0.1
"""A frame's defect span as a fraction of sqrt(width * height): its defects cover 0.01 % to 0.08 % of it.
Frames under 256 x 256 pixels have the defects of a 256 x 256 frame, which cover more of them."""
# Images per category written by default (training, good test, test per defect type); fewer frames,
# which are heavy to write and to train on.
DEMO_COUNTS = (60, 20, 8)
FRAME_COUNTS = (20, 8, 4)
_SPLIT_CODES = {"train": 0, "test": 1}

ImageSize = int | tuple[int, int]


def render_good(category: str, rng: np.random.Generator, size: ImageSize = 256) -> Scene:
    """Render one defect-free image of ``category`` (see :data:`CATEGORIES`).

    An int ``size`` gives the square demo image at that resolution, the same view at any size. A
    ``(width, height)`` pair gives a frame of the cloth at the 256-pixel demo's scale (one of
    :data:`FRAME_CATEGORIES`), whose defects are small: see :data:`FRAME_DEFECT_SPAN`.
    """
    _check_category(category)
    _check_size(size)
    if not isinstance(size, int):
        return _render_frame(category, rng, size)
    return fabric.render(rng, (size, size), size) if category == "fabric" else pill.render(rng, size)


def _render_frame(category: str, rng: np.random.Generator, size: tuple[int, int]) -> Scene:
    if category not in FRAME_CATEGORIES:
        shown = ", ".join(FRAME_CATEGORIES)
        raise InputError(f"category {category!r} is rendered square only; a (width, height) frame shows {shown}")
    width, height = size
    scene = fabric.render(rng, (height, width), FRAME_TEXTURE_SIZE)
    pixels = max(width * height, FRAME_TEXTURE_SIZE**2)  # a defect must keep a few pixels
    return dataclasses.replace(scene, span=FRAME_DEFECT_SPAN * math.sqrt(pixels))


def finish(scene: Scene, image: np.ndarray) -> np.ndarray:
    """Add the scene's sensor noise to ``image`` and quantise it to ``uint8``."""
    noisy = image + scene.noise
    noisy *= 255.0  # in place: large frames need no more full-size temporaries
    np.rint(noisy, out=noisy)
    return np.clip(noisy, 0, 255, out=noisy).astype(np.uint8)


def render_sample(
    category: str, defect: str, rng: np.random.Generator, size: ImageSize = 256
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render ``(good, image, mask)``: the good image, the same with ``defect`` and the mask.

    ``defect="good"`` returns the good image twice and an empty mask.
    """
    scene = render_good(category, rng, size)
    good = finish(scene, scene.image)
    if defect == "good":
        return good, good.copy(), np.zeros(good.shape[:2], dtype=bool)
    image, mask = apply_defect(scene, defect, rng)
    return good, finish(scene, image), mask


def make_demo_dataset(
    out: str | Path,
    seed: int = 0,
    categories: Sequence[str] | None = None,
    image_size: ImageSize = 256,
    n_train: int | None = None,
    n_test_good: int | None = None,
    n_test_per_defect: int | None = None,
) -> Path:
    """Write a synthetic data set in the MVTec AD layout under ``out`` and return ``out``.

    Writes ``<out>/<category>/train/good/000.png``, ``test/good/*.png``, ``test/<defect>/*.png``
    and ``ground_truth/<defect>/<stem>_mask.png`` (0/255 PNG) for each category. Each image has
    its own generator seeded from ``(seed, category, split, defect, index)``, so the files do not
    depend on the counts asked for. Existing files of the same names are overwritten.

    ``image_size`` is as for :func:`render_good`: the square demo (every category), or large
    ``(width, height)`` frames with small defects (:data:`FRAME_CATEGORIES`). Categories default to
    every one the size allows, counts left out to :data:`DEMO_COUNTS` or :data:`FRAME_COUNTS`.
    """
    _check_size(image_size)
    if categories is None:
        categories = CATEGORIES if isinstance(image_size, int) else FRAME_CATEGORIES
    if isinstance(categories, str):  # a single name, not a sequence of one-letter names
        categories = (categories,)
    for category in categories:
        _check_category(category)
    _check_whole("seed", seed, 0)
    counts = _counts(image_size, (n_train, n_test_good, n_test_per_defect))
    root = Path(out)
    for category in categories:
        _write_category(root / category, category, seed, image_size, counts)
    return root


def image_rng(seed: int, category: str, split: str, defect: str, index: int) -> np.random.Generator:
    """The generator :func:`make_demo_dataset` uses for one image (``split`` is "train" or "test").

    ``render_good(category, image_rng(...), size)`` re-creates the good twin of a saved image.
    """
    defect_code = 0 if defect == "good" else 1 + DEFECTS[category].index(defect)
    key = [seed, CATEGORIES.index(category), _SPLIT_CODES[split], defect_code, index]
    return np.random.default_rng(np.random.SeedSequence(key))


# --- writing -------------------------------------------------------------------------------------


def _write_category(base: Path, category: str, seed: int, size: ImageSize, counts: tuple[int, ...]) -> None:
    n_train, n_test_good, n_test_per_defect = counts
    _write_good(base / "train" / "good", category, seed, "train", n_train, size)
    _write_good(base / "test" / "good", category, seed, "test", n_test_good, size)
    for defect in DEFECTS[category]:
        _write_defects(base, category, defect, seed, n_test_per_defect, size)


def _write_good(folder: Path, category: str, seed: int, split: str, count: int, size: ImageSize) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        scene = render_good(category, image_rng(seed, category, split, "good", index), size)
        _save(folder / f"{index:03d}.png", finish(scene, scene.image))


def _write_defects(base: Path, category: str, defect: str, seed: int, count: int, size: ImageSize) -> None:
    images, masks = base / "test" / defect, base / "ground_truth" / defect
    images.mkdir(parents=True, exist_ok=True)
    masks.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        rng = image_rng(seed, category, "test", defect, index)
        scene = render_good(category, rng, size)
        image, mask = apply_defect(scene, defect, rng)
        _save(images / f"{index:03d}.png", finish(scene, image))
        _save(masks / f"{index:03d}_mask.png", mask.astype(np.uint8) * 255)


def _save(path: Path, array: np.ndarray) -> None:
    # Fast compression: generation time matters more than file size.
    Image.fromarray(array).save(path, compress_level=1)


# --- checks --------------------------------------------------------------------------------------


def _counts(image_size: ImageSize, given: tuple[int | None, ...]) -> tuple[int, ...]:
    """The image counts asked for, the size's defaults in place of None, checked."""
    defaults = DEMO_COUNTS if isinstance(image_size, int) else FRAME_COUNTS
    counts = tuple(default if count is None else count for count, default in zip(given, defaults, strict=True))
    for what, count in zip(("n_train", "n_test_good", "n_test_per_defect"), counts, strict=True):
        _check_whole(what, count, 1)
    return counts


def _check_size(size: ImageSize) -> None:
    sides = size if isinstance(size, tuple) and len(size) == 2 else (size,)
    if not all(_whole(side) and side >= MIN_IMAGE_SIZE for side in sides):
        raise InputError(
            f"image_size is {size!r}; expected a whole number of at least {MIN_IMAGE_SIZE}, "
            "or a (width, height) pair of them"
        )


def _check_whole(what: str, value: int, low: int) -> None:
    if not _whole(value) or value < low:
        raise InputError(f"{what} is {value!r}; expected a whole number of at least {low}")


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_category(category: str) -> None:
    if category not in CATEGORIES:
        raise InputError(f"synthetic category {category!r} is unknown; expected one of {', '.join(CATEGORIES)}")
