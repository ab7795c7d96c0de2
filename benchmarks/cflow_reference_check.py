"""Does anomalib's CFLOW-AD on flowad's offline pretrained EfficientNet-Lite0 reach the quality flowad's does?

Three steps (the first and last with flowad's Python, the second in anomalib's environment, see
benchmarks/_anomalib_env.py for how ``.venv-anomalib`` is made):

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

import argparse
from pathlib import Path

from _harness import add_subcommand, script_parser, set_threads
from _worker_cli import add_worker_arguments, check_worker_arguments, write_worker_result

ONE_BATCH = 10_000  # more test images than any category has: the whole split in one batch


def write_weights(path: Path) -> None:
    """timm's tf_efficientnet_lite0 with flowad's offline ImageNet weights, as one .safetensors file."""
    import timm
    from safetensors.torch import save_file

    from flowad.backbones import offline_lite0_state

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    state = model.state_dict()
    state.update(offline_lite0_state(model))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    print(f"wrote {path}")


def weights_statistics(backbone: str) -> tuple[list[float], list[float]]:
    """The input statistics timm's configuration gives ``backbone``'s weights."""
    import timm

    cfg = timm.create_model(backbone, pretrained=False).pretrained_cfg
    return list(cfg["mean"]), list(cfg["std"])


def run_reference(args: argparse.Namespace) -> None:
    """anomalib's worker, its CFLOW-AD built at levels 2, 3, 4 with the chosen input statistics."""
    import _anomalib_worker as worker

    def build(args: argparse.Namespace):
        from anomalib.models import Cflow
        from anomalib.pre_processing import PreProcessor
        from torchvision.transforms.v2 import Compose, Normalize, Resize

        size = (args.image_size, args.image_size)
        if args.weights_stats:
            mean, std = weights_statistics(args.backbone)
        else:
            mean, std = worker.IMAGENET_MEAN, worker.IMAGENET_STD
        pre = PreProcessor(transform=Compose([Resize(size, antialias=True), Normalize(mean, std)]))
        module = Cflow(backbone=args.backbone, layers=(2, 3, 4), pre_trained=False, pre_processor=pre)
        extractor = module.model.encoder.feature_extractor
        return module, extractor, worker.load_backbone(extractor, args.weights)

    worker.build = build
    if args.one_test_batch:
        import anomalib.data

        class OneTestBatch(anomalib.data.MVTecAD):
            def __init__(self, *a, **kwargs) -> None:
                kwargs["eval_batch_size"] = ONE_BATCH
                super().__init__(*a, **kwargs)

        anomalib.data.MVTecAD = OneTestBatch  # the worker imports it from there when it runs
    set_threads(args.threads)
    write_worker_result(worker.run(args), args.json_out)


def score(path: Path) -> None:
    import numpy as np

    from flowad import metrics

    saved = np.load(path)
    labels, maps, masks = saved["labels"].astype(int), saved["maps"], saved["masks"]
    print(
        f"image AUROC {metrics.image_auroc(saved['scores'], labels):.4f}  pixel AUROC "
        f"{metrics.pixel_auroc(maps, masks):.4f}  AUPRO {metrics.aupro(maps, masks):.4f}  ({len(labels)} images)"
    )


def main() -> None:
    parser = script_parser(__doc__)
    steps = parser.add_subparsers(dest="step", required=True, metavar="STEP", help="weights, run or score")

    weights = add_subcommand(steps, "weights", "Write the backbone weights both sides load (.safetensors).")
    weights.add_argument("file", type=Path, help="the .safetensors file to write")

    run = add_subcommand(
        steps, "run", "Train and score anomalib's CFLOW-AD (in anomalib's environment); the worker's arguments."
    )
    add_worker_arguments(run)
    run.set_defaults(model="cflow")  # the only model this step builds
    run.add_argument("--one-test-batch", action="store_true", help="score the whole test split as one batch")
    run.add_argument(
        "--weights-stats", action="store_true", help="normalise inputs with the weights' statistics, not ImageNet's"
    )

    scoring = add_subcommand(steps, "score", "Image AUROC, pixel AUROC and AUPRO of saved maps (flowad.metrics).")
    scoring.add_argument("maps", type=Path, help="the .npz file `run` wrote with --maps-out")

    args = parser.parse_args()
    if args.step == "weights":
        write_weights(args.file)
    elif args.step == "run":
        check_worker_arguments(run, args, "run")
        run_reference(args)
    else:
        score(args.maps)


if __name__ == "__main__":
    main()
