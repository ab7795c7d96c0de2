"""Is flowad faster than anomalib 2.7 at the same work? FastFlow, CFlow and U-Flow side by side on the same data,
backbone and settings.

    python benchmarks/vs_anomalib.py --append benchmarks/RESULTS.md

anomalib is installed into a virtual environment of its own (``.venv-anomalib/`` at the repository root, made
and checked by ``_anomalib_env.py``: the same torch release and build as this side's); it is never a
dependency of flowad. Each side runs in its own process (``_anomalib_worker.py`` in that environment,
``_flowad_worker.py`` in this Python) with the same thread count, so peak RSS is per side and model.

Section ``train``: for each model, ``--repeats`` times, sides alternating (flowad, anomalib, flowad, ...):

- train with the same backbone, input size, batch size and number of epochs on one category of the demo
  data (anomalib through its ``Engine``, validation off and no checkpoint files; flowad through
  ``flowad.engine.train``, whose first step caches the backbone features);
- time per epoch (epochs 2..E: flowad's first epoch follows the feature caching) and the whole training
  ("time to reach the final epoch's quality");
- score the test split; image AUROC, pixel AUROC and AUPRO of both sides' maps with ``flowad.metrics``;
- time the torch module's forward, image tensor -> anomaly map, warm, in inference mode, at batch 1 and 16;
- peak RSS of the process.

Then AUPRO alone: anomalib's ``AUPRO`` and ``flowad.metrics.aupro`` timed on the same maps and masks (both
sides' maps of the first repeat), values compared. Figures are medians over repeats.

Section ``deploy`` (``_deploy_section.py``): inference per image at batch 1 and 16 and end-to-end prediction on
image files: anomalib's export (ONNX, OpenVINO) in onnxruntime and OpenVINO and its inferencers, the backbone
alone in each engine, and flowad's default engine (once its worker task is wired). It uses the models the train
section saved when that ran too.

No pretrained weights can be downloaded for anomalib's backbone names here, so both sides load the same
randomly initialised backbone (``torch.manual_seed(--seed)``, saved once to a .safetensors file).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np
from _anomalib_env import describe, ensure_anomalib
from _deploy_section import deploy_lines, deploy_results
from _harness import (
    MODEL_NAMES,
    REPOSITORY,
    add_append_argument,
    add_models_argument,
    check_data_arguments,
    machine_description,
    markdown_table,
    positive_int,
    publish,
    script_parser,
    section,
)
from _worker_cli import add_comparison_arguments, start_worker

SECTIONS = ("train", "deploy")
SIDES = ("flowad", "anomalib")
# targets: the ratio flowad / anomalib at most
TARGET_INFER = 0.5
TARGET_TRAIN = 0.2
TARGET_AUPRO = 0.1
AUPRO_TOLERANCE = 1e-3

# what each side is given, per model (anomalib's defaults; flowad's worker sets the same values)
SETTINGS = {
    "fastflow": "layers 1-3 (strides 4, 8, 16) + LayerNorm, 8 flow steps (3x3/1x1), hidden ratio 1, clamp 2; "
    "Adam lr 1e-3, weight decay 1e-5",
    "cflow": "layers 2-4 (strides 8, 16, 32), 8 coupling blocks, condition 128, clamp 1.9, fibers of 64; Adam lr 1e-4",
    "uflow": "layers 1-3 (strides 4, 8, 16) + LayerNorm, 4 flow steps per scale, clamp 2; Adam lr 1e-3, "
    "weight decay 1e-5, LinearLR 1 -> 0.4 over 25000 epochs",
}

# what is not identical between the two sides, per model (reported with the results)
DIFFERENCES = {
    "fastflow": "the map is 1 - mean p in flowad, -mean p in anomalib (the same ranking)",
    "cflow": "anomalib normalises each test batch's likelihoods by that batch's maxima (maps depend on their "
    "batch-mates; test batches of 32); flowad uses constants calibrated on the training images. Both shuffle "
    "fibers within each image batch; anomalib drops the fibers that do not fill a last fiber batch, flowad keeps "
    "them (one more Adam step per layer and image batch at most)",
    "uflow": "anomalib moves channels between scales with FrEIA's IRevNetUpsampling, flowad with pixel_shuffle "
    "(both invertible, log|det| = 0, a different channel order). anomalib's U-Flow gets an explicit pre-processor "
    "(resize to the input size, ImageNet normalisation: its default resizes to 448 whatever the backbone), and "
    "its CNN extractor asks timm for pretrained weights whatever its arguments, so the anomalib worker makes timm "
    "build random weights before loading the shared ones. flowad's LinearLR end factor is set so that its "
    "learning rate equals anomalib's (1 -> 0.4 over 25000 epochs) at every epoch",
}


def parse_args() -> argparse.Namespace:
    parser = script_parser(__doc__)
    add_models_argument(parser, choices=MODEL_NAMES)  # anomalib has no MSFlow
    add_comparison_arguments(parser)
    parser.add_argument("--data", help="MVTec-layout root holding --category (default: demo data under --work)")
    parser.add_argument("--repeats", type=positive_int, default=3, help="runs per side and model (medians)")
    parser.add_argument("--venv", default=str(REPOSITORY / ".venv-anomalib"), help="anomalib's virtual environment")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS), help="what to measure")
    parser.add_argument("--deploy-images", type=positive_int, default=16, help="deploy: image files predicted")
    parser.add_argument("--work", default=str(REPOSITORY / "runs" / "vs_anomalib"), help="data, maps, logs")
    add_append_argument(parser)
    args = parser.parse_args()
    check_data_arguments(parser, Path(args.data) if args.data else None, args.category)
    for name in ("data", "venv", "work"):  # the workers run from the repository root
        if getattr(args, name):
            setattr(args, name, str(Path(getattr(args, name)).resolve()))
    return args


# --------------------------------------------------------------------------------------------------
# environment, data, weights
# --------------------------------------------------------------------------------------------------


def ensure_data(args: argparse.Namespace) -> Path:
    if args.data:  # checked by parse_args
        return Path(args.data)
    from flowad.data.synthetic import make_demo_dataset

    root = Path(args.work) / "data"
    if not (root / args.category / "train").is_dir():
        make_demo_dataset(root, categories=(args.category,))
    return root


def ensure_weights(args: argparse.Namespace) -> Path:
    """The backbone both sides load: timm's random initialisation under ``--seed``, full state dict."""
    path = Path(args.work) / f"{args.backbone}_random_seed{args.seed}.safetensors"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)  # with --data, nothing else has made --work yet
        import timm
        import torch
        from safetensors.torch import save_file

        torch.manual_seed(args.seed)
        model = timm.create_model(args.backbone, pretrained=False)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


