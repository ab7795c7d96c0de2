"""The a contrario NFA segmentation: exact tails, few false alarms on noise, planted regions found."""

import math

import numpy as np
import pytest
import reference
import torch
from scipy.ndimage import maximum_filter
from scipy.stats import chi2

from flowad.binomial import log10_binomial_tail
from flowad.errors import InputError
from flowad.latent_stats import calibrated_levels
from flowad.nfa import ANCHOR_SHARE, CHI2_1_MEDIAN, log_nfa, nfa_mask, rescaled, scale_log_p, window_reach

SIZE = (448, 448)  # MS-CaiT's input size
FINE, COARSE = (816, 28, 28), (192, 14, 14)  # U-Flow's latents at 448


def _noise(n: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, *COARSE, generator=g), torch.randn(n, *FINE, generator=g)]


def _plant(latents: list[torch.Tensor], shift: float) -> list[torch.Tensor]:
    # a square a quarter of the side at 28x28 (7x7 cells, pixels 128..240 at 448), the cells covering it at 14x14
    coarse, fine = (z.clone() for z in latents)
    fine[:, :, 8:15, 8:15] += shift
    coarse[:, :, 4:8, 4:8] += shift
    return [coarse, fine]


def _far_out_square() -> list[torch.Tensor]:
    # the planted square of _plant with one value in five far out (|z| = 4.5), the rest N(0, 1)
    latents = [z.clone() for z in _noise(2, seed=84)]
    g = torch.Generator().manual_seed(85)
    for z, (lo, hi) in zip(latents, ((4, 8), (8, 15)), strict=True):
        square = z[:, :, lo:hi, lo:hi]
        far = torch.rand(square.shape, generator=g) < 0.2
        square[far] = 4.5 * torch.sign(square[far])
    return latents


def _planted_truth() -> np.ndarray:
    truth = np.zeros(SIZE, dtype=bool)
    truth[128:240, 128:240] = True
    return truth


@pytest.mark.parametrize("high_precision", [False, True])
@pytest.mark.parametrize(("n", "q"), [(1, 0.5), (9, 0.5), (16, 0.5), (49, 0.5), (49, 0.1), (25, 0.95), (49, 1e-3)])
def test_tail_is_exact(n: int, q: float, high_precision: bool) -> None:
    fast = log10_binomial_tail(n, q, high_precision)
    for k in range(n + 1):
        slow = reference.log10_binomial_tail(n, q, k)
        assert fast[k] == pytest.approx(slow, rel=1e-9, abs=1e-300), (n, q, k)


def test_tail_never_underflows() -> None:
    # 0.001^961 is far below the smallest double, its log10 (-2883) is not
    for high_precision in (False, True):
        tail = log10_binomial_tail(961, 1e-3, high_precision)
        assert np.isfinite(tail).all()
        assert tail[-1] == pytest.approx(961 * math.log10(1e-3), rel=1e-9)
        assert (np.diff(tail) <= 0).all() and tail[0] == 0


def test_pure_noise_is_almost_never_detected() -> None:
    detected, pixels = 0, 0
    for chunk in range(4):  # 100 images in chunks, to keep memory modest
        latents = _noise(25, seed=chunk)
        lnfa = log_nfa(latents, SIZE)
        assert lnfa.dtype == np.float64 and np.isfinite(lnfa).all()
        detected += int((lnfa < 0).sum())
        pixels += lnfa.size
    assert detected / pixels < 1e-3


def test_planted_region_is_found() -> None:
    latents = _plant(_noise(4, seed=10), shift=2.0)
    lnfa = log_nfa(latents, SIZE)
    assert np.isfinite(lnfa).all()
    mask, truth = lnfa < 0, _planted_truth()
    for m in mask:
        iou = (m & truth).sum() / (m | truth).sum()
        assert iou >= 0.6


