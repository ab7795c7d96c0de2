"""The 2/1 twill weave of the ``fabric`` category: warp and weft yarns, relief-shaded and anti-aliased.

The yarns are drawn on a supersampled grid a band of rows at a time, so that a large frame needs only a
band's worth of fine-grid memory and each band's arrays stay in the processor's cache.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from flowad.data.synthetic import drawing as draw
from flowad.data.synthetic.drawing import SUPERSAMPLE

_BAND_PIXELS = 1 << 16  # fine-grid pixels per band: small enough for the cache


@dataclass(frozen=True)
class Weave:
    """One cloth's random make-up: yarn period (pixels), rotation, phase, light and per-yarn thickness."""

    period: float
    angle: float
    phase: tuple[float, float]
    light: np.ndarray
    warp_gain: np.ndarray
    weft_gain: np.ndarray


def draw_weave(rng: np.random.Generator, texture_size: float) -> Weave:
    """A random weave whose period is about ``texture_size / 30`` pixels (at least 3)."""
    period = max(texture_size / 30, 3.0) * rng.uniform(0.95, 1.05)
    angle = float(np.deg2rad(rng.uniform(-3, 3)))
    phase = (rng.uniform(0, 3), rng.uniform(0, 3))
    light = draw.light_vector(rng)
    # Yarn-to-yarn thickness differences, repeating every 64 yarns.
    warp_gain = (1 + 0.07 * rng.standard_normal(64)).astype(np.float32)
    weft_gain = (1 + 0.07 * rng.standard_normal(64)).astype(np.float32)
    return Weave(period, angle, phase, light, warp_gain, weft_gain)


def yarn_bands(weave: Weave, shape: tuple[int, int]) -> Iterator[tuple[slice, np.ndarray, np.ndarray]]:
    """Bands of output rows with the brightness of their warp and of their weft yarns (each zero where the
    other lies on top)."""
    height, width = shape
    rows = max(1, _BAND_PIXELS // (width * SUPERSAMPLE * SUPERSAMPLE))
    for top in range(0, height, rows):
        bottom = min(top + rows, height)
        yield (slice(top, bottom), *_band(weave, shape, top, bottom))


def _band(weave: Weave, shape: tuple[int, int], top: int, bottom: int) -> tuple[np.ndarray, np.ndarray]:
    """The yarns of output rows ``top:bottom``."""
    ss = SUPERSAMPLE
    # One fine row beyond each end of the band (inside the image) for the relief's central differences.
    first, last = max(top * ss - 1, 0), min(bottom * ss + 1, shape[0] * ss)
    relief, warp_on_top, iu, iv = _relief(*_cloth_coordinates(weave, shape, first, last))
    # Relief shading and shadowed gaps between yarns; then the band's own rows only.
    shade = draw.relief_shading(relief, weave.period * 0.35 * ss, weave.light) * (0.5 + 0.5 * relief)
    own = slice(top * ss - first, top * ss - first + (bottom - top) * ss)
    warp_on_top = warp_on_top[own]
    # Each yarn's thickness from one table: warp yarns first, then weft yarns (x & 63 is x mod 64).
    gains = np.concatenate([weave.warp_gain, weave.weft_gain])
    lit = shade[own] * np.take(gains, np.where(warp_on_top, iu[own] & 63, (iv[own] & 63) + 64))
    # Anti-aliased at the fine grid; the smooth fields are applied later at output resolution.
    return draw.downsample(np.where(warp_on_top, lit, 0), ss), draw.downsample(np.where(warp_on_top, 0, lit), ss)


def _cloth_coordinates(weave: Weave, shape: tuple[int, int], first: int, last: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions across the warp (u) and across the weft (v), in yarns, of the fine rows ``first:last``."""
    height, width = shape
    # A column and a row that broadcast: the rotation is affine, no full coordinate grids needed.
    y = draw.coordinates(0, height, SUPERSAMPLE)[first:last, None]
    x = draw.coordinates(0, width, SUPERSAMPLE)[None, :]
    cy, cx = (height - 1) / 2, (width - 1) / 2
    cos, sin = float(np.cos(weave.angle)), float(np.sin(weave.angle))
    u = ((x - cx) * cos + (y - cy) * sin) / weave.period + weave.phase[0]
    v = (-(x - cx) * sin + (y - cy) * cos) / weave.period + weave.phase[1]
    return u, v


def _relief(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Height of the yarn on top (0 in the gaps between yarns), whether it is the warp, and the yarns' numbers."""
    iu, iv = np.floor(u), np.floor(v)
    sin_u, sin_v = np.sin(np.pi * (u - iu)), np.sin(np.pi * (v - iv))
    iu, iv = iu.astype(np.int32), iv.astype(np.int32)
    # 2/1 twill: the warp passes over two weft yarns and under one, giving diagonal ribs.
    warp_on_top = (iu + iv) % 3 != 0
    # The yarn on top bulges across its width and a little along its length.
    across, along = np.where(warp_on_top, sin_u, sin_v), np.where(warp_on_top, sin_v, sin_u)
    return np.sqrt(across) * (0.8 + 0.2 * along), warp_on_top, iu, iv
