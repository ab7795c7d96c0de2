"""On large images with small defects, does tiling find what resizing loses, and what does it cost?

    python benchmarks/large_images.py --out runs/large --models fastflow cflow uflow --threads 2 \\
        --append benchmarks/RESULTS.md

Writes the demo's fabric at --size W H (``flowad demo-data --size``: defects under 0.1 % of the image, exact
masks), then per model trains two runs on the same images with the same options: the whole image resized to
--image-size, and tiles of --tile pixels at full resolution (``--tile``, stride half the tile), each tile resized
to --image-size (the same input size, so the same model). Both are scored by ``flowad.inference.Detector`` on
the same engine, maps at the image's full size, and measured there, on the same ground truth: pixel AUROC,
AUPRO, IoU at the run's validation threshold, IoU at log NFA < 0, the oracle IoU (the test set's best threshold:
a bound), training time, inference time per image (decode, score, maps and masks at full size), and the peak
memory (max RSS) of a process that predicts one --memory-size image. The data set is written once per --out.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from _harness import (
    add_append_argument,
    add_models_argument,
    add_threads_argument,
    child_environment,
    json_object,
    machine_description,
    markdown_table,
    positive_int,
    publish,
    script_parser,
    section,
    set_threads,
    train_run,
)

CATEGORY = "fabric"
EPOCHS = {"fastflow": 10, "cflow": 3, "uflow": 10}  # the same for both arms: a tile epoch has more steps
# VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over fork and exec, so a child started by a large
# process reports its parent's peak; VmHWM belongs to the new process's own memory
MEMORY_PROBE = """
import re, sys, time, numpy as np
from flowad.inference import Detector
detector = Detector.load(sys.argv[1], engine=sys.argv[4])
rgb = np.random.default_rng(0).integers(0, 256, (int(sys.argv[3]), int(sys.argv[2]), 3), dtype=np.uint8)
start = time.perf_counter()
detector.predict([rgb])
seconds = time.perf_counter() - start
print(seconds, re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1))
"""


def main() -> None:
    args = _parser().parse_args()
    set_threads(args.threads)
    data = _large_data(args.out / "data", args.size, args.counts)
    rows = []
    for model in args.models:
        for arm in ("resized", "tiled"):
            options = {"epochs": EPOCHS[model], "image_size": args.image_size, **args.options}
            if arm == "tiled":
                options["tile"] = args.tile
            run = args.out / model / arm
            if not (args.reuse and (run / "config.json").is_file()):
                train_run(run, model, data, CATEGORY, options)
            figures = _measure(run, data, args.engine)
            figures.update(_peak_memory(run, args.memory_size, args.engine, args.threads))
            rows.append([model, arm, *(_shown(figures[k]) for k in COLUMNS)])
            print(rows[-1], flush=True)
    publish(_section(args, rows), args.append)


COLUMNS = ("pixel_auroc", "aupro", "iou", "iou_nfa", "oracle_iou", "train_s", "ms_per_image", "memory_s", "peak_mib")
HEADERS = (
    "model",
    "input",
    "pixel AUROC",
    "AUPRO",
    "IoU (val. threshold)",
    "IoU (NFA)",
    "oracle IoU",
    "training (s)",
    "inference (ms/image)",
    "one large image (s)",
    "its peak memory (MiB)",
)


def _large_data(root: Path, size: tuple[int, int], counts: dict[str, int]) -> Path:
    from flowad.cli import main as flowad

    if not (root / CATEGORY / "test").is_dir():
        width, height = size
        flags = [f"--{k.replace('_', '-')}={v}" for k, v in counts.items()]
        code = flowad(["demo-data", str(root), "--size", str(width), str(height), *flags])
        if code:
            sys.exit(f"flowad demo-data failed with status {code}")
    return root


def _measure(run: Path, data: Path, engine: str) -> dict[str, Any]:
    """Metrics at the images' full size, the same for both arms; times from the run and the scoring."""
    from flowad import metrics
    from flowad.data.images import read_image, read_mask
    from flowad.data.spec import DataSpec
    from flowad.inference import Detector

    nfa_detector = Detector.load(run, threshold="nfa", engine=engine)
    thresholds = Detector(nfa_detector.engine, nfa_detector.record, "f1").thresholds  # the validation's
    samples = DataSpec(root=str(data), category=CATEGORY).splits(0).test
    maps, masks, labels, val_masks, nfa_masks = [], [], [], [], []
    start = time.perf_counter()
    for sample in samples:
        rgb = read_image(sample.path)
        (result,) = nfa_detector.predict([rgb])
        maps.append(result["map"])
        val_masks.append((result["map"] >= thresholds.pixel) & (result["score"] >= thresholds.image))
        nfa_masks.append(result["mask"])
        shape = rgb.shape[:2]
        masks.append(np.zeros(shape, bool) if sample.mask_path is None else read_mask(sample.mask_path, shape))
        labels.append(sample.label)
    seconds = time.perf_counter() - start
    maps, masks, labels = np.stack(maps), np.stack(masks), np.array(labels)
    anomalous = (labels == 1) & masks.any(axis=(1, 2))
    record = json.loads((run / "config.json").read_text())
    return {
        "pixel_auroc": metrics.pixel_auroc(maps, masks),
        "aupro": metrics.aupro(maps, masks),
        "iou": metrics.iou(np.stack(val_masks)[anomalous], masks[anomalous]),
        "iou_nfa": metrics.iou(np.stack(nfa_masks)[anomalous], masks[anomalous]),
        "oracle_iou": metrics.oracle_iou(maps[anomalous], masks[anomalous])[0],
        "train_s": record["train"]["seconds"],
        "ms_per_image": 1000 * seconds / len(samples),
        "defect_share": float(masks[anomalous].mean()),
    }


