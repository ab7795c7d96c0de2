"""Counting in square windows around every position of a latent map, the windows cut at the border: the NFA's
window test (:mod:`flowad.nfa`) counts candidates in them."""

from __future__ import annotations

import numpy as np


def window_half(window_size: int, height: int, finest: int) -> int:
    """The half-width of a scale's window: ``window_size`` at the finest scale, halved per halving of resolution."""
    return max(int((window_size * height / finest) // 2), 1)  # w_s = window / 2^s


def window_sums(per_pixel: np.ndarray, half: int) -> tuple[np.ndarray, np.ndarray]:
    """Counts per position (B, H, W) summed over each (2 half + 1)^2 window cut at the border: (B, H, W) int64,
    and the number of window pixels inside the image: (H, W) int64. Integral images keep the counts exact."""
    integral = np.pad(per_pixel.cumsum(1).cumsum(2), ((0, 0), (1, 0), (1, 0)))
    h, w = per_pixel.shape[-2:]
    rows, cols = np.arange(h), np.arange(w)
    top, bottom = np.maximum(rows - half, 0), np.minimum(rows + half + 1, h)
    left, right = np.maximum(cols - half, 0), np.minimum(cols + half + 1, w)
    t, b, lf, r = top[:, None], bottom[:, None], left[None, :], right[None, :]
    total = integral[:, b, r] - integral[:, t, r] - integral[:, b, lf] + integral[:, t, lf]
    return total, (b - t) * (r - lf)
