"""How far a trained flow's latents of good images are from N(0, 1), the a contrario test's null hypothesis.

The NFA (:mod:`flowad.nfa`) counts, in a window, the latent values with z^2 >= tau, where tau is set so that
a N(0, 1) value is such a candidate with probability 1 - thr, and it treats the counts as binomial. Both hold
only if the good images' latents are N(0, 1) and independent. Per latent scale this measures, on good images:

- ``mean`` and ``variance`` of the values (0 and 1 under the null), and ``mean_z2`` (1);
- ``candidate_rate``: the share of values with z^2 >= tau (1 - thr under the null). Above it, good images
  give more candidates than the test expects, so it flags them; below it, the test loses power;
- ``neighbour_correlation``: the mean correlation of each channel's values with their right and lower
  neighbours (0 under the null). Correlated neighbours make the window's count spread more than a binomial;
- ``channel_correlation``: the mean absolute correlation between two channels at the same position (0).

:func:`calibrated_levels` fits the test's candidate thresholds on good images instead (the z^2 that their values
exceed with probability 1 - thr, per scale), so that the candidate rate is right where the values are wider or
heavier-tailed than N(0, 1) (:mod:`flowad.nfa`, calibrated).

:func:`readiness_warnings` turns these, and the number of good images that log NFA < 0 flags (the promise
itself, measured on the run's good validation images), into warnings when the NFA cannot be trusted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.stats import chi2

from flowad.errors import InputError

# how far from the null a scale may be before the NFA's promise is in doubt (warnings only)
MAX_CANDIDATE_EXCESS = 0.05  # candidate rate above 1 - thr by more than this
MAX_NEIGHBOUR_CORRELATION = 0.25  # U-Flow on real textures: 0.28 flagged 9.5 % of good images, <= 0.21 none
MAX_MEAN_Z2 = 1.5


@dataclass(frozen=True)
class ScaleStatistics:
    """One latent scale's values over good images (module docstring); ``shape`` is (C, H, W)."""

    shape: tuple[int, int, int]
    mean: float
    variance: float
    mean_z2: float
    candidate_rate: float
    expected_candidate_rate: float
    neighbour_correlation: float
    channel_correlation: float

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else round(v, 4)) for k, v in asdict(self).items()}


def latent_statistics(latents: Sequence[Any], probability_threshold: float = 0.5) -> list[ScaleStatistics]:
    """Statistics of (N, C, H, W) latents per scale (numpy arrays or torch tensors), in the order given."""
    tau = np.float32(chi2.ppf(probability_threshold, 1))
    return [_scale_statistics(_as_array(z), tau, 1 - probability_threshold) for z in latents]


def calibrated_levels(latents: Sequence[Any], levels: Sequence[float]) -> dict[float, list[float]]:
    """Per candidate level, per scale in the order given: the ``level`` quantile of z^2 over every value of the good
    images' (N, C, H, W) ``latents``, i.e. the candidate threshold that they exceed with probability 1 - level
    (N(0, 1)'s is chi-square(1)'s quantile). :func:`flowad.nfa.log_nfa`'s ``calibration``."""
    arrays = [np.square(_as_array(z).astype(np.float64)).ravel() for z in latents]
    if not arrays or any(a.size == 0 for a in arrays):
        raise InputError("calibrated_levels needs good images' latents: expected (N, C, H, W) maps of every scale")
    return {float(level): [float(np.quantile(a, level)) for a in arrays] for level in levels}


def _scale_statistics(z: np.ndarray, tau: np.float32, expected: float) -> ScaleStatistics:
    z = z.astype(np.float64)
    squared = z * z
    return ScaleStatistics(
        shape=tuple(int(v) for v in z.shape[1:]),
        mean=float(z.mean()),
        variance=float(z.var()),
        mean_z2=float(squared.mean()),
        candidate_rate=float((squared.astype(np.float32) >= tau).mean()),
        expected_candidate_rate=float(expected),
        neighbour_correlation=_neighbour_correlation(z),
        channel_correlation=_channel_correlation(z),
    )


def _neighbour_correlation(z: np.ndarray) -> float:
    """Mean over channels of the correlation of z with its right and its lower neighbour."""
    pairs = []
    if z.shape[3] > 1:
        pairs.append((z[..., :, :-1], z[..., :, 1:]))
    if z.shape[2] > 1:
        pairs.append((z[..., :-1, :], z[..., 1:, :]))
    values = [_correlation_per_channel(a, b).mean() for a, b in pairs]
    return float(np.mean(values)) if values else float("nan")


def _correlation_per_channel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.transpose(1, 0, 2, 3).reshape(a.shape[1], -1)
    b = b.transpose(1, 0, 2, 3).reshape(b.shape[1], -1)
    a, b = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
    denominator = np.sqrt((a * a).sum(1) * (b * b).sum(1))
    return (a * b).sum(1) / np.where(denominator > 0, denominator, 1)


def _channel_correlation(z: np.ndarray, max_values: int = 200_000) -> float:
    """Mean |correlation| between distinct channels over all positions (a strided sample of positions when many)."""
    channels = z.shape[1]
    if channels < 2:
        return float("nan")
    flat = z.transpose(1, 0, 2, 3).reshape(channels, -1)
    step = max(1, flat.shape[1] // max_values)
    with np.errstate(invalid="ignore", divide="ignore"):  # a constant channel has no correlation: NaN, skipped
        matrix = np.corrcoef(flat[:, ::step])
    off_diagonal = np.abs(matrix[~np.eye(channels, dtype=bool)])
    return float(np.nanmean(off_diagonal))


def readiness_warnings(
    stats: Sequence[ScaleStatistics], flagged: int = 0, images: int = 0, which: str = "good validation images"
) -> list[str]:
    """What keeps the NFA from holding its promise on this run's good images (empty when nothing does);
    ``flagged`` of the ``images`` good images (named ``which``) have a pixel at log NFA < 0."""
    warnings = []
    if flagged:  # the seed's test is conservative: on pure noise it flags none of 200 images, so any is a sign
        warnings.append(
            f"log NFA < 0 flags {flagged} of {images} {which}: its masks may flag good images; "
            "prefer a validation threshold for this run"
        )
    for i, s in enumerate(stats):
        where = f"latent scale {i} {s.shape}"
        if s.candidate_rate > s.expected_candidate_rate + MAX_CANDIDATE_EXCESS or s.mean_z2 > MAX_MEAN_Z2:
            warnings.append(
                f"{where}: good images' mean z^2 is {s.mean_z2:.2f} (1 for N(0, 1)) and {s.candidate_rate:.0%} of "
                f"their values are NFA candidates ({s.expected_candidate_rate:.0%} expected): log NFA < 0 may flag "
                "good images; train longer, or use a validation threshold"
            )
        if s.neighbour_correlation > MAX_NEIGHBOUR_CORRELATION:
            warnings.append(
                f"{where}: neighbouring latent values correlate by {s.neighbour_correlation:.2f} (0 for independent "
                "values): the NFA's counts spread more than it assumes, and may flag good images"
            )
    return warnings


def _as_array(z: Any) -> np.ndarray:
    if hasattr(z, "detach"):
        return z.detach().cpu().float().numpy()
    return np.asarray(z)