def _peak_memory(run: Path, size: tuple[int, int], engine: str, threads: int) -> dict[str, float]:
    """Seconds and peak RSS (MiB) of a fresh process that loads the run and predicts one image of ``size``."""
    width, height = size
    done = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, str(run), str(width), str(height), engine],
        capture_output=True,
        text=True,
        env=child_environment(threads),
        check=True,
    )
    seconds, peak_kib = done.stdout.split()[-2:]
    return {"memory_s": float(seconds), "peak_mib": int(peak_kib) / 1024}


def _shown(value: float) -> str:
    return f"{value:.4f}" if value < 1 else f"{value:.0f}"


def _section(args: Any, rows: list[list[str]]) -> str:
    width, height = args.size
    about = (
        f"\n\nThe demo's fabric at {width}x{height}, defects under 0.1 % of the image; {args.counts}; per model the "
        f"same options (epochs {EPOCHS} unless --options says otherwise) for the whole image resized to "
        f"{args.image_size} and for tiles of {args.tile} (stride {args.tile // 2}) resized to {args.image_size}. "
        f"Both scored by the {args.engine} engine, every metric at the full image size. The last two columns: one "
        f"{args.memory_size[0]}x{args.memory_size[1]} image predicted by a fresh process (max RSS, whole process).\n"
    )
    return section(
        "Large images: tiles against the resized image",
        machine_description(args.threads),
        about,
        ["", *markdown_table(HEADERS, rows)],
    )


def _parser() -> Any:
    parser = script_parser(__doc__)
    parser.add_argument("--out", type=Path, default=Path("runs/large"), help="data and runs go here")
    add_models_argument(parser)
    add_threads_argument(parser)
    add_append_argument(parser)
    parser.add_argument("--size", type=positive_int, nargs=2, default=(1024, 1024), metavar=("W", "H"))
    parser.add_argument("--image-size", type=positive_int, default=256, help="the models' input size")
    parser.add_argument("--tile", type=positive_int, default=256, help="tile size in pixels of the full image")
    parser.add_argument("--engine", default="auto", help="the engine that scores both arms")
    parser.add_argument("--memory-size", type=positive_int, nargs=2, default=(8000, 2000), metavar=("W", "H"))
    parser.add_argument(
        "--counts",
        type=json_object,
        default={"n_train": 16, "n_test_good": 8, "n_test_per_defect": 4},
        help="images of the data set, as flowad demo-data's flags",
    )
    parser.add_argument("--options", type=json_object, default={}, help="model options for both arms, JSON")
    parser.add_argument("--reuse", action="store_true", help="keep runs already trained under --out")
    return parser


if __name__ == "__main__":
    main()
