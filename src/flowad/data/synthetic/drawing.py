"""What the synthetic renderers share: the :class:`Scene` a good rendering gives its defects, and drawing
primitives (pixel grids, supersampling, noise fields, lighting, blobs, strokes)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

SUPERSAMPLE = 2  # fine-grid factor of anti-aliased renderings


@dataclass
class Scene:
    """A good rendering plus what the defect renderers need to know about it.

    ``image`` is the clean float32 ``HxWx3`` rendering in ``[0, 1]``; ``noise`` the sensor noise
    added by :func:`flowad.data.synthetic.finish`; ``light`` the ``HxW`` illumination field; ``support`` the ``HxW``
    coverage of the inspected object (ones for textures); ``background`` what shows where the
    object is missing (None for textures); ``scale`` the pattern period or object radius in
    pixels and ``angle`` the orientation of texture or object in radians. ``span`` is the length in
    pixels that defect dimensions are fractions of; None means the image's side.
    """

    image: np.ndarray
    noise: np.ndarray
    light: np.ndarray
    support: np.ndarray
    background: np.ndarray | None
    scale: float
    angle: float
    span: float | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return self.image.shape[:2]

    @property
    def defect_span(self) -> float:
        """The length defect dimensions are fractions of: ``span``, else the image's side."""
        return self.image.shape[0] if self.span is None else self.span

    def crop(self, box: tuple[slice, slice]) -> Scene:
        """The part of the scene inside ``box``, with the same defect span (views, not copies)."""
        background = None if self.background is None else self.background[box]
        return Scene(
            image=self.image[box],
            noise=self.noise[box],
            light=self.light[box],
            support=self.support[box],
            background=background,
            scale=self.scale,
            angle=self.angle,
            span=self.defect_span,
        )


def coordinates(start: int, stop: int, supersample: int = 1) -> np.ndarray:
    """Pixel-centre coordinates of output pixels ``start:stop`` on a ``supersample``-times finer grid."""
    return (np.arange((stop - start) * supersample, dtype=np.float32) + 0.5) / supersample - 0.5 + start


def grid(shape: tuple[int, int], supersample: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates ``(y, x)`` of an ``(H, W)`` image, on a ``supersample``-times finer grid."""
    return grid_box((0, shape[0], 0, shape[1]), supersample)


def grid_box(box: tuple[int, int, int, int], supersample: int) -> tuple[np.ndarray, np.ndarray]:
    """Like :func:`grid` for the output pixels ``top:bottom, left:right`` of ``box`` only."""
    top, bottom, left, right = box
    return np.meshgrid(coordinates(top, bottom, supersample), coordinates(left, right, supersample), indexing="ij")


def downsample(array: np.ndarray, factor: int) -> np.ndarray:
    """Box-filter ``array`` (HxW or HxWxC) by an integer factor: the anti-aliasing of supersampling."""
    # Summing strided views is several times faster than reshape(...).mean(axis=(1, 3)).
    total = sum(array[i::factor, j::factor] for i in range(factor) for j in range(factor))
    return total / (factor * factor)


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Zero-mean, unit-variance random field whose blobs are about ``scale`` pixels across."""
    if scale < 3:
        field = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), scale / 2)
    else:
        # Bicubic upsampling of coarse noise: cheap, and smooth at any scale.
        coarse = rng.standard_normal((max(2, round(shape[0] * 2 / scale)), max(2, round(shape[1] * 2 / scale))))
        image = Image.fromarray(coarse.astype(np.float32))
        field = np.asarray(image.resize((shape[1], shape[0]), Image.Resampling.BICUBIC))
    return (field - field.mean()) / (field.std() + 1e-8)


def fibres(rng: np.random.Generator, shape: tuple[int, int], along: float, across: float, axis: int) -> np.ndarray:
    """Streaky unit-variance noise, long along ``axis`` (0 = vertical): the look of yarn fibres."""
    sigma = (along, across) if axis == 0 else (across, along)
    field = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma)
    return ((field - field.mean()) / (field.std() + 1e-8)).astype(np.float32)


def illumination(rng: np.random.Generator, y: np.ndarray, x: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Exposure, a linear gradient and vignetting, as an uneven ring light gives.

    ``y`` and ``x`` are pixel coordinates that broadcast to ``shape``; the vignette darkens the corners
    of any frame alike.
    """
    height, width = shape
    cy, cx = (height - 1) / 2, (width - 1) / 2
    gy, gx = rng.uniform(-0.14, 0.14, size=2).tolist()
    radius2 = ((y - cy) ** 2 + (x - cx) ** 2) / ((cy**2 + cx**2) / 2)
    light = (1 + gy * (y - cy) / height + gx * (x - cx) / width) * (1 - 0.12 * radius2)
    return (light * rng.uniform(0.92, 1.06)).astype(np.float32)


def sensor_noise(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Gaussian noise that grows a little with brightness (shot noise)."""
    return rng.standard_normal(image.shape, dtype=np.float32) * (0.005 + 0.008 * image)


def light_vector(rng: np.random.Generator) -> np.ndarray:
    """A light from the upper left with a little jitter."""
    vector = np.array([rng.uniform(-0.5, -0.3), rng.uniform(-0.45, -0.25), 1.0])  # (y, x, z)
    return vector / np.linalg.norm(vector)


def relief_shading(height: np.ndarray, relief: float, light: np.ndarray) -> np.ndarray:
    """Lambert shading of a height field (heights times ``relief`` pixels), 1 on flat ground."""
    gy, gx = np.gradient(height * relief)
    norm = np.sqrt(gx**2 + gy**2 + 1)
    cosine = (-gy * light[0] - gx * light[1] + light[2]) / norm
    return 0.35 + 0.65 * np.clip(cosine, 0, 1) / light[2]


def blob(
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


def curve(
    rng: np.random.Generator, start: np.ndarray, heading: float, length: float, bend: float, jag: float
) -> np.ndarray:
    """Points ``(y, x)`` of a random path: ``bend`` makes it curve smoothly, ``jag`` zig-zag."""
    segments = 24
    turns = np.cumsum(rng.normal(0, bend, segments)) + rng.normal(0, jag, segments)
    headings = heading + turns
    steps = (length / segments) * np.stack([np.sin(headings), np.cos(headings)], axis=1)
    return np.vstack([start, start + np.cumsum(steps, axis=0)])


def polyline_distance(y: np.ndarray, x: np.ndarray, points: np.ndarray, margin: float) -> tuple[np.ndarray, np.ndarray]:
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


def line_coverage(distance: np.ndarray, half_width: float) -> np.ndarray:
    """Anti-aliased coverage of a stroke of the given half width."""
    return np.clip(half_width - distance + 0.5, 0, 1)


def pick(rng: np.random.Generator, allowed: np.ndarray) -> tuple[float, float]:
    """A random pixel ``(y, x)`` where ``allowed`` is true, jittered within the pixel."""
    flat = rng.choice(np.flatnonzero(allowed))
    cy, cx = np.unravel_index(flat, allowed.shape)
    return float(cy + rng.uniform(-0.5, 0.5)), float(cx + rng.uniform(-0.5, 0.5))


def interior(scene: Scene, margin: float) -> np.ndarray:
    """Pixels of the object at least ``margin`` pixels from its outline."""
    return ndimage.distance_transform_edt(scene.support > 0.5) >= margin
