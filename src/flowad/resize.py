"""Bilinear resizing in numpy, the same as torch's ``F.interpolate(mode="bilinear", align_corners=False)``.

Deployed engines (onnxruntime, OpenVINO) give numpy arrays: the log NFA and the anomaly maps are resized
here without torch, to the values torch gives on the CPU. Beyond the formula, the rounding follows ATen's
x86 kernels, which the compiler builds with fused multiply-adds: the source coordinate
``scale * (i + 0.5) - 0.5`` and each two-tap mean ``x0 * w0 + x1 * w1`` are rounded once, not twice.
At large sizes a float32 coordinate rounded twice moves by a unit in the last place (1e-4 near 2048), so
without this a float32 map would differ from torch's by up to ~1e-4 and its thresholded mask by a pixel.
"""

from __future__ import annotations

import functools

import numpy as np

from flowad.errors import InputError


def resize_bilinear(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize the last two axes of ``maps`` (..., h, w) to ``size`` = (H, W), bilinearly, corners not aligned.

    Output pixel i samples the input at ``(i + 0.5) * h / H - 0.5`` (clamped below at 0, as torch does)
    between its two neighbours, for up- and downscaling alike (no antialiasing). float32 stays float32 and is
    computed in float32 as torch does: equal to torch's CPU result when H + W > 128 (its generic kernel; smaller
    outputs take another kernel, a unit in the last place away). Any other dtype is computed and returned in
    float64, within a few units in the last place of torch's.
    """
    source = maps = np.asarray(maps)
    if maps.dtype != np.float32:
        maps = maps.astype(np.float64)
    if maps.ndim < 2 or 0 in maps.shape[-2:]:
        raise InputError(f"maps is {maps.shape}; expected (..., h, w) with h, w >= 1")
    if len(size) != 2 or int(size[0]) < 1 or int(size[1]) < 1:
        raise InputError(f"size is {size}; expected (height, width) of positive integers")
    height, width = int(size[0]), int(size[1])
    # along the width first, then the height: torch's order of operations for each output pixel
    if width != maps.shape[-1]:
        low, high, w_low, w_high = _taps(maps.shape[-1], width, maps.dtype.name)
        maps = _mean(maps[..., low], w_low, maps[..., high], w_high)
    if height != maps.shape[-2]:
        low, high, w_low, w_high = _taps(maps.shape[-2], height, maps.dtype.name)
        maps = _mean(maps[..., low, :], w_low[:, None], maps[..., high, :], w_high[:, None])
    return maps.copy() if maps is source else maps  # a new array, as torch gives, even at the same size


def _mean(x0: np.ndarray, w0: np.ndarray, x1: np.ndarray, w1: np.ndarray) -> np.ndarray:
    """x0 * w0 + x1 * w1 rounded as ATen's fma(x0, w0, x1 * w1)."""
    if x0.dtype == np.float32:
        # float32 products are exact in float64: one rounding to float32 at the end, as the fma
        return (x0.astype(np.float64) * w0 + (x1 * w1).astype(np.float64)).astype(np.float32)
    return x0 * w0 + x1 * w1  # float64: no cheap exact fma; a unit in the last place at most


@functools.lru_cache(maxsize=64)
def _taps(n_in: int, n_out: int, dtype: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each output position's two input indices and their weights, as ATen's compute_source_index_and_lambda."""
    t = np.dtype(dtype).type
    scale = t(n_in) / t(n_out)
    src = np.maximum(_fma_source(scale, n_out), t(0))
    # ATen floors in float32 (floorf) even for float64 maps
    low = np.minimum(np.floor(src.astype(np.float32)).astype(np.int64), n_in - 1)
    w_high = np.clip(src - low.astype(dtype), t(0), t(1))
    high = np.where(low < n_in - 1, low + 1, low)
    taps = (low, high, t(1) - w_high, w_high)
    for a in taps:
        a.flags.writeable = False  # shared by the cache
    return taps


def _fma_source(scale: np.floating, n_out: int) -> np.ndarray:
    """scale * (i + 0.5) - 0.5 for i < n_out, rounded once to scale's type (a fused multiply-add)."""
    b = np.arange(n_out) + 0.5
    if isinstance(scale, np.float32):
        return (np.float64(scale) * b - 0.5).astype(np.float32)  # exact in float64, then one rounding
    # float64: Dekker's exact product p + err (b has < 27 bits); p - 0.5 is exact for p >= 0.5, and a
    # smaller p gives a negative coordinate, clamped to 0 either way
    p = scale * b
    split = 134217729.0 * scale  # 2^27 + 1
    hi = split - (split - scale)
    err = (hi * b - p) + (scale - hi) * b
    return (p - 0.5) + err
