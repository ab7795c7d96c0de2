"""What both sides' workers of ``benchmarks/vs_anomalib.py`` share: arguments, timing, the JSON hand-off.

Each worker runs as a script from this folder (so this module imports as ``_worker_common``), in its own
Python: the system one for flowad, the anomalib virtual environment for anomalib.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

MODEL_NAMES = ("fastflow", "cflow", "uflow")


def parse_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("task", choices=("run", "aupro"))
    parser.add_argument("--model", choices=MODEL_NAMES)
    parser.add_argument("--data", help="MVTec-layout root")
    parser.add_argument("--category", default="fabric")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--weights", help="backbone weights (.safetensors, the timm model's full state dict)")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds inside this process (medians)")
    parser.add_argument("--work", default="runs/vs_anomalib", help="folder for the side's own outputs")
    parser.add_argument("--maps", nargs="*", default=[], help="aupro: .npz files with 'maps' and 'masks'")
    parser.add_argument("--maps-out")
    parser.add_argument("--json-out", required=True)
    return parser.parse_args()


def per_image_ms(forward, images: torch.Tensor, batch: int, rounds: int) -> float:
    """Median over ``rounds`` of the time per image to run ``forward`` over ``images`` in batches of ``batch``."""
    samples = []
    with torch.inference_mode():
        forward(images[:batch])  # warm-up at this batch size (the test split has just run through the model)
        for _ in range(rounds):
            t0 = time.perf_counter()
            for start in range(0, len(images), batch):
                forward(images[start : start + batch])
            samples.append((time.perf_counter() - t0) / len(images) * 1000)
    return statistics.median(samples)


def time_aupro(side: str, compute: Callable[[np.ndarray, np.ndarray], float], args: argparse.Namespace) -> dict:
    """Median time of ``compute(maps, masks)`` on each saved map set, after one warm-up call."""
    results = []
    for path in args.maps:
        data = np.load(path)
        maps, masks = data["maps"], data["masks"]
        value = compute(maps, masks)  # warm-up (first calls import and allocate)
        times = []
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            value = compute(maps, masks)
            times.append(time.perf_counter() - t0)
        results.append({"maps": path, "value": value, "seconds": statistics.median(times)})
    return {"side": side, "threads": torch.get_num_threads(), "aupro": results}


def main(description: str, run: Callable[[argparse.Namespace], dict], aupro: Callable[[argparse.Namespace], dict]):
    args = parse_args(description)
    torch.set_num_threads(args.threads)
    result = run(args) if args.task == "run" else aupro(args)
    Path(args.json_out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result))
