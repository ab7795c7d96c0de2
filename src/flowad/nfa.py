"""A contrario segmentation of latent maps: the number of false alarms (NFA) of U-Flow.

Computed with numpy alone, so that a deployed model (onnxruntime, OpenVINO) gives the same masks as torch:
the latents may be numpy arrays or torch tensors (copied to the CPU), and z^2 >= tau is decided in float32
whatever their type, as the torch implementation did.

Under the null hypothesis (a normal pixel) every latent value is N(0, 1), so z^2 ~ chi-square(1) and
``z^2 >= tau`` with ``tau = chi2(1).ppf(thr)`` happens with probability ``1 - thr``. Around each latent
position we count such "candidates" in a window and ask how unlikely that many would be by chance:

- scale s is the resolution ratio to the finest latent: s = log2(H_finest / H_s). The finest scale gets
  the full ``window_size``; scale s gets ``window_size / 2^s`` (so every window covers about the same
  image area), with half-width ``max(w_s // 2, 1)``. The latents may come in any order.
- count rule (as the reference): the candidates in the window, summed over channels and divided by the
  number of channels (the mean count per channel); ``n`` = window pixels. The binomial needs a whole
  number, so ``k = ceil(mean count)``, and the test is P[Bin(n, 1 - thr) >= k]: the probability of a
  mean count at least this large if the count were binomial. (The reference takes scipy's
  ``binom.logsf(mean, n, p)`` = log P[X > mean], strict, which is -inf when every entry is a candidate;
  ours is never below log P[X = n], so log NFA is always finite.)
  Above the paper's threshold 0.5 the rounding up is itself evidence: with C n (1 - thr) candidates expected
  in a window of C channels, the mean count is almost never 0, so k >= 1 in every window, and P[Bin(n, 1 - thr)
  >= 1] is small for small windows (cut at the border, or at coarse scales): at threshold 0.99 every pure
  N(0, 1) image at 256 px was flagged, at 0.7 one in eight at 32 px (measured). So above 0.5 the tail is
  interpolated between the whole counts around the mean, log10 P = (1 - f) log10 P[X >= floor(mean)] +
  f log10 P[X >= floor(mean) + 1] with f the fractional part: equal to the rule above at whole counts, never
  below it, and a mean count below 1 is weak evidence, in proportion to it (pure noise stays unflagged, tested).
  At 0.5 and below, the paper's rounding is kept, as validated.
- borders: the window is cut at the image border and ``n`` counts only the pixels inside (the reference
  pads by reflection, which counts some entries twice and breaks the independence the test assumes).
- scales combine by bilinear upsampling of each log10 P to ``size`` (float64, torch's
  ``F.interpolate(mode="bilinear", align_corners=False)`` as :func:`flowad.resize.resize_bilinear`) and summing; then
  log NFA = sum_s log10 P_s + log10(N_tests), N_tests = number of latent positions over all scales (times the
  number of tiles of a tiled image).
  The reference upsamples bicubically (align_corners=True); flowad keeps bilinear on purpose. A bilinear
  value is a weighted mean of the neighbouring windows' log10 P, so every upsampled pixel stays within
  the range the tests produced: never above 0 (a probability above 1) and never below the strongest
  window. Bicubic overshoots at the edge of a detection, on both sides: on a planted square (the tests)
  one scale's upsampled log NFA went 0.14 below its smallest window value and 0.011 above its largest,
  so the log NFA < 0 boundary would move by an interpolation artefact rather than by evidence.
  align_corners=False puts each latent cell's centre on the centre of the image patch it covers, as the
  anomaly maps do.
  A pixel is detected as anomalous iff log NFA < 0, i.e. fewer than one such event is expected per image
  by chance. (As in the reference, the per-scale probabilities simply multiply, and the mean count over
  channels is more concentrated than one binomial count, which makes the test conservative on noise.)

Several window sizes (``window_size=(3, 7, 15)``, say): the test above is run at each size, and a pixel takes
the smallest log NFA plus log10 of the number of sizes: every size's tests are counted (a union bound), so the
promise holds whatever size detects. Small windows find small defects, large ones faint but wide defects.
Several candidate levels (``probability_threshold=(0.5, 0.9, 0.99)``) the same way: a high level counts only
the values far out in the tail, which finds a few strong values that the mean count at 0.5 misses. With several
of both, every (size, level) pair is a test, and all are counted. A stronger test also marks more of the
surroundings of a strong defect: a window centred outside it is significant with fewer of its values inside
(README, Thresholds, measured).

Rescaled (``rescale=True``, off by default): before counting, each image's latents of each scale are divided
by their own spread s = sqrt(median(z^2) / median(chi-square(1))) over every channel and position, when s > 1.
A flow's latents of good images that differ from its training images (another batch of material, another
part of a photograph) are wider than N(0, 1) all over, and the test above then flags them; a median hardly
moves for a defect that covers a small part of the image, while the whole image's widening is taken out.
Since s is never taken below 1, a rescaled value is never larger than the latent, so the rescaled test flags
a subset of the pixels the plain test flags: it keeps the promise wherever the plain test does, and trades
detections for fewer false alarms (README, Thresholds). A tiled image's tiles are each their own image here
(each tile's latents are rescaled by their own spread).

Anchored (``anchor=True``, with several tests, off by default): the first test (the first window size at the
first level: the paper's test, as ``(0.5, 0.9, 0.99)`` gives it) delineates where it detects, and the others add
detections elsewhere. Within the tests' reach of the first test's detections (the coarsest scale's largest
window half-width plus one latent cell for the upsampling: 32 px for U-Flow at 256 px) a pixel takes the first
test alone; elsewhere the smallest of all. The false-alarm budget is shared unevenly (a weighted union bound):
the first test keeps ``anchor_share`` of it (``ANCHOR_SHARE`` = 0.98 by default: log10(N / 0.98) added), the
others share the rest (each log10(N (T - 1) / 0.02) for T tests), so the paper's test is almost unchanged where
it detects, and the higher levels, asked 100 times more strictly, find faint defects it misses without their
masks spilling around the strong defects it finds (benchmarks/RESULTS.md). Every flagged pixel is flagged by
one of the tests at its share, so the promise holds.

Calibrated (``calibration``, Python API only): each level's candidate threshold per scale is the z^2 that good
images' latents exceed with probability 1 - level (:func:`flowad.latent_stats.calibrated_levels`) instead of
chi-square(1)'s, so the candidate rate of values like the fitted ones is 1 - level even where they are wider or
heavier-tailed than N(0, 1); the counts and tails stay as above. Measured in benchmarks/RESULTS.md ("calibrated").

The binomial tails are exact (:mod:`flowad.binomial`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.ndimage import maximum_filter
from scipy.stats import chi2

from flowad.binomial import tail_table
from flowad.errors import InputError
from flowad.ranges import check_value, option_flag
from flowad.resize import resize_bilinear
from flowad.windows import window_half, window_sums

CHI2_1_MEDIAN = float(chi2.median(1))  # 0.4549: the median of z^2 for z ~ N(0, 1)
ANCHOR_SHARE = 0.98  # anchored: the first test's share of the false-alarm budget (module docstring)

if TYPE_CHECKING:
    import torch

    from flowad.models.base import AnomalyModel


def log_nfa(
    latents: Sequence[np.ndarray | torch.Tensor],
    size: tuple[int, int],
    window_size: int | Sequence[int] = 7,
    probability_threshold: float | Sequence[float] = 0.5,
    high_precision: bool = False,
    tiles: int = 1,
    rescale: bool = False,
    anchor: bool = False,
    anchor_share: float = ANCHOR_SHARE,
    calibration: Mapping[float, Sequence[float]] | None = None,
) -> np.ndarray:
    """log10 NFA per pixel, float64 (B, H, W) at ``size``; a pixel is anomalous iff its log NFA < 0.

    ``tiles``: how many such tests the image holds (its tiles, see :mod:`flowad.tiling`): the number of tests
    is every latent position of every tile, so the promise holds for the whole image.

    ``latents``: (B, C_s, H_s, W_s) maps, any order, numpy arrays (an exported model's outputs) or torch
    tensors (e.g. ``model.latents(images)``, on any device): the same values give the same result.
    ``rescale``: each image's latents divided by their own spread first (:func:`rescaled`, module docstring).
    ``window_size`` and ``probability_threshold`` (the candidate level): one value each, or several: every pair is
    tested at every position and a pixel takes the smallest log NFA, with every pair's tests counted (module
    docstring). ``anchor``: with several, the first one delineates where it detects, with ``anchor_share`` of the
    false-alarm budget (module docstring). ``calibration``: per level, each scale's candidate threshold on z^2 fitted
    on good images' latents as the test sees them (rescaled ones with ``rescale``;
    :func:`flowad.latent_stats.calibrated_levels`; module docstring); None: N(0, 1)'s.
    """
    latents = _as_arrays(latents)
    windows, levels = _values(window_size), _values(probability_threshold)
    _check(latents, size, windows, levels)
    if int(tiles) != tiles or tiles < 1:
        raise InputError(f"tiles is {tiles}; expected a whole number of at least 1")
    if not 0 < anchor_share < 1:
        raise InputError(f"anchor_share is {anchor_share}; expected a share of the budget in (0, 1)")
    if rescale:
        latents = rescaled(latents)
    each = _each_test(latents, size, windows, levels, high_precision, _thresholds(calibration, levels, len(latents)))
    positions = tiles * sum(z.shape[-2] * z.shape[-1] for z in latents)
    n_tests = len(windows) * len(levels)
    if not anchor or n_tests == 1:
        return functools.reduce(np.minimum, each) + math.log10(n_tests * positions)
    first = next(each) + math.log10(positions / anchor_share)
    others = functools.reduce(np.minimum, each) + math.log10(positions * (n_tests - 1) / (1 - anchor_share))
    reach = window_reach(latents, size, max(windows))
    near = maximum_filter(first < 0, size=(1, 2 * reach[0] + 1, 2 * reach[1] + 1))
    return np.where(near, first, np.minimum(first, others))


def window_reach(latents: Sequence[np.ndarray], size: tuple[int, int], window_size: int) -> tuple[int, int]:
    """How far (pixels: rows, columns) a window test reaches from its centre at ``size``: the coarsest scale's
    window half-width plus one latent cell (the bilinear upsampling), at that scale's stride."""
    finest = max(z.shape[-2] for z in latents)
    coarsest = min(latents, key=lambda z: z.shape[-2])
    half = window_half(window_size, coarsest.shape[-2], finest)
    rows, cols = ((half + 1) * side / cells for side, cells in zip(size, coarsest.shape[-2:], strict=True))
    return math.ceil(rows), math.ceil(cols)


