"""Quality of each model on the demo data with default settings: the README's main job, per model.

    python benchmarks/demo_quality.py --models fastflow cflow uflow --append benchmarks/RESULTS.md

Runs ``flowad demo --model M`` (demo data, train, test, predict) unless ``--reuse`` reads the metrics
of runs already in runs/demo, then prints one row per model and category. Any other argument goes to
``flowad demo`` as a model option over the defaults, e.g. ``--out runs/demo_imagenet --input-statistics imagenet``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from datetime import date
from pathlib import Path

from flowad.data.synthetic import CATEGORIES

KEYS = ["image_auroc", "pixel_auroc", "aupro", "image_f1", "iou", "iou_nfa", "oracle_iou", "train_seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["fastflow", "cflow", "uflow"])
    parser.add_argument("--out", type=Path, default=Path("runs/demo"))
    parser.add_argument("--reuse", action="store_true", help="read existing runs instead of training")
    parser.add_argument("--append", help="append the Markdown table to this file")
    args, demo_options = parser.parse_known_args()
    rows = []
    for model in args.models:
        if not args.reuse:
            cmd = ["flowad", "demo", "--model", model, "--out", str(args.out), "--force", "--quiet", *demo_options]
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        for category in CATEGORIES:
            m = json.loads((args.out / model / category / "metrics.json").read_text())
            cells = [
                "n/a" if m.get(k) is None else f"{m[k]:.0f}" if k == "train_seconds" else f"{m[k]:.3f}" for k in KEYS
            ]
            rows.append(f"| {model} | {category} | " + " | ".join(cells) + " |")
    text = "\n".join(
        [
            f"### Demo-data quality, {date.today()}: "
            f"{' '.join(demo_options) if demo_options else 'default settings'}, offline EfficientNet-Lite0",
            "",
            f"Command: `python benchmarks/demo_quality.py {' '.join(sys.argv[1:])}` "
            "(each model: `flowad demo --model M`).",
            "iou: at the validation threshold; iou_nfa: at log NFA = 0; "
            "oracle_iou: the best single threshold on the test set.",
            "",
            "| model | category | " + " | ".join(KEYS) + " |",
            "|---" * (len(KEYS) + 2) + "|",
            *rows,
        ]
    )
    print(text)
    if args.append:
        with open(args.append, "a") as f:
            f.write("\n" + text + "\n")


if __name__ == "__main__":
    main()
