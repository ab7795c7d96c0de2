"""flowad's side of ``benchmarks/vs_anomalib.py``; runs in the system Python, one process per call.

The same ``run`` and ``aupro`` tasks as ``_anomalib_worker.py``, and ``backbone``, each writing one JSON object
to ``--json-out``:

- ``run``: build flowad's model (backbone weights from ``--weights``), train it with ``flowad.engine.train``
  (features cached once, then the epochs), time each epoch and the whole training, compute the anomaly
  maps of the test split (saved to ``--maps-out``), and time the torch module's forward (image tensor ->
  anomaly map) and the backbone alone, at batch 1 and 16.
- ``aupro``: time ``flowad.metrics.aupro`` on saved maps and masks.
- ``backbone``: the backbone's own time in each engine, the floor for flowad's engines (no training): the
  model's frozen encoder (``model.encoder``, weights from ``--weights``) exported alone to ONNX
  (``torch.onnx.export``, the TorchScript exporter as flowad's own export uses, batch axis dynamic, outputs
  the feature maps of every stage) and timed per image at batch 1 and 16 in torch (inference mode),
  onnxruntime and OpenVINO (the ONNX file read as is; settings in ``_runtimes.py``), on the first 16 test
  images by sorted path (random images without ``--data``).

- ``deploy``: flowad's default engine and its torch engine on the run that ``run --model-out RUN`` saved
  (per image at batch 1 and 16, and ``predict`` end to end on image files; see :func:`deploy`).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from _harness import per_image_ms
from _runtimes import ENGINES, batches_ms, time_engines
from _worker_cli import time_aupro, worker_main

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
    if args.model_out:  # the deploy task's run directory; thresholds only set the masks' share, not the timings
        from flowad.checkpoint import save_run
        from flowad.thresholds import fixed

        scores = out["scores"]
        save_run(args.model_out, net, fixed(float(np.median(scores)), float(scores.min()), float(scores.max())))

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


class _Features(torch.nn.Module):
    """The encoder as an exported graph: normalised images -> a tuple of feature maps (ONNX has no lists)."""

    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.encoder(image))


def export_encoder(encoder: torch.nn.Module, image_size: int, path: Path) -> Path:
    """The frozen encoder alone as ONNX (TorchScript exporter, opset 17, batch axis dynamic)."""
    graph = _Features(encoder).eval()
    outputs = [f"features_{i}" for i in range(len(graph(torch.zeros(1, 3, image_size, image_size))))]
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(
            graph,
            (torch.zeros(2, 3, image_size, image_size),),  # batch 2: the tracer must not specialise on 1
            str(path),
            dynamo=False,
            input_names=["image"],
            output_names=outputs,
            dynamic_axes={name: {0: "batch"} for name in ("image", *outputs)},
            opset_version=17,
        )
    return path


def timing_images(net: torch.nn.Module, args: argparse.Namespace) -> torch.Tensor:
    """16 normalised images of the input size: the first test images by sorted path (those the deploy section
    predicts) with ``--data``, else random ones."""
    if not args.data:
        return torch.randn(16, 3, args.image_size, args.image_size, generator=torch.Generator().manual_seed(args.seed))
    from flowad.data.datasets import ImageDataset, mvtec_splits
    from flowad.preprocess import Preprocess

    samples = sorted(mvtec_splits(args.data, args.category).test, key=lambda s: str(s.path))[:16]
    dataset = ImageDataset(samples, Preprocess.from_model(net))
    return torch.stack([dataset[i]["image"] for i in range(len(dataset))])


def backbone(args: argparse.Namespace) -> dict:
    from flowad.models import build_model

    net = build_model(args.model, **options(args)).eval()
    encoder = net.encoder
    path = export_encoder(encoder, args.image_size, Path(args.work, "flowad_export", f"{args.model}_encoder.onnx"))
    images = timing_images(net, args)
    with torch.inference_mode():
        reference = [f.numpy() for f in encoder(images)]
        timings = {"torch": batches_ms(lambda x: encoder(torch.from_numpy(x)), images.numpy(), args.rounds)}
    timings.update(time_engines(dict.fromkeys(ENGINES, path), images.numpy(), args.threads, args.rounds, reference))
    return {
        "side": "flowad",
        "version": flowad_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "model": args.model,
        "encoder": f"{args.backbone}, strides {list(encoder.strides)}, channels {list(encoder.channels)}",
        "engines": timings,
    }


def test_files(args: argparse.Namespace, count: int) -> list[Path]:
    """The first ``count`` test image files by sorted path (the ones anomalib's inferencers predict)."""
    from flowad.data.datasets import mvtec_splits

    return sorted((s.path for s in mvtec_splits(args.data, args.category).test), key=str)[:count]


def deploy(args: argparse.Namespace) -> dict:
    """flowad's default engine (``engine="auto"``) and its torch engine on the run ``--model-in``: per image at
    batch 1 and 16 on resized uint8 images (``Detector.score_resized``: normalisation, model, map), and
    ``predict`` end to end on ``--images`` files (decode, resize, score, map at the image's size, mask, both
    PNGs and the JSON line written), the detector loaded once (start-up excluded), median of ``--rounds``."""
    import tempfile

    from flowad.data.images import read_image
    from flowad.inference import Detector
    from flowad.predict_files import predict_with

    files = test_files(args, args.images)
    found = {}
    for engine in ("auto", "torch"):
        detector = Detector.load(args.model_in, engine=engine, threads=args.threads)
        images = np.stack([detector.preprocess.resized(read_image(path)) for path in files[:16]])
        infer = batches_ms(detector.score_resized, images, args.rounds)
        with tempfile.TemporaryDirectory(prefix="flowad-predict-") as out:
            predict_with(detector, files, out, quiet=True)  # warm: the first call sets up the threads' work
            seconds = []
            for _ in range(args.rounds):
                started = time.perf_counter()
                predict_with(detector, files, out, quiet=True)
                seconds.append(time.perf_counter() - started)
        predict = {"ms_per_image": float(np.median(seconds)) / len(files) * 1000, "images": len(files)}
        found[engine] = {"engine": detector.engine.name, "infer": infer, "predict": predict}
    return {
        "side": "flowad",
        "version": flowad_version(),
        "threads": torch.get_num_threads(),
        **found["auto"],
        "torch_engine": found["torch"],
    }


if __name__ == "__main__":
    worker_main(__doc__, {"run": run, "aupro": aupro, "backbone": backbone, "deploy": deploy})