# --------------------------------------------------------------------------------------------------
# running the workers
# --------------------------------------------------------------------------------------------------


def quality(maps_file: Path) -> dict[str, float]:
    from flowad import metrics

    data = np.load(maps_file)
    return {
        "image_auroc": metrics.image_auroc(data["scores"], data["labels"]),
        "pixel_auroc": metrics.pixel_auroc(data["maps"], data["masks"]),
        "aupro": metrics.aupro(data["maps"], data["masks"]),
    }


def per_epoch(seconds: list[float]) -> float:
    """Median epoch time, the first epoch left out when there are others."""
    return statistics.median(seconds[1:] if len(seconds) > 1 else seconds)


def common_arguments(model: str, args: argparse.Namespace, data: Path, weights: Path) -> list[str]:
    """What both sides' workers are given alike for ``model``."""
    common = ["--model", model, "--data", str(data), "--category", args.category, "--backbone", args.backbone]
    common += ["--weights", str(weights), "--image-size", str(args.image_size), "--batch-size", str(args.batch_size)]
    return common + ["--epochs", str(args.epochs), "--seed", str(args.seed)]


def saved_model(model: str, side: str, args: argparse.Namespace) -> Path:
    """Where the train section's first run of a side saves its trained model for the deploy section."""
    return Path(args.work) / "models" / (f"{model}_{side}.pt" if side == "anomalib" else f"{model}_{side}_run")


