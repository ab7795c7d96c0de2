"""Choosing the decision threshold on validation data, and scores normalised around it.

Two rules, picked by what the validation split holds:
- anomalies present: the F1-adaptive threshold (F1-max on the validation images and pixels);
- only good images (the usual case): the (1 - fpr) quantile of the good images' scores, so that a
  fraction ``fpr`` of good images is flagged. The mask threshold is the same quantile of the good images'
  map maxima, so that as many good images get a mask: where the score is the map's maximum (every model
  but MSFlow, whose score is a top-k mean of another map) it is the image threshold itself. An image below
  the image threshold gets an empty mask, and a flagged image's mask is where its map exceeds the mask's.
Never the test split, and never the minimum score.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from flowad import metrics
from flowad.errors import InputError

DEFAULT_FPR = 0.01


@dataclasses.dataclass
class Thresholds:
    """Image and pixel thresholds on the map's scale, and the score range used to normalise scores."""

    image: float
    pixel: float
    method: str
    low: float  # lowest validation score: maps to 0 before clipping
    high: float  # highest validation score

    def normalise(self, scores: np.ndarray) -> np.ndarray:
        """Scores mapped to [0, 1] with the threshold at exactly 0.5 (piecewise linear, then clipped)."""
        scores = np.asarray(scores, dtype=np.float64)
        below = 0.5 * (scores - self.low) / max(self.image - self.low, 1e-12)
        above = 0.5 + 0.5 * (scores - self.image) / max(self.high - self.image, 1e-12)
        return np.clip(np.where(scores < self.image, below, above), 0.0, 1.0)


def from_validation(
    scores: np.ndarray,
    labels: np.ndarray,
    maps: np.ndarray | None,
    masks: np.ndarray | None,
    fpr: float = DEFAULT_FPR,
) -> Thresholds:
    """Thresholds from the validation split's scores, maps (None: maps whose maxima are the scores) and masks."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(bool)
    if scores.size == 0:
        raise InputError("the validation split is empty; expected at least one good image to set thresholds")
    if not 0 <= fpr < 1:
        raise InputError(f"false-positive rate {fpr} is out of range; expected 0 <= fpr < 1")
    maxima = scores if maps is None else np.asarray(maps).reshape(len(scores), -1).max(1).astype(np.float64)
    if labels.any() and not labels.all():
        image_t = metrics.f1_max(scores, labels)[1]
        pixel_t = metrics.f1_max(maxima, labels)[1]
        if masks is not None and np.asarray(masks).any():
            pixel_t = metrics.f1_max(np.asarray(maps).ravel(), np.asarray(masks).ravel() > 0)[1]
        method = "f1"
    else:
        image_t = fpr_threshold(scores[~labels], fpr)
        pixel_t = fpr_threshold(maxima[~labels], fpr)
        method = f"fpr={fpr:g}"
    return Thresholds(
        image=float(image_t),
        pixel=float(pixel_t),
        method=method,
        low=float(scores.min()),
        high=float(scores.max()),
    )


def fpr_threshold(good_scores: np.ndarray, fpr: float) -> float:
    """The (1 - fpr) quantile of good scores (linear interpolation); fpr = 0 gives their maximum."""
    return float(np.quantile(np.asarray(good_scores, dtype=np.float64), 1.0 - fpr))


def fixed(value: float, low: float, high: float) -> Thresholds:
    """A user-given threshold for both images and pixels."""
    return Thresholds(image=value, pixel=value, method=f"value={value:g}", low=min(low, value), high=max(high, value))


def from_option(stored: Thresholds, threshold: str | float | None) -> Thresholds:
    """The thresholds a ``--threshold`` option picks: a run's ``stored`` (validation) ones, or a user's
    number. ``nfa`` keeps the stored ones, which still normalise the scores."""
    if threshold in ("f1", "auto", "val", "nfa", None):
        return stored
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        raise InputError(f"--threshold {threshold!r} is not understood; expected f1, nfa or a number") from None
    return fixed(value, stored.low, stored.high)
