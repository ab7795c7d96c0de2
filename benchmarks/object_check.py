"""A real photographed object at the held-out real-photograph check's settings: input statistics and the
validation split, measured both ways.

    python benchmarks/object_check.py --out runs/object --models fastflow cflow uflow --seeds 0 1 2 \\
        --append benchmarks/RESULTS.md

Data: object_data.py's coffee cup (64 good training images; 24 good and 24 defective test images). Settings
as that check: 256 px, batch 16, FastFlow 10 epochs, CFLOW-AD 3, U-Flow 30, MSFlow its default; everything
else flowad's defaults. Each model is trained with the weights' own input statistics and with ImageNet's, and
with 20 % of the good training images held out for the threshold (the default) or none (``val_fraction`` 0:
every good image trains, the threshold comes from the training images' own scores). Cells: mean ± sample
standard deviation over the seeds of image AUROC, pixel AUROC, AUPRO, image F1 and IoU at the threshold.
The reference's CFLOW-AD on the same images and backbone: cflow_reference_check.py (RESULTS.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from _harness import (
    add_seeded_runs_arguments,
    publish,
    run_metrics,
    script_parser,
    set_threads,
    spread_cell,
    table_section,
    train_run,
)
from object_data import CATEGORY, write_object_data

SETTINGS = {"fastflow": {"epochs": 10}, "cflow": {"epochs": 3}, "uflow": {"epochs": 30}, "msflow": {}}
KEYS = ("image_auroc", "pixel_auroc", "aupro", "image_f1", "iou")


def train_and_test(
    out: Path, model: str, data: Path, options: dict[str, Any], val_fraction: float, seed: int, category: str = CATEGORY
) -> dict:
    """Train ``model`` on ``data``/``category`` with ``val_fraction`` of the good images held out, and test it."""
    from flowad.data.spec import DataSpec

    spec = DataSpec(root=str(data), category=category, val_fraction=val_fraction)
    return run_metrics(train_run(out, model, spec, None, options, seed=seed))


def main() -> None:
    args = _parser().parse_args()
    set_threads(args.threads)
    data = args.out / "data"
    if not (data / CATEGORY / "ground_truth").is_dir():
        write_object_data(data)
    rows = []
    for model in args.models:
        for stats in ("weights", "imagenet"):
            for fraction in (0.2, 0.0):
                options = {"batch_size": 16, **SETTINGS[model], "input_statistics": stats}
                name = f"{model}/{stats}_val{fraction:g}"
                results = [
                    train_and_test(args.out / name / f"seed-{s}", model, data, options, fraction, s) for s in args.seeds
                ]
                cells = [spread_cell([r[key] for r in results]) for key in KEYS]
                rows.append([model, stats, f"{fraction:g}", *cells])
                print(" | ".join(rows[-1]), flush=True)
    about = f"\n\nSeeds {args.seeds}. Settings and data: the module docstring.\n"
    headers = ("model", "input statistics", "val. fraction", "image AUROC", "pixel AUROC", "AUPRO", "image F1", "IoU")
    title = "A real object: input statistics and validation split"
    publish(table_section(title, args.threads, about, headers, rows), args.append)


def _parser() -> Any:
    parser = script_parser(__doc__)
    add_seeded_runs_arguments(parser, "runs/object", (0,))
    return parser


if __name__ == "__main__":
    main()