def test_sign_convention_negative_log_nfa_is_anomalous() -> None:
    clean = _noise(1, seed=20)
    planted = _plant(clean, shift=3.0)
    assert log_nfa(clean, SIZE).min() > 0  # nothing is surprising in noise: NFA above 1
    lnfa = log_nfa(planted, SIZE)
    assert lnfa[0, 184, 184] < 0 and lnfa[0, 10, 10] > 0  # the square's centre vs a far corner
    mask = nfa_mask(planted, SIZE)
    assert isinstance(mask, np.ndarray) and mask.dtype == bool and mask[0, 184, 184] and not mask[0, 10, 10]
    assert np.array_equal(mask, lnfa < 0)


def test_larger_shift_gives_lower_minimum() -> None:
    clean = _noise(2, seed=30)
    minima = [float(log_nfa(_plant(clean, s), SIZE).min()) for s in (0.0, 0.5, 1.0, 1.5, 2.0, 3.0)]
    assert all(b <= a for a, b in zip(minima, minima[1:], strict=False)), minima


def test_order_of_scales_does_not_matter_and_windows_follow_resolution() -> None:
    latents = _plant(_noise(1, seed=40), shift=1.5)
    assert np.array_equal(log_nfa(latents, (64, 64)), log_nfa(latents[::-1], (64, 64)))
    assert np.allclose(log_nfa(latents, (64, 64)), log_nfa(latents, (64, 64), high_precision=True), atol=1e-9)


@pytest.mark.parametrize("high_precision", [False, True])
def test_numpy_latents_give_the_same_result_as_tensors(high_precision: bool) -> None:
    # a deployed engine's outputs are numpy: the same values must give the same map, hence the same mask;
    # float64 latents are decided in float32 like float32 ones (z^2 >= tau in float32 either way)
    latents = _plant(_noise(2, seed=50), shift=1.5)
    size = (100, 77)  # non-square, not a multiple of the latents
    from_tensors = log_nfa(latents, size, high_precision=high_precision)
    for arrays in ([z.numpy() for z in latents], tuple(z.numpy().astype(np.float64) for z in latents)):
        assert np.array_equal(log_nfa(arrays, size, high_precision=high_precision), from_tensors)
    assert (from_tensors < 0).any() and not (from_tensors < 0).all()


def test_upsampling_stays_within_the_range_of_the_window_tests() -> None:
    # bilinear upsampling of one scale gives weighted means of its windows' values: at the latent's own
    # resolution log NFA is exactly the windows' tests, at the image size it may not leave their range
    # (bicubic, the reference's choice, overshoots both ends at the planted square's edges)
    for z in _plant(_noise(2, seed=10), shift=2.0):
        windows = log_nfa([z], tuple(z.shape[-2:]))
        upsampled = log_nfa([z], SIZE)
        assert windows.min() <= upsampled.min() and upsampled.max() <= windows.max()
        assert upsampled.max() <= math.log10(z.shape[-2] * z.shape[-1])  # log10 P <= 0: no probability above 1


def test_one_scale_by_hand() -> None:
    # one 1-channel 3x3 latent, window 3 (half 1), threshold 0.5: a hand count at the centre and a corner
    z = torch.zeros(1, 1, 3, 3)
    z[0, 0, 0, :] = 5.0  # the top row exceeds tau = 0.455
    lnfa = log_nfa([z], (3, 3), window_size=3)
    tail9 = log10_binomial_tail(9, 0.5)
    tail4 = log10_binomial_tail(4, 0.5)
    assert float(lnfa[0, 1, 1]) == pytest.approx(tail9[3] + math.log10(9))  # 3 of 9
    assert float(lnfa[0, 2, 2]) == pytest.approx(tail4[0] + math.log10(9))  # corner: 0 of 4 inside
    assert float(lnfa[0, 0, 0]) == pytest.approx(tail4[2] + math.log10(9))  # corner: 2 of 4 inside


