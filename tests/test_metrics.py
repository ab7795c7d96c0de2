"""Tests for flowad.metrics against the slow, direct implementations of tests/reference.py and hand-worked cases."""

from __future__ import annotations

import numpy as np
import pytest
import reference
from scipy import ndimage

from flowad.errors import InputError
from flowad.metrics import (
    aupro,
    auroc,
    f1_max,
    f1_score,
    image_auroc,
    iou,
    oracle_iou,
    pixel_auroc,
)

SEEDS = [0, 1, 2, 3, 4]


# --------------------------------------------------------------------------------------------------
# Random inputs
# --------------------------------------------------------------------------------------------------


def random_scores(seed: int, n: int = 60, ties: bool = False):
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < 0.4
    labels[:2] = [True, False]  # both classes always present
    scores = rng.normal(size=n) + labels
    if ties:
        scores = np.round(scores, 1)
    return scores, labels


def random_maps(seed: int, n: int = 6, size: int = 12, ties: bool = False):
    """Blobby masks (several regions of varied size) with maps that are noisy but informative."""
    rng = np.random.default_rng(seed)
    masks = ndimage.uniform_filter(rng.random((n, size, size)), size=(1, 3, 3)) > 0.62
    masks[0, 1, 1] = True  # at least one region
    maps = rng.random((n, size, size)) + 0.5 * masks
    if ties:
        maps = np.floor(maps * 4)  # integer maps with heavy ties
    return maps, masks


# --------------------------------------------------------------------------------------------------
# AUROC
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", SEEDS)
def test_auroc_matches_pairwise_reference(seed, ties):
    scores, labels = random_scores(seed, ties=ties)
    assert auroc(scores, labels) == pytest.approx(reference.auroc(scores, labels), abs=1e-9)
    assert image_auroc(scores, labels) == pytest.approx(reference.auroc(scores, labels), abs=1e-9)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", SEEDS)
def test_pixel_auroc_matches_pairwise_reference(seed, ties):
    maps, masks = random_maps(seed, ties=ties)
    assert pixel_auroc(maps, masks) == pytest.approx(reference.auroc(maps, masks), abs=1e-9)


def test_auroc_hand_computed_cases():
    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert auroc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert auroc([0.8, 0.9, 0.1, 0.2], [0, 0, 1, 1]) == 0.0
    assert auroc([0.5, 0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1, 1]) == 0.5
    # One tied pair out of four: 3 wins + 1/2.
    assert auroc([1, 2, 2, 3], [False, False, True, True]) == pytest.approx(0.875)


def test_auroc_invariant_to_monotone_transform():
    scores, labels = random_scores(7)
    scores = np.round(scores, 3)  # spacing keeps exp/affine from merging values in floating point
    base = auroc(scores, labels)
    assert auroc(3 * scores + 1, labels) == pytest.approx(base, abs=1e-12)
    assert auroc(np.exp(scores), labels) == pytest.approx(base, abs=1e-12)
    assert auroc(-scores, labels) == pytest.approx(1 - base, abs=1e-12)


def test_auroc_accepts_bool_int_and_tensor_like_inputs():
    class FakeTensor:
        """Stands in for a torch tensor (detach().cpu() then np.asarray) without importing torch."""

        def __init__(self, data):
            self.data = np.asarray(data)

        def detach(self):
            return self

        def cpu(self):
            return self

        def __array__(self, dtype=None, copy=None):
            return self.data

    scores, labels = random_scores(3)
    expected = reference.auroc(scores, labels)
    assert auroc(FakeTensor(scores), FakeTensor(labels.astype(np.int64))) == pytest.approx(expected)
    assert auroc(scores.astype(np.float32), labels.astype(float)) == pytest.approx(expected, abs=1e-6)
    assert auroc([0, 1, 1, 2], [False, False, True, True]) == pytest.approx(0.875)


@pytest.mark.parametrize(
    ("labels", "missing"),
    [([0, 0, 0], "positive"), ([1, 1, 1], "negative")],
)
def test_auroc_single_class_raises(labels, missing):
    with pytest.raises(InputError, match=f"undefined with only one class.*{missing}"):
        auroc([0.1, 0.2, 0.3], labels)


