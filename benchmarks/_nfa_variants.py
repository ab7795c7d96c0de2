"""The NFA variants nfa_check.py measures beside the seed's test (nfa_check.py's docstring says what each is).

Each variant is a function (latents, size) -> log10 NFA per pixel (B, H, W), a pixel detected where it is < 0;
the fitted ones learn their null from good images' latents (no labels).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.special import log_ndtr
from scipy.stats import chi2

EPSILON_TESTS = 100  # the quasi-binomial variant's tests at NFA < 0.01 (nfa_check.py's docstring)
VARIANTS = (
    "seed",
    "seed at NFA < 0.01",
    "fitted",
    "windows",
    "levels",
    "windows and levels",
    "levels, scales apart",
    "levels, anchored",
    "levels, anchored evenly",
    "windows and levels, anchored",
    "windows and levels, anchored evenly",
    "windows 7 and 15 at levels 0.5 and 0.9, anchored",
    "levels, calibrated",
    "windows and levels, calibrated",
    "levels, anchored, calibrated",
    "windows and levels, anchored, calibrated",
    "windows and levels, anchored evenly, calibrated",
    "quasi-binomial",
    "regions",
    "regions, fitted",
    "seed, rescaled",
    "windows, rescaled",
    "levels, rescaled",
    "windows and levels, rescaled",
    "fitted, rescaled",
    "quasi-binomial, rescaled",
    "regions, fitted, rescaled",
)
REGION_LEVELS = (0.1, 0.01, 0.001)
WINDOWS = (7, 3, 15)  # the paper's window first: an anchored test's first test is the paper's
LEVELS = (0.5, 0.9, 0.99)


def _seed_family() -> dict[str, dict[str, Any]]:
    """The variants that are flowad's own test with several windows or levels, anchored or not: their
    ``flowad.nfa.log_nfa`` settings (--nfa-window-size 7 3 15, --nfa-probability-threshold 0.5 0.9 0.99,
    --nfa-anchor; "anchored evenly": the budget shared evenly between the tests, as unanchored tests share it)."""
    tests = {
        "windows": {"window_size": WINDOWS},
        "levels": {"probability_threshold": LEVELS},
        "windows and levels": {"window_size": WINDOWS, "probability_threshold": LEVELS},
    }
    family = dict(tests)
    for name, settings in tests.items():
        count = len(settings.get("window_size", (7,))) * len(settings.get("probability_threshold", (0.5,)))
        family[f"{name}, anchored"] = {**settings, "anchor": True}
        family[f"{name}, anchored evenly"] = {**settings, "anchor": True, "anchor_share": 1 / count}
    # the one pair of "windows and levels, anchored" that finds gravel's faint defects (window 15 at level 0.9),
    # with the paper's test it is anchored on and their two other pairs: does that pair also flag the good images?
    family["windows 7 and 15 at levels 0.5 and 0.9, anchored"] = {
        "window_size": (7, 15),
        "probability_threshold": (0.5, 0.9),
        "anchor": True,
    }
    return family


SEED_FAMILY = _seed_family()


def seed_log_nfa(latents: list[np.ndarray], size: tuple[int, int], nfa: dict[str, Any]) -> np.ndarray:
    from flowad.nfa import log_nfa

    return log_nfa(latents, size, **nfa)


def variant_of(name: str, good: list[np.ndarray], nfa: dict[str, Any]) -> Any:
    """``name``'s log NFA as a function of (latents, size); ``good``: good images' latents for the fitted nulls."""
    if name.endswith(", rescaled"):  # flowad's --nfa-rescale: each image's latents divided by their own spread
        from flowad.nfa import rescaled

        inner = variant_of(name.removesuffix(", rescaled"), rescaled(good), nfa)
        return lambda z, size: inner(rescaled(z), size)
    if name == "seed":
        return lambda z, size: seed_log_nfa(z, size, nfa)
    if name == "seed at NFA < 0.01":
        return lambda z, size: seed_log_nfa(z, size, nfa) + math.log10(EPSILON_TESTS)
    if name == "fitted":
        null = fit_null(good, nfa["window_size"], nfa["probability_threshold"])
        return lambda z, size: fitted_log_nfa(z, size, nfa, null)
    if name.endswith(", calibrated"):  # candidate thresholds fitted on the good images per level and scale
        from flowad.latent_stats import calibrated_levels

        calibration = calibrated_levels(good, LEVELS if "levels" in name else (nfa["probability_threshold"],))
        return variant_of(name.removesuffix(", calibrated"), good, {**nfa, "calibration": calibration})
    if name in SEED_FAMILY:
        return lambda z, size: seed_log_nfa(z, size, {**nfa, **SEED_FAMILY[name]})
    if name == "levels, scales apart":
        return lambda z, size: scales_apart_log_nfa(z, size, nfa, LEVELS)
    if name.startswith("regions"):
        tails = energy_tails(good if name.endswith("fitted") else None, [z.shape[1] for z in good])
        return lambda z, size: region_log_nfa(z, size, tails)
    null = fit_overdispersion(good, nfa)
    return lambda z, size: quasi_binomial_log_nfa(z, size, nfa, null)


def scales_apart_log_nfa(
    latents: list[np.ndarray], size: tuple[int, int], nfa: dict[str, Any], levels: tuple[float, ...]
) -> np.ndarray:
    """Every (level, scale) pair its own test: the smallest upsampled log10 P over them, plus log10 of every test
    (each level at every position of every scale), where the seed's test sums the scales' log10 P."""
    from flowad.nfa import scale_log_p

    each = [p for level in levels for p in scale_log_p(latents, size, nfa["window_size"], level)]
    positions = sum(z.shape[-2] * z.shape[-1] for z in latents)
    return np.min(each, axis=0) + math.log10(len(levels) * positions)


def _window_counts(latents: list[np.ndarray], nfa: dict[str, Any]) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """Per scale, as the seed's test counts them (``flowad.nfa.scale_window_counts``): candidates, n, C."""
    from flowad.nfa import scale_window_counts

    return scale_window_counts(latents, nfa["window_size"], nfa["probability_threshold"])