def test_count_is_averaged_over_channels_and_rounded_up() -> None:
    # two channels, one of which has every value above tau: mean count 4.5 of 9 -> k = 5
    z = torch.zeros(1, 2, 3, 3)
    z[0, 0] = 5.0
    z[0, 1, 1, 1] = 5.0  # a tenth candidate: 10 / 2 = 5
    lnfa = log_nfa([z], (3, 3), window_size=3)
    assert float(lnfa[0, 1, 1]) == pytest.approx(log10_binomial_tail(9, 0.5)[5] + math.log10(9))
    z[0, 1, 1, 1] = 0.0  # 9 / 2 = 4.5 -> still k = 5
    lnfa = log_nfa([z], (3, 3), window_size=3)
    assert float(lnfa[0, 1, 1]) == pytest.approx(log10_binomial_tail(9, 0.5)[5] + math.log10(9))


def test_above_one_half_the_tail_is_interpolated_between_whole_counts() -> None:
    # threshold 0.9 (q = 0.1): one channel of two has every value a candidate: mean count 4.5 of 9 at the centre
    z = torch.zeros(1, 2, 3, 3)
    z[0, 0] = 5.0
    lnfa = log_nfa([z], (3, 3), window_size=3, probability_threshold=0.9)
    tail9, tail4 = log10_binomial_tail(9, 0.1), log10_binomial_tail(4, 0.1)
    assert float(lnfa[0, 1, 1]) == pytest.approx(0.5 * tail9[4] + 0.5 * tail9[5] + math.log10(9), rel=1e-6)
    assert float(lnfa[0, 0, 0]) == pytest.approx(tail4[2] + math.log10(9), rel=1e-6)  # 2 of 4: a whole count
    z[0, 1] = 5.0  # every value a candidate: 9 of 9, the top of the tail
    lnfa = log_nfa([z], (3, 3), window_size=3, probability_threshold=0.9)
    assert float(lnfa[0, 1, 1]) == pytest.approx(tail9[9] + math.log10(9), rel=1e-6)


@pytest.mark.parametrize(("side", "threshold"), [(32, 0.7), (32, 0.9), (256, 0.99)])
def test_above_one_half_pure_noise_stays_unflagged_at_small_and_large_sizes(side: int, threshold: float) -> None:
    # the mean count rounded up flagged 1, 15 and 16 of these 16 images (32 px at 0.7 and 0.9, 256 px at 0.99)
    g = torch.Generator().manual_seed(90)
    cells = side // 8
    latents = [torch.randn(16, 24, max(cells >> k, 1), max(cells >> k, 1), generator=g) for k in range(3)]
    assert not (log_nfa(latents, (side, side), probability_threshold=threshold) < 0).any()


def test_rescaled_divides_each_image_by_its_own_spread_never_below_one() -> None:
    g = torch.Generator().manual_seed(60)
    z = torch.randn(3, 64, 16, 16, generator=g).numpy()
    z[0] *= 1.5  # widened all over
    z[1] *= 0.7  # narrower than N(0, 1): left as it is
    out = rescaled([z])[0]
    spread = np.sqrt(np.median(np.square(z).reshape(3, -1), axis=1) / CHI2_1_MEDIAN)  # a direct computation
    assert spread[0] == pytest.approx(1.5, rel=0.05) and spread[1] == pytest.approx(0.7, rel=0.05)
    assert np.allclose(out[0], z[0] / spread[0], rtol=1e-6) and np.median(np.square(out[0])) == pytest.approx(
        CHI2_1_MEDIAN, rel=1e-5
    )
    assert np.array_equal(out[1], z[1]) and out.dtype == np.float32
    assert np.array_equal(out[2], z[2] / np.float32(max(spread[2], 1.0)))


