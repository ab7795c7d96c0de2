"""What do the deployed engines and precisions cost in quality, and what do they gain in speed?

    python benchmarks/deploy_precision.py --models fastflow cflow uflow --append benchmarks/RESULTS.md

Per model, a run on the demo's ``fabric`` (``--runs DIR/MODEL`` when it holds one, e.g. ``flowad demo``'s
``runs/demo/MODEL/fabric``, or one trained here before, in ``--work``; else trained here with ``--epochs``),
exported to ONNX and to OpenVINO in FP32, FP16 and INT8 (NNCF on the backbone, calibrated on the category's
training images). Each engine scores the whole test split
through ``flowad.inference.Detector`` (the same resizing, thresholds and map code for all); image AUROC, pixel
AUROC and AUPRO (``flowad.metrics``) beside torch's, and milliseconds per image of ``Detector.score_resized``
(normalisation, model, map) at batch 1 and 16, engines alternating, medians of ``--rounds``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from _harness import (
    DEMO_CATEGORY,
    add_append_argument,
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
from _runtimes import batches_ms

from flowad import metrics
from flowad.checkpoint import read_record
from flowad.data.images import read_image, read_mask
from flowad.inference import Detector
from flowad.openvino_export import export_openvino

# (label, Detector.load keywords, export folder in the run or None)
VARIANTS = (
    ("torch FP32", {"engine": "torch"}, None),
    ("onnxruntime FP32", {"engine": "onnx"}, None),
    ("OpenVINO FP32", {"engine": "openvino"}, None),
    ("OpenVINO FP16", {}, "openvino-fp16"),
    ("OpenVINO INT8", {}, "openvino-int8"),
)


def ensure_run(model: str, args: argparse.Namespace) -> Path:
    given = Path(args.runs) / model / DEMO_CATEGORY if args.runs else Path(args.work) / model
    if (given / "config.json").is_file():
        return given
    options = {"epochs": args.epochs, "image_size": args.image_size}
    if not (Path(args.data) / DEMO_CATEGORY / "train").is_dir():
        from flowad.data.synthetic import make_demo_dataset

        make_demo_dataset(Path(args.data), seed=0, categories=(DEMO_CATEGORY,))  # the demo's data
    return train_run(Path(args.work) / model, model, Path(args.data), DEMO_CATEGORY, options)


def ensure_exports(run: Path) -> None:
    calibration = Path(read_record(run).data.root) / DEMO_CATEGORY / "train" / "good"
    if not (run / "openvino-fp16" / "model.xml").is_file():
        export_openvino(run, precision="fp16")
    if not (run / "openvino-int8" / "model.xml").is_file():
        export_openvino(run, int8=True, calibration=calibration)


def test_split(run: Path) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """The run's test images, labels (True: anomalous) and ground-truth masks at the images' size."""
    samples = read_record(run).data.splits(0).test
    images = [read_image(s.path) for s in samples]
    labels = np.array([s.label for s in samples], dtype=bool)
    masks = [
        read_mask(s.mask_path) if s.mask_path else np.zeros(img.shape[:2], bool)
        for s, img in zip(samples, images, strict=True)
    ]
    return images, labels, np.stack(masks)


def score(run: Path, keywords: dict, folder: str | None, images, labels, masks, rounds: int) -> list[str]:
    exported = run / folder / "model.xml" if folder else None
    detector = Detector.load(run, threads=None, exported=exported, **keywords)
    results = detector.predict(images)
    maps = np.stack([r["map"] for r in results])
    scores = np.array([r["score"] for r in results])
    quality = [
        metrics.image_auroc(scores, labels),
        metrics.pixel_auroc(maps, masks),
        metrics.aupro(maps, masks),
    ]
    resized = np.stack([detector.preprocess.resized(rgb) for rgb in images[:16]])
    speed = batches_ms(detector.score_resized, resized, rounds)
    return [*(f"{q:.4f}" for q in quality), f"{speed['b1_ms']:.1f} / {speed['b16_ms']:.1f}"]


def main() -> None:
    parser = script_parser(__doc__)
    add_models_argument(parser)
    parser.add_argument("--runs", help="folder of runs per model (DIR/MODEL/fabric, as flowad demo writes)")
    parser.add_argument("--data", default="runs/demo/data", help="demo data root (flowad demo's)")
    parser.add_argument("--work", default="runs/deploy_precision", help="where runs trained here go")
    parser.add_argument("--epochs", type=positive_int, default=10, help="epochs of a run trained here")
    parser.add_argument("--image-size", type=positive_int, default=256, help="input size of a run trained here")
    parser.add_argument("--rounds", type=positive_int, default=5, help="timed rounds (medians)")
    add_threads_argument(parser)
    add_append_argument(parser)
    args = parser.parse_args()
    set_threads(args.threads)
    rows = []
    for model in args.models:
        run = ensure_run(model, args)
        ensure_exports(run)
        split = test_split(run)
        for label, keywords, folder in VARIANTS:
            rows.append([model, label, *score(run, keywords, folder, *split, args.rounds)])
            print(" | ".join(rows[-1]), flush=True)
    headers = ["model", "engine, precision", "image AUROC", "pixel AUROC", "AUPRO", "ms/image b1 / b16"]
    text = section(
        "Deployed engines and precisions",
        machine_description(args.threads),
        " (`benchmarks/deploy_precision.py`): the demo's fabric test split scored through `Detector` per engine.",
        [*markdown_table(headers, rows)],
    )
    publish(text, args.append)


if __name__ == "__main__":
    main()
