"""The ``pill`` category: a white scored tablet on a dark matte tray, and its defects (crack, missing, contamination,
color)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from flowad.data.synthetic import drawing as draw
from flowad.data.synthetic.drawing import SUPERSAMPLE, Scene


def render(rng: np.random.Generator, size: int) -> Scene:
    """One good image: the tablet at a slightly jittered pose and light, with its shadow on the tray."""
    c = (size - 1) / 2
    cy, cx = (c + rng.normal(0, 0.015 * size, size=2)).tolist()
    angle = float(np.deg2rad(np.clip(rng.normal(0, 3), -6, 6)))
    half_length = 0.2 * size * rng.uniform(0.98, 1.02)
    radius = 0.135 * size * rng.uniform(0.98, 1.02)
    light_dir = draw.light_vector(rng)
    # Shade only the tablet's bounding box finely: outside it there is nothing to anti-alias.
    reach_y = half_length * abs(np.sin(angle)) + radius + 2
    reach_x = half_length * abs(np.cos(angle)) + radius + 2
    box = (
        max(0, int(cy - reach_y)),
        min(size, int(np.ceil(cy + reach_y)) + 1),
        max(0, int(cx - reach_x)),
        min(size, int(np.ceil(cx + reach_x)) + 1),
    )
    cover, diffuse, gloss = (np.zeros((size, size), dtype=np.float32) for _ in range(3))
    window = (slice(box[0], box[1]), slice(box[2], box[3]))
    cover[window], diffuse[window], gloss[window] = _tablet_shading(
        box, (cy, cx), angle, half_length, radius, light_dir, size
    )

    shape = (size, size)
    speckle = np.clip((draw.smooth_noise(rng, shape, 1.2) - 2.6) * 1.2, 0, 1)[..., None]
    base = np.array([0.9, 0.88, 0.83], dtype=np.float32) * np.float32(rng.uniform(0.96, 1.02))
    albedo = base * (1 - 0.5 * speckle) + np.array([0.72, 0.4, 0.33], dtype=np.float32) * 0.5 * speckle
    albedo *= (1 + 0.02 * draw.smooth_noise(rng, shape, size / 8))[..., None]
    yo, xo = draw.grid(shape)
    light = draw.illumination(rng, yo, xo, shape)
    tray, cast = _tray(rng, size, cover, light_dir)
    image = tray * (1 - 0.6 * cast) * (1 - cover[..., None]) + albedo * diffuse[..., None] + 0.18 * gloss[..., None]
    image = np.clip(image * light[..., None], 0.03, 0.96).astype(np.float32)
    # Where a piece breaks off, the tray shows, less shadowed than under the whole tablet.
    background = np.clip(tray * (1 - 0.3 * cast) * light[..., None], 0.03, 0.96)
    return Scene(
        image=image,
        noise=draw.sensor_noise(rng, image),
        light=light,
        support=cover,
        background=background.astype(np.float32),
        scale=radius,
        angle=angle,
    )


def _tablet_shading(
    box: tuple[int, int, int, int],
    centre: tuple[float, float],
    angle: float,
    half_length: float,
    radius: float,
    light: np.ndarray,
    size: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Coverage, diffuse and specular light of a capsule in ``box``, supersampled for clean edges."""
    ss = SUPERSAMPLE
    y, x = draw.grid_box(box, ss)
    cos, sin = float(np.cos(angle)), float(np.sin(angle))
    along = (x - centre[1]) * cos + (y - centre[0]) * sin
    across = -(x - centre[1]) * sin + (y - centre[0]) * cos
    beyond = np.sign(along) * np.clip(np.abs(along) - half_length, 0, None)
    cover = np.clip((radius - np.hypot(beyond, across)) * ss + 0.5, 0, 1)

    # Surface normal of a flattened capsule, with a score line across its middle.
    flatten = 0.8
    n_along = np.clip(beyond / radius, -1, 1) * flatten
    n_across = np.clip(across / radius, -1, 1) * flatten
    groove_width = max(0.012 * size, 0.7)
    groove = np.exp(-((along / groove_width) ** 2)) * np.sqrt(np.clip(1 - np.abs(across) / radius, 0, 1))
    n_along = n_along - 0.9 * (along / groove_width) * groove
    n_y = sin * n_along + cos * n_across
    n_x = cos * n_along - sin * n_across
    n_z = np.sqrt(np.clip(1 - n_y**2 - n_x**2, 0.05, None))
    norm = np.sqrt(n_y**2 + n_x**2 + n_z**2)
    ly, lx, lz = light.tolist()
    cosine = np.clip((n_y * ly + n_x * lx + n_z * lz) / norm, 0, 1)
    hy, hx, hz = np.array([ly, lx, lz + 1]) / np.linalg.norm([ly, lx, lz + 1])
    specular = np.clip((n_y * hy + n_x * hx + n_z * hz) / norm, 0, 1) ** 40
    diffuse = cover * (0.3 + 0.7 * cosine) * (1 - 0.25 * groove)
    return draw.downsample(cover, ss), draw.downsample(diffuse, ss), draw.downsample(cover * specular, ss)


