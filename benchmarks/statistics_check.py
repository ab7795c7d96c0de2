"""Input statistics on real photographs at the held-out real-photograph check's settings: the weights' own
against ImageNet's, for every model, over seeds.

    python benchmarks/statistics_check.py --out runs/statistics --models fastflow cflow uflow --seeds 0 1 2 \\
        --append benchmarks/RESULTS.md

Data: texture_check.py's brick, grass and gravel crops (48 good training crops; 12 good and 24 defective test
crops) and object_data.py's coffee cup (64 good training images; 24 good and 24 defective test images).
Settings as object_check.py (the check's): 256 px, batch 16, FastFlow 10 epochs, CFLOW-AD 3, U-Flow 30,
everything else flowad's defaults (20 % of the good training images held out for the threshold). Cells: means
over the seeds of image AUROC / pixel AUROC / AUPRO with each statistic, and ImageNet's minus the weights'
(positive: ImageNet's is better); per model, the mean difference over the four data sets. Each run's metrics
are kept as ``OUT/MODEL/CATEGORY/STATS-seed-S.json``, so an interrupted run picks up where it stopped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from _harness import (
    add_seeded_runs_arguments,
    publish,
    script_parser,
    set_threads,
    table_section,
)
from object_check import SETTINGS, train_and_test
from object_data import CATEGORY, write_object_data
from texture_check import TEXTURES, write_data

KEYS = ("image_auroc", "pixel_auroc", "aupro")
STATISTICS = ("weights", "imagenet")


def main() -> None:
    args = _parser().parse_args()
    set_threads(args.threads)
    textures, objects = args.out / "textures", args.out / "object"
    if not (textures / TEXTURES[-1] / "ground_truth").is_dir():
        write_data(textures)
    if not (objects / CATEGORY / "ground_truth").is_dir():
        write_object_data(objects)
    data_sets = [(textures, t) for t in TEXTURES] + [(objects, CATEGORY)]
    rows = []
    for model in args.models:
        differences = []
        for root, category in data_sets:
            means = {s: _means(args, model, root, category, s) for s in STATISTICS}
            differences.append(means["imagenet"] - means["weights"])
            rows.append([model, category, *(_cell(means[s]) for s in STATISTICS), _cell(differences[-1], signed=True)])
            print(" | ".join(rows[-1]), flush=True)
        rows.append([model, "mean of the data sets", "", "", _cell(np.mean(differences, axis=0), signed=True)])
    about = f"\n\nSeeds {args.seeds}. Settings and data: the module docstring. Cells: image / pixel AUROC / AUPRO.\n"
    headers = ("model", "data", "weights' statistics", "ImageNet's", "ImageNet's - weights'")
    title = "Input statistics on real photographs at the check's settings"
    publish(table_section(title, args.threads, about, headers, rows), args.append)


def _means(args: Any, model: str, root: Path, category: str, stats: str) -> np.ndarray:
    """The metrics (KEYS) of ``model`` on ``category`` with input statistics ``stats``, averaged over the seeds."""
    options = {"batch_size": 16, **SETTINGS[model], "input_statistics": stats}
    results = []
    for seed in args.seeds:
        kept = args.out / model / category / f"{stats}-seed-{seed}.json"
        if not kept.is_file():
            run = args.out / model / category / f"{stats}-seed-{seed}"
            result = train_and_test(run, model, root, options, 0.2, seed, category)
            kept.write_text(json.dumps({key: result[key] for key in KEYS}))
        results.append([json.loads(kept.read_text())[key] for key in KEYS])
    return np.mean(results, axis=0)


def _cell(values: np.ndarray, signed: bool = False) -> str:
    return " / ".join(f"{v:+.3f}" if signed else f"{v:.3f}" for v in values)


def _parser() -> Any:
    parser = script_parser(__doc__)
    add_seeded_runs_arguments(parser, "runs/statistics", (0, 1, 2))
    return parser


if __name__ == "__main__":
    main()