def train_runs(model: str, args: argparse.Namespace, common: list[str], started: float) -> dict:
    """``--repeats`` runs per side, sides alternating: {side: [worker result + peak RSS + quality]}."""
    work = Path(args.work)
    for folder in ("maps", "models"):
        (work / folder).mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict]] = {side: [] for side in SIDES}
    for repeat in range(args.repeats):
        for side in SIDES:
            tag = f"{model}_{side}_r{repeat}"
            maps = work / "maps" / f"{tag}.npz"
            extra = [*common, "--maps-out", str(maps)]
            if repeat == 0:  # what the deploy section scores: anomalib's state dict, flowad's run directory
                extra += ["--model-out", str(saved_model(model, side, args))]
            result, rss = start_worker(side, "run", extra, args, tag)
            result.update(peak_rss_mib=rss, maps=str(maps), **quality(maps))
            runs[side].append(result)
            print(
                f"[{time.perf_counter() - started:6.0f} s] {model:8s} {side:8s} run {repeat + 1}/{args.repeats}: "
                f"epochs {', '.join(f'{s:.1f}' for s in result['epoch_seconds'])} s, "
                f"infer b1 {result['infer_b1_ms']:.1f} ms/img, b16 {result['infer_b16_ms']:.1f} ms/img, "
                f"peak RSS {rss:.0f} MiB, image AUROC {result['image_auroc']:.3f}",
                flush=True,
            )
    return runs


def aupro_runs(maps: list[str], args: argparse.Namespace, started: float) -> dict[str, list[dict]]:
    """Both AUPRO implementations timed on the same map files, ``--repeats`` processes per side, alternating."""
    out: dict[str, list[dict]] = {side: [] for side in SIDES}
    for repeat in range(args.repeats):
        for side in SIDES:
            result, _ = start_worker(side, "aupro", ["--maps", *maps], args, f"aupro_{side}_r{repeat}")
            out[side].append({a["maps"]: a for a in result["aupro"]})
    print(f"[{time.perf_counter() - started:6.0f} s] AUPRO timed on both sides", flush=True)
    return out


def summarise(runs: dict[str, list[dict]], aupro: dict[str, list[dict]], same_maps: list[str]) -> dict:
    """Medians over repeats and the ratios flowad / anomalib for one model; ``same_maps``: its two map files."""

    def median(side: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[side])

    out: dict = {"sides": {}}
    for side in SIDES:
        # AUPRO time: one call per map set; the sum over this model's two map sets, median over repeats
        aupro_seconds = statistics.median(sum(r[m]["seconds"] for m in same_maps) for r in aupro[side])
        out["sides"][side] = {
            "epoch_s": statistics.median(per_epoch(r["epoch_seconds"]) for r in runs[side]),
            "train_s": median(side, "train_seconds"),
            "infer_b1_ms": median(side, "infer_b1_ms"),
            "infer_b16_ms": median(side, "infer_b16_ms"),
            "peak_rss_mib": median(side, "peak_rss_mib"),
            "aupro_s": aupro_seconds,
            "image_auroc": median(side, "image_auroc"),
            "pixel_auroc": median(side, "pixel_auroc"),
            "aupro": median(side, "aupro"),
            "aupro_same_maps": {m: aupro[side][0][m]["value"] for m in same_maps},
            "epochs_raw": [r["epoch_seconds"] for r in runs[side]],
            "train_raw": [r["train_seconds"] for r in runs[side]],
        }
    counts = {side: {(r["train_images"], r["test_images"]) for r in runs[side]} for side in SIDES}
    if len(counts["flowad"] | counts["anomalib"]) != 1:
        raise SystemExit(f"the sides did not see the same images (train, test): {counts}")
    out["images"] = counts["flowad"].pop()
    for key in ("backbone_b1_ms", "backbone_b16_ms"):
        out["sides"]["flowad"][key] = median("flowad", key)
    out["sides"]["flowad"]["feature_s"] = statistics.median(r["feature_seconds"] for r in runs["flowad"])
    ours, theirs = out["sides"]["flowad"], out["sides"]["anomalib"]
    out["aupro_diff"] = max(abs(ours["aupro_same_maps"][m] - theirs["aupro_same_maps"][m]) for m in same_maps)
    out["aupro_values"] = {
        side: [out["sides"][side]["aupro_same_maps"][m] for m in same_maps] for side in SIDES
    }  # [on flowad's maps, on anomalib's maps]
    out["ratios"] = {
        "infer_b1": ours["infer_b1_ms"] / theirs["infer_b1_ms"],
        "infer_b16": ours["infer_b16_ms"] / theirs["infer_b16_ms"],
        "train": ours["train_s"] / theirs["train_s"],
        "epoch": ours["epoch_s"] / theirs["epoch_s"],
        "aupro": ours["aupro_s"] / theirs["aupro_s"],
    }
    return out


