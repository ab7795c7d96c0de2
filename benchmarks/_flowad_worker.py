"""flowad's side of ``benchmarks/vs_anomalib.py``; runs in the system Python, one process per call.

The same two tasks as ``_anomalib_worker.py``, each writing one JSON object to ``--json-out``:

- ``run``: build flowad's model (backbone weights from ``--weights``), train it with ``flowad.engine.train``
  (features cached once, then the epochs), time each epoch and the whole training, compute the anomaly
  maps of the test split (saved to ``--maps-out``), and time the torch module's forward (image tensor ->
  anomaly map) and the backbone alone, at batch 1 and 16.
- ``aupro``: time ``flowad.metrics.aupro`` on saved maps and masks.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from _harness import per_image_ms, time_aupro, worker_main

# anomalib's U-Flow: LinearLR from 1.0 to 0.4 over 25000 epochs, stepped once per epoch
ANOMALIB_UFLOW_LR_ITERS = 25000


def options(args: argparse.Namespace) -> dict:
    """flowad's config for anomalib's settings of the same model (see vs_anomalib.SETTINGS)."""
    common = {
        "backbone": args.backbone,
        "weights": args.weights,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "epochs": args.epochs,
    }
    if args.model == "fastflow":  # strides 4, 8, 16 = resnet layer1..3; Adam lr 1e-3, weight decay 1e-5
        return {**common, "flow_steps": 8, "hidden_ratio": 1.0, "conv3x3_only": False, "clamp": 2.0}
    if args.model == "cflow":  # layer2..4; Adam lr 1e-4, no weight decay; fibers of 64
        return {
            **common,
            "strides": (8, 16, 32),
            "fiber_batch_size": 64,
            "condition_vector": 128,
            "coupling_blocks": 8,
            "clamp_alpha": 1.9,
            "lr": 1e-4,
            "weight_decay": 0.0,
        }
    # U-Flow: layer1..3, 4 steps per stage; anomalib's schedule: the lr factor after e epochs is
    # 1 - 0.6 e / 25000, which flowad's LinearLR over `epochs` epochs reproduces with this end factor
    return {
        **common,
        "flow_steps": 4,
        "affine_clamp": 2.0,
        "lr_end_factor": 1 - 0.6 * args.epochs / ANOMALIB_UFLOW_LR_ITERS,
    }


def flowad_version() -> str:
    """The installed package's version; a run from a source checkout (PYTHONPATH=src) has none."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("flowad")
    except PackageNotFoundError:
        return "not installed (source tree)"


def run(args: argparse.Namespace) -> dict:
    from flowad.data.datasets import ImageDataset, mvtec_splits
    from flowad.engine import EngineSettings, infer, train
    from flowad.models import build_model
    from flowad.preprocess import Preprocess

    splits = mvtec_splits(args.data, args.category)
    torch.manual_seed(args.seed)  # the flows' initial weights
    net = build_model(args.model, **options(args))
    preprocess = Preprocess.from_model(net)  # net was built with args.image_size
    train_set = ImageDataset(splits.train, preprocess)
    test_set = ImageDataset(splits.test, preprocess)
    settings = EngineSettings(seed=args.seed, device="cpu", quiet=True)

    t0 = time.perf_counter()
    log = train(net, train_set, settings)
    train_seconds = time.perf_counter() - t0

    out = infer(net, test_set, settings)
    labels = np.array([s.label for s in splits.test], dtype=bool)
    np.savez(args.maps_out, maps=out["maps"], scores=out["scores"], masks=out["masks"], labels=labels)

    sample = torch.stack([test_set[i]["image"] for i in range(min(16, len(test_set)))])
    net.eval()

    def forward(x: torch.Tensor) -> torch.Tensor:
        return net(x)[0]

    return {
        "side": "flowad",
        "version": flowad_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "epoch_seconds": [e["seconds"] for e in log["epochs"]],
        "feature_seconds": log["feature_seconds"],
        "train_seconds": train_seconds,
        "infer_b1_ms": per_image_ms(forward, sample, 1, args.rounds),
        "infer_b16_ms": per_image_ms(forward, sample, 16, args.rounds),
        # the frozen backbone alone (the same timm model and weights as anomalib's): a floor for both sides
        "backbone_b1_ms": per_image_ms(net.extract, sample, 1, args.rounds),
        "backbone_b16_ms": per_image_ms(net.extract, sample, 16, args.rounds),
        "train_images": len(train_set),
        "test_images": len(test_set),
    }


def aupro(args: argparse.Namespace) -> dict:
    from flowad.metrics import aupro as flowad_aupro

    return time_aupro("flowad", flowad_aupro, args)


if __name__ == "__main__":
    worker_main(__doc__, run, aupro)
