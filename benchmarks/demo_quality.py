"""How good is each model on the demo data with default settings (the README's main job)?

    python benchmarks/demo_quality.py --models fastflow cflow uflow --append benchmarks/RESULTS.md
    python benchmarks/demo_quality.py --models cflow --out runs/demo_imagenet \\
        --options '{"input_statistics": "imagenet"}'

Runs ``flowad demo --model M`` (demo data, train, test, predict) for each model, unless ``--reuse`` reads the
metrics of runs already in ``--out``, then prints one row per model and category. ``--options`` are model
options over the demo's defaults; any other flag goes to ``flowad demo`` as it is (the older form, e.g.
``--input-statistics imagenet``). With ``--reuse`` nothing is trained: the options only name the runs' settings
in the section's heading.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from _harness import (
    add_append_argument,
    add_models_argument,
    add_threads_argument,
    child_environment,
    json_object,
    machine_description,
    markdown_table,
    publish,
    script_parser,
    section,
)

from flowad.data.synthetic import CATEGORIES

KEYS = ["image_auroc", "pixel_auroc", "aupro", "image_f1", "iou", "iou_nfa", "oracle_iou", "train_seconds"]


def option_flags(options: dict[str, Any]) -> list[str]:
    """``flowad demo``'s flags for model options: a true boolean is a bare flag, a list several values."""
    flags: list[str] = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            flags.append(flag)
        elif isinstance(value, list):
            flags += [flag, *map(str, value)]
        elif value is not False and value is not None:
            flags += [flag, str(value)]
    return flags


def cell(metrics: dict[str, Any], key: str) -> str:
    value = metrics.get(key)
    if value is None:
        return "n/a"
    return f"{value:.0f}" if key == "train_seconds" else f"{value:.3f}"


def main() -> None:
    parser = script_parser(__doc__)
    add_models_argument(parser)
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="folder of the demo's runs")
    parser.add_argument(
        "--options", type=json_object, default={}, help="model options over the demo's defaults, a JSON object"
    )
    parser.add_argument("--reuse", action="store_true", help="read the runs already in --out instead of training")
    add_threads_argument(parser)
    add_append_argument(parser)
    args, passed_on = parser.parse_known_args()
    demo_flags = [*option_flags(args.options), *passed_on]
    rows = []
    for model in args.models:
        if not args.reuse:
            command = [sys.executable, "-m", "flowad", "demo", "--model", model, "--out", str(args.out)]
            command += ["--force", "--quiet", *demo_flags]
            done = subprocess.run(command, stdout=subprocess.DEVNULL, env=child_environment(args.threads))
            if done.returncode != 0:
                sys.exit(f"{' '.join(command)} failed (exit {done.returncode})")
        for category in CATEGORIES:
            metrics = json.loads((args.out / model / category / "metrics.json").read_text())
            rows.append([model, category, *(cell(metrics, key) for key in KEYS)])
    settings = " ".join(demo_flags) if demo_flags else "default settings"
    text = section(
        "Demo-data quality",
        None if args.reuse else machine_description(args.threads),  # reused runs: their machine is not known here
        f" (each model: `flowad demo --model M`); {settings}, offline EfficientNet-Lite0.",
        [
            "iou: at the validation threshold; iou_nfa: at log NFA = 0; "
            "oracle_iou: the best single threshold on the test set.",
            "",
            *markdown_table(["model", "category", *KEYS], rows),
        ],
    )
    publish(text, args.append)


if __name__ == "__main__":
    main()
