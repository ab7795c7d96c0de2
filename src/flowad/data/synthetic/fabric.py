"""The ``fabric`` category: a 2/1 twill weave filling the frame, and its defects (hole, stain, thread, scratch)."""

from __future__ import annotations

import numpy as np

from flowad.data.synthetic import drawing as draw
from flowad.data.synthetic.drawing import Scene
from flowad.data.synthetic.weave import draw_weave, yarn_bands


def render(rng: np.random.Generator, shape: tuple[int, int], texture_size: float) -> Scene:
    """One good ``(H, W)`` image: the weave at a random phase, slight rotation and scale, under uneven light.

    ``texture_size`` sets the cloth's scale: the weave's period is about ``texture_size / 30`` pixels and the
    dye's unevenness about ``texture_size / 5``, whatever the image's shape.
    """
    weave = draw_weave(rng, texture_size)
    warp_fibres = 1 + 0.09 * draw.fibres(rng, shape, 2.5, 0.5, axis=0)  # fibres run along each yarn
    weft_fibres = 1 + 0.09 * draw.fibres(rng, shape, 2.5, 0.5, axis=1)
    warp_colour = np.array([0.2, 0.29, 0.46], dtype=np.float32) * rng.uniform(0.93, 1.07, size=3).astype(np.float32)
    weft_colour = np.array([0.68, 0.67, 0.63], dtype=np.float32) * np.float32(rng.uniform(0.96, 1.03))
    # Coordinates as a column and a row: the light is a smooth function of both, no full grids needed.
    yo, xo = draw.coordinates(0, shape[0])[:, None], draw.coordinates(0, shape[1])[None, :]
    light = draw.illumination(rng, yo, xo, shape)
    light = light * (1 + 0.04 * draw.smooth_noise(rng, shape, texture_size / 5))  # uneven dye
    # Coloured band by band, while each band's yarns are still in the cache.
    image = np.empty((*shape, 3), dtype=np.float32)
    for rows, warp, weft in yarn_bands(weave, shape):
        dyed = (warp * warp_fibres[rows])[..., None] * warp_colour + (weft * weft_fibres[rows])[..., None] * weft_colour
        image[rows] = np.clip(dyed * light[rows, :, None], 0.03, 0.96)
    return Scene(
        image=image,
        noise=draw.sensor_noise(rng, image),
        light=light.astype(np.float32),
        support=np.ones(shape, dtype=np.float32),
        background=None,
        scale=weave.period,
        angle=weave.angle,
    )