# --------------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------------


def verdict(ratio: float, target: float, extra_ok: bool = True) -> str:
    return f"{'met' if ratio <= target and extra_ok else 'missed'} ({ratio:.2f}x)"


def tables(results: dict[str, dict]) -> str:
    headers = ["model", "side", "train s/epoch", "total train s", "infer b1 ms/img", "infer b16 ms/img"]
    headers += ["peak RSS MiB", "AUPRO s", "image AUROC", "pixel AUROC", "AUPRO"]
    rows = []
    for model, res in results.items():
        for side in SIDES:
            s = res["sides"][side]
            rows.append(
                [model, side, f"{s['epoch_s']:.2f}", f"{s['train_s']:.1f}", f"{s['infer_b1_ms']:.1f}"]
                + [f"{s['infer_b16_ms']:.1f}", f"{s['peak_rss_mib']:.0f}", f"{s['aupro_s']:.3f}"]
                + [f"{s['image_auroc']:.3f}", f"{s['pixel_auroc']:.3f}", f"{s['aupro']:.3f}"]
            )
    sides = markdown_table(headers, rows)
    headers = ["model", f"infer b1 (<= {TARGET_INFER}x)", f"infer b16 (<= {TARGET_INFER}x)"]
    headers += [f"time to final quality (<= {TARGET_TRAIN}x)", "per epoch"]
    headers += [f"AUPRO time (<= {TARGET_AUPRO}x, same value to {AUPRO_TOLERANCE:g})"]
    headers += ["AUPRO flowad / anomalib on flowad's maps; on anomalib's maps"]
    headers += ["backbone alone b1 / b16 ms/img (/ anomalib's inference)"]
    rows = []
    for model, res in results.items():
        r = res["ratios"]
        ours, theirs = res["aupro_values"]["flowad"], res["aupro_values"]["anomalib"]
        agree = res["aupro_diff"] <= AUPRO_TOLERANCE
        b1, b16 = res["sides"]["flowad"]["backbone_b1_ms"], res["sides"]["flowad"]["backbone_b16_ms"]
        a1, a16 = res["sides"]["anomalib"]["infer_b1_ms"], res["sides"]["anomalib"]["infer_b16_ms"]
        rows.append(
            [
                model,
                verdict(r["infer_b1"], TARGET_INFER),
                verdict(r["infer_b16"], TARGET_INFER),
                verdict(r["train"], TARGET_TRAIN),
                f"{r['epoch']:.2f}x",
                f"{verdict(r['aupro'], TARGET_AUPRO, agree)}, max diff {res['aupro_diff']:.1e}",
                f"{ours[0]:.4f} / {theirs[0]:.4f}; {ours[1]:.4f} / {theirs[1]:.4f}",
                f"{b1:.1f} / {b16:.1f} ({b1 / a1:.2f}x / {b16 / a16:.2f}x)",
            ]
        )
    return "\n".join([*sides, "", *markdown_table(headers, rows)])


