"""Evaluation metrics for anomaly detection: AUROC, AUPRO, F1 and IoU.

Everything here works on numpy arrays (or anything ``np.asarray`` accepts; torch tensors are moved to
the CPU first) and never imports torch, so metrics can be computed without a GPU stack.

Conventions:

* Higher score means "more anomalous"; a prediction at threshold ``t`` is ``score >= t``.
* Labels and masks are bool or 0/1; ``1``/``True`` marks an anomaly.
* Pixel-level inputs are stacks ``(N, H, W)``; a single ``(H, W)`` image is accepted as ``N = 1``.
* All curves are computed exactly over every distinct score (ties form a single step), in
  ``O(n log n)``, rather than on a fixed threshold grid.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from flowad.errors import InputError

__all__ = [
    "aupro",
    "auroc",
    "f1_max",
    "f1_score",
    "image_auroc",
    "iou",
    "oracle_iou",
    "pixel_auroc",
    # the building blocks of the curves, which flowad.report draws
    "REGION_STRUCTURE",
    "fpr_cutoff",
    "group_ends",
    "pro_curve_from_regions",
]

# 8-connectivity inside one image, none across images: defect regions that touch diagonally are one
# region, and labelling the whole (N, H, W) stack at once gives ids that are unique over the set.
REGION_STRUCTURE = np.zeros((3, 3, 3), dtype=bool)
REGION_STRUCTURE[1] = True


# --------------------------------------------------------------------------------------------------
# Input validation
# --------------------------------------------------------------------------------------------------


def _to_numpy(x: Any) -> np.ndarray:
    """Turn an array-like (including a torch tensor, without importing torch) into a numpy array."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()
    return np.asarray(x)


def _as_scores(x: Any, name: str) -> np.ndarray:
    """Numeric, finite, non-empty scores; floats keep their precision, others become float64."""
    arr = _to_numpy(x)
    if arr.dtype.kind not in "biuf":
        raise InputError(f"{name} has dtype {arr.dtype}; expected real numbers")
    if arr.size == 0:
        raise InputError(f"{name} is empty; expected at least one value")
    if arr.dtype.kind != "f":
        arr = arr.astype(np.float64)
    elif arr.dtype.itemsize < 4:
        arr = arr.astype(np.float32)  # lossless, and float16 sorting is slow
    finite = np.isfinite(arr)
    if not finite.all():
        num_nan = int(np.isnan(arr).sum())
        num_inf = int(arr.size - finite.sum()) - num_nan
        raise InputError(
            f"{name} contains {num_nan} NaN and {num_inf} infinite values out of {arr.size}; expected finite numbers"
        )
    return arr


def _as_binary(x: Any, name: str) -> np.ndarray:
    """Bool array from bool or 0/1 input; anything else (e.g. 0/255 masks) is refused."""
    arr = _to_numpy(x)
    if arr.dtype == bool:
        return arr
    if arr.dtype.kind not in "iuf":
        raise InputError(f"{name} has dtype {arr.dtype}; expected bool or 0/1 values")
    bad = (arr != 0) & (arr != 1)  # NaN counts as bad too
    if bad.any():
        examples = np.unique(arr[bad])[:5].tolist()
        raise InputError(
            f"{name} has {int(bad.sum())} values that are not 0 or 1 (e.g. {examples}); expected bool or 0/1 labels"
        )
    return arr == 1


