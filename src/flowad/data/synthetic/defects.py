"""Putting a defect into a good scene: the renderer's attempts, the exact mask and the area it must cover.

A defect's dimensions are fractions of the scene's defect span (:attr:`Scene.defect_span`): the image's
side for the demo's defects, less for small defects in large frames. A small defect is rendered in a
square window a few spans wide at a random place in the frame, which keeps its cost independent of the
frame's size; an attempt whose mask reaches a side of the window inside the frame is redrawn, so no
defect is cut short by its window. The demo's window is the whole image.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from flowad.data.synthetic import fabric, pill
from flowad.data.synthetic.drawing import Scene
from flowad.errors import InputError

ALPHA_THRESHOLD = 0.25
"""A defect's weight must exceed this for a pixel to count as changed."""
MIN_DEFECT_AREA = 0.01
MAX_DEFECT_AREA = 0.08
"""Fractions of the defect span squared that a defect mask covers: of the image for the demo's defects."""
MIN_VISIBLE_CHANGE = 8
"""Grey levels (of 255) a defect must change a pixel by for the pixel to be part of the defect."""
WINDOW_SPANS = 3.0
"""Side of the window a defect is rendered in, in defect spans."""

_MIN_CHANGE = MIN_VISIBLE_CHANGE / 255
_MAX_ATTEMPTS = 50

Box = tuple[slice, slice]
Renderer = Callable[[Scene, np.random.Generator], tuple[np.ndarray, np.ndarray]]


def area_bounds(scene: Scene) -> tuple[float, float]:
    """The smallest and largest fraction of the image that a defect in ``scene`` may cover."""
    height, width = scene.shape
    share = scene.defect_span**2 / (height * width)
    return MIN_DEFECT_AREA * share, MAX_DEFECT_AREA * share


def apply_defect(scene: Scene, defect: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Render ``defect`` into ``scene``; returns the float image and its exact bool mask.

    Draws until the mask covers a fraction of the image within :func:`area_bounds`. Pixels outside the
    mask are exactly those of ``scene.image``.
    """
    renderer = _renderer(scene, defect)
    low, high = area_bounds(scene)
    pixels = scene.shape[0] * scene.shape[1]
    for _ in range(_MAX_ATTEMPTS):
        box = _window(scene, rng)
        part = scene.crop(box)
        out, weight = renderer(part, rng)
        visible = np.abs(out - part.image).max(axis=2) >= _MIN_CHANGE
        mask = (weight > ALPHA_THRESHOLD) & visible
        if low <= mask.sum() / pixels <= high and not _cut(mask, box, scene.shape):
            return _paste(scene, box, out, mask)
    raise RuntimeError(f"could not render a {defect!r} defect of the documented size in {_MAX_ATTEMPTS} tries")


def _window(scene: Scene, rng: np.random.Generator) -> Box:
    """A random window ``WINDOW_SPANS`` defect spans wide inside the frame (the whole frame if smaller)."""
    side = math.ceil(WINDOW_SPANS * scene.defect_span)
    return tuple(_span_of(rng, length, side) for length in scene.shape)


def _span_of(rng: np.random.Generator, length: int, side: int) -> slice:
    room = length - side
    if room <= 0:  # no choice to draw: the demo's window is its whole image
        return slice(0, length)
    start = int(rng.integers(room + 1))
    return slice(start, start + side)


def _cut(mask: np.ndarray, box: Box, shape: tuple[int, int]) -> bool:
    """Whether the mask reaches a side of the window that lies inside the frame."""
    rows, cols = box
    sides = (
        (rows.start > 0, mask[0]),
        (rows.stop < shape[0], mask[-1]),
        (cols.start > 0, mask[:, 0]),
        (cols.stop < shape[1], mask[:, -1]),
    )
    return any(inside and edge.any() for inside, edge in sides)


def _paste(scene: Scene, box: Box, out: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The scene's image with the window's mask pixels from ``out``, and the mask over the whole frame."""
    image = scene.image.copy()
    image[box] = np.where(mask[..., None], out, image[box])
    full = np.zeros(scene.shape, dtype=bool)
    full[box] = mask
    return image, full


def _renderer(scene: Scene, defect: str) -> Renderer:
    category, renderers = (
        ("fabric", fabric.DEFECT_RENDERERS) if scene.background is None else ("pill", pill.DEFECT_RENDERERS)
    )
    if defect not in renderers:
        raise InputError(
            f"defect {defect!r} is unknown for category {category!r}; expected one of {', '.join(renderers)}"
        )
    return renderers[defect]