def _each_test(
    latents: list[np.ndarray],
    size: tuple[int, int],
    windows: Sequence[int],
    levels: Sequence[float],
    high_precision: bool,
    thresholds: dict[float, Any],
) -> Iterator[np.ndarray]:
    """Each (window size, level) pair's summed log10 P, one at a time; a level's candidates (against its thresholds)
    are counted once for all window sizes."""
    for level in levels:
        candidates = candidate_counts(latents, level, thresholds[level])
        for window_size in windows:
            # summed over scales: the scales' probabilities multiply (module docstring)
            yield sum(_scale_log_ps(scale_windows(candidates, window_size), size, level, high_precision))


def scale_log_p(
    latents: Sequence[np.ndarray | torch.Tensor],
    size: tuple[int, int],
    window_size: int = 7,
    probability_threshold: float = 0.5,
    high_precision: bool = False,
) -> list[np.ndarray]:
    """Each scale's log10 P upsampled to ``size`` (B, H, W) float64, in the latents' order, for one window size and
    level: :func:`log_nfa` sums them (and adds log10 of the number of tests); apart, they show which scale
    detects and how far each one's windows reach (benchmarks/nfa_check.py)."""
    latents = _as_arrays(latents)
    _check(latents, size, (window_size,), (probability_threshold,))
    counts = scale_window_counts(latents, window_size, probability_threshold)
    return list(_scale_log_ps(counts, size, probability_threshold, high_precision))


