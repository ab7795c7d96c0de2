"""One training run with given options, scored for the questions the NFA raises.

    python benchmarks/train_sweep.py uflow fabric runs/demo/data runs/sweep/u8 '{"batch_size": 8}'

Trains ``model`` on ``data``/``category`` with the JSON options (model config fields, plus ``device`` and
``threads``), tests it, and prints one JSON line: the test metrics; the IoU of the log NFA < 0 masks at
probability thresholds 0.5, 0.7 and 0.9 with the share of good test images flagged at each; the mean z^2
of the good test images per latent scale (1 if normal latents are N(0, 1)); and the LayerNorms' median |w|.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch

from flowad import api, metrics
from flowad.checkpoint import load_run
from flowad.data.datasets import ImageDataset, mvtec_splits
from flowad.engine import EngineSettings, infer
from flowad.nfa import nfa_masks
from flowad.preprocess import Preprocess

THRESHOLDS = (0.5, 0.7, 0.9)


def main() -> None:
    model, category, data, out = sys.argv[1:5]
    options = json.loads(sys.argv[5]) if len(sys.argv) > 5 else {}
    torch.set_num_threads(int(options.pop("threads", 2)))
    settings = EngineSettings(quiet=True, device=options.pop("device", "auto"))
    start = time.perf_counter()
    run = api.train(model, data, out, category=category, force=True, settings=settings, **options)
    result = api.test(run, settings=settings, write=False)
    row = {k: result.get(k) for k in ("image_auroc", "pixel_auroc", "aupro", "iou", "iou_nfa", "oracle_iou")}

    net, _ = load_run(run)
    tests = mvtec_splits(data, category).test
    out_ = infer(net, ImageDataset(tests, Preprocess.from_model(net)), settings, True)
    labels = np.array([s.label for s in tests])
    anomalous = (labels == 1) & out_["masks"].any(axis=(1, 2))
    latents = out_["latents"]
    for thr in THRESHOLDS:
        net.config.nfa_probability_threshold = thr  # the model's own window size and precision otherwise
        masks = nfa_masks(net, latents)
        row[f"iou_nfa_{thr}"] = metrics.iou(masks[anomalous], out_["masks"][anomalous])
        row[f"good_flagged_{thr}"] = float(masks[labels == 0].any(axis=(1, 2)).mean())
    row["good_mean_z2"] = [round(float(z[labels == 0].float().pow(2).mean()), 3) for z in latents]
    row["norm_median_abs_w"] = [
        round(float(n.weight.detach().abs().median()), 4) for n in getattr(net, "norms", []) if hasattr(n, "weight")
    ]
    row.update(model=model, category=category, options=options, seconds=round(time.perf_counter() - start, 1))
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
