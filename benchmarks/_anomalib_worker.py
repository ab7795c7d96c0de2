"""anomalib's side of ``benchmarks/vs_anomalib.py``; runs in the anomalib virtual environment.

Never imports flowad. Three tasks, each writing one JSON object to ``--json-out``:

- ``run``: build anomalib's model (backbone weights from ``--weights``, the file flowad's side loads too),
  train it with anomalib's ``Engine`` (lightning), time each epoch and the whole fit, compute the anomaly
  maps of the test split (saved to ``--maps-out``), and time the torch module's forward (image tensor ->
  anomaly map) at batch 1 and 16. ``--model-out`` also saves the trained lightning module's state dict.
- ``aupro``: time ``anomalib.metrics.AUPRO`` on saved maps and masks.
- ``deploy``: anomalib's own deployment path. The lightning module (the state ``--model-in`` names, or trained
  anew for ``--epochs``) is exported with ``Engine.export`` to ONNX, OpenVINO IR and torch (.pt) at the input
  size, each export tried on its own (a failure is reported with its error). The exported graph is the whole
  module: pre-processing (resize, ImageNet normalisation), the model and the post-processing (score and map
  normalisation, labels and masks), input RGB in [0, 1] at the input size, any batch. Timed per image at batch 1
  and 16: that module's forward in torch (inference mode), the torch model alone on normalised images (what
  ``run`` times), the .onnx file in onnxruntime and the .xml in OpenVINO (the same thread count, see
  ``_runtimes.py``), each engine's outputs compared with torch's on the same batch. Then anomalib's
  inferencers end to end on ``--images`` test image files, one ``predict(path)`` per file (they take no batch
  of files): ``OpenVINOInferencer`` on the .xml (decode with PIL, /255, the compiled model) and
  ``TorchInferencer`` on the .pt (decode, the module's forward, which it runs without ``torch.no_grad``). The
  exported graph's input size is fixed, so the inferencers take only files of the input size (the demo's 256 px
  at the default ``--image-size``); a file of another size is an inferencer's error in the result.
"""

from __future__ import annotations

import argparse
import os
import time
import types
from pathlib import Path

import numpy as np
import torch
from _harness import alternating_medians, per_image_ms
from _runtimes import batches_ms, failure, openvino_config, time_engines
from _worker_cli import time_aupro, worker_main

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


def make_datamodule(args: argparse.Namespace):
    from anomalib.data import MVTecAD  # looked up at call time: cflow_reference_check.py replaces it

    return MVTecAD(
        root=args.data,
        category=args.category,
        train_batch_size=args.batch_size,
        eval_batch_size=args.batch_size,
        num_workers=0,
        seed=args.seed,
    )


def make_engine(args: argparse.Namespace, callbacks: list):
    from anomalib.callbacks.checkpoint import ModelCheckpoint
    from anomalib.engine import Engine

    work = Path(args.work)
    return Engine(
        callbacks=[*callbacks, ModelCheckpoint(dirpath=work / "anomalib_ckpt", save_top_k=0)],  # no files
        default_root_dir=work / "anomalib_results",
        max_epochs=args.epochs,
        limit_val_batches=0,  # validation is not needed to train; the test split is scored below
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_model_summary=False,
    )


def fit(args: argparse.Namespace, module) -> tuple[list[float], float, object]:
    """Train ``module`` with anomalib's ``Engine``: (seconds of each epoch, seconds of the whole fit, datamodule)."""
    import lightning

    epochs: list[float] = []

    class EpochTimer(lightning.Callback):
        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self.t0 = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            epochs.append(time.perf_counter() - self.t0)

    datamodule = make_datamodule(args)
    engine = make_engine(args, [EpochTimer()])
    t0 = time.perf_counter()
    engine.fit(model=module, datamodule=datamodule)
    return epochs, time.perf_counter() - t0, datamodule


def score_test(module, datamodule, maps_out: str) -> torch.Tensor:
    """The test split's raw torch-module maps in anomalib's own batches (CFlow's maps depend on their batch),
    saved to ``maps_out``; returns the pre-processed test images."""
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
        maps_out,
        maps=torch.cat(maps).numpy(),
        scores=torch.cat(scores).numpy(),
        masks=torch.cat(masks).numpy(),
        labels=torch.cat(labels).numpy().astype(bool),
    )
    return torch.cat(images)


def run(args: argparse.Namespace) -> dict:
    import anomalib
    import lightning

    force_random_init()
    lightning.seed_everything(args.seed, verbose=False)
    module, extractor, loaded = build(args)
    epochs, train_seconds, datamodule = fit(args, module)
    if getattr(args, "model_out", None):
        torch.save(module.state_dict(), args.model_out)
    sample = score_test(module, datamodule, args.maps_out)[:16].contiguous()
    net = module.model.eval()

    def forward(x: torch.Tensor) -> torch.Tensor:
        return net(x).anomaly_map

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


# --------------------------------------------------------------------------------------------------
# deploy: anomalib's own export and inferencers
# --------------------------------------------------------------------------------------------------

EXPORTS = ("onnx", "openvino", "torch")  # anomalib's ExportType values, each tried on its own
ENGINE_FILES = {"onnxruntime": "onnx", "openvino": "openvino"}  # the export each runtime times


def trained_module(args: argparse.Namespace):
    """anomalib's module for ``--model`` in eval mode: the state ``run --model-out`` saved, or trained anew."""
    import lightning

    force_random_init()
    lightning.seed_everything(args.seed, verbose=False)
    module, _, _ = build(args)
    if args.model_in:
        module.load_state_dict(torch.load(args.model_in, map_location="cpu", weights_only=True))
        return module.eval(), f"state loaded from {args.model_in}"
    fit(args, module)
    return module.eval(), f"trained {args.epochs} epochs"