def _scale_log_ps(
    counts: list[tuple[np.ndarray, np.ndarray, int]], size: tuple[int, int], threshold: float, high_precision: bool
) -> Iterator[np.ndarray]:
    """Each scale's upsampled log10 P (B, H, W) of one window size's and level's tests (module docstring);
    ``counts``: :func:`scale_window_counts`'s."""
    q = 1.0 - threshold  # P(z^2 >= tau) under H0
    n_values = np.unique(np.concatenate([n.ravel() for _, n, _ in counts]))
    table = tail_table(n_values, q, high_precision)  # (len(n_values), n_max + 1)
    for total, n, channels in counts:
        row = np.searchsorted(n_values, n)  # (H, W), broadcasts against the counts (B, H, W)
        if threshold > 0.5:  # rounding up would itself be evidence (module docstring): interpolate
            whole, fraction = total // channels, (total % channels) / channels
            log_p = (1 - fraction) * table[row, whole] + fraction * table[row, np.minimum(whole + 1, n)]
        else:
            log_p = table[row, (total + channels - 1) // channels]  # k = ceil(total / C), in integers
        # bilinear, not the reference's bicubic: it cannot overshoot the tests' range (module docstring)
        yield resize_bilinear(log_p, tuple(size))


def scale_window_counts(
    latents: Sequence[np.ndarray], window_size: int, threshold: float
) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """Per scale, as the test counts them: the candidates (z^2 >= tau) of all channels in each window (B, H, W),
    the window sizes n (H, W) and the number of channels C."""
    return scale_windows(candidate_counts(latents, threshold), window_size)


def candidate_counts(
    latents: Sequence[np.ndarray], threshold: float, taus: Sequence[float] | None = None
) -> list[tuple[np.ndarray, int]]:
    """Per scale: the candidates (z^2 >= tau) at each position summed over channels (B, H, W) int64, and the
    number of channels C; tau is chi-square(1)'s ``threshold`` quantile, or each scale's of ``taus``."""
    taus = [chi2.ppf(threshold, 1)] * len(latents) if taus is None else taus
    counts = []
    for z, tau in zip(latents, taus, strict=True):
        tau, z = np.float32(tau), z.astype(np.float32, copy=False)  # compared in float32, as the latents are
        counts.append((np.count_nonzero(z * z >= tau, axis=1).astype(np.int64), z.shape[1]))
    return counts


def scale_windows(
    candidates: list[tuple[np.ndarray, int]], window_size: int
) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """:func:`candidate_counts`'s counts summed over each scale's window (:func:`window_half`): per scale, the
    candidates in each window (B, H, W), the window sizes n (H, W) and C."""
    finest = max(per_position.shape[-2] for per_position, _ in candidates)
    return [
        (*window_sums(per_position, window_half(window_size, per_position.shape[-2], finest)), channels)
        for per_position, channels in candidates
    ]


def rescaled(latents: Sequence[np.ndarray | torch.Tensor]) -> list[np.ndarray]:
    """Each image's (B, C, H, W) latents of each scale divided by their spread sqrt(median z^2 / median chi2(1)),
    where it is above 1 (module docstring); float32 numpy arrays, from arrays or tensors (any device)."""
    out = []
    for z in latents:
        z = _as_array(z).astype(np.float32, copy=False)
        spread = np.sqrt(np.median(np.square(z).reshape(len(z), -1), axis=1) / CHI2_1_MEDIAN)
        out.append(z / np.maximum(spread, 1.0).astype(np.float32).reshape(-1, 1, 1, 1))
    return out


def settings_of(model_config: dict[str, Any]) -> dict[str, Any]:
    """:func:`log_nfa`'s settings from a run's stored model config (its ``nfa_*`` fields; the defaults for a run
    that stored none): ``window_size``, ``probability_threshold``, ``high_precision``, ``rescale``, ``anchor``."""
    return {
        "window_size": model_config.get("nfa_window_size", 7),
        "probability_threshold": model_config.get("nfa_probability_threshold", 0.5),
        "high_precision": model_config.get("nfa_high_precision", False),
        "rescale": model_config.get("nfa_rescale", False),
        "anchor": model_config.get("nfa_anchor", False),
    }


# the options of the test that test, predict and serve may choose again (exact tails are a precision, not a test)
NFA_SWITCHES = ("nfa_rescale", "nfa_anchor")  # the ones that are on or off
NFA_OPTIONS = ("nfa_window_size", "nfa_probability_threshold", *NFA_SWITCHES)


def checked_options(options: dict[str, Any]) -> dict[str, Any]:
    """NFA options (:data:`NFA_OPTIONS`, e.g. given to ``flowad test`` or ``predict``) to put in place of a run's
    own model config fields: the test changes without retraining, the run's record stays as it was."""
    for name, value in options.items():
        if name not in NFA_OPTIONS:
            raise InputError(f"{name} cannot be chosen again after training; expected one of {', '.join(NFA_OPTIONS)}")
        if name in NFA_SWITCHES and not isinstance(value, bool):
            raise InputError(f"{option_flag(name)} {value}: expected true or false")
        check_value(name, value)
    return dict(options)


def describe(settings: dict[str, Any]) -> str:
    """:func:`settings_of`'s settings in words, e.g. "windows 3 7, level 0.5, rescaled" (for reports)."""

    def values(name: str, key: str) -> str:
        given = _values(settings[key])
        return f"{name}{'s' if len(given) > 1 else ''} {' '.join(f'{v:g}' for v in given)}"

    words = [values("window", "window_size"), values("level", "probability_threshold")]
    words += ["rescaled"] * bool(settings.get("rescale")) + ["anchored"] * bool(settings.get("anchor"))
    words += ["exact tails"] * bool(settings.get("high_precision"))
    return ", ".join(words)


def nfa_mask(
    latents: Sequence[np.ndarray | torch.Tensor], size: tuple[int, int], *args: Any, **kwargs: Any
) -> np.ndarray:
    """Boolean (B, H, W) segmentation at ``size``: True where log NFA < 0 (anomalous); settings as :func:`log_nfa`."""
    return log_nfa(latents, size, *args, **kwargs) < 0


def nfa_masks(model: AnomalyModel, latents: Sequence[np.ndarray | torch.Tensor], batch: int = 16) -> np.ndarray:
    """log NFA < 0 for every image of ``latents`` (N, H, W) bool, with the model's window, threshold and precision.

    No threshold is chosen: the a contrario test decides. A batch of images at a time, as the float64 maps
    of a whole test set at once would take much memory.
    """
    n = latents[0].shape[0]
    chunks = [model.log_nfa([z[i : i + batch] for z in latents]) < 0 for i in range(0, n, batch)]
    return np.concatenate(chunks)


def scored_nfa_masks(model: AnomalyModel, scored: dict[str, Any]) -> np.ndarray:
    """log NFA < 0 (N, H, W) bool for the images of ``flowad.engine.infer(..., keep_latents=True)``'s output: a tiled
    run's, computed there over each image's tiles, or the model's test on the kept latents."""
    return scored["nfa_masks"] if "nfa_masks" in scored else nfa_masks(model, scored["latents"])


def _as_arrays(latents: Any) -> Any:
    """numpy arrays of the latents; torch tensors are copied to the CPU without importing torch here."""
    if not isinstance(latents, (list, tuple)):
        return latents  # _check names the problem
    return [_as_array(z) for z in latents]


def _as_array(z: Any) -> np.ndarray:
    if hasattr(z, "detach"):  # a torch tensor; float32 first, as bfloat16 has no numpy type
        return z.detach().cpu().float().numpy()
    return np.asarray(z)


def _check(
    latents: list[np.ndarray], size: tuple[int, int], window_sizes: Sequence[int], levels: Sequence[float]
) -> None:
    if not isinstance(latents, (list, tuple)) or len(latents) == 0:
        raise InputError("latents is empty; expected a list of (B, C, H, W) latent maps")
    for i, z in enumerate(latents):
        if z.ndim != 4:
            raise InputError(f"latents[{i}] is {z.shape}; expected a 4D (B, C, H, W) array")
        if z.shape[0] != latents[0].shape[0]:
            raise InputError(f"latents[{i}] has batch {z.shape[0]}, latents[0] has {latents[0].shape[0]}")
        if z.size == 0:
            raise InputError(f"latents[{i}] is empty {z.shape}")
    if not isinstance(size, (tuple, list)) or len(size) != 2 or min(size) < 1:
        raise InputError(f"size is {size}; expected (height, width) of positive integers")
    if not _numbers(levels) or not all(0 < level < 1 for level in levels):
        raise InputError(f"probability_threshold is {_shown(levels)}; expected a probability in (0, 1), or several")
    if not _numbers(window_sizes) or any(int(w) != w or w < 1 for w in window_sizes):
        raise InputError(f"window_size is {_shown(window_sizes)}; expected a whole number of at least 1, or several")


def _thresholds(calibration: Mapping[float, Sequence[float]] | None, levels: Sequence[float], scales: int) -> dict:
    """Each level's candidate thresholds per scale: the calibration's (checked), or None (N(0, 1)'s)."""
    if calibration is None:
        return dict.fromkeys(levels)
    fitted = {float(level): list(taus) for level, taus in calibration.items()}
    for level in levels:
        taus = fitted.get(float(level))
        if taus is None or len(taus) != scales or not all(math.isfinite(t) and t > 0 for t in taus):
            raise InputError(
                f"the NFA's calibration has {taus} at level {level}; expected one positive threshold per scale"
                f" ({scales} here) for every level tested ({_shown(levels)})"
            )
    return fitted


def _values(given: Any) -> tuple[Any, ...]:
    """One value or several (a list, tuple or array) as a tuple of Python values, as given (not converted)."""
    items = given.tolist() if isinstance(given, np.ndarray) else given
    items = tuple(items) if isinstance(items, list | tuple) else (items,)
    return tuple(v.item() if isinstance(v, np.generic) else v for v in items)


def _numbers(values: Sequence[Any]) -> bool:
    return len(values) > 0 and all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)


def _shown(values: Sequence[Any]) -> Any:
    """Values as the caller gave them: one alone, several as a tuple."""
    return values if len(values) != 1 else values[0]