def _tray(rng: np.random.Generator, size: int, cover: np.ndarray, light: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A dark matte tray with fine grain (``HxWx3``) and the tablet's soft cast shadow (``HxWx1``)."""
    shape = (size, size)
    grain = 1 + 0.06 * draw.smooth_noise(rng, shape, 1.5) + 0.05 * draw.smooth_noise(rng, shape, size / 4)
    grey = np.array([0.16, 0.16, 0.17], dtype=np.float32) * np.float32(rng.uniform(0.85, 1.15))
    offset = (-light[0] / light[2] * 0.06 * size, -light[1] / light[2] * 0.06 * size)
    cast = ndimage.gaussian_filter(ndimage.shift(cover, offset, order=1), 0.02 * size)
    return grey * grain[..., None], cast[..., None]


def _pill_crack(scene: Scene, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    span, img = scene.defect_span, scene.image
    y, x = draw.grid(scene.shape)
    # Run roughly along the tablet through a random point near its middle, so it stays on it.
    heading = scene.angle + rng.uniform(-0.4, 0.4) + np.pi * rng.integers(2)
    length = span * rng.uniform(0.3, 0.5)
    ys, xs = np.nonzero(scene.support > 0.5)
    middle = np.array([ys.mean(), xs.mean()]) + rng.normal(0, [0.3 * scene.scale, 0.1 * span])
    start = middle - 0.5 * length * np.array([np.sin(heading), np.cos(heading)])
    main = draw.curve(rng, start, heading, length, 0.08, 0.35)
    paths = [main]
    for _ in range(rng.integers(1, 4)):
        fork = main[rng.integers(4, len(main) - 4)]
        side = heading + rng.choice([-1, 1]) * rng.uniform(0.5, 1.1)
        paths.append(draw.curve(rng, fork, side, span * rng.uniform(0.08, 0.18), 0.05, 0.35))
    # The crevice opens and closes along its length.
    core_half = (span * 0.0045 + 0.4) * (0.75 + 0.35 * np.clip(draw.smooth_noise(rng, y.shape, span / 12), -1, 1))
    halo_half = core_half + max(span * 0.007, 0.8)
    distance = np.min([draw.polyline_distance(y, x, p, span * 0.02 + 3)[0] for p in paths], axis=0)
    core = draw.line_coverage(distance, core_half) * scene.support
    halo = draw.line_coverage(distance, halo_half) * scene.support
    # A dark crevice whose chipped edges catch less light than the intact surface.
    out = img * (1 - 0.16 * halo - 0.4 * core)[..., None]
    return out, np.maximum(core, 0.6 * halo)


def _pill_missing(scene: Scene, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    span, img = scene.defect_span, scene.image
    y, x = draw.grid(scene.shape)
    edge = (scene.support > 0.3) & (scene.support < 0.7)
    radius = span * rng.uniform(0.07, 0.14)
    centre = draw.pick(rng, edge)
    rn = draw.blob(y, x, centre, radius, rng, rough=0.2)
    rn = rn + (0.8 / radius) * draw.smooth_noise(rng, rn.shape, 2)  # a broken edge is not smooth
    chunk = np.clip((1 - rn) * radius + 0.5, 0, 1)
    removed = chunk * scene.support
    # The fracture face left behind: a rough band along the break, shaded by which way it faces.
    band_width = max(span * 0.02, 1.0)
    band = np.clip(1 - (rn - 1) * radius / band_width, 0, 1) * (1 - chunk) * scene.support
    dy, dx = centre[0] - y, centre[1] - x
    facing = (dy * -0.4 + dx * -0.35) / (np.hypot(dy, dx) + 1e-3)  # faces the light from the upper left?
    rough = 0.85 + 0.1 * draw.smooth_noise(rng, rn.shape, 1.5)
    fracture = img.mean(axis=2, keepdims=True) * (rough * (0.62 + 0.3 * facing))[..., None]
    out = img * (1 - removed[..., None]) + scene.background * removed[..., None]
    out = out + (0.9 * band)[..., None] * (fracture * np.array([0.98, 0.97, 0.95]) - out)
    # Weight by the chunk alone so that the tablet's anti-aliased fringe goes with it.
    return out, np.maximum(chunk * (scene.support > 0.02), band)


def _pill_contamination(scene: Scene, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    span, img = scene.defect_span, scene.image
    y, x = draw.grid(scene.shape)
    radius = span * rng.uniform(0.05, 0.11)
    rn = draw.blob(y, x, draw.pick(rng, draw.interior(scene, scene.scale * 0.35)), radius, rng, rough=0.3)
    rn = rn + (0.6 / radius) * draw.smooth_noise(rng, rn.shape, 2)
    cover = np.clip((1 - rn) * radius + 0.5, 0, 1) * scene.support
    # A slightly raised, textured deposit shaded by the same light as the tablet.
    bump = np.clip(1 - rn, 0, 1) ** 0.5
    shade = draw.relief_shading(bump, radius * 0.3, np.array([-0.4, -0.35, 1.0]) / np.linalg.norm([-0.4, -0.35, 1.0]))
    texture = 1 + 0.2 * draw.smooth_noise(rng, rn.shape, max(radius / 4, 1.5))
    colours = ([0.3, 0.2, 0.12], [0.13, 0.13, 0.14], [0.38, 0.42, 0.26], [0.55, 0.42, 0.3])
    colour = np.array(colours[rng.integers(len(colours))])
    deposit = colour * (shade * texture * scene.light)[..., None]
    alpha = (cover * rng.uniform(0.8, 0.95) * np.clip((1 - rn) * 3 + 0.3, 0, 1))[..., None]
    return img + alpha * (deposit - img), cover


def _pill_color(scene: Scene, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    span, img = scene.defect_span, scene.image
    y, x = draw.grid(scene.shape)
    radius = span * rng.uniform(0.07, 0.13)
    rn = draw.blob(y, x, draw.pick(rng, draw.interior(scene, scene.scale * 0.3)), radius, rng, rough=0.3)
    weight = np.clip(1.15 - rn, 0, 1) ** 0.7 * (1 + 0.1 * draw.smooth_noise(rng, rn.shape, radius / 2))
    weight = np.clip(weight, 0, 1) * scene.support
    tints = ([1.0, 0.82, 0.5], [1.0, 0.72, 0.72], [0.82, 0.68, 0.55], [0.78, 0.84, 1.0])
    tint = np.array(tints[rng.integers(len(tints))])
    strength = rng.uniform(0.5, 0.85)
    return img * (1 - (strength * weight)[..., None] * (1 - tint)), weight


DEFECT_RENDERERS = {
    "crack": _pill_crack,
    "missing": _pill_missing,
    "contamination": _pill_contamination,
    "color": _pill_color,
}