def export_all(module, args: argparse.Namespace, folder: Path) -> dict[str, dict]:
    """``Engine.export`` of ``module`` to each of ``EXPORTS`` at the input size: file and seconds, or the error."""
    from anomalib.deploy import ExportType

    engine = make_engine(args, [])
    out: dict[str, dict] = {}
    for kind in EXPORTS:
        t0 = time.perf_counter()
        try:
            path = engine.export(
                model=module,
                export_type=ExportType(kind),
                export_root=folder,
                input_size=(args.image_size, args.image_size),
            )
            out[kind] = {"file": str(path), "seconds": time.perf_counter() - t0}
        except Exception as err:  # noqa: BLE001 - an export that fails is a result
            out[kind] = {"error": failure(err), "seconds": time.perf_counter() - t0}
        print(f"export {kind}: {out[kind]}", flush=True)
    return out


def test_files(args: argparse.Namespace) -> list[Path]:
    """The first ``--images`` test image files of the category, by sorted path (flowad's side takes the same)."""
    folder = Path(args.data, args.category, "test").resolve()  # absolute: deploy changes directory later
    return sorted(p for p in folder.glob("*/*") if p.suffix.lower() == ".png")[: args.images]


def graph_input(files: list[Path], size: int) -> np.ndarray:
    """What the exported graph takes: RGB in [0, 1], float32 (N, 3, size, size); it resizes and normalises
    inside (anomalib's pre-processor is part of the exported module)."""
    from PIL import Image

    arrays = [np.asarray(Image.open(f).convert("RGB").resize((size, size), Image.BILINEAR)) for f in files]
    return np.ascontiguousarray(np.stack(arrays).transpose(0, 3, 1, 2), dtype=np.float32) / 255


def time_torch_and_engines(module, exports: dict, images: np.ndarray, args: argparse.Namespace) -> dict:
    """Per image at batch 1 and 16: the whole module's forward (pre-processing, model, post-processing: what is
    exported) in torch, the torch model alone on normalised images (``run``'s figure), and the exported files in
    onnxruntime and OpenVINO, their outputs compared with the whole module's on all images as one batch."""
    net, transform = module.model, module.pre_processor.transform
    with torch.inference_mode():
        first = module(torch.from_numpy(images))._asdict()
        reference = [v.float().numpy() for v in first.values() if v is not None]
        result = {"torch": batches_ms(lambda x: module(torch.from_numpy(x)), images, args.rounds)}
        normalised = transform(torch.from_numpy(images)).numpy()  # what run's torch-module figure is timed on
        result["torch_model"] = batches_ms(lambda x: net(torch.from_numpy(x)), normalised, args.rounds)
    files = {e: Path(exports[f]["file"]) for e, f in ENGINE_FILES.items() if "file" in exports[f]}
    result.update(time_engines(files, images, args.threads, args.rounds, reference))
    result["outputs"] = [k for k, v in first.items() if v is not None]
    return result


def open_inferencer(kind: str, path: Path, threads: int):
    from anomalib.deploy import OpenVINOInferencer, TorchInferencer

    if kind == "openvino":
        return OpenVINOInferencer(path=path, device="CPU", config=openvino_config(threads))
    os.environ["TRUST_REMOTE_CODE"] = "1"  # TorchInferencer unpickles the .pt that to_torch wrote here
    return TorchInferencer(path=path, device="cpu")


def time_inferencers(exports: dict, files: list[Path], args: argparse.Namespace) -> dict:
    """anomalib's inferencers end to end on image files, one ``predict(path)`` per file: decode (PIL), scale to
    [0, 1], and the exported module (resize, normalise, model, post-processing); ms per image."""
    out: dict[str, dict] = {}
    for kind in ("openvino", "torch"):
        if "file" not in exports[kind]:
            continue
        try:
            inferencer = open_inferencer(kind, Path(exports[kind]["file"]), args.threads)
            seconds = alternating_medians({"all": lambda i=inferencer: [i.predict(f) for f in files]}, args.rounds)
            out[kind] = {"ms_per_image": seconds["all"] / len(files) * 1000, "images": len(files)}
        except Exception as err:  # noqa: BLE001 - an inferencer that fails is a result
            out[kind] = {"error": failure(err)}
    return out


def deploy(args: argparse.Namespace) -> dict:
    import anomalib

    folder = Path(args.work, "anomalib_export", args.model).resolve()
    module, trained = trained_module(args)
    exports = export_all(module, args, folder)
    files = test_files(args)
    os.chdir(folder)  # OpenVINOInferencer writes its compile cache to ./openvino_cache
    return {
        "side": "anomalib",
        "version": anomalib.__version__,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "model": args.model,
        "module": trained,
        "exports": exports,
        "engines": time_torch_and_engines(module, exports, graph_input(files, args.image_size), args),
        "inferencers": time_inferencers(exports, files, args),
        "image_files": [str(f) for f in files],
    }


def aupro(args: argparse.Namespace) -> dict:
    from anomalib.metrics import AUPRO

    def compute(maps: np.ndarray, masks: np.ndarray) -> float:
        metric = AUPRO(fields=["anomaly_map", "gt_mask"])
        metric.update(types.SimpleNamespace(anomaly_map=torch.from_numpy(maps), gt_mask=torch.from_numpy(masks)))
        return float(metric.compute())

    return time_aupro("anomalib", compute, args)


if __name__ == "__main__":
    worker_main(__doc__, {"run": run, "aupro": aupro, "deploy": deploy})