def test_rescaled_test_spares_widened_good_latents_and_still_finds_a_planted_region() -> None:
    # good images unlike the training images: latents wider than N(0, 1) all over, no defect
    widened = [z * 1.6 for z in _noise(8, seed=70)]
    assert (log_nfa(widened, SIZE) < 0).any(axis=(1, 2)).mean() >= 0.5  # the plain test flags them
    assert not (log_nfa(widened, SIZE, rescale=True) < 0).any()
    planted = _plant(widened, shift=3.2)  # the same shift relative to the spread as test_planted_region_is_found
    plain, rescaled_mask = log_nfa(planted, SIZE) < 0, log_nfa(planted, SIZE, rescale=True) < 0
    assert not (rescaled_mask & ~plain).any()  # a subset of the plain test's pixels
    truth = _planted_truth()
    for m in rescaled_mask:
        assert (m & truth).sum() / (m | truth).sum() >= 0.6
    noise = _noise(25, seed=71)  # on N(0, 1) it stays as rare as the plain test
    assert (log_nfa(noise, SIZE, rescale=True) < 0).mean() <= (log_nfa(noise, SIZE) < 0).mean()


def test_several_window_sizes_take_each_pixels_smallest_test_and_count_every_test() -> None:
    latents = _plant(_noise(2, seed=80), shift=1.5)
    windows = (3, 7, 15)
    several = log_nfa(latents, SIZE, window_size=windows)
    # direct: every size's test, counted once more for each size (a union bound)
    each = np.stack([log_nfa(latents, SIZE, window_size=w) for w in windows])
    assert np.allclose(several, each.min(axis=0) + math.log10(len(windows)), atol=1e-9)
    assert np.array_equal(log_nfa(latents, SIZE, window_size=[7]), log_nfa(latents, SIZE))
    noise = _noise(25, seed=81)
    assert (log_nfa(noise, SIZE, window_size=windows) < 0).mean() < 1e-3


def test_several_levels_and_windows_take_each_pixels_smallest_test_and_count_every_pair() -> None:
    latents = _plant(_noise(2, seed=82), shift=1.5)
    windows, levels = (3, 7), (0.5, 0.9, 0.99)
    several = log_nfa(latents, SIZE, window_size=windows, probability_threshold=levels)
    each = np.stack([log_nfa(latents, SIZE, window_size=w, probability_threshold=lv) for w in windows for lv in levels])
    assert np.allclose(several, each.min(axis=0) + math.log10(len(windows) * len(levels)), atol=1e-9)
    assert np.array_equal(log_nfa(latents, SIZE, probability_threshold=[0.5]), log_nfa(latents, SIZE))
    noise = _noise(25, seed=83)
    assert (log_nfa(noise, SIZE, window_size=(3, 7, 15), probability_threshold=levels) < 0).mean() < 1e-3


@pytest.mark.parametrize("level", [0.5, 0.99])
def test_each_scales_log_p_apart_sums_to_the_test(level: float) -> None:
    latents = _plant(_noise(2, seed=84), shift=1.5)
    apart = scale_log_p(latents, SIZE, window_size=7, probability_threshold=level)
    assert [p.shape for p in apart] == [(2, *SIZE)] * 2 and all(p.dtype == np.float64 for p in apart)
    positions = 14 * 14 + 28 * 28
    whole = log_nfa(latents, SIZE, window_size=7, probability_threshold=level)
    assert np.allclose(apart[0] + apart[1] + math.log10(positions), whole, atol=1e-9)
    # one scale alone: its log10 P is the whole test less log10 of its positions; in the latents' order
    fine_alone = scale_log_p(latents[1:], SIZE, probability_threshold=level)[0]
    assert np.allclose(fine_alone, log_nfa(latents[1:], SIZE, probability_threshold=level) - math.log10(28 * 28))
    reversed_order = scale_log_p(latents[::-1], SIZE, probability_threshold=level)
    assert np.array_equal(reversed_order[0], apart[1]) and np.array_equal(reversed_order[1], apart[0])
    with pytest.raises(InputError, match="probability_threshold is 1.5"):
        scale_log_p(latents, SIZE, probability_threshold=1.5)


