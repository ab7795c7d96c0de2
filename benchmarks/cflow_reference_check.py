"""anomalib's CFLOW-AD on flowad's offline pretrained EfficientNet-Lite0: the reference's quality, side by side.

Three steps (the first and last with flowad's Python, the second in anomalib's environment, see
benchmarks/vs_anomalib.py for how ``.venv-anomalib`` is made):

    python benchmarks/cflow_reference_check.py weights runs/ref/lite0.safetensors
    .venv-anomalib/bin/python benchmarks/cflow_reference_check.py run --model cflow --data runs/demo/data \\
        --category fabric --backbone tf_efficientnet_lite0 --weights runs/ref/lite0.safetensors --epochs 20 \\
        --work runs/ref --maps-out runs/ref/cflow.npz --json-out runs/ref/cflow.json [--one-test-batch] \\
        [--weights-stats]
    python benchmarks/cflow_reference_check.py score runs/ref/cflow.npz

``run`` is ``_anomalib_worker.py``'s run with the encoder at timm's feature levels 2, 3, 4 (strides 8, 16,
32, as flowad's CFLOW-AD) and, with ``--one-test-batch``, the whole test split scored as one batch (the
reference normalises its maps by the maxima of each test batch). anomalib normalises every backbone's input
with ImageNet statistics; ``--weights-stats`` uses the weights' own instead (mean 0.5, std 0.5 for the
TF EfficientNet-Lite weights, as flowad does).
"""

from __future__ import annotations

import sys


def weights(path: str) -> None:
    """timm's tf_efficientnet_lite0 with flowad's offline ImageNet weights, as one .safetensors file."""
    from pathlib import Path

    import timm
    from safetensors.torch import save_file

    from flowad.backbones import offline_lite0_state

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    state = model.state_dict()
    state.update(offline_lite0_state(model))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, path)
    print(f"wrote {path}")


def run(argv: list[str]) -> None:
    sys.path.insert(0, "benchmarks")
    import _anomalib_worker as worker

    one_batch = "--one-test-batch" in argv
    weights_stats = "--weights-stats" in argv
    sys.argv = [sys.argv[0], "run", *(a for a in argv if a not in ("--one-test-batch", "--weights-stats"))]

    def build(args):
        from anomalib.models import Cflow
        from anomalib.pre_processing import PreProcessor
        from torchvision.transforms.v2 import Compose, Normalize, Resize

        size = (args.image_size, args.image_size)
        mean, std = (worker.IMAGENET_MEAN, worker.IMAGENET_STD) if not weights_stats else _weights_stats(args)
        steps = [Resize(size, antialias=True), Normalize(mean, std)]
        pre = PreProcessor(transform=Compose(steps))
        module = Cflow(backbone=args.backbone, layers=(2, 3, 4), pre_trained=False, pre_processor=pre)
        extractor = module.model.encoder.feature_extractor
        return module, extractor, worker.load_backbone(extractor, args.weights)

    worker.build = build
    if one_batch:
        import anomalib.data

        class OneTestBatch(anomalib.data.MVTecAD):
            def __init__(self, *args, **kwargs):
                kwargs["eval_batch_size"] = 10_000
                super().__init__(*args, **kwargs)

        anomalib.data.MVTecAD = OneTestBatch
    worker.main(worker.__doc__, worker.run, worker.aupro)


def _weights_stats(args) -> tuple[list[float], list[float]]:
    """The input statistics timm's configuration gives ``args.backbone``'s weights."""
    import timm

    cfg = timm.create_model(args.backbone, pretrained=False).pretrained_cfg
    return list(cfg["mean"]), list(cfg["std"])


def score(path: str) -> None:
    import numpy as np

    from flowad import metrics

    saved = np.load(path)
    labels, maps, masks = saved["labels"].astype(int), saved["maps"], saved["masks"]
    print(
        f"image AUROC {metrics.image_auroc(saved['scores'], labels):.4f}  pixel AUROC "
        f"{metrics.pixel_auroc(maps, masks):.4f}  AUPRO {metrics.aupro(maps, masks):.4f}  ({len(labels)} images)"
    )


def _usage(message: str) -> None:
    print(f"cflow_reference_check: error: {message}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    step, rest = (sys.argv[1], sys.argv[2:]) if len(sys.argv) > 1 else ("", [])
    if step not in ("weights", "run", "score"):
        _usage(f"step {step!r} is not known; expected weights FILE, run ARGS... or score FILE.npz")
    if step != "run" and len(rest) != 1:
        _usage(f"{step} takes one file path, got {rest}")
    if step == "weights":
        weights(rest[0])
    elif step == "run":
        run(rest)
    else:
        score(rest[0])
