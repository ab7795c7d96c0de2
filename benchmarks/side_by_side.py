"""All four models side by side, over several seeds: which is best on the demo (and on real textures)?

    python benchmarks/side_by_side.py --out runs/side --seeds 0 1 2 --threads 2 --append benchmarks/RESULTS.md
    python benchmarks/side_by_side.py --out runs/side --data textures --categories brick grass gravel
    python benchmarks/side_by_side.py --out runs/side-60s --models cflow --options '{"epochs": 7}'

Each model at flowad's defaults (the demo's presets) is trained and tested once per seed and category with
``flowad.api.benchmark(seeds=...)``; the table gives each metric's mean ± sample standard deviation over the
seeds: image and pixel AUROC, AUPRO, IoU at the validation threshold and at log NFA < 0, training seconds and
test milliseconds per image (scoring the test split with torch, the NFA included). ``--options`` overrides
config fields of every model run (e.g. epochs, to compare the models at equal training time). ``--data demo`` writes the
demo data set, ``--data textures`` texture_check.py's photographs, or give a data set root (MVTec layout).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from _harness import (
    ALL_MODELS,
    add_append_argument,
    add_models_argument,
    add_threads_argument,
    engine_settings,
    json_object,
    publish,
    script_parser,
    set_threads,
    spread_cell,
    table_section,
)

KEYS = ("image_auroc", "pixel_auroc", "aupro", "iou", "iou_nfa", "train_seconds", "test_ms_per_image")


def main() -> None:
    args = _parser().parse_args()
    set_threads(args.threads)
    from flowad import api
    from flowad.cli_commands import DEMO_PRESETS

    data = _data(args.data, args.out)
    rows = []
    for model in args.models:
        runs = args.out / model
        api.benchmark(
            model,
            data,
            runs,
            args.categories,
            force=True,
            settings=engine_settings(),
            seeds=args.seeds,
            **{**DEMO_PRESETS.get(model, {}), **args.options},
        )
        for category in args.categories:
            results = [_metrics(runs / category / f"seed-{seed}") for seed in args.seeds]
            rows.append([model, category, *(_cell([r[k] for r in results], k) for k in KEYS)])
            print(rows[-1], flush=True)
    publish(_section(args, rows), args.append)


def _data(name: str, out: Path) -> Path:
    if name == "demo":
        from flowad.data.synthetic import make_demo_dataset

        root = out / "demo-data"
        if not (root / "pill").is_dir():
            make_demo_dataset(root, seed=0)
        return root
    if name == "textures":
        from texture_check import TEXTURES, write_data

        root = out / "texture-data"
        if not (root / TEXTURES[-1] / "ground_truth").is_dir():
            write_data(root)
        return root
    return Path(name)


def _metrics(run: Path) -> dict[str, Any]:
    result = json.loads((run / "metrics.json").read_text())
    result["test_ms_per_image"] = 1000 * result["test_seconds"] / result["test_images"]
    return result


def _cell(values: list[float | None], key: str) -> str:
    return spread_cell(values, 0 if key in ("train_seconds", "test_ms_per_image") else 3)


def _section(args: Any, rows: list[list[str]]) -> str:
    about = (
        f"\n\nSeeds {args.seeds}; each model at flowad's defaults (the demo's presets: FastFlow 60 epochs at batch 8, "
        "U-Flow batch 8); cells: mean ± sample standard deviation over the seeds. Data: "
        f"{args.data} ({', '.join(args.categories)})."
        + (f" Options over the defaults: {json.dumps(args.options)}." if args.options else "")
        + "\n"
    )
    headers = [
        "model",
        "category",
        "image AUROC",
        "pixel AUROC",
        "AUPRO",
        "IoU (val.)",
        "IoU (NFA)",
        "train s",
        "test ms/image",
    ]
    return table_section("All four models over seeds", args.threads, about, headers, rows)


def _parser() -> Any:
    parser = script_parser(__doc__)
    parser.add_argument("--out", type=Path, default=Path("runs/side"), help="data and runs go here")
    parser.add_argument("--data", default="demo", help="demo, textures, or a data set root (MVTec layout)")
    parser.add_argument("--categories", nargs="+", default=["fabric", "pill"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--options", type=json_object, default={}, help="config fields for every model, JSON")
    add_models_argument(parser, default=ALL_MODELS)
    add_threads_argument(parser)
    add_append_argument(parser)
    return parser


if __name__ == "__main__":
    main()