def _check_same_shape(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise InputError(f"{name_a} has shape {a.shape} but {name_b} has shape {b.shape}; expected equal")


def _as_stack(arr: np.ndarray, name: str) -> np.ndarray:
    """View a (H, W) image as a (1, H, W) stack; refuse any other rank than 2 or 3."""
    if arr.ndim == 2:
        return arr[None]
    if arr.ndim != 3:
        raise InputError(f"{name} has shape {arr.shape}; expected (N, H, W) or (H, W)")
    return arr


def _score_inputs(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    s = _as_scores(scores, "scores")
    y = _as_binary(labels, "labels")
    _check_same_shape(s, y, "scores", "labels")
    return s.ravel(), y.ravel()


def _pixel_inputs(maps: Any, masks: Any, masks_name: str = "masks") -> tuple[np.ndarray, np.ndarray]:
    m = _as_scores(maps, "maps")
    g = _as_binary(masks, masks_name)
    _check_same_shape(m, g, "maps", masks_name)
    return _as_stack(m, "maps"), _as_stack(g, masks_name)


def _binary_pair(pred: Any, labels: Any, name_a: str, name_b: str) -> tuple[np.ndarray, np.ndarray]:
    p = _as_binary(pred, name_a)
    y = _as_binary(labels, name_b)
    _check_same_shape(p, y, name_a, name_b)
    return p, y


# --------------------------------------------------------------------------------------------------
# AUROC
# --------------------------------------------------------------------------------------------------


def _auroc_core(scores: np.ndarray, labels: np.ndarray, labels_name: str = "labels") -> float:
    """Mann-Whitney AUC: P(s_pos > s_neg) + 1/2 P(s_pos == s_neg), counted exactly."""
    num_pos = int(labels.sum())
    num_neg = labels.size - num_pos
    if num_pos == 0 or num_neg == 0:
        missing = "positive (label 1)" if num_pos == 0 else "negative (label 0)"
        raise InputError(
            f"AUROC is undefined with only one class: {labels_name} have {num_pos} positives and {num_neg} "
            f"negatives; expected at least one {missing} sample"
        )
    # Sorting only the negatives and binary-searching the positives is faster than a full argsort.
    neg = np.sort(scores[~labels])
    pos = scores[labels]
    below = np.searchsorted(neg, pos, side="left")  # negatives strictly below each positive
    below_or_tied = np.searchsorted(neg, pos, side="right")
    # below + below_or_tied = 2 * (wins + ties / 2): an exact integer count.
    doubled = int(below.sum(dtype=np.int64)) + int(below_or_tied.sum(dtype=np.int64))
    return doubled / (2.0 * num_pos * num_neg)


def auroc(scores: Any, labels: Any) -> float:
    """Exact area under the ROC curve; tied scores of a positive and a negative count 1/2.

    ``scores`` and ``labels`` must have the same shape (any rank; they are flattened). Raises
    :class:`InputError` when only one class is present, since the ROC curve is then undefined.
    """
    s, y = _score_inputs(scores, labels)
    return _auroc_core(s, y)


def image_auroc(scores: Any, labels: Any) -> float:
    """AUROC of per-image scores against per-image labels, both 1-D of length N."""
    s = _as_scores(scores, "scores")
    if s.ndim != 1:
        raise InputError(f"scores has shape {s.shape}; expected one score per image, shape (N,)")
    return auroc(s, labels)


def pixel_auroc(maps: Any, masks: Any) -> float:
    """AUROC pooled over every pixel of ``maps`` (N, H, W) against ground-truth ``masks`` (N, H, W)."""
    m, g = _pixel_inputs(maps, masks)
    return _auroc_core(m.ravel(), g.ravel(), "masks")


# --------------------------------------------------------------------------------------------------
# AUPRO
# --------------------------------------------------------------------------------------------------


def group_ends(sorted_values: np.ndarray) -> np.ndarray:
    """Index of the last element of each run of equal values in a sorted array."""
    change = np.flatnonzero(sorted_values[1:] != sorted_values[:-1])
    return np.append(change, sorted_values.size - 1)


def fpr_cutoff(normal_scores: np.ndarray, fpr_limit: float) -> float:
    """A score low enough that thresholding there already gives FPR >= fpr_limit.

    Pixels below it never influence the curve up to ``fpr_limit``, so they need not be sorted.
    """
    n = normal_scores.size
    # m normal pixels at or above the cutoff; m / n > fpr_limit unless m == n (then FPR is 1).
    m = min(n, int(np.floor(fpr_limit * n)) + 1)
    return float(np.partition(normal_scores, n - m)[n - m])


def pro_curve_from_regions(
    scores: np.ndarray, region_ids: np.ndarray, region_sizes: np.ndarray, num_normal: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact (FPR, PRO) points for every distinct threshold, highest threshold first, from (0, 0)."""
    order = np.argsort(scores)[::-1]
    s = scores[order]
    ids = region_ids[order]
    num_regions = region_sizes.size - 1
    # Each defect pixel adds 1 / (regions * its region's size) to PRO; each normal pixel 1 / n to FPR.
    weight = 1.0 / (num_regions * region_sizes.astype(np.float64))
    weight[0] = 0.0
    ends = group_ends(s)
    fpr = np.cumsum(ids == 0)[ends] / num_normal
    pro = np.cumsum(weight[ids])[ends]
    return np.concatenate([[0.0], fpr]), np.concatenate([[0.0], pro])


def _area_up_to(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Trapezoid area under y(x) for x in [0, limit]; x is non-decreasing, starts at 0, ends >= limit."""
    j = int(np.searchsorted(x, limit, side="left"))  # first point with x >= limit
    xs, ys = x[:j], y[:j]
    area = float(np.sum(np.diff(xs) * (ys[1:] + ys[:-1]) / 2.0))
    # Linear interpolation for the partial segment ending exactly at the limit.
    frac = (limit - x[j - 1]) / (x[j] - x[j - 1])
    y_limit = y[j - 1] + frac * (y[j] - y[j - 1])
    return area + (limit - x[j - 1]) * (y[j - 1] + y_limit) / 2.0


def aupro(maps: Any, masks: Any, fpr_limit: float = 0.3) -> float:
    """Normalised area under the per-region-overlap (PRO) curve up to ``fpr_limit``.

    Regions are the 8-connected components of each ground-truth mask (never spanning two images).
    At threshold ``t``: FPR is the fraction of normal pixels (pooled over all images) with map >= t,
    PRO is the mean over all regions of the fraction of the region's pixels with map >= t. The curve
    starts at (0, 0), steps through every distinct map value (ties as one step), is integrated with
    the trapezoid rule up to ``fpr_limit`` (interpolating the point at the limit) and divided by
    ``fpr_limit``, so a perfect map scores 1.0.
    """
    if not 0.0 < fpr_limit <= 1.0:
        raise InputError(f"fpr_limit is {fpr_limit}; expected a value in (0, 1]")
    m, g = _pixel_inputs(maps, masks)
    regions, num_regions = ndimage.label(g, structure=REGION_STRUCTURE)
    if num_regions == 0:
        raise InputError("masks contain no anomalous pixel; AUPRO is undefined without any defect region")
    normal = ~g
    num_normal = int(normal.sum())
    if num_normal == 0:
        raise InputError("masks mark every pixel as anomalous; AUPRO needs normal pixels to measure FPR")
    region_sizes = np.bincount(regions.ravel(), minlength=num_regions + 1)
    keep = m >= fpr_cutoff(m[normal], fpr_limit)
    fpr, pro = pro_curve_from_regions(m[keep], regions[keep], region_sizes, num_normal)
    area = _area_up_to(fpr, pro, fpr_limit) / fpr_limit
    return float(np.clip(area, 0.0, 1.0))  # clip only guards against cumulative-sum rounding


# --------------------------------------------------------------------------------------------------
# F1
# --------------------------------------------------------------------------------------------------


def f1_score(pred: Any, labels: Any) -> float:
    """F1 of boolean predictions against labels (any matching shape).

    Defined as 1.0 when there is nothing to find and nothing was found (tp + fp + fn == 0).
    """
    p, y = _binary_pair(pred, labels, "pred", "labels")
    tp = int(np.sum(p & y))
    fp = int(np.sum(p & ~y))
    fn = int(np.sum(~p & y))
    if tp + fp + fn == 0:
        return 1.0
    return 2 * tp / (2 * tp + fp + fn)


def f1_max(scores: Any, labels: Any) -> tuple[float, float]:
    """Best F1 over every threshold, with prediction ``score >= threshold``.

    Returns ``(f1, threshold)`` where ``threshold`` is a score value; among thresholds with equal
    F1 the highest is returned. Raises :class:`InputError` when there are no positive labels.
    """
    s, y = _score_inputs(scores, labels)
    num_pos = int(y.sum())
    if num_pos == 0:
        raise InputError("labels contain no positive (label 1); F1 is undefined without positives")
    order = np.argsort(s)[::-1]
    s_desc = s[order]
    ends = group_ends(s_desc)
    tp = np.cumsum(y[order])[ends]
    predicted = ends + 1
    # 2tp / (2tp + fp + fn) with fp + tp = predicted and fn = num_pos - tp.
    f1 = 2.0 * tp / (predicted + num_pos)
    best = int(np.argmax(f1))
    return float(f1[best]), float(s_desc[ends[best]])


# --------------------------------------------------------------------------------------------------
# IoU
# --------------------------------------------------------------------------------------------------


def _ratio(inter: np.ndarray, union: np.ndarray) -> np.ndarray:
    """Elementwise inter / union, an empty union counting as a perfect 1.0."""
    safe = np.where(union == 0, 1, union)
    return np.where(union == 0, 1.0, inter / safe)


def iou(pred_masks: Any, gt_masks: Any) -> float:
    """Mean over images of |P ∩ G| / |P ∪ G|; an image with both masks empty counts as 1.0."""
    p, g = _binary_pair(pred_masks, gt_masks, "pred_masks", "gt_masks")
    p, g = _as_stack(p, "pred_masks"), _as_stack(g, "gt_masks")
    inter = np.sum(p & g, axis=(1, 2))
    union = np.sum(p | g, axis=(1, 2))
    return float(_ratio(inter, union).mean())


ORACLE_CANDIDATES = 65536
"""Default cap on the thresholds :func:`oracle_iou` tries; below it the oracle is exact."""


def _candidate_thresholds(sorted_values: np.ndarray, num_thresholds: int) -> np.ndarray:
    """All distinct values if there are few, else ``num_thresholds`` evenly spaced order statistics."""
    if sorted_values.size == 0:
        return sorted_values
    distinct = sorted_values[group_ends(sorted_values)]
    if distinct.size <= num_thresholds:
        return distinct
    # Order statistics (not interpolated quantiles) so every candidate is an actual map value.
    idx = np.round(np.linspace(0, sorted_values.size - 1, num_thresholds)).astype(np.int64)
    return np.unique(sorted_values[idx])


def _image_ious(values: np.ndarray, defect: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """IoU of ``values >= t`` against ``defect`` (one image, flattened) at each threshold ``t``."""
    # Counts of pixels >= t by binary search in the sorted pixels, and in the sorted defect pixels.
    predicted = values.size - np.searchsorted(np.sort(values), thresholds)
    num_gt = int(defect.sum())
    inter = num_gt - np.searchsorted(np.sort(values[defect]), thresholds)
    return _ratio(inter, predicted + num_gt - inter)


def oracle_iou(maps: Any, gt_masks: Any, num_thresholds: int = ORACLE_CANDIDATES) -> tuple[float, float]:
    """Best mean IoU of ``maps >= t`` against ``gt_masks`` over thresholds ``t`` among the map's values;
    returns ``(iou, t)``.

    Only the values of defect pixels (and the map's maximum) can be best. Lowering ``t`` past a value
    that only non-defect pixels hold adds those pixels to the predictions and nothing to the
    intersections, so no image's IoU (nor the mean) rises: every ``t`` is matched or beaten by the
    lowest defect value at or above it. Above every defect value all intersections are empty, and
    the map's maximum predicts the least, which only images without defects notice (an empty
    prediction there scores 1.0).

    The candidates are therefore every distinct defect-pixel value, which makes the result the exact
    maximum over every map value, when there are at most ``num_thresholds`` of them; otherwise
    ``num_thresholds`` order statistics of the defect pixels' values, always including their
    minimum and maximum. Among equal means the lowest candidate is returned. Memory grows with one
    image and the candidates, not their product.

    This is an oracle: it picks the threshold with the test labels, so it is optimistic and must be
    reported only beside the IoU at a threshold calibrated without test labels.
    """
    if int(num_thresholds) != num_thresholds or num_thresholds < 1:
        raise InputError(f"num_thresholds is {num_thresholds}; expected a positive integer")
    m, g = _pixel_inputs(maps, gt_masks, "gt_masks")
    n = m.shape[0]
    flat, defect = m.reshape(n, -1), g.reshape(n, -1)
    candidates = _candidate_thresholds(np.sort(flat[defect]), int(num_thresholds))
    thresholds = np.unique(np.append(candidates, flat.max()))
    total = np.zeros(thresholds.size)
    for values, gt in zip(flat, defect, strict=True):
        total += _image_ious(values, gt, thresholds)
    mean = total / n
    best = int(np.argmax(mean))
    return float(mean[best]), float(thresholds[best])