def test_auroc_input_errors():
    with pytest.raises(InputError, match="empty"):
        auroc([], [])
    with pytest.raises(InputError, match=r"scores has shape \(3,\) but labels has shape \(4,\)"):
        auroc([0.1, 0.2, 0.3], [0, 1, 0, 1])
    with pytest.raises(InputError, match="1 NaN and 0 infinite"):
        auroc([0.1, np.nan, 0.3], [0, 1, 1])
    with pytest.raises(InputError, match="0 NaN and 2 infinite"):
        auroc([np.inf, -np.inf, 0.3], [0, 1, 1])
    with pytest.raises(InputError, match="not 0 or 1"):
        auroc([0.1, 0.2, 0.3], [0, 2, 1])
    with pytest.raises(InputError, match="dtype"):
        auroc(["a", "b"], [0, 1])
    with pytest.raises(InputError, match=r"expected one score per image, shape \(N,\)"):
        image_auroc([[0.1, 0.2]], [[0, 1]])


def test_pixel_auroc_errors_name_masks():
    maps, masks = random_maps(0)
    with pytest.raises(InputError, match="maps has shape"):
        pixel_auroc(maps, masks[:, :-1])
    as_255 = masks.astype(np.uint8)
    as_255[0, 0, 0] = 255
    with pytest.raises(InputError, match=r"masks has 1 values that are not 0 or 1 \(e.g. \[255\]\)"):
        pixel_auroc(maps, as_255)
    with pytest.raises(InputError, match="only one class: masks have 0 positives"):
        pixel_auroc(maps, np.zeros_like(masks))


# --------------------------------------------------------------------------------------------------
# AUPRO
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fpr_limit", [0.3, 0.05, 1.0])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", SEEDS)
def test_aupro_matches_threshold_loop_reference(seed, ties, fpr_limit):
    maps, masks = random_maps(seed, ties=ties)
    got = aupro(maps, masks, fpr_limit=fpr_limit)
    assert got == pytest.approx(reference.aupro(maps, masks, fpr_limit), abs=1e-9)
    assert 0.0 <= got <= 1.0


def test_aupro_limit_on_an_exact_curve_point():
    # 10 normal pixels, so FPR steps are multiples of 0.1 and 0.3 falls exactly on a point.
    maps = np.array([[[0.95, 0.9, 0.85, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05, 0.01]]])
    masks = np.array([[[1, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0]]])
    got = aupro(maps, masks, fpr_limit=0.3)
    assert got == pytest.approx(reference.aupro(maps, masks, 0.3), abs=1e-12)


def test_aupro_hand_computed_single_pixel_region():
    # Curve: (0,0) (1/3,0) (1/3,1) (2/3,1) (1,1).
    maps = np.array([[[0.8, 0.6, 0.4, 0.2]]])
    masks = np.array([[[0, 1, 0, 0]]])
    assert aupro(maps, masks, fpr_limit=0.5) == pytest.approx((0.5 - 1 / 3) / 0.5)
    assert aupro(maps, masks, fpr_limit=1.0) == pytest.approx(2 / 3)
    assert aupro(maps, masks, fpr_limit=0.3) == pytest.approx(0.0)


def test_aupro_uses_eight_connectivity():
    # The diagonal pixel (1, 2) joins {(0,0), (0,1)} into one region of 3 under 8-connectivity; with
    # 4-connectivity PRO at the top threshold would be 1/2 instead of 1/3, giving 11/12.
    masks = np.array([[1, 1, 0], [0, 0, 1], [0, 0, 0]], dtype=bool)
    maps = np.array([[0.5, 0.5, 0.75], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    # Curve: (0,0) (0,1/3) (1/6,1/3) (1/6,1) (1,1).
    assert aupro(maps, masks, fpr_limit=1.0) == pytest.approx(1 / 6 * 1 / 3 + 5 / 6)


def test_aupro_regions_weighted_equally_not_by_size():
    masks = np.zeros((2, 6, 6), dtype=bool)
    masks[0, :4, :4] = True  # big region, missed at the top threshold
    masks[1, 0, 0] = True  # tiny region, found
    maps = np.zeros((2, 6, 6))
    maps[0][masks[0]] = 0.5
    maps[1, 0, 0] = 1.0
    maps[1, 5, 5] = 0.75  # one normal pixel between the two regions' scores
    num_normal = int((~masks).sum())
    # Curve: (0,0) (0,1/2) (1/n,1/2) (1/n,1) (1,1); pixel pooling would give 1/17 instead of 1/2.
    expected = 1 / num_normal * 0.5 + (1 - 1 / num_normal)
    assert aupro(maps, masks, fpr_limit=1.0) == pytest.approx(expected)


def test_aupro_perfect_maps_score_one():
    _, masks = random_maps(11)
    assert aupro(masks.astype(float), masks) == pytest.approx(1.0, abs=1e-12)
    assert aupro(masks.astype(float), masks, fpr_limit=0.01) == pytest.approx(1.0, abs=1e-12)
    assert aupro(1.0 - masks, masks) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS[:3])
def test_aupro_invariant_to_monotone_transform(seed):
    maps, masks = random_maps(seed)
    maps = np.round(maps, 3)
    base = aupro(maps, masks)
    assert aupro(3 * maps + 1, masks) == pytest.approx(base, abs=1e-9)
    assert aupro(np.exp(maps), masks) == pytest.approx(base, abs=1e-9)


def test_aupro_accepts_single_image():
    maps, masks = random_maps(5, n=1)
    assert aupro(maps[0], masks[0]) == pytest.approx(aupro(maps, masks), abs=1e-12)


def test_aupro_errors():
    maps, masks = random_maps(0)
    with pytest.raises(InputError, match="undefined without any defect region"):
        aupro(maps, np.zeros_like(masks))
    with pytest.raises(InputError, match="needs normal pixels"):
        aupro(maps, np.ones_like(masks))
    with pytest.raises(InputError, match=r"fpr_limit is 0.0; expected a value in \(0, 1\]"):
        aupro(maps, masks, fpr_limit=0.0)
    with pytest.raises(InputError, match="fpr_limit is 1.5"):
        aupro(maps, masks, fpr_limit=1.5)
    with pytest.raises(InputError, match=r"maps has shape \(6, 12, 12\) but masks has shape \(6, 12, 11\)"):
        aupro(maps, masks[:, :, 1:])
    bad = maps.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="maps contains 1 NaN"):
        aupro(bad, masks)
    with pytest.raises(InputError, match=r"expected \(N, H, W\) or \(H, W\)"):
        aupro(maps[None], masks[None])


