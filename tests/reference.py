"""Slow reference implementations that the tests compare flowad against, written straight from the definitions.

Each is the plainest computation of its quantity (every pair, every threshold, every Jacobian entry), with no
shortcut shared with the library's code.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from fractions import Fraction

import numpy as np
import torch
from scipy import ndimage

EIGHT_CONNECTED = np.ones((3, 3), dtype=int)

# --- metrics -------------------------------------------------------------------------------------


def auroc(scores, labels) -> float:
    """The fraction of (positive, negative) pairs in which the positive scores higher, ties counting one half."""
    scores = np.asarray(scores, dtype=float).ravel()
    labels = np.asarray(labels).ravel().astype(bool)
    pos, neg = scores[labels], scores[~labels]
    wins = 0.0
    for p in pos:
        wins += np.sum(p > neg) + 0.5 * np.sum(p == neg)
    return wins / (len(pos) * len(neg))


def f1_max(scores, labels) -> tuple[float, float]:
    """The best F1 over every distinct score as the threshold, and that threshold (the highest among equals)."""
    scores = np.asarray(scores, dtype=float)
    labels = np.asarray(labels).astype(bool)
    best, best_t = -1.0, None
    for t in sorted(set(scores.tolist()), reverse=True):
        pred = scores >= t
        tp = np.sum(pred & labels)
        fp = np.sum(pred & ~labels)
        fn = np.sum(~pred & labels)
        f1 = 2 * tp / (2 * tp + fp + fn)
        if f1 > best:  # strict: the highest threshold wins among equal F1
            best, best_t = f1, t
    return best, best_t


def regions(masks) -> list[np.ndarray]:
    """One boolean (N, H, W) array per 8-connected region, labelled image by image."""
    found = []
    for i, mask in enumerate(masks):
        labelled, count = ndimage.label(mask, structure=EIGHT_CONNECTED)
        for r in range(1, count + 1):
            region = np.zeros(masks.shape, dtype=bool)
            region[i] = labelled == r
            found.append(region)
    return found


def aupro(maps, masks, fpr_limit=0.3) -> float:
    """The area under the per-region overlap curve up to ``fpr_limit``, a threshold at every distinct map value."""
    maps = np.asarray(maps, dtype=float)
    masks = np.asarray(masks).astype(bool)
    every_region = regions(masks)
    normal = maps[~masks]
    xs, ys = [0.0], [0.0]
    for t in sorted(set(maps.ravel().tolist()), reverse=True):
        xs.append(np.mean(normal >= t))
        ys.append(np.mean([np.mean(maps[r] >= t) for r in every_region]))
    area = 0.0
    for k in range(1, len(xs)):
        x0, x1, y0, y1 = xs[k - 1], xs[k], ys[k - 1], ys[k]
        if x1 >= fpr_limit:
            y_end = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
            area += (fpr_limit - x0) * (y0 + y_end) / 2
            break
        area += (x1 - x0) * (y0 + y1) / 2
    return area / fpr_limit


def iou(pred_masks, gt_masks) -> float:
    """The mean over images of |pred & gt| / |pred | gt| on sets of pixel coordinates; 1 where both are empty."""
    values = []
    for p, g in zip(np.asarray(pred_masks), np.asarray(gt_masks), strict=True):
        ps = {tuple(ix) for ix in np.argwhere(p)}
        gs = {tuple(ix) for ix in np.argwhere(g)}
        values.append(1.0 if not ps | gs else len(ps & gs) / len(ps | gs))
    return float(np.mean(values))


def oracle_iou(maps, masks) -> tuple[float, float]:
    """The best :func:`iou` over every distinct map value as the threshold, and that threshold (the lowest)."""
    best, best_t = -1.0, None
    for t in sorted(set(maps.ravel().tolist())):
        value = iou(maps >= t, masks)
        if value > best:
            best, best_t = value, t
    return best, best_t


def iou_by_counts(pred_masks, gt_masks) -> float:
    """:func:`iou` from numpy counts of each image's pixels instead of coordinate sets: fast on large masks."""
    values = []
    for p, g in zip(np.asarray(pred_masks), np.asarray(gt_masks), strict=True):
        union = np.sum(p | g)
        values.append(1.0 if union == 0 else np.sum(p & g) / union)
    return float(np.mean(values))