def test_a_high_level_finds_a_few_strong_values_the_mean_count_misses() -> None:
    # one value in five of the planted square is far out (|z| = 4.5), the rest N(0, 1): at level 0.5 the candidate
    # rate there moves from 0.5 to 0.6, at 0.99 from 0.01 to 0.21
    latents = _far_out_square()
    truth = _planted_truth()
    plain = log_nfa(latents, SIZE) < 0
    levels = log_nfa(latents, SIZE, probability_threshold=(0.5, 0.9, 0.99)) < 0
    for m in plain:
        assert (m & truth).sum() / (m | truth).sum() < 0.2
    for m in levels:
        assert (m & truth).sum() / (m | truth).sum() >= 0.6


def _iou(mask: np.ndarray, truth: np.ndarray) -> float:
    return float((mask & truth).sum() / (mask | truth).sum())


@pytest.mark.parametrize("share", [ANCHOR_SHARE, 1 / 3])
def test_anchored_first_test_alone_within_reach_of_its_detections_the_others_elsewhere(share: float) -> None:
    latents = _plant(_noise(2, seed=86), shift=1.5)
    levels = (0.5, 0.9, 0.99)
    given = {} if share == ANCHOR_SHARE else {"anchor_share": share}  # the default share: 0.98
    anchored = log_nfa(latents, SIZE, probability_threshold=levels, anchor=True, **given)
    # direct: the first level's test at its share of the budget, the other two sharing the rest, the reach by hand:
    # the coarse scale (14 of 448 px: stride 32) has window 7 * 14 / 28 = 3.5 -> half-width 1, plus one cell
    assert window_reach(latents, SIZE, 7) == (64, 64)
    first = log_nfa(latents, SIZE, probability_threshold=0.5) + math.log10(1 / share)
    others = log_nfa(latents, SIZE, probability_threshold=levels[1:]) + math.log10(1 / (1 - share))
    near = maximum_filter(first < 0, size=(1, 129, 129))
    assert near.any() and not near.all()
    assert np.allclose(anchored, np.where(near, first, np.minimum(first, others)), atol=1e-9)
    # one test: anchoring changes nothing
    assert np.array_equal(log_nfa(latents, SIZE, anchor=True), log_nfa(latents, SIZE))


def test_anchored_levels_keep_the_papers_masks_around_strong_defects_and_find_faint_ones() -> None:
    truth = _planted_truth()
    levels = (0.5, 0.9, 0.99)
    strong = _plant(_noise(2, seed=87), shift=2.0)
    paper = log_nfa(strong, SIZE) < 0
    spilled = log_nfa(strong, SIZE, probability_threshold=levels) < 0
    anchored = log_nfa(strong, SIZE, probability_threshold=levels, anchor=True) < 0
    for p, s, a in zip(paper, spilled, anchored, strict=True):
        assert a.sum() < s.sum() and _iou(a, truth) > _iou(s, truth)
        assert np.array_equal(a & ~p, np.zeros_like(a))  # around a strong defect only the paper's test speaks
    # one value in five far out: the paper's test finds little, the anchored levels most of the square
    for m in log_nfa(_far_out_square(), SIZE, probability_threshold=levels, anchor=True) < 0:
        assert _iou(m, truth) >= 0.6
    noise = _noise(25, seed=88)
    assert (log_nfa(noise, SIZE, probability_threshold=levels, anchor=True) < 0).mean() < 1e-3


def test_calibrated_levels_are_the_good_values_z2_quantiles_and_chi_square_on_noise() -> None:
    noise = _noise(4, seed=90)
    calibration = calibrated_levels(noise, (0.5, 0.99))
    for level, taus in calibration.items():
        assert len(taus) == 2 and taus == pytest.approx([chi2.ppf(level, 1)] * 2, rel=0.03)
        for z, tau in zip(noise, taus, strict=True):  # a direct count: the share of values at or above tau
            assert (z.numpy().astype(np.float64) ** 2 >= tau).mean() == pytest.approx(1 - level, abs=2e-3)
    # N(0, 1)'s own thresholds give the uncalibrated test exactly
    exact = {level: [float(np.float32(chi2.ppf(level, 1)))] * 2 for level in (0.5, 0.9, 0.99)}
    latents = _plant(_noise(2, seed=91), shift=1.5)
    levels = (0.5, 0.9, 0.99)
    assert np.array_equal(
        log_nfa(latents, SIZE, probability_threshold=levels, calibration=exact),
        log_nfa(latents, SIZE, probability_threshold=levels),
    )
    with pytest.raises(InputError, match="calibrated_levels needs good images' latents"):
        calibrated_levels([np.zeros((0, 2, 4, 4))], levels)