# --------------------------------------------------------------------------------------------------
# F1
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", SEEDS)
def test_f1_max_matches_every_threshold_reference(seed, ties):
    scores, labels = random_scores(seed, ties=ties)
    f1, threshold = f1_max(scores, labels)
    ref_f1, ref_threshold = reference.f1_max(scores, labels)
    assert f1 == pytest.approx(ref_f1, abs=1e-9)
    assert threshold == ref_threshold
    assert f1_score(scores >= threshold, labels) == pytest.approx(f1, abs=1e-12)
    assert 0.0 <= f1 <= 1.0


def test_f1_max_hand_computed():
    # t=0.9: 2/3, t=0.8: 1/2, t=0.7: 4/5, t=0.6: 2/3.
    assert f1_max([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0]) == (pytest.approx(0.8), 0.7)
    assert f1_max([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == (1.0, 0.8)
    # All tied: the only threshold predicts everything positive.
    assert f1_max([0.5, 0.5, 0.5, 0.5], [1, 0, 0, 0]) == (pytest.approx(2 / 5), 0.5)


def test_f1_max_value_invariant_to_monotone_transform():
    scores, labels = random_scores(9)
    scores = np.round(scores, 3)
    f1, threshold = f1_max(scores, labels)
    f1_affine, threshold_affine = f1_max(3 * scores + 1, labels)
    assert f1_affine == pytest.approx(f1, abs=1e-12)
    assert threshold_affine == pytest.approx(3 * threshold + 1)
    assert f1_max(np.exp(scores), labels)[0] == pytest.approx(f1, abs=1e-12)


def test_f1_max_without_positives_raises():
    with pytest.raises(InputError, match="no positive"):
        f1_max([0.1, 0.2], [0, 0])


def test_f1_score_hand_computed():
    assert f1_score([1, 1, 0, 0], [1, 0, 1, 0]) == pytest.approx(0.5)
    assert f1_score([True, False], [True, False]) == 1.0
    assert f1_score([0, 0, 0], [0, 0, 0]) == 1.0  # nothing to find, nothing found
    assert f1_score([1, 0, 0], [0, 0, 0]) == 0.0
    assert f1_score([0, 0, 0], [0, 1, 0]) == 0.0
    with pytest.raises(InputError, match=r"pred has shape \(2,\) but labels has shape \(3,\)"):
        f1_score([1, 0], [1, 0, 0])
    with pytest.raises(InputError, match="pred has 1 values that are not 0 or 1"):
        f1_score([1, 0.5, 0], [1, 0, 0])


# --------------------------------------------------------------------------------------------------
# IoU
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_iou_matches_set_reference(seed):
    maps, masks = random_maps(seed)
    masks[-1] = False  # an image without defects, where an empty prediction counts as 1.0
    for t in [0.3, 0.8, 1.2, 2.0]:
        pred = maps >= t
        got = iou(pred, masks)
        assert got == pytest.approx(reference.iou(pred, masks), abs=1e-9)
        assert 0.0 <= got <= 1.0


def test_iou_hand_computed():
    pred = np.array([[[1, 1], [0, 0]], [[0, 0], [0, 0]]], dtype=bool)
    gt = np.array([[[1, 0], [0, 0]], [[0, 0], [0, 0]]], dtype=bool)
    assert iou(pred, gt) == pytest.approx((0.5 + 1.0) / 2)
    assert iou(pred[0], gt[0]) == pytest.approx(0.5)
    assert iou(gt, gt) == 1.0
    with pytest.raises(InputError, match=r"pred_masks has shape \(2, 2, 2\) but gt_masks has shape"):
        iou(pred, gt[:1])


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", SEEDS[:3])
def test_oracle_iou_is_the_best_over_every_map_value(seed, ties):
    maps, masks = random_maps(seed, ties=ties)
    masks[-1] = False  # an image without defects, which an empty prediction gets right
    best, threshold = oracle_iou(maps, masks)
    assert best == pytest.approx(reference.oracle_iou(maps, masks)[0], abs=1e-9)
    assert best == pytest.approx(reference.iou(maps >= threshold, masks), abs=1e-9)


def tiny_defects(seed: int, n: int = 20, size: int = 128):
    """Defects of 3 to 9 pixels (far under 1/256 of an image) on noise maps that bump up on them."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), dtype=bool)
    for mask in masks:
        y, x = rng.integers(2, size - 4, size=2)
        mask[y : y + 3, x : x + 3] = rng.random((3, 3)) < 0.7
        mask[y + 1, x : x + 3] = True  # 3 to 9 pixels, one region
    maps = rng.normal(size=masks.shape) + masks * rng.uniform(3.0, 6.0, size=masks.shape)
    return maps, masks


@pytest.mark.parametrize("seed", SEEDS[:2])
def test_oracle_iou_is_exact_on_tiny_defects(seed):
    maps, masks = tiny_defects(seed)
    best, threshold = oracle_iou(maps, masks)
    # Brute force: every defect pixel's value, the extremes and a random sample of the others.
    rng = np.random.default_rng(seed)
    others = rng.choice(maps[~masks], 400, replace=False)
    thresholds = np.concatenate([maps[masks], others, [maps.min(), maps.max()]])
    brute = reference.best_iou(maps, masks, thresholds)
    assert best == pytest.approx(brute, abs=1e-12)
    assert best == pytest.approx(reference.iou_by_counts(maps >= threshold, masks), abs=1e-12)


def test_oracle_iou_beats_a_validation_threshold_on_tiny_defects():
    maps, masks = tiny_defects(7)
    good = np.random.default_rng(8).normal(size=(10, 128, 128))  # good validation maps, as a run would calibrate
    at_validation = iou(maps >= good.max(), masks)
    assert at_validation > 0.2
    assert oracle_iou(maps, masks)[0] >= at_validation


def test_oracle_iou_without_any_defect_predicts_nothing():
    maps, masks = random_maps(1)
    best, threshold = oracle_iou(maps, np.zeros_like(masks))
    assert threshold == maps.max()
    assert best == pytest.approx((maps.shape[0] - 1) / maps.shape[0])  # only the image holding the maximum misses


@pytest.mark.parametrize("seed", SEEDS[:3])
def test_oracle_iou_on_quantile_grid(seed):
    maps, masks = random_maps(seed)
    best, threshold = oracle_iou(maps, masks, num_thresholds=16)
    assert threshold in set(maps[masks].tolist()) | {maps.max()}  # candidates are defect values or the maximum
    assert best == pytest.approx(reference.iou(maps >= threshold, masks), abs=1e-9)
    assert best <= reference.oracle_iou(maps, masks)[0] + 1e-12
    # The grid includes the minimum (everything predicted) and the maximum.
    assert best >= reference.iou(maps >= maps.min(), masks) - 1e-12
    assert best >= reference.iou(maps >= maps.max(), masks) - 1e-12


def test_oracle_iou_perfect_maps():
    _, masks = random_maps(4)
    assert oracle_iou(masks.astype(float), masks) == (1.0, 1.0)


def test_oracle_iou_errors():
    maps, masks = random_maps(0)
    with pytest.raises(InputError, match="num_thresholds is 0"):
        oracle_iou(maps, masks, num_thresholds=0)
    with pytest.raises(InputError, match="gt_masks has shape"):
        oracle_iou(maps, masks[:1])
