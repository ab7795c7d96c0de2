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
is a pure function of its arguments.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

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
_SUPERSAMPLE = 2
_MAX_ATTEMPTS = 50
_SPLIT_CODES = {"train": 0, "test": 1}


@dataclass
class Scene:
    """A good rendering plus what the defect renderers need to know about it.

    ``image`` is the clean float32 ``HxWx3`` rendering in ``[0, 1]``; ``noise`` the sensor noise
    added by :func:`finish`; ``light`` the ``HxW`` illumination field; ``support`` the ``HxW``
    coverage of the inspected object (ones for textures); ``background`` what shows where the
    object is missing (None for textures); ``scale`` the pattern period or object radius in
    pixels and ``angle`` the orientation of texture or object in radians.
    """

    image: np.ndarray
    noise: np.ndarray
    light: np.ndarray
    support: np.ndarray
    background: np.ndarray | None
    scale: float
    angle: float

    @property
    def size(self) -> int:
        return self.image.shape[0]


def render_good(category: str, rng: np.random.Generator, size: int = 256) -> Scene:
    """Render one defect-free image of ``category`` (see :data:`CATEGORIES`)."""
    _check_category(category)
    if size < MIN_IMAGE_SIZE:
        raise InputError(f"image_size is {size}; expected at least {MIN_IMAGE_SIZE} pixels")
    return _fabric(rng, size) if category == "fabric" else _pill(rng, size)


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
    renderers = _FABRIC_DEFECTS if category == "fabric" else _PILL_DEFECTS
    if defect not in renderers:
        raise InputError(
            f"defect {defect!r} is unknown for category {category!r}; expected one of {', '.join(DEFECTS[category])}"
        )
    return renderers[defect]


# --- shared drawing helpers ----------------------------------------------------------------------


def _grid(size: int, supersample: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates ``(y, x)`` in output pixels, on a ``supersample``-times finer grid."""
    return _grid_box((0, size, 0, size), supersample)


def _grid_box(box: tuple[int, int, int, int], supersample: int) -> tuple[np.ndarray, np.ndarray]:
    """Like :func:`_grid` for the output pixels ``top:bottom, left:right`` of ``box`` only."""
    top, bottom, left, right = box

    def axis(start: int, stop: int) -> np.ndarray:
        return (np.arange((stop - start) * supersample, dtype=np.float32) + 0.5) / supersample - 0.5 + start

    return np.meshgrid(axis(top, bottom), axis(left, right), indexing="ij")


def _downsample(array: np.ndarray, factor: int) -> np.ndarray:
    """Box-filter ``array`` (HxW or HxWxC) by an integer factor: the anti-aliasing of supersampling."""
    # Summing strided views is several times faster than reshape(...).mean(axis=(1, 3)).
    total = sum(array[i::factor, j::factor] for i in range(factor) for j in range(factor))
    return total / (factor * factor)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Zero-mean, unit-variance random field whose blobs are about ``scale`` pixels across."""
    if scale < 3:
        field = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), scale / 2)
    else:
        # Bicubic upsampling of coarse noise: cheap, and smooth at any scale.
        coarse = rng.standard_normal((max(2, round(shape[0] * 2 / scale)), max(2, round(shape[1] * 2 / scale))))
        image = Image.fromarray(coarse.astype(np.float32))
        field = np.asarray(image.resize((shape[1], shape[0]), Image.Resampling.BICUBIC))
    return (field - field.mean()) / (field.std() + 1e-8)


def _fibres(rng: np.random.Generator, shape: tuple[int, int], along: float, across: float, axis: int) -> np.ndarray:
    """Streaky unit-variance noise, long along ``axis`` (0 = vertical): the look of yarn fibres."""
    sigma = (along, across) if axis == 0 else (across, along)
    field = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma)
    return ((field - field.mean()) / (field.std() + 1e-8)).astype(np.float32)


def _illumination(rng: np.random.Generator, y: np.ndarray, x: np.ndarray, size: int) -> np.ndarray:
    """Exposure, a linear gradient and vignetting, as an uneven ring light gives."""
    c = (size - 1) / 2
    gy, gx = rng.uniform(-0.14, 0.14, size=2).tolist()
    radius2 = ((y - c) ** 2 + (x - c) ** 2) / c**2
    light = (1 + gy * (y - c) / size + gx * (x - c) / size) * (1 - 0.12 * radius2)
    return (light * rng.uniform(0.92, 1.06)).astype(np.float32)


