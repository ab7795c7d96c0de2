"""Where does the NFA's threshold-free mask stand after one training run with given options?

    python benchmarks/train_sweep.py --model uflow --category fabric --data runs/demo/data \\
        --out runs/sweep/u8 --options '{"batch_size": 8}'
    python benchmarks/train_sweep.py uflow fabric runs/demo/data runs/sweep/u8 '{"batch_size": 8}'   # the same

Trains ``--model`` on ``--data``/``--category`` with the ``--options`` (model config fields), tests it, and
prints one JSON line: the test metrics; the IoU of the log NFA < 0 masks at probability thresholds 0.5, 0.7
and 0.9 with the share of good test images flagged at each; the mean z^2 of the good test images per latent
scale (1 if normal latents are N(0, 1)); and the LayerNorms' median |w|.
"""

from __future__ import annotations

import json
import time

import numpy as np
from _harness import (
    engine_settings,
    parse_run_arguments,
    run_argument_parser,
    run_metrics,
    train_run,
)

from flowad import metrics
from flowad.checkpoint import load_run
from flowad.data.datasets import ImageDataset, mvtec_splits
from flowad.engine import infer
from flowad.nfa import nfa_masks

THRESHOLDS = (0.5, 0.7, 0.9)
RUN_ARGUMENTS = ("model", "category", "data", "out", "options")


def main() -> None:
    args = parse_run_arguments(run_argument_parser(__doc__, RUN_ARGUMENTS, device="auto"), RUN_ARGUMENTS)
    start = time.perf_counter()
    run = train_run(args.out, args.model, args.data, args.category, args.options, args.device)
    result = run_metrics(run, args.device)
    row = {k: result.get(k) for k in ("image_auroc", "pixel_auroc", "aupro", "iou", "iou_nfa", "oracle_iou")}

    net, record = load_run(run)
    tests = mvtec_splits(args.data, args.category).test
    dataset = ImageDataset(tests, record.preprocess)
    out = infer(net, dataset, engine_settings(args.device), True)
    labels = np.array([s.label for s in tests])
    anomalous = (labels == 1) & out["masks"].any(axis=(1, 2))
    latents = out["latents"]
    for thr in THRESHOLDS:
        net.config.nfa_probability_threshold = thr  # the model's own window size and precision otherwise
        masks = nfa_masks(net, latents)
        row[f"iou_nfa_{thr}"] = metrics.iou(masks[anomalous], out["masks"][anomalous])
        row[f"good_flagged_{thr}"] = float(masks[labels == 0].any(axis=(1, 2)).mean())
    row["good_mean_z2"] = [round(float(z[labels == 0].float().pow(2).mean()), 3) for z in latents]
    row["norm_median_abs_w"] = [
        round(float(n.weight.detach().abs().median()), 4) for n in getattr(net, "norms", []) if hasattr(n, "weight")
    ]
    row.update(
        model=args.model, category=args.category, options=args.options, seconds=round(time.perf_counter() - start, 1)
    )
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
