"""anomalib's side of ``benchmarks/vs_anomalib.py``; runs in the anomalib virtual environment.

Never imports flowad. Two tasks, each writing one JSON object to ``--json-out``:

- ``run``: build anomalib's model (backbone weights from ``--weights``, the file flowad's side loads too),
  train it with anomalib's ``Engine`` (lightning), time each epoch and the whole fit, compute the anomaly
  maps of the test split (saved to ``--maps-out``), and time the torch module's forward (image tensor ->
  anomaly map) at batch 1 and 16.
- ``aupro``: time ``anomalib.metrics.AUPRO`` on saved maps and masks.
"""

from __future__ import annotations

import argparse
import time
import types
from pathlib import Path

import numpy as np
import torch
from _harness import per_image_ms, time_aupro, worker_main

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def force_random_init() -> None:
    """No hub is reachable: every timm model anomalib builds starts from random weights (then the
    shared weights file is loaded). U-Flow's CNN extractor asks timm for pretrained weights whatever
    its arguments, hence a patch rather than ``pre_trained=False``."""
    import timm

    create = timm.create_model

    def create_without_download(*args, **kwargs):
        kwargs["pretrained"] = False
        return create(*args, **kwargs)

    timm.create_model = create_without_download


def load_backbone(module: torch.nn.Module, path: str) -> int:
    """Load the shared backbone weights into anomalib's timm feature extractor; every tensor must be there."""
    from safetensors.torch import load_file

    state = load_file(path)
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or wrong:
        raise SystemExit(f"backbone weights {path} do not fit: missing {missing[:3]}, wrong shapes {wrong[:3]}")
    module.load_state_dict({k: state[k] for k in own}, strict=True)
    return len(own)


def build(args: argparse.Namespace):
    """anomalib's lightning module with the requested backbone, input size and shared random weights."""
    from anomalib.models import Cflow, Fastflow, Uflow
    from anomalib.pre_processing import PreProcessor
    from torchvision.transforms.v2 import Compose, Normalize, Resize

    size = (args.image_size, args.image_size)
    # the default pre-processor of FastFlow and CFlow; U-Flow's default would resize to 448 whatever the backbone
    pre = PreProcessor(transform=Compose([Resize(size, antialias=True), Normalize(IMAGENET_MEAN, IMAGENET_STD)]))
    if args.model == "fastflow":
        module = Fastflow(backbone=args.backbone, pre_trained=False, pre_processor=pre)
        extractor = module.model.feature_extractor
    elif args.model == "cflow":
        module = Cflow(
            backbone=args.backbone, layers=("layer2", "layer3", "layer4"), pre_trained=False, pre_processor=pre
        )
        extractor = module.model.encoder.feature_extractor
    else:
        module = Uflow(backbone=args.backbone, pre_processor=pre)
        extractor = module.model.feature_extractor.feature_extractor
    loaded = load_backbone(extractor, args.weights)
    return module, extractor, loaded


def run(args: argparse.Namespace) -> dict:
    import lightning
    from anomalib.callbacks.checkpoint import ModelCheckpoint
    from anomalib.data import MVTecAD
    from anomalib.engine import Engine

    force_random_init()
    lightning.seed_everything(args.seed, verbose=False)
    module, extractor, loaded = build(args)

    epochs: list[float] = []

    class EpochTimer(lightning.Callback):
        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self.t0 = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            epochs.append(time.perf_counter() - self.t0)

    work = Path(args.work)
    datamodule = MVTecAD(
        root=args.data,
        category=args.category,
        train_batch_size=args.batch_size,
        eval_batch_size=args.batch_size,
        num_workers=0,
        seed=args.seed,
    )
    engine = Engine(
        callbacks=[EpochTimer(), ModelCheckpoint(dirpath=work / "anomalib_ckpt", save_top_k=0)],  # no files
        default_root_dir=work / "anomalib_results",
        max_epochs=args.epochs,
        limit_val_batches=0,  # validation is not needed to train; the test split is scored below
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_model_summary=False,
    )
    t0 = time.perf_counter()
    engine.fit(model=module, datamodule=datamodule)
    train_seconds = time.perf_counter() - t0

    # the test split: anomalib's own batches (CFlow's maps depend on their batch), raw torch-module maps
    module.eval()
    net = module.model.eval()
    transform = module.pre_processor.transform
    maps, scores, masks, labels, images = [], [], [], [], []
    with torch.inference_mode():
        for batch in datamodule.test_dataloader():
            image, mask = transform(batch.image, batch.gt_mask)
            out = net(image)
            n = image.shape[0]
            maps.append(out.anomaly_map.reshape(n, *image.shape[-2:]).float())
            scores.append(out.pred_score.reshape(n).float())
            masks.append(torch.as_tensor(mask).reshape(n, *image.shape[-2:]) > 0)
            labels.append(batch.gt_label.reshape(n))
            images.append(image)
    np.savez(
        args.maps_out,
        maps=torch.cat(maps).numpy(),
        scores=torch.cat(scores).numpy(),
        masks=torch.cat(masks).numpy(),
        labels=torch.cat(labels).numpy().astype(bool),
    )

    sample = torch.cat(images)[:16].contiguous()

    def forward(x: torch.Tensor) -> torch.Tensor:
        return net(x).anomaly_map

    import anomalib

    return {
        "side": "anomalib",
        "version": anomalib.__version__,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "backbone_tensors_loaded": loaded,
        "epoch_seconds": epochs,
        "train_seconds": train_seconds,
        "infer_b1_ms": per_image_ms(forward, sample, 1, args.rounds),
        "infer_b16_ms": per_image_ms(forward, sample, 16, args.rounds),
        "train_images": len(datamodule.train_data),
        "test_images": len(datamodule.test_data),
    }


def aupro(args: argparse.Namespace) -> dict:
    from anomalib.metrics import AUPRO

    def compute(maps: np.ndarray, masks: np.ndarray) -> float:
        metric = AUPRO(fields=["anomaly_map", "gt_mask"])
        metric.update(types.SimpleNamespace(anomaly_map=torch.from_numpy(maps), gt_mask=torch.from_numpy(masks)))
        return float(metric.compute())

    return time_aupro("anomalib", compute, args)


if __name__ == "__main__":
    worker_main(__doc__, run, aupro)