def test_calibrated_test_keeps_the_promise_on_wide_heavy_tailed_good_latents_and_finds_a_planted_region() -> None:
    # good latents wider than N(0, 1) with heavier tails (Student t with 5 degrees of freedom, scaled by 1.2)
    def good(n: int) -> list[torch.Tensor]:
        return [1.2 * torch.distributions.StudentT(5.0).sample((n, *shape)) for shape in (COARSE, FINE)]

    torch.manual_seed(92)  # StudentT samples from torch's global generator
    fit, unseen = good(4), good(12)
    levels, windows = (0.5, 0.9, 0.99), (7, 3, 15)
    calibration = calibrated_levels(fit, levels)
    assert all(taus[0] > chi2.ppf(level, 1) for level, taus in calibration.items())  # wider: higher thresholds
    settings = {"window_size": windows, "probability_threshold": levels}
    assert (log_nfa(unseen, SIZE, **settings) < 0).any(axis=(1, 2)).mean() >= 0.5  # N(0, 1)'s test flags them
    for anchor in (False, True):
        assert not (log_nfa(unseen, SIZE, **settings, calibration=calibration, anchor=anchor) < 0).any()
    # anchored, as large windows alone spill around a strong square (README, Thresholds)
    found = log_nfa(_plant(good(2), shift=3.0), SIZE, **settings, calibration=calibration, anchor=True) < 0
    assert all(_iou(m, _planted_truth()) >= 0.6 for m in found)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"latents": []}, "latents is empty"),
        ({"latents": [torch.zeros(2, 3, 4)]}, r"latents\[0\] is \(2, 3, 4\); expected a 4D"),
        ({"latents": [np.zeros((2, 3, 4))]}, r"latents\[0\] is \(2, 3, 4\); expected a 4D"),
        ({"latents": [np.zeros((1, 2, 4, 4)), np.zeros((2, 2, 2, 2))]}, r"latents\[1\] has batch 2"),
        ({"probability_threshold": 1.0}, "probability_threshold is 1.0"),
        ({"probability_threshold": 0.0}, "probability_threshold is 0.0"),
        ({"probability_threshold": (0.5, 1.0)}, r"probability_threshold is \(0.5, 1.0\)"),
        ({"probability_threshold": []}, r"probability_threshold is \(\)"),
        ({"window_size": 0}, "window_size is 0"),
        ({"window_size": (3, 0)}, r"window_size is \(3, 0\)"),
        ({"window_size": []}, r"window_size is \(\)"),
        ({"probability_threshold": "0.5"}, "probability_threshold is 0.5; expected a probability"),
        ({"window_size": (3, "7")}, r"window_size is \(3, '7'\)"),
        ({"anchor": True, "anchor_share": 1.0}, "anchor_share is 1.0; expected a share"),
        ({"calibration": {0.9: [3.0]}}, r"calibration has None at level 0.5; expected one positive threshold per"),
        ({"calibration": {0.5: [0.4, 0.5]}}, r"calibration has \[0.4, 0.5\] at level 0.5; expected one positive"),
        ({"calibration": {0.5: [-1.0]}}, r"calibration has \[-1.0\] at level 0.5"),
    ],
)
def test_bad_inputs_are_clear_errors(kwargs: dict, message: str) -> None:
    args = {"latents": [torch.zeros(1, 2, 4, 4)], "size": (8, 8), **kwargs}
    with pytest.raises(InputError, match=message):
        log_nfa(**args)
