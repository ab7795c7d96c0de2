"""The latents' distance from N(0, 1): exact on known inputs, silent on the null, warning where the NFA would fail."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from flowad.latent_stats import latent_statistics, readiness_warnings


def _noise(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_pure_noise_is_the_null_and_warns_nothing() -> None:
    (stats,) = latent_statistics([_noise((20, 16, 32, 32))])
    assert stats.shape == (16, 32, 32)
    assert abs(stats.mean) < 0.01 and abs(stats.variance - 1) < 0.01 and abs(stats.mean_z2 - 1) < 0.01
    assert abs(stats.candidate_rate - 0.5) < 0.01 and stats.expected_candidate_rate == 0.5
    assert abs(stats.neighbour_correlation) < 0.01 and stats.channel_correlation < 0.02
    assert readiness_warnings([stats]) == []


def test_figures_match_a_direct_computation() -> None:
    z = _noise((3, 4, 5, 6), seed=1) * 1.7 + 0.3
    (stats,) = latent_statistics([torch.from_numpy(z)], probability_threshold=0.9)
    flat = z.astype(np.float64)
    assert stats.mean == pytest.approx(flat.mean()) and stats.variance == pytest.approx(flat.var())
    assert stats.candidate_rate == pytest.approx(np.mean(flat**2 >= 2.705543454095404))  # chi2(1).ppf(0.9)
    right = np.mean([np.corrcoef(z[:, c, :, :-1].ravel(), z[:, c, :, 1:].ravel())[0, 1] for c in range(4)])
    below = np.mean([np.corrcoef(z[:, c, :-1, :].ravel(), z[:, c, 1:, :].ravel())[0, 1] for c in range(4)])
    assert stats.neighbour_correlation == pytest.approx((right + below) / 2)
    pairs = np.corrcoef(z.transpose(1, 0, 2, 3).reshape(4, -1))
    assert stats.channel_correlation == pytest.approx(np.abs(pairs[~np.eye(4, dtype=bool)]).mean())


def test_too_wide_latents_warn_of_false_detections() -> None:
    (stats,) = latent_statistics([2 * _noise((10, 8, 16, 16))])
    (warning,) = readiness_warnings([stats])
    assert "mean z^2 is 3.9" in warning and "may flag good images" in warning


def test_correlated_neighbours_warn() -> None:
    z = _noise((10, 8, 33, 33))
    smooth = (z[..., :-1, :-1] + z[..., 1:, :-1] + z[..., :-1, 1:] + z[..., 1:, 1:]) / 2  # variance 1, correlated
    (stats,) = latent_statistics([smooth])
    assert stats.neighbour_correlation == pytest.approx(0.5, abs=0.02)
    assert any("correlate by 0.5" in w for w in readiness_warnings([stats]))


def test_a_constant_channel_is_skipped_without_a_warning() -> None:
    z = _noise((4, 3, 8, 8))
    z[:, 1] = 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (stats,) = latent_statistics([z])
    assert np.isfinite(stats.channel_correlation)


def test_good_images_flagged_by_the_nfa_warn() -> None:
    (stats,) = latent_statistics([_noise((10, 8, 16, 16))])
    assert readiness_warnings([stats], flagged=0, images=10) == []
    (warning,) = readiness_warnings([stats], flagged=2, images=10)
    assert "flags 2 of 10 good validation images" in warning