def _sensor_noise(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Gaussian noise that grows a little with brightness (shot noise)."""
    return rng.standard_normal(image.shape, dtype=np.float32) * (0.005 + 0.008 * image)


def _light_vector(rng: np.random.Generator) -> np.ndarray:
    """A light from the upper left with a little jitter."""
    vector = np.array([rng.uniform(-0.5, -0.3), rng.uniform(-0.45, -0.25), 1.0])  # (y, x, z)
    return vector / np.linalg.norm(vector)


def _blob(
    y: np.ndarray,
    x: np.ndarray,
    centre: tuple[float, float],
    radius: float,
    rng: np.random.Generator,
    rough: float,
) -> np.ndarray:
    """Normalised radius of an irregular elliptic blob: < 1 inside, 1 on its wavy outline."""
    dy, dx = y - centre[0], x - centre[1]
    phi = rng.uniform(0, 2 * np.pi)
    aspect = rng.uniform(0.65, 1.0)
    a = dx * np.cos(phi) + dy * np.sin(phi)
    b = (-dx * np.sin(phi) + dy * np.cos(phi)) / aspect
    theta = np.arctan2(b, a)
    wobble = np.zeros_like(theta)
    for k in range(2, 7):
        wobble += rng.normal(0, rough / k) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    return np.hypot(a, b) / (radius * np.clip(1 + wobble, 0.5, None))


def _curve(
    rng: np.random.Generator, start: np.ndarray, heading: float, length: float, bend: float, jag: float
) -> np.ndarray:
    """Points ``(y, x)`` of a random path: ``bend`` makes it curve smoothly, ``jag`` zig-zag."""
    segments = 24
    turns = np.cumsum(rng.normal(0, bend, segments)) + rng.normal(0, jag, segments)
    headings = heading + turns
    steps = (length / segments) * np.stack([np.sin(headings), np.cos(headings)], axis=1)
    return np.vstack([start, start + np.cumsum(steps, axis=0)])


def _polyline_distance(
    y: np.ndarray, x: np.ndarray, points: np.ndarray, margin: float
) -> tuple[np.ndarray, np.ndarray]:
    """Distance of each pixel to a polyline and the arc length of its nearest point.

    Only pixels within ``margin`` of the polyline's bounding box are computed (the rest get
    infinity), which keeps long thin defects cheap.
    """
    distance = np.full(y.shape, np.inf, dtype=np.float32)
    arc = np.zeros(y.shape, dtype=np.float32)
    low = np.floor(points.min(axis=0) - margin).astype(int).clip(0, None)
    high = np.ceil(points.max(axis=0) + margin + 1).astype(int)
    box = (slice(low[0], high[0]), slice(low[1], high[1]))
    py, px = y[box], x[box]
    if py.size == 0:
        return distance, arc
    best = np.full(py.shape, np.inf, dtype=np.float32)
    best_arc = np.zeros(py.shape, dtype=np.float32)
    lengths = np.hypot(*np.diff(points, axis=0).T)
    offsets = np.concatenate([[0.0], np.cumsum(lengths)])
    for (ay, ax), (by, bx), seg, offset in zip(points[:-1], points[1:], lengths, offsets, strict=False):
        t = np.clip(((py - ay) * (by - ay) + (px - ax) * (bx - ax)) / max(seg**2, 1e-6), 0, 1)
        d = np.hypot(py - ay - t * (by - ay), px - ax - t * (bx - ax))
        closer = d < best
        best = np.where(closer, d, best)
        best_arc = np.where(closer, offset + t * seg, best_arc)
    distance[box], arc[box] = best, best_arc
    return distance, arc


def _line_coverage(distance: np.ndarray, half_width: float) -> np.ndarray:
    """Anti-aliased coverage of a stroke of the given half width."""
    return np.clip(half_width - distance + 0.5, 0, 1)


def _pick(rng: np.random.Generator, allowed: np.ndarray) -> tuple[float, float]:
    """A random pixel ``(y, x)`` where ``allowed`` is true, jittered within the pixel."""
    flat = rng.choice(np.flatnonzero(allowed))
    cy, cx = np.unravel_index(flat, allowed.shape)
    return float(cy + rng.uniform(-0.5, 0.5)), float(cx + rng.uniform(-0.5, 0.5))


def _interior(scene: Scene, margin: float) -> np.ndarray:
    """Pixels of the object at least ``margin`` pixels from its outline."""
    return ndimage.distance_transform_edt(scene.support > 0.5) >= margin


# --- fabric --------------------------------------------------------------------------------------


def _fabric(rng: np.random.Generator, size: int) -> Scene:
    ss = _SUPERSAMPLE
    y, x = _grid(size, ss)
    period = max(size / 30, 3.0) * rng.uniform(0.95, 1.05)
    angle = float(np.deg2rad(rng.uniform(-3, 3)))
    c = (size - 1) / 2
    cos, sin = float(np.cos(angle)), float(np.sin(angle))
    u = ((x - c) * cos + (y - c) * sin) / period + rng.uniform(0, 3)
    v = (-(x - c) * sin + (y - c) * cos) / period + rng.uniform(0, 3)
    iu, iv = np.floor(u), np.floor(v)
    sin_u, sin_v = np.sin(np.pi * (u - iu)), np.sin(np.pi * (v - iv))
    iu, iv = iu.astype(np.int32), iv.astype(np.int32)
    # 2/1 twill: the warp passes over two weft yarns and under one, giving diagonal ribs.
    warp_on_top = (iu + iv) % 3 != 0
    height = np.where(warp_on_top, np.sqrt(sin_u) * (0.8 + 0.2 * sin_v), np.sqrt(sin_v) * (0.8 + 0.2 * sin_u))
    # Relief shading, shadowed gaps between yarns and yarn-to-yarn thickness differences.
    shade = _relief_shading(height, period * 0.35 * ss, _light_vector(rng)) * (0.5 + 0.5 * height)
    warp_gain = (1 + 0.07 * rng.standard_normal(64)).astype(np.float32)[iu % 64]
    weft_gain = (1 + 0.07 * rng.standard_normal(64)).astype(np.float32)[iv % 64]
    # Anti-aliased at the fine grid, then the smooth fields are applied at output resolution.
    warp = _downsample(np.where(warp_on_top, shade * warp_gain, 0), ss)
    weft = _downsample(np.where(warp_on_top, 0, shade * weft_gain), ss)

    shape = (size, size)
    warp = warp * (1 + 0.09 * _fibres(rng, shape, 2.5, 0.5, axis=0))  # fibres run along each yarn
    weft = weft * (1 + 0.09 * _fibres(rng, shape, 2.5, 0.5, axis=1))
    warp_colour = np.array([0.2, 0.29, 0.46], dtype=np.float32) * rng.uniform(0.93, 1.07, size=3).astype(np.float32)
    weft_colour = np.array([0.68, 0.67, 0.63], dtype=np.float32) * np.float32(rng.uniform(0.96, 1.03))
    yo, xo = _grid(size)
    light = _illumination(rng, yo, xo, size) * (1 + 0.04 * _smooth_noise(rng, shape, size / 5))  # uneven dye
    image = warp[..., None] * warp_colour + weft[..., None] * weft_colour
    image = np.clip(image * light[..., None], 0.03, 0.96).astype(np.float32)
    return Scene(
        image=image,
        noise=_sensor_noise(rng, image),
        light=light.astype(np.float32),
        support=np.ones(shape, dtype=np.float32),
        background=None,
        scale=period,
        angle=angle,
    )


def _relief_shading(height: np.ndarray, relief: float, light: np.ndarray) -> np.ndarray:
    """Lambert shading of a height field (heights times ``relief`` pixels), 1 on flat ground."""
    gy, gx = np.gradient(height * relief)
    norm = np.sqrt(gx**2 + gy**2 + 1)
    cosine = (-gy * light[0] - gx * light[1] + light[2]) / norm
    return 0.35 + 0.65 * np.clip(cosine, 0, 1) / light[2]


def _fabric_hole(scene: Scene, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    size, img = scene.size, scene.image
    y, x = _grid(size)
    radius = size * rng.uniform(0.05, 0.13)
    rn = _blob(y, x, _pick(rng, _border_free(size, 0.15)), radius, rng, rough=0.25)
    rn = rn + (1.2 / radius) * _smooth_noise(rng, rn.shape, 1.5)  # torn, ragged edge
    inside = np.clip((1 - rn) * radius + 0.5, 0, 1)
    # Frayed rim: torn yarn ends, lighter and fuzzy, fading out from the hole's edge.
    rim = np.clip(1 - (rn - 1) * radius / max(size * 0.014, 1.0), 0, 1) * (1 - inside)
    fuzz = np.clip(0.5 + 0.5 * _fibres(rng, rn.shape, 1.5, 0.4, axis=int(rng.integers(2))), 0, 1)
    fray_colour = 0.3 * img + 0.6 * np.array([0.78, 0.78, 0.8]) * scene.light[..., None]
    # Through the hole: the dark table underneath, darkest right under the cloth's edge.
    depth = np.clip((1 - rn) * radius / 4, 0, 1)
    backing = (0.04 + 0.04 * depth + 0.01 * _smooth_noise(rng, rn.shape, 6))[..., None] * np.array([1.0, 1.0, 1.1])
    rim_alpha = (rim * (0.45 + 0.45 * fuzz))[..., None]
    out = img * (1 - rim_alpha) + fray_colour * rim_alpha
    out = out * (1 - inside[..., None]) + backing * inside[..., None]
    return out, np.maximum(inside, rim)


def _fabric_stain(scene: Scene, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    size, img = scene.size, scene.image
    y, x = _grid(size)
    radius = size * rng.uniform(0.07, 0.15)
    rn = _blob(y, x, _pick(rng, _border_free(size, 0.12)), radius, rng, rough=0.25)
    blotch = np.clip((1.1 - rn) * 2.5, 0, 1) * (0.85 + 0.15 * _smooth_noise(rng, rn.shape, radius / 2))
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
    size, img = scene.size, scene.image
    y, x = _grid(size)
    start = np.array(_pick(rng, _border_free(size, 0.1)))
    path = _curve(rng, start, rng.uniform(0, 2 * np.pi), size * rng.uniform(0.35, 0.8), 0.12, 0.02)
    half = max(scene.scale * 0.36, 1.0)
    distance, arc = _polyline_distance(y, x, path, half + 3)
    cover = _line_coverage(distance, half)
    # Round yarn: lit in the middle, darker at its sides, with a twist pattern along it.
    across = np.clip(distance / half, 0, 1)
    twist = 0.85 + 0.15 * np.sin(2 * np.pi * arc / (1.6 * half) + 2.5 * across)
    colours = ([0.52, 0.16, 0.14], [0.1, 0.13, 0.24], [0.86, 0.85, 0.8], [0.7, 0.58, 0.25])
    colour = np.array(colours[rng.integers(len(colours))])
    yarn = colour * ((0.5 + 0.5 * np.sqrt(1 - across**2)) * twist * scene.light)[..., None]
    # A faint shadow on the cloth, offset away from the light.
    shadow_distance, _ = _polyline_distance(y, x, path + max(0.006 * size, 0.7), half + 4)
    shadow = 0.4 * np.clip((half + 1.0 - shadow_distance) / 1.5, 0, 1) * (1 - cover)
    out = img * (1 - shadow[..., None])
    out = out * (1 - cover[..., None]) + yarn * cover[..., None]
    return out, np.maximum(cover, shadow)


def _fabric_scratch(scene: Scene, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    size, img = scene.size, scene.image
    y, x = _grid(size)
    start = np.array(_pick(rng, _border_free(size, 0.1)))
    path = _curve(rng, start, rng.uniform(0, 2 * np.pi), size * rng.uniform(0.45, 0.9), 0.03, 0.0)
    half = size * rng.uniform(0.007, 0.012) + 0.4
    distance, _ = _polyline_distance(y, x, path, half + 2)
    cover = _line_coverage(distance, half)
    # Abraded fibres: lighter and greyer, uneven along the line.
    fuzz = np.clip(0.8 + 0.2 * _smooth_noise(rng, cover.shape, 3), 0.5, 1)
    worn = 0.25 * img + 0.7 * np.array([0.7, 0.71, 0.74]) * scene.light[..., None]
    alpha = (rng.uniform(0.65, 0.95) * cover * fuzz)[..., None]
    return img + alpha * (worn - img), cover


def _border_free(size: int, fraction: float) -> np.ndarray:
    """Pixels at least ``fraction`` of the image size away from its border."""
    inner = np.zeros((size, size), dtype=bool)
    margin = int(round(size * fraction))
    inner[margin : size - margin, margin : size - margin] = True
    return inner


# --- pill ----------------------------------------------------------------------------------------


def _pill(rng: np.random.Generator, size: int) -> Scene:
    c = (size - 1) / 2
    cy, cx = (c + rng.normal(0, 0.015 * size, size=2)).tolist()
    angle = float(np.deg2rad(np.clip(rng.normal(0, 3), -6, 6)))
    half_length = 0.2 * size * rng.uniform(0.98, 1.02)
    radius = 0.135 * size * rng.uniform(0.98, 1.02)
    light_dir = _light_vector(rng)
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
    speckle = np.clip((_smooth_noise(rng, shape, 1.2) - 2.6) * 1.2, 0, 1)[..., None]
    base = np.array([0.9, 0.88, 0.83], dtype=np.float32) * np.float32(rng.uniform(0.96, 1.02))
    albedo = base * (1 - 0.5 * speckle) + np.array([0.72, 0.4, 0.33], dtype=np.float32) * 0.5 * speckle
    albedo *= (1 + 0.02 * _smooth_noise(rng, shape, size / 8))[..., None]
    yo, xo = _grid(size)
    light = _illumination(rng, yo, xo, size)
    tray, cast = _tray(rng, size, cover, light_dir)
    image = tray * (1 - 0.6 * cast) * (1 - cover[..., None]) + albedo * diffuse[..., None] + 0.18 * gloss[..., None]
    image = np.clip(image * light[..., None], 0.03, 0.96).astype(np.float32)
    # Where a piece breaks off, the tray shows, less shadowed than under the whole tablet.
    background = np.clip(tray * (1 - 0.3 * cast) * light[..., None], 0.03, 0.96)
    return Scene(
        image=image,
        noise=_sensor_noise(rng, image),
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
    ss = _SUPERSAMPLE
    y, x = _grid_box(box, ss)
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
    return _downsample(cover, ss), _downsample(diffuse, ss), _downsample(cover * specular, ss)


def _tray(rng: np.random.Generator, size: int, cover: np.ndarray, light: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A dark matte tray with fine grain (``HxWx3``) and the tablet's soft cast shadow (``HxWx1``)."""
    shape = (size, size)
    grain = 1 + 0.06 * _smooth_noise(rng, shape, 1.5) + 0.05 * _smooth_noise(rng, shape, size / 4)
    grey = np.array([0.16, 0.16, 0.17], dtype=np.float32) * np.float32(rng.uniform(0.85, 1.15))
    offset = (-light[0] / light[2] * 0.06 * size, -light[1] / light[2] * 0.06 * size)
    cast = ndimage.gaussian_filter(ndimage.shift(cover, offset, order=1), 0.02 * size)
    return grey * grain[..., None], cast[..., None]


