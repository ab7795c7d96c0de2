"""How many images per second does ``flowad predict`` score end to end, with its default engine and with torch?

    python benchmarks/predict_speed.py --models fastflow cflow uflow --threads 2 --append benchmarks/RESULTS.md

Per model: a run with flowad's default settings (EfficientNet-Lite0, the given ``--image-size``; trained for one
epoch on a few demo images: the speed does not depend on the training), then ``--images`` demo images of
``--image-size`` px predicted end to end by ``flowad.predict_files.predict_with`` (decode, resize, score, the
map at the image's size, thresholds, mask, both PNGs and the JSON line written) with the default engine
(``auto``) and with ``torch``, the detector loaded once per engine (start-up excluded), the engines
alternating over ``--rounds`` rounds; medians. Also ``Detector.score_resized`` alone per image at batch 1 and
16: the engine's own time.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
from _harness import (
    add_append_argument,
    add_models_argument,
    add_threads_argument,
    alternating_medians,
    demo_images,
    machine_description,
    markdown_table,
    positive_int,
    publish,
    script_parser,
    section,
    set_threads,
    train_tiny_run,
)
from _runtimes import batches_ms

from flowad.data.images import read_image
from flowad.inference import Detector
from flowad.predict_files import predict_with

ENGINES = ("auto", "torch")


def measure(run: Path, images: list[Path], rounds: int, threads: int) -> dict[str, dict]:
    detectors = {engine: Detector.load(run, engine=engine, threads=threads) for engine in ENGINES}
    out = tempfile.mkdtemp(prefix="flowad-predict-speed-")
    for detector in detectors.values():  # warm: first calls allocate
        predict_with(detector, images, out, quiet=True)
    seconds = alternating_medians(
        {engine: lambda d=d: predict_with(d, images, out, quiet=True) for engine, d in detectors.items()}, rounds
    )
    resized = np.stack([detectors["auto"].preprocess.resized(read_image(path)) for path in images[:16]])
    found = {}
    for engine, detector in detectors.items():
        found[engine] = {
            "name": detector.engine.name,
            "images_per_second": len(images) / seconds[engine],
            **batches_ms(detector.score_resized, resized, rounds),
        }
    return found


def row(model: str, found: dict[str, dict]) -> list[str]:
    ours, torch_side = found["auto"], found["torch"]
    ratio = ours["images_per_second"] / torch_side["images_per_second"]
    return [
        model,
        ours["name"],
        f"{ours['images_per_second']:.1f}",
        f"{torch_side['images_per_second']:.1f}",
        f"{ratio:.2f}x {'met' if ratio >= 2 else 'missed'}",
        f"{ours['b1_ms']:.1f} / {ours['b16_ms']:.1f}",
        f"{torch_side['b1_ms']:.1f} / {torch_side['b16_ms']:.1f}",
    ]


def main() -> None:
    parser = script_parser(__doc__)
    add_models_argument(parser)
    parser.add_argument("--images", type=positive_int, default=48, help="demo images predicted per round")
    parser.add_argument("--image-size", type=positive_int, default=256, help="the runs' input and the images' size")
    parser.add_argument("--rounds", type=positive_int, default=3, help="timed rounds per engine (medians)")
    parser.add_argument("--work", default="runs/predict_speed", help="where the runs and images go")
    add_threads_argument(parser)
    add_append_argument(parser)
    args = parser.parse_args()
    set_threads(args.threads)
    work = Path(args.work)
    images = demo_images(work / "images", args.images, args.image_size)
    rows = []
    for model in args.models:
        started = time.perf_counter()
        run = train_tiny_run(work / model, args.image_size, model)
        rows.append(row(model, measure(run, images, args.rounds, args.threads)))
        print(" | ".join(rows[-1]), f"({time.perf_counter() - started:.0f} s)", flush=True)
    headers = ["model", "default engine", "predict images/s, default", "predict images/s, torch"]
    headers += ["default / torch (target >= 2)", "engine ms/image b1 / b16, default", "torch ms/image b1 / b16"]
    text = section(
        "flowad predict end to end, default engine and torch",
        machine_description(args.threads),
        f" (`benchmarks/predict_speed.py`): {args.images} demo images of {args.image_size} px per round, "
        "flowad's default settings (EfficientNet-Lite0), start-up excluded.",
        markdown_table(headers, rows),
    )
    publish(text, args.append)


if __name__ == "__main__":
    main()