def window_rates(latents: list[np.ndarray], nfa: dict[str, Any]) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """Per scale: the window candidate rate (B, H, W), the window sizes n (H, W) and the full window size."""
    return [(total / (c * n), n, int(n.max())) for total, n, c in _window_counts(latents, nfa)]


def fit_null(good: list[np.ndarray], window_size: int, threshold: float) -> list[tuple[float, float, int]]:
    """Per scale: the mean candidate rate of good images' windows, its variance at full windows, that size."""
    nfa = {"window_size": window_size, "probability_threshold": threshold}
    fitted = []
    for rate, n, full in window_rates(good, nfa):
        at_full = rate[:, n == full]
        fitted.append((float(at_full.mean()), float(at_full.var()), full))
    return fitted


def fitted_log_nfa(latents: list[np.ndarray], size: tuple[int, int], nfa: dict[str, Any], null: list) -> np.ndarray:
    from flowad.resize import resize_bilinear

    log_p_sum = 0
    for (rate, n, _), (mean, variance, full) in zip(window_rates(latents, nfa), null, strict=True):
        z_score = (rate - mean) / np.sqrt(variance * full / n)
        log_p_sum = log_p_sum + resize_bilinear(log_ndtr(-z_score), tuple(size))  # natural log, one-sided
    fisher = chi2.logsf(-2 * log_p_sum, 2 * len(null)) / math.log(10)
    n_tests = sum(z.shape[-2] * z.shape[-1] for z in latents)
    return fisher + math.log10(n_tests)


def _channel_counts(latents: list[np.ndarray], nfa: dict[str, Any]) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """Per scale: the candidates of every channel in each window (B, H, W), the trials C n (H, W), C n at full size."""
    return [(total, c * n, int(c * n.max())) for total, n, c in _window_counts(latents, nfa)]


def fit_overdispersion(good: list[np.ndarray], nfa: dict[str, Any]) -> list[tuple[float, float]]:
    """Per scale: the candidate rate q of good images' full windows and their dispersion Var / (C n q (1 - q))."""
    fitted = []
    for total, trials, full in _channel_counts(good, nfa):
        at_full = total[:, trials == full]
        q = float(at_full.mean()) / full
        fitted.append((q, max(float(at_full.var()) / (full * q * (1 - q)), 1.0)))
    return fitted


def quasi_binomial_log_nfa(
    latents: list[np.ndarray], size: tuple[int, int], nfa: dict[str, Any], null: list[tuple[float, float]]
) -> np.ndarray:
    from flowad.nfa import log10_binomial_tail
    from flowad.resize import resize_bilinear

    smallest = 0
    for (total, trials, _), (q, dispersion) in zip(_channel_counts(latents, nfa), null, strict=True):
        effective = np.maximum(np.floor(trials / dispersion), 1).astype(int)  # (H, W)
        k = np.minimum(np.ceil(total / dispersion).astype(int), effective)  # (B, H, W)
        log_p = np.empty(k.shape)
        for n in np.unique(effective):
            where = effective == n
            log_p[:, where] = log10_binomial_tail(int(n), q)[k[:, where]]
        smallest = np.minimum(smallest, resize_bilinear(log_p, tuple(size)))
    return smallest + math.log10(sum(z.shape[-2] * z.shape[-1] for z in latents)) + math.log10(EPSILON_TESTS)


def energy_tails(good: list[np.ndarray] | None, channels: list[int]) -> list[Any]:
    """Per scale, energy (sum_c z^2) -> its upper-tail probability: chi-square(C), or empirical over ``good``."""
    if good is None:
        return [lambda e, c=c: chi2.sf(e, c) for c in channels]
    tails = []
    for z in good:
        energies = np.sort(np.square(z).sum(1).ravel())
        tails.append(lambda e, s=energies: (len(s) - np.searchsorted(s, e, side="left") + 1) / (len(s) + 1))
    return tails


def region_log_nfa(latents: list[np.ndarray], size: tuple[int, int], tails: list[Any]) -> np.ndarray:
    """-1 where a region candidate at NFA < 0.01 covers the pixel, +1 elsewhere (module docstring)."""
    from scipy import ndimage

    from flowad.resize import resize_bilinear

    positions = sum(z.shape[-2] * z.shape[-1] for z in latents)
    log_tests = math.log10(positions * len(REGION_LEVELS) * EPSILON_TESTS)
    flagged = np.zeros((len(latents[0]), *size), dtype=bool)
    for z, tail in zip(latents, tails, strict=True):
        p = tail(np.square(z).sum(1))
        found = np.zeros(p.shape, dtype=np.float32)
        for level, image in ((lv, i) for lv in REGION_LEVELS for i in range(len(p))):
            labels, count = ndimage.label(p[image] < level)
            if count:
                n = np.bincount(labels.ravel())[1:]
                log_nfa = log_tests + (n - 1) * math.log10(3 * math.e) + n * math.log10(level)
                found[image] = np.maximum(found[image], np.concatenate([[0.0], log_nfa < 0])[labels])
        flagged |= resize_bilinear(found, tuple(size)) > 0.5
    return np.where(flagged, -1.0, 1.0)