def best_iou(maps, masks, thresholds) -> float:
    """The best :func:`iou_by_counts` of ``maps >= t`` over the given thresholds, each tried on its own."""
    return max(iou_by_counts(maps >= t, masks) for t in thresholds)


# --- the NFA -------------------------------------------------------------------------------------


def log10_binomial_tail(n: int, q: float, k: int) -> float:
    """log10 P[Bin(n, q) >= k], the sum taken as an exact fraction (the log via the complement when near 1)."""
    p = Fraction(q)
    tail = sum(math.comb(n, j) * p**j * (1 - p) ** (n - j) for j in range(k, n + 1))
    if tail > Fraction(1, 2):
        return math.log1p(-float(1 - tail)) / math.log(10)
    return math.log10(tail.numerator) - math.log10(tail.denominator)


# --- flows ---------------------------------------------------------------------------------------


def jacobian_matrix(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Every entry of the Jacobian of ``fn`` at ``x`` by autograd, as an (outputs, inputs) matrix."""
    jacobian = torch.autograd.functional.jacobian(lambda v: fn(v).flatten(), x)
    return jacobian.reshape(jacobian.shape[0], x.numel())


def log_abs_det_jacobian(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """log|det| of the full Jacobian of ``fn`` at ``x`` (use float64)."""
    return torch.linalg.slogdet(jacobian_matrix(fn, x))[1]


# --- CFLOW-AD ------------------------------------------------------------------------------------


def positional_encoding_2d(d: int, h: int, w: int) -> list[list[list[float]]]:
    """The 2D sine-cosine encoding value by value: channels [0, d/2) encode x, [d/2, d) encode y."""
    half = d // 2
    values = []
    for k in range(d):
        j = k % half  # index within the half
        freq = math.exp(-(j - j % 2) * math.log(10000.0) / half)
        rows = []
        for y in range(h):
            row = []
            for x in range(w):
                angle = (x if k < half else y) * freq
                row.append(math.sin(angle) if j % 2 == 0 else math.cos(angle))
            rows.append(row)
        values.append(rows)
    return values


def resize_uint8(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """flowad's bilinear resize written out pixel by pixel with exact fractions: per pass, the triangle of
    half-width max(1, scale) at each output pixel's centre (scale = in / out), its values at the input pixels'
    centres normalised to sum 1, rounded half up to 22 bits; sums rounded half up to uint8; rows, then columns."""

    def one_pass(rows: np.ndarray, out_len: int) -> np.ndarray:  # resamples axis 1 of (H, W, C)
        in_len = rows.shape[1]
        scale = Fraction(in_len, out_len)
        support = max(scale, Fraction(1))
        out = np.empty((rows.shape[0], out_len, rows.shape[2]), np.int64)
        for i in range(out_len):
            centre = (i + Fraction(1, 2)) * scale
            weights = {j: max(Fraction(0), 1 - abs(j + Fraction(1, 2) - centre) / support) for j in range(in_len)}
            total = sum(weights.values())
            fixed = {j: math.floor(w / total * 2**22 + Fraction(1, 2)) for j, w in weights.items() if w}
            sums = sum(rows[:, j].astype(np.int64) * k for j, k in fixed.items())
            out[:, i] = np.clip((sums + 2**21) >> 22, 0, 255)
        return out.astype(np.uint8)

    height, width = size
    rows_done = one_pass(np.asarray(image), width)
    return one_pass(rows_done.transpose(1, 0, 2), height).transpose(1, 0, 2)