def flowad_revision() -> str:
    """The commit flowad's side ran, and whether src/ had changes on top of it."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPOSITORY)
        dirty = subprocess.run(["git", "status", "--porcelain", "src"], capture_output=True, text=True, cwd=REPOSITORY)
    except OSError:
        return "unknown revision"
    if sha.returncode != 0:
        return "unknown revision"
    return f"git {sha.stdout.strip()}" + (" with local changes in src/" if dirty.stdout.strip() else "")


def train_section(args: argparse.Namespace, data: Path, weights: Path, started: float) -> dict[str, dict]:
    runs = {m: train_runs(m, args, common_arguments(m, args, data, weights), started) for m in args.models}
    # AUPRO alone, both implementations on the same maps: both sides' maps of the first run, every model
    same_maps = {model: [runs[model][side][0]["maps"] for side in SIDES] for model in args.models}
    aupro = aupro_runs([m for pair in same_maps.values() for m in pair], args, started)
    return {model: summarise(runs[model], aupro, same_maps[model]) for model in args.models}


def deploy_section(args: argparse.Namespace, data: Path, weights: Path, trained: bool) -> dict[str, dict]:
    """The deployment section (``_deploy_section.py``) on the models the train section saved, if it ran."""
    out = {}
    for model in args.models:
        # what the train section saved, in this call or an earlier one with the same --work
        saved = {side: saved_model(model, side, args) for side in SIDES}
        states = {side: str(path) if trained or path.exists() else None for side, path in saved.items()}
        out[model] = deploy_results(model, args, common_arguments(model, args, data, weights), states)
    return out


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    load_before = os.getloadavg()
    found = ensure_anomalib(Path(args.venv))
    print(f"{args.venv}: {describe(found)}", flush=True)
    data, weights = ensure_data(args), ensure_weights(args)
    results = {"train": train_section(args, data, weights, started)} if "train" in args.sections else {}
    if "deploy" in args.sections:
        results["deploy"] = deploy_section(args, data, weights, "train" in results)
    load_after = os.getloadavg()
    minutes = (time.perf_counter() - started) / 60
    Path(args.work, "results.json").write_text(json.dumps(results, indent=1))

    lines = [f"- {found['torch_note']}."] if found["torch_note"] else []
    lines += train_lines(args, results["train"]) if "train" in results else []
    lines += deploy_lines(args, results["deploy"]) if "deploy" in results else []
    took = f"{minutes:.0f} min; load average (1 min) {load_before[0]:.2f} before, {load_after[0]:.2f} after"
    print("\n".join(lines) + f"\n\n{took}")
    if args.append:
        lines += ["", f"The run took {took}."]
        title = f"flowad vs anomalib {found['anomalib']}"
        about = f" (flowad at {flowad_revision()})"
        publish(section(title, machine_description(args.threads), about, lines), args.append)


def train_lines(args: argparse.Namespace, results: dict[str, dict]) -> list[str]:
    """The train section's explanation and tables for RESULTS.md."""
    epochs = "epochs 2..E" if args.epochs > 1 else "the only epoch"
    images = next(iter(results.values()))["images"]
    return [
        "",
        f"- **Random backbone weights on both sides**: no pretrained weights for anomalib's backbone names can "
        f"be downloaded here, so both sides load the same randomly initialised `{args.backbone}` (timm's "
        f"initialisation under seed {args.seed}, one file).",
        f"- Demo data `{args.category}` ({images[0]} training, {images[1]} test images), {args.image_size} px, "
        f"batch {args.batch_size}, {args.epochs} epochs; images loaded in the main process on both sides.",
        f"- Medians of {args.repeats} runs per side and model, sides alternating; {args.rounds} timed rounds "
        "inside each run.",
        f"- train s/epoch: median of {epochs}. Total train s (the time to reach the final epoch's quality): the "
        "whole training (flowad: feature caching, epochs and calibration; anomalib: `Engine.fit` with validation "
        "off and no checkpoint files).",
        "- Inference: the torch module's forward, image tensor -> anomaly map, warm, inference mode, over 16 "
        "test images. Backbone alone: flowad's frozen encoder, the same timm model and weights as anomalib's.",
        "- Peak RSS: the worker process of that side and model (training, scoring and timing).",
        "- AUPRO s: anomalib's `AUPRO` and `flowad.metrics.aupro` on the same two map sets (both sides' maps "
        "of the first run), time summed over the two.",
        "- Quality: `flowad.metrics` on each side's own test maps.",
        "",
        tables(results),
        "",
        "Settings given to both sides: " + "; ".join(f"{m}: {SETTINGS[m]}" for m in results) + ".",
        "Not identical: " + "; ".join(f"{m}: {DIFFERENCES[m]}" for m in results) + ".",
    ]


if __name__ == "__main__":
    main()