def _fabric_hole(scene: Scene, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    span, img = scene.defect_span, scene.image
    y, x = draw.grid(scene.shape)
    radius = span * rng.uniform(0.05, 0.13)
    rn = draw.blob(y, x, draw.pick(rng, _border_free(scene.shape, 0.15)), radius, rng, rough=0.25)
    rn = rn + (1.2 / radius) * draw.smooth_noise(rng, rn.shape, 1.5)  # torn, ragged edge
    inside = np.clip((1 - rn) * radius + 0.5, 0, 1)
    # Frayed rim: torn yarn ends, lighter and fuzzy, fading out from the hole's edge.
    rim = np.clip(1 - (rn - 1) * radius / max(span * 0.014, 1.0), 0, 1) * (1 - inside)
    fuzz = np.clip(0.5 + 0.5 * draw.fibres(rng, rn.shape, 1.5, 0.4, axis=int(rng.integers(2))), 0, 1)
    fray_colour = 0.3 * img + 0.6 * np.array([0.78, 0.78, 0.8]) * scene.light[..., None]
    # Through the hole: the dark table underneath, darkest right under the cloth's edge.
    depth = np.clip((1 - rn) * radius / 4, 0, 1)
    backing = (0.04 + 0.04 * depth + 0.01 * draw.smooth_noise(rng, rn.shape, 6))[..., None] * np.array([1.0, 1.0, 1.1])
    rim_alpha = (rim * (0.45 + 0.45 * fuzz))[..., None]
    out = img * (1 - rim_alpha) + fray_colour * rim_alpha
    out = out * (1 - inside[..., None]) + backing * inside[..., None]
    return out, np.maximum(inside, rim)


def _fabric_stain(scene: Scene, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    span, img = scene.defect_span, scene.image
    y, x = draw.grid(scene.shape)
    radius = span * rng.uniform(0.07, 0.15)
    rn = draw.blob(y, x, draw.pick(rng, _border_free(scene.shape, 0.12)), radius, rng, rough=0.25)
    blotch = np.clip((1.1 - rn) * 2.5, 0, 1) * (0.85 + 0.15 * draw.smooth_noise(rng, rn.shape, radius / 2))
    # Dried stains collect pigment at their edge.
    weight = np.clip(blotch + 0.3 * np.exp(-(((rn - 1.0) / 0.06) ** 2)), 0, 1)
    alpha = (rng.uniform(0.55, 0.9) * weight)[..., None]
    kind = rng.integers(5)
    if kind == 4:  # bleach: the dye is gone, the bare cotton shows
        return img + alpha * (0.4 * img + 0.5 * np.array([0.85, 0.84, 0.8]) * scene.light[..., None] - img), weight
    # Coffee, grease, rust or grass: a dye that absorbs part of the light.
    tint = np.array(([0.6, 0.42, 0.18], [0.35, 0.35, 0.3], [0.85, 0.35, 0.2], [0.45, 0.6, 0.2])[kind])
    return img * (1 - alpha * (1 - tint)), weight


def _fabric_thread(scene: Scene, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    span, img = scene.defect_span, scene.image
    y, x = draw.grid(scene.shape)
    start = np.array(draw.pick(rng, _border_free(scene.shape, 0.1)))
    path = draw.curve(rng, start, rng.uniform(0, 2 * np.pi), span * rng.uniform(0.35, 0.8), 0.12, 0.02)
    # As thick as the weave's yarns, but thin enough to stay a thread where the defect span is short.
    half = max(min(scene.scale * 0.36, span * 0.036), 1.0)
    distance, arc = draw.polyline_distance(y, x, path, half + 3)
    cover = draw.line_coverage(distance, half)
    # Round yarn: lit in the middle, darker at its sides, with a twist pattern along it.
    across = np.clip(distance / half, 0, 1)
    twist = 0.85 + 0.15 * np.sin(2 * np.pi * arc / (1.6 * half) + 2.5 * across)
    colours = ([0.52, 0.16, 0.14], [0.1, 0.13, 0.24], [0.86, 0.85, 0.8], [0.7, 0.58, 0.25])
    colour = np.array(colours[rng.integers(len(colours))])
    yarn = colour * ((0.5 + 0.5 * np.sqrt(1 - across**2)) * twist * scene.light)[..., None]
    # A faint shadow on the cloth, offset away from the light.
    shadow_distance, _ = draw.polyline_distance(y, x, path + max(0.006 * span, 0.7), half + 4)
    shadow = 0.4 * np.clip((half + 1.0 - shadow_distance) / 1.5, 0, 1) * (1 - cover)
    out = img * (1 - shadow[..., None])
    out = out * (1 - cover[..., None]) + yarn * cover[..., None]
    return out, np.maximum(cover, shadow)


def _fabric_scratch(scene: Scene, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    span, img = scene.defect_span, scene.image
    y, x = draw.grid(scene.shape)
    start = np.array(draw.pick(rng, _border_free(scene.shape, 0.1)))
    path = draw.curve(rng, start, rng.uniform(0, 2 * np.pi), span * rng.uniform(0.45, 0.9), 0.03, 0.0)
    half = span * rng.uniform(0.007, 0.012) + 0.4
    distance, _ = draw.polyline_distance(y, x, path, half + 2)
    cover = draw.line_coverage(distance, half)
    # Abraded fibres: lighter and greyer, uneven along the line.
    fuzz = np.clip(0.8 + 0.2 * draw.smooth_noise(rng, cover.shape, 3), 0.5, 1)
    worn = 0.25 * img + 0.7 * np.array([0.7, 0.71, 0.74]) * scene.light[..., None]
    alpha = (rng.uniform(0.65, 0.95) * cover * fuzz)[..., None]
    return img + alpha * (worn - img), cover


def _border_free(shape: tuple[int, int], fraction: float) -> np.ndarray:
    """Pixels at least ``fraction`` of the image's height (width) away from its top and bottom (sides)."""
    inner = np.zeros(shape, dtype=bool)
    top, left = (int(round(side * fraction)) for side in shape)
    inner[top : shape[0] - top, left : shape[1] - left] = True
    return inner


DEFECT_RENDERERS = {
    "hole": _fabric_hole,
    "stain": _fabric_stain,
    "thread": _fabric_thread,
    "scratch": _fabric_scratch,
}
