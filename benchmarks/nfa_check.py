"""On real textures, does the NFA keep its promise and find the defects, and does a variant do better?

    python benchmarks/nfa_check.py --out runs/nfa --models uflow fastflow cflow --threads 2 \\
        --append benchmarks/RESULTS.md

Data: texture_check.py's photographs (brick, grass, gravel; planted stains, scratches and patches with exact
masks) plus --good more good crops per texture; with ``--data demo``, the demo's fabric and pill plus --good
more good demo images (another seed's); with ``--data object``, object_data.py's real object (one photographed cup,
each view placed a little differently) plus --good more views (another seed's). Per model and texture, one run at
flowad's defaults (the demo's presets; ``--settings check``: the held-out check's, batch 16 and FastFlow 10 epochs,
CFLOW-AD 3, U-Flow 30), then on its latents:

- diagnostics: the good validation images' latents against N(0, 1) per scale (``flowad.latent_stats``), the same
  for the --good images, and the window candidate rate (the count statistic) inside and outside the defects;
- the seed's NFA (``flowad.nfa.log_nfa``): IoU at log NFA < 0 against the oracle IoU, and the share of the
  --good good images with any pixel flagged; then the same for pure N(0, 1) latents of the same shapes;
- what the promise allows: the IoU of the anomaly map thresholded at the value that 1 % of the --good good
  images' map maxima exceed (so at most 1 in 100 good images flagged, the NFA's target); the oracle IoU's
  threshold flags as many good images as it takes;
- what the promise allows each test: per image its smallest log NFA, the AUROC of that minimum on the defective
  against the --good images, and the share of defective images whose minimum is below the level that 1 % of the
  good images reach: no threshold on that test's log NFA that keeps the promise flags more defective images;
- "seed at NFA < 0.01": the seed's test asked 100 times more strictly (log NFA < -2), the level the
  quasi-binomial and region variants use;
- the variant "fitted null": per scale, the window's candidate rate (candidates / (C n)) is compared with a
  Gaussian fitted on the run's good validation images (mean, and variance at full windows, scaled by n for cut
  windows), one-sided; the scales' p-values are combined by Fisher's method (a valid p-value, where the seed's
  product of p-values is not), times the same number of tests. No labels are used.
- "windows": the seed's test at window sizes 3, 7 and 15, the smallest log NFA of the three per pixel, and
  three times the tests (a union bound: valid whenever each test is): flowad's ``--nfa-window-size 3 7 15``.
- "levels": the same over candidate levels (probability thresholds) 0.5, 0.9 and 0.99 (above 0.5 with the count's
  tail interpolated, as ``flowad.nfa`` does): flowad's ``--nfa-probability-threshold 0.5 0.9 0.99``.
- "windows and levels": both at once: window sizes 3, 7 and 15 at each of the levels 0.5, 0.9 and 0.99, nine
  tests per position counted (``--nfa-window-size 3 7 15 --nfa-probability-threshold 0.5 0.9 0.99``).
- "levels, scales apart": the levels' tests with every scale a test of its own: a pixel takes the smallest
  upsampled log10 P over the levels and scales, plus log10 of every level's positions over all scales (a union
  bound), where the seed's test adds the scales' log10 P (``flowad.nfa.scale_log_p`` gives them apart). The
  coarsest scale's window covers the most of the image (never under 3 x 3 positions; U-Flow's at 256 px: 48 px
  against the finest scale's 28), and in the sum strong evidence there adds to the finer scales' weak evidence
  around a defect; apart, each scale must carry a pixel alone.
- "levels, anchored": flowad's ``--nfa-probability-threshold 0.5 0.9 0.99 --nfa-anchor``: the paper's test
  delineates where it detects, the higher levels add detections elsewhere: within reach of the paper's test's own
  detections (``flowad.nfa.window_reach``: the coarsest scale's window half-width plus one cell, at its stride; 32 px
  for U-Flow at 256 px) a pixel takes the paper's test alone, elsewhere the smallest of the levels' tests; the
  paper's test keeps 0.98 of the false-alarm budget and the higher levels share the rest (a weighted union bound;
  ``flowad.nfa``'s docstring). "levels, anchored evenly": the same with the budget shared evenly, as "levels"
  shares it (``anchor_share=1/3``: log10 3 added to every level's test), so that it flags a subset of "levels"' pixels.
- "windows and levels, anchored" and "... anchored evenly": windows 7, 3 and 15 at levels 0.5, 0.9 and 0.99 anchored
  on the paper's test (window 7 at 0.5) as "levels, anchored" is: flowad's ``--nfa-window-size 7 3 15
  --nfa-probability-threshold 0.5 0.9 0.99 --nfa-anchor``; evenly: the budget shared as unanchored (a ninth each).
- "windows 7 and 15 at levels 0.5 and 0.9, anchored": the same with window 15 at level 0.9, the pair that finds
  gravel's faint defects, as the only larger window and higher level (``--nfa-window-size 7 15
  --nfa-probability-threshold 0.5 0.9 --nfa-anchor``): whether the good images it flags come from that pair too.
- "..., calibrated" ("levels", "windows and levels", and their anchored forms): each level's candidate threshold per
  scale fitted on the good images (``flowad.latent_stats.calibrated_levels``: the z^2 they exceed with probability
  1 - level) in place of chi-square(1)'s (``flowad.nfa.log_nfa``'s ``calibration``); no labels.
- "quasi-binomial": every candidate of every channel counts (the seed counts the mean over channels), and
  the count of C n trials is tested as a binomial whose rate and overdispersion are learned per scale from the
  good validation images (no labels): with rate q and dispersion D = Var / (C n q (1 - q)) at full windows, the
  count k of a window of n pixels is tested as P[Bin(C n / D, q) >= k / D] (rounded). These tests are not
  conservative, so the scales are not multiplied as the seed does (a product of p-values is far below each;
  on pure noise that flagged 95 % of the images): a pixel takes its smallest upsampled scale test, times the
  same number of tests (a union bound over every position of every scale), times 100: exact tests at NFA < 1
  allow one false detection per image on average (26 % of pure-noise images flagged, measured), and the target
  is at most one image in 100 flagged, so this variant asks NFA < 0.01.
- "regions" and "regions, fitted": region candidates. Per scale, each position's energy sum_c z^2 gets an
  upper-tail probability p: the chi-square(C) tail ("regions": the seed's N(0, 1) null) or the share of the good
  validation images' positions of that scale with at least that energy ("regions, fitted": an empirical null, no
  labels). At each level l in REGION_LEVELS the 4-connected components of {p < l} are the candidates; a component
  of n positions has NFA = T (3e)^(n - 1) l^n with T = every position of every scale x the levels x 100: under
  independent positions, P(a given connected set of n positions all below l) = l^n, and a graph of degree 4 has
  at most (e (4 - 1))^(n - 1) connected sets of n vertices through a given vertex, so every possible region is
  counted in the tests; the 100 asks NFA < 0.01 as the quasi-binomial variant does. The detected positions are
  upsampled bilinearly to the image (a pixel is flagged where the upsampled indicator is above one half).
- "..., rescaled" (the seed's test, "windows", "levels", "windows and levels", "fitted", "quasi-binomial",
  "regions, fitted"): the variant on latents rescaled as flowad's ``--nfa-rescale`` does: each image's latents
  of each scale divided first by their own spread sqrt(median z^2 / median chi-square(1)) where it is above 1
  (``flowad.nfa.rescaled``; no labels: each image is its own reference), the fitted nulls fitted on rescaled
  good latents too.

``--seeds`` trains each model once per seed (seed 0's runs at ``--out/<model>/<category>``, another's under
``--out/seed<N>``); ``--device cuda`` trains and scores on a GPU (the tests themselves run on the CPU).

Which good images fit the nulls (``--null-from``): by default the run's good validation images, as a user's run
would; the false detections are counted on all the --good images. On texture_check's photographs the validation
crops come from the same rows of the photograph as the training crops (so they overlap them), while the test and
the --good crops come from the other rows: with ``--null-from good`` the nulls and the map threshold's bound are
fitted on the first half of the --good images instead (unseen good crops of the test rows, no labels) and the
false detections counted on the second half, so a fitted null gets good images like those it is tested on.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from _harness import (
    add_append_argument,
    add_device_argument,
    add_models_argument,
    add_threads_argument,
    machine_description,
    markdown_table,
    positive_int,
    publish,
    script_parser,
    section,
    set_threads,
    train_run,
)
from _nfa_variants import VARIANTS, fit_null, variant_of, window_rates
from object_check import SETTINGS
from object_data import CATEGORY, write_good_views, write_object_data
from texture_check import TEXTURES, write_data, write_good_crops


def main() -> None:
    parser = _parser()
    args = parser.parse_args()
    if args.null_from == "good" and args.good < 2:
        parser.error(f"--good {args.good} with --null-from good: expected at least 2 images, half to fit on")
    set_threads(args.threads)
    data, good, categories = write_images(args.out, args.data, args.good)
    rows, diagnostics = [], []
    for seed in args.seeds:
        for model in args.models:
            for texture in categories:
                run = run_folder(args.out, model, texture, seed)
                if not (run / "config.json").is_file():
                    options = training_options(model, args.settings)
                    train_run(run, model, data, texture, options, device=args.device, seed=seed)
                row, lines = _check(run, data, texture, good / texture, args.variants, args.null_from, args.device)
                name = texture if args.seeds == [0] else f"{texture}, seed {seed}"
                rows.append([model, name, *row])
                diagnostics += [f"- {model}, {name}: {line}" for line in lines]
                print(rows[-1], *lines, sep="\n", flush=True)
    publish(_section(args, rows, diagnostics), args.append)


def training_options(model: str, settings: str) -> dict[str, Any]:
    """``model``'s options at flowad's defaults (the demo's presets) or at the held-out check's ``settings``."""
    from flowad.cli_commands import DEMO_PRESETS

    return dict({"batch_size": 16, **SETTINGS[model]} if settings == "check" else DEMO_PRESETS.get(model, {}))


def run_folder(out: Path, model: str, category: str, seed: int) -> Path:
    """Where the run of ``model`` on ``category`` trained with ``seed`` lives: seed 0's at ``out/model/category``
    (the runs measured before seeds were an option), another seed's under ``out/seed<N>``."""
    return out / model / category if seed == 0 else out / f"seed{seed}" / model / category


def write_images(out: Path, name: str, good_images: int) -> tuple[Path, Path, tuple[str, ...]]:
    """The data set, a folder of ``good_images`` more good images per category, and the categories: texture_check's
    photographs (``name`` "textures", or "textures-anywhere": every crop anywhere in the photograph), the demo's
    (``name`` "demo") or object_data.py's real object ("object"), written once under ``out``."""
    data, good = out / "data", out / "good"
    if name.startswith("textures"):
        split = name == "textures"
        if not (data / TEXTURES[-1] / "ground_truth").is_dir():
            write_data(data, split=split)
        if not (good / TEXTURES[-1]).is_dir():
            write_good_crops(good, good_images, split=split)
        return data, good, TEXTURES
    if name == "object":
        if not (data / CATEGORY / "ground_truth").is_dir():
            write_object_data(data)
        if not (good / CATEGORY).is_dir():
            write_good_views(good, good_images)
        return data, good, (CATEGORY,)
    from flowad.data.synthetic import CATEGORIES, make_demo_dataset

    if not (data / CATEGORIES[-1]).is_dir():
        make_demo_dataset(data, seed=0)
    good.mkdir(parents=True, exist_ok=True)
    for category in CATEGORIES:  # another seed's demo training images: new good images
        if not (good / category).is_dir():
            extra = make_demo_dataset(
                out / "extra", seed=5, categories=(category,), n_train=good_images, n_test_good=1, n_test_per_defect=1
            )
            (extra / category / "train" / "good").rename(good / category)
    return data, good, CATEGORIES


def _check(
    run: Path,
    data: Path,
    texture: str,
    good_dir: Path,
    variants: tuple[str, ...],
    null_from: str = "validation",
    device: str = "cpu",
) -> tuple[list[str], list[str]]:
    from flowad import metrics
    from flowad.checkpoint import load_run
    from flowad.data.datasets import ImageDataset, Sample, list_images
    from flowad.data.spec import DataSpec
    from flowad.engine import infer
    from flowad.latent_stats import latent_statistics
    from flowad.nfa import settings_of
    from flowad.records import EngineSettings

    net, record = load_run(run)
    settings = EngineSettings(quiet=True, device=device)
    splits = DataSpec(root=str(data), category=texture).splits(record.seed)

    def latents_of(samples: list) -> dict[str, Any]:
        return infer(net, ImageDataset(samples, record.preprocess), settings, keep_latents=True)

    val = [z.numpy() for z in latents_of([s for s in splits.val if s.label == 0])["latents"]]
    test = latents_of(splits.test)
    extra_out = latents_of([Sample(p, 0) for p in list_images(good_dir)])
    extra = [z.numpy() for z in extra_out["latents"]]
    nfa = settings_of(record.model_config)
    several = {k: nfa[k] for k in ("window_size", "probability_threshold") if isinstance(nfa[k], list)}
    if several:  # the variants start from the paper's one window and one level (their own lists are theirs)
        raise SystemExit(f"{run}: the variants start from one window size and one level; the run has {several}")
    size = record.preprocess.size
    labels = np.array([s.label for s in splits.test])
    anomalous = (labels == 1) & test["masks"].any(axis=(1, 2))
    test_latents = [z.numpy() for z in test["latents"]]
    fit, measured, bound_maps = val, extra, extra_out["maps"]
    if null_from == "good":  # fitted and bounded on one half of the unseen good images, counted on the other
        half = len(extra[0]) // 2
        fit, measured, bound_maps = [z[:half] for z in extra], [z[half:] for z in extra], bound_maps[:half]
    rng = np.random.default_rng(7)
    noise = [rng.standard_normal((len(measured[0]), *z.shape[1:]), dtype=np.float32) for z in fit]
    noise_fit = [rng.standard_normal(z.shape, dtype=np.float32) for z in fit]  # the nulls fitted on noise itself
    masks = test["masks"]
    row = [f"{metrics.oracle_iou(test['maps'][anomalous], masks[anomalous])[0]:.3f}"]
    row.append(f"{iou_at_good_rate(test['maps'][anomalous], masks[anomalous], bound_maps):.3f}")
    null = fit_null(fit, nfa["window_size"], nfa["probability_threshold"])
    areas = []  # detected pixels / defect pixels on the anomalous images: above 1, the masks spill over the defects
    separations = []  # could any level of this test find the defective images while keeping the promise?
    for variant in variants:
        on_good, on_noise = variant_of(variant, fit, nfa), variant_of(variant, noise_fit, nfa)
        found_nfa, good_nfa = _log_nfa(on_good, test_latents, size), _log_nfa(on_good, measured, size)
        found = found_nfa < 0
        flagged, flagged_noise = _flagged(good_nfa < 0), _flagged(_log_nfa(on_noise, noise, size) < 0)
        row.append(f"{metrics.iou(found[anomalous], masks[anomalous]):.3f} / {flagged:.3f} / {flagged_noise:.3f}")
        inside = (found[anomalous] & masks[anomalous]).sum() / max(found[anomalous].sum(), 1)
        areas.append(f"{variant} {found[anomalous].sum() / masks[anomalous].sum():.2f} ({inside:.2f} inside)")
        separations.append(f"{variant} {separation(found_nfa[anomalous], good_nfa)}")
    lines = [
        f"{name} latents per scale (mean z^2, candidate rate, neighbour / channel correlation): "
        + "; ".join(
            f"{s.mean_z2:.2f}, {s.candidate_rate:.2f}, {s.neighbour_correlation:.2f} / {s.channel_correlation:.2f}"
            for s in latent_statistics(latents, nfa["probability_threshold"])
        )
        for name, latents in (("good validation", val), (f"the {len(extra[0])} more good images'", extra))
    ]
    seed_on_val = _masks(variant_of("seed", val, nfa), val, size).any(axis=(1, 2))
    lines += [
        f"the seed's test flags {int(seed_on_val.sum())} of {len(seed_on_val)} good validation images",
        "window candidate rate inside / outside defects per scale: "
        + "; ".join(f"{a:.3f} / {b:.3f}" for a, b in _rates_inside_outside(test_latents, masks, nfa)),
        "fitted null per scale (mean rate, sd at full windows): "
        + "; ".join(f"{m:.3f}, {math.sqrt(v):.4f}" for m, v, _ in null),
        "detected area / defect area (share of the detected pixels inside the defects): " + "; ".join(areas),
        "per image, the smallest log NFA: AUROC of defective against good images, and the share of defective images"
        " below the level that 1 % of the good images reach: " + "; ".join(separations),
    ]
    return row, lines


def _masks(log_nfa_of: Any, latents: list[np.ndarray], size: tuple[int, int]) -> np.ndarray:
    return _log_nfa(log_nfa_of, latents, size) < 0


def _log_nfa(log_nfa_of: Any, latents: list[np.ndarray], size: tuple[int, int], batch: int = 16) -> np.ndarray:
    n = len(latents[0])
    return np.concatenate([log_nfa_of([z[i : i + batch] for z in latents], size) for i in range(0, n, batch)])


def separation(defective: np.ndarray, good: np.ndarray, rate: float = 0.01) -> str:
    """How well the smallest log NFA per image tells the ``defective`` images' log NFA maps from the ``good``
    ones': its AUROC, and the share of defective images below the level that ``rate`` of the good images reach, the
    most that any threshold on this test's log NFA could find while keeping the promise (at most ``rate`` flagged)."""
    from flowad import metrics

    bad_min, good_min = defective.reshape(len(defective), -1).min(1), good.reshape(len(good), -1).min(1)
    labels = np.r_[np.ones(len(bad_min)), np.zeros(len(good_min))]
    auroc = metrics.image_auroc(-np.r_[bad_min, good_min], labels)
    return f"{auroc:.3f}, {np.mean(bad_min < np.quantile(good_min, rate)):.2f}"


def _flagged(masks: np.ndarray) -> float:
    return float(masks.any(axis=(1, 2)).mean())


def iou_at_good_rate(maps: np.ndarray, masks: np.ndarray, good_maps: np.ndarray, rate: float = 0.01) -> float:
    """IoU of ``maps`` thresholded where at most ``rate`` of the good images' maps have any pixel above: the best a
    map threshold does while keeping the NFA's promise (measured on the extra good images, as the NFA is)."""
    from flowad import metrics

    threshold = np.quantile(good_maps.reshape(len(good_maps), -1).max(1), 1 - rate)
    return metrics.iou(maps > threshold, masks)


def _rates_inside_outside(latents: list[np.ndarray], masks: np.ndarray, nfa: dict[str, Any]) -> list[tuple]:
    from flowad.resize import resize_bilinear

    out = []
    for rate, _, _ in window_rates(latents, nfa):
        small = resize_bilinear(masks.astype(np.float32), rate.shape[-2:]) > 0.5
        out.append((float(rate[small].mean()) if small.any() else float("nan"), float(rate[~small].mean())))
    return out


def _section(args: Any, rows: list[list[str]], diagnostics: list[str]) -> str:
    about = (
        f"\n\nEach run {_SETTINGS_TEXT[args.settings]}; IoU over the anomalous test images; flagged: the "
        f"share of {args.good} good images per texture (and of as many pure N(0, 1) latents of the model's shapes)"
        " with any pixel at log NFA < 0. Module docstring: the variant.\n" + _null_from_note(args)
    )
    return section(
        _TITLES[args.data] + (", at the held-out check's settings" if args.settings == "check" else ""),
        machine_description(args.threads),
        about,
        ["", *markdown_table(_headers(args.variants), rows), "", "Diagnostics:", "", *diagnostics],
    )


_SETTINGS_TEXT = {
    "defaults": "at flowad's defaults (the demo's presets)",
    "check": "at the held-out check's settings (batch 16; FastFlow 10 epochs, CFLOW-AD 3, U-Flow 30)",
}
_TITLES = {
    "textures": "The NFA on real textures",
    "textures-anywhere": "The NFA on real textures, every crop taken anywhere in the photograph",
    "demo": "The NFA on the demo",
    "object": "The NFA on a real object (views of one photograph)",
}


def _null_from_note(args: Any) -> str:
    if args.null_from == "validation":
        return ""
    return (
        "\nNulls and the map threshold's bound fitted on the first half of the good images, false detections "
        "counted on the other half (`--null-from good`).\n"
    )


def _headers(variants: tuple[str, ...]) -> tuple[str, ...]:
    head = ("model", "texture", "oracle IoU", "IoU, map threshold at 1 % good flagged")
    return (*head, *(f"{v}: IoU / good / noise flagged" for v in variants))


def _parser() -> Any:
    parser = script_parser(__doc__)
    parser.add_argument("--out", type=Path, default=Path("runs/nfa"), help="data and runs go here")
    add_models_argument(parser, default=("uflow",))
    add_threads_argument(parser)
    add_append_argument(parser)
    add_device_argument(parser, "cpu")
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[0], help="training seeds (the split, initialisation and order)"
    )
    parser.add_argument(
        "--data",
        choices=("textures", "textures-anywhere", "demo", "object"),
        default="textures",
        help="which images: texture_check's (training crops from the top two thirds of each photograph, test and "
        "--good crops from the bottom third), the same with every crop taken anywhere in the photograph, the demo's, "
        "or object_data.py's real object (views of one photograph)",
    )
    parser.add_argument("--good", type=positive_int, default=200, help="extra good images per texture")
    parser.add_argument(
        "--settings",
        choices=tuple(_SETTINGS_TEXT),
        default="defaults",
        help="train at flowad's defaults (the demo's presets) or at the held-out check's settings (object_check.py)",
    )
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=VARIANTS, help="the tests to measure")
    parser.add_argument(
        "--null-from",
        choices=("validation", "good"),
        default="validation",
        help="fit the nulls (and set the map threshold's bound) on the run's good validation images, counting "
        "false detections on all the --good images; or on the first half of the --good images, counting on the "
        "other half (module docstring)",
    )
    return parser


if __name__ == "__main__":
    main()