def _pill_crack(scene: Scene, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    size, img = scene.size, scene.image
    y, x = _grid(size)
    # Run roughly along the tablet through a random point near its middle, so it stays on it.
    heading = scene.angle + rng.uniform(-0.4, 0.4) + np.pi * rng.integers(2)
    length = size * rng.uniform(0.3, 0.5)
    ys, xs = np.nonzero(scene.support > 0.5)
    middle = np.array([ys.mean(), xs.mean()]) + rng.normal(0, [0.3 * scene.scale, 0.1 * size])
    start = middle - 0.5 * length * np.array([np.sin(heading), np.cos(heading)])
    main = _curve(rng, start, heading, length, 0.08, 0.35)
    paths = [main]
    for _ in range(rng.integers(1, 4)):
        fork = main[rng.integers(4, len(main) - 4)]
        side = heading + rng.choice([-1, 1]) * rng.uniform(0.5, 1.1)
        paths.append(_curve(rng, fork, side, size * rng.uniform(0.08, 0.18), 0.05, 0.35))
    # The crevice opens and closes along its length.
    core_half = (size * 0.0045 + 0.4) * (0.75 + 0.35 * np.clip(_smooth_noise(rng, y.shape, size / 12), -1, 1))
    halo_half = core_half + max(size * 0.007, 0.8)
    distance = np.min([_polyline_distance(y, x, p, size * 0.02 + 3)[0] for p in paths], axis=0)
    core = _line_coverage(distance, core_half) * scene.support
    halo = _line_coverage(distance, halo_half) * scene.support
    # A dark crevice whose chipped edges catch less light than the intact surface.
    out = img * (1 - 0.16 * halo - 0.4 * core)[..., None]
    return out, np.maximum(core, 0.6 * halo)


def _pill_missing(scene: Scene, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    size, img = scene.size, scene.image
    y, x = _grid(size)
    edge = (scene.support > 0.3) & (scene.support < 0.7)
    radius = size * rng.uniform(0.07, 0.14)
    centre = _pick(rng, edge)
    rn = _blob(y, x, centre, radius, rng, rough=0.2)
    rn = rn + (0.8 / radius) * _smooth_noise(rng, rn.shape, 2)  # a broken edge is not smooth
    chunk = np.clip((1 - rn) * radius + 0.5, 0, 1)
    removed = chunk * scene.support
    # The fracture face left behind: a rough band along the break, shaded by which way it faces.
    band_width = max(size * 0.02, 1.0)
    band = np.clip(1 - (rn - 1) * radius / band_width, 0, 1) * (1 - chunk) * scene.support
    dy, dx = centre[0] - y, centre[1] - x
    facing = (dy * -0.4 + dx * -0.35) / (np.hypot(dy, dx) + 1e-3)  # faces the light from the upper left?
    rough = 0.85 + 0.1 * _smooth_noise(rng, rn.shape, 1.5)
    fracture = img.mean(axis=2, keepdims=True) * (rough * (0.62 + 0.3 * facing))[..., None]
    out = img * (1 - removed[..., None]) + scene.background * removed[..., None]
    out = out + (0.9 * band)[..., None] * (fracture * np.array([0.98, 0.97, 0.95]) - out)
    # Weight by the chunk alone so that the tablet's anti-aliased fringe goes with it.
    return out, np.maximum(chunk * (scene.support > 0.02), band)


def _pill_contamination(scene: Scene, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    size, img = scene.size, scene.image
    y, x = _grid(size)
    radius = size * rng.uniform(0.05, 0.11)
    rn = _blob(y, x, _pick(rng, _interior(scene, scene.scale * 0.35)), radius, rng, rough=0.3)
    rn = rn + (0.6 / radius) * _smooth_noise(rng, rn.shape, 2)
    cover = np.clip((1 - rn) * radius + 0.5, 0, 1) * scene.support
    # A slightly raised, textured deposit shaded by the same light as the tablet.
    bump = np.clip(1 - rn, 0, 1) ** 0.5
    shade = _relief_shading(bump, radius * 0.3, np.array([-0.4, -0.35, 1.0]) / np.linalg.norm([-0.4, -0.35, 1.0]))
    texture = 1 + 0.2 * _smooth_noise(rng, rn.shape, max(radius / 4, 1.5))
    colours = ([0.3, 0.2, 0.12], [0.13, 0.13, 0.14], [0.38, 0.42, 0.26], [0.55, 0.42, 0.3])
    colour = np.array(colours[rng.integers(len(colours))])
    deposit = colour * (shade * texture * scene.light)[..., None]
    alpha = (cover * rng.uniform(0.8, 0.95) * np.clip((1 - rn) * 3 + 0.3, 0, 1))[..., None]
    return img + alpha * (deposit - img), cover


def _pill_color(scene: Scene, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    size, img = scene.size, scene.image
    y, x = _grid(size)
    radius = size * rng.uniform(0.07, 0.13)
    rn = _blob(y, x, _pick(rng, _interior(scene, scene.scale * 0.3)), radius, rng, rough=0.3)
    weight = np.clip(1.15 - rn, 0, 1) ** 0.7 * (1 + 0.1 * _smooth_noise(rng, rn.shape, radius / 2))
    weight = np.clip(weight, 0, 1) * scene.support
    tints = ([1.0, 0.82, 0.5], [1.0, 0.72, 0.72], [0.82, 0.68, 0.55], [0.78, 0.84, 1.0])
    tint = np.array(tints[rng.integers(len(tints))])
    strength = rng.uniform(0.5, 0.85)
    return img * (1 - (strength * weight)[..., None] * (1 - tint)), weight


_FABRIC_DEFECTS = {
    "hole": _fabric_hole,
    "stain": _fabric_stain,
    "thread": _fabric_thread,
    "scratch": _fabric_scratch,
}
_PILL_DEFECTS = {
    "crack": _pill_crack,
    "missing": _pill_missing,
    "contamination": _pill_contamination,
    "color": _pill_color,
}
