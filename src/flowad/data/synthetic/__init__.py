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
mask the saved defective image equals the good one byte for byte. Defect areas lie between
:data:`MIN_DEFECT_AREA` and :data:`MAX_DEFECT_AREA` of the image.

Everything is drawn from :class:`numpy.random.Generator` objects seeded per image, so a data set
is a pure function of its arguments. The renderers live in :mod:`~flowad.data.synthetic.fabric` and
:mod:`~flowad.data.synthetic.pill`, on the primitives of :mod:`~flowad.data.synthetic.drawing`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from flowad.data.synthetic import fabric, pill
from flowad.data.synthetic.drawing import Scene
from flowad.errors import InputError

CATEGORIES = ("fabric", "pill")
DEFECTS: dict[str, tuple[str, ...]] = {
    "fabric": ("hole", "stain", "thread", "scratch"),
    "pill": ("crack", "missing", "contamination", "color"),
}
ALPHA_THRESHOLD = 0.25
"""A defect's weight must exceed this for a pixel to count as changed."""
MIN_DEFECT_AREA = 0.01
MAX_DEFECT_AREA = 0.08
"""Fractions of the image area a defect mask covers."""
MIN_IMAGE_SIZE = 32

MIN_VISIBLE_CHANGE = 8
"""Grey levels (of 255) a defect must change a pixel by for the pixel to be part of the defect."""
_MIN_CHANGE = MIN_VISIBLE_CHANGE / 255
_MAX_ATTEMPTS = 50
_SPLIT_CODES = {"train": 0, "test": 1}


def render_good(category: str, rng: np.random.Generator, size: int = 256) -> Scene:
    """Render one defect-free image of ``category`` (see :data:`CATEGORIES`)."""
    _check_category(category)
    if size < MIN_IMAGE_SIZE:
        raise InputError(f"image_size is {size}; expected at least {MIN_IMAGE_SIZE} pixels")
    return fabric.render(rng, size) if category == "fabric" else pill.render(rng, size)


def apply_defect(scene: Scene, defect: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Render ``defect`` into ``scene``; returns the float image and its exact bool mask.

    Draws until the mask covers between :data:`MIN_DEFECT_AREA` and :data:`MAX_DEFECT_AREA`
    of the image. Pixels outside the mask are exactly those of ``scene.image``.
    """
    renderer = _renderer(scene, defect)
    for _ in range(_MAX_ATTEMPTS):
        out, weight = renderer(scene, rng)
        visible = np.abs(out - scene.image).max(axis=2) >= _MIN_CHANGE
        mask = (weight > ALPHA_THRESHOLD) & visible
        if MIN_DEFECT_AREA <= mask.mean() <= MAX_DEFECT_AREA:
            return np.where(mask[:, :, None], out, scene.image).astype(np.float32), mask
    raise RuntimeError(f"could not render a {defect!r} defect of the documented size in {_MAX_ATTEMPTS} tries")


def finish(scene: Scene, image: np.ndarray) -> np.ndarray:
    """Add the scene's sensor noise to ``image`` and quantise it to ``uint8``."""
    return np.clip(np.rint((image + scene.noise) * 255.0), 0, 255).astype(np.uint8)


def render_sample(
    category: str, defect: str, rng: np.random.Generator, size: int = 256
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
    categories: Sequence[str] = CATEGORIES,
    image_size: int = 256,
    n_train: int = 60,
    n_test_good: int = 20,
    n_test_per_defect: int = 8,
) -> Path:
    """Write a synthetic data set in the MVTec AD layout under ``out`` and return ``out``.

    Writes ``<out>/<category>/train/good/000.png``, ``test/good/*.png``, ``test/<defect>/*.png``
    and ``ground_truth/<defect>/<stem>_mask.png`` (0/255 PNG) for each category. Each image has
    its own generator seeded from ``(seed, category, split, defect, index)``, so the files do not
    depend on the counts asked for. Existing files of the same names are overwritten.
    """
    if isinstance(categories, str):  # a single name, not a sequence of one-letter names
        categories = (categories,)
    for category in categories:
        _check_category(category)
    _check_whole("seed", seed, 0)
    _check_whole("image_size", image_size, MIN_IMAGE_SIZE)
    for what, count in (("n_train", n_train), ("n_test_good", n_test_good), ("n_test_per_defect", n_test_per_defect)):
        _check_whole(what, count, 1)
    root = Path(out)
    for category in categories:
        base = root / category
        _write_good(base / "train" / "good", category, seed, "train", n_train, image_size)
        _write_good(base / "test" / "good", category, seed, "test", n_test_good, image_size)
        for defect in DEFECTS[category]:
            _write_defects(base, category, defect, seed, n_test_per_defect, image_size)
    return root


def image_rng(seed: int, category: str, split: str, defect: str, index: int) -> np.random.Generator:
    """The generator :func:`make_demo_dataset` uses for one image (``split`` is "train" or "test").

    ``render_good(category, image_rng(...), size)`` re-creates the good twin of a saved image.
    """
    defect_code = 0 if defect == "good" else 1 + DEFECTS[category].index(defect)
    key = [seed, CATEGORIES.index(category), _SPLIT_CODES[split], defect_code, index]
    return np.random.default_rng(np.random.SeedSequence(key))


# --- writing -------------------------------------------------------------------------------------


def _write_good(folder: Path, category: str, seed: int, split: str, count: int, size: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        scene = render_good(category, image_rng(seed, category, split, "good", index), size)
        _save(folder / f"{index:03d}.png", finish(scene, scene.image))


def _write_defects(base: Path, category: str, defect: str, seed: int, count: int, size: int) -> None:
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
    # Fast compression: the files are small anyway and generation time matters more.
    Image.fromarray(array).save(path, compress_level=1)


def _check_whole(what: str, value: int, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise InputError(f"{what} is {value!r}; expected a whole number of at least {low}")


def _check_category(category: str) -> None:
    if category not in CATEGORIES:
        raise InputError(f"synthetic category {category!r} is unknown; expected one of {', '.join(CATEGORIES)}")


def _renderer(scene: Scene, defect: str) -> Callable[[Scene, np.random.Generator], tuple[np.ndarray, np.ndarray]]:
    category = "fabric" if scene.background is None else "pill"
    renderers = fabric.DEFECT_RENDERERS if category == "fabric" else pill.DEFECT_RENDERERS
    if defect not in renderers:
        raise InputError(
            f"defect {defect!r} is unknown for category {category!r}; expected one of {', '.join(DEFECTS[category])}"
        )
    return renderers[defect]
