"""Threshold rules and score normalisation."""

import numpy as np
import pytest

from flowad.errors import InputError
from flowad.thresholds import fixed, fpr_threshold, from_validation


def test_good_only_validation_uses_the_fpr_quantile_not_the_minimum() -> None:
    rng = np.random.default_rng(0)
    good = rng.normal(size=1000)
    t = from_validation(good, np.zeros(1000), None, None, fpr=0.05)
    assert t.method == "fpr=0.05"
    assert t.image == t.pixel == pytest.approx(np.quantile(good, 0.95))
    assert np.mean(good >= t.image) == pytest.approx(0.05, abs=0.002)
    assert t.image > good.min()


def test_fpr_zero_is_the_maximum() -> None:
    assert fpr_threshold(np.array([0.1, 0.7, 0.3]), 0.0) == 0.7


def test_validation_with_anomalies_uses_f1() -> None:
    scores = np.array([0.1, 0.2, 0.3, 0.8, 0.9])
    labels = np.array([0, 0, 0, 1, 1])
    t = from_validation(scores, labels, np.zeros((5, 2, 2)), None)
    assert t.method == "f1" and t.image == 0.8


def test_normalised_scores_put_the_threshold_at_one_half() -> None:
    t = from_validation(np.linspace(0, 1, 101), np.zeros(101), None, None, fpr=0.1)
    s = t.normalise(np.array([t.low, t.image, t.high, t.high + 5, t.low - 5]))
    assert s.tolist() == pytest.approx([0.0, 0.5, 1.0, 1.0, 0.0])
    more = t.normalise(np.linspace(-1, 2, 50))
    assert np.all(np.diff(more) >= 0)  # monotone


def test_fixed_value_applies_to_images_and_pixels() -> None:
    t = fixed(0.3, 0.0, 1.0)
    assert t.image == t.pixel == 0.3 and t.normalise(np.array([0.3]))[0] == 0.5


@pytest.mark.parametrize("fpr", [-0.1, 1.0])
def test_bad_fpr_is_a_clear_error(fpr: float) -> None:
    with pytest.raises(InputError, match=f"false-positive rate {fpr}"):
        from_validation(np.ones(3), np.zeros(3), None, None, fpr=fpr)


def test_empty_validation_is_a_clear_error() -> None:
    with pytest.raises(InputError, match="validation split is empty"):
        from_validation(np.array([]), np.array([]), None, None)


def test_the_mask_threshold_is_the_quantile_of_the_maps_maxima() -> None:
    # scores on another scale than the maps (MSFlow's): as many good images get a mask as are flagged
    scores = np.linspace(0, 1, 101)
    maps = np.zeros((101, 2, 2))
    maps[:, 0, 0] = 10 * scores[::-1]  # maxima in another order and on another scale
    t = from_validation(scores, np.zeros(101), maps, None, fpr=0.1)
    assert t.image == pytest.approx(0.9) and t.pixel == pytest.approx(9.0)
