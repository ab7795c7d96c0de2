"""Do anomalib's FastFlow and U-Flow on flowad's offline pretrained EfficientNet-Lite0 score as flowad's do on
real photographs?

    .venv-anomalib/bin/python benchmarks/lite0_reference.py --model fastflow --data runs/nfa/data --category brick \\
        --backbone tf_efficientnet_lite0 --weights runs/ref/lite0.safetensors --epochs 10 --batch-size 16 \\
        --work runs/ref --maps-out runs/ref/fastflow_brick.npz --json-out runs/ref/fastflow_brick.json
    python benchmarks/cflow_reference_check.py score runs/ref/fastflow_brick.npz

anomalib 2.7 builds FastFlow and U-Flow on ResNets and CaiT only. Here ``_anomalib_worker.py``'s run builds them
unchanged except for the backbone: FastFlow's timm call for "resnet18" makes "tf_efficientnet_lite0" at the
same out-indices 1, 2, 3 (strides 4, 8, 16, as flowad's), and U-Flow's LayerNorm feature extractor reads the same
out-indices of it; the weights file (``cflow_reference_check.py weights``) is then loaded into it. Inputs are
normalised with ImageNet's statistics (anomalib's default); the test split is scored in batches of
``--batch-size`` (FastFlow's and U-Flow's maps depend on their image alone, so batches change nothing).
With ``--latent-stats`` (U-Flow) the result also holds the good test images' mean z^2 per scale (1 under N(0, 1)),
the figure uflow_objective.py gives for flowad's.
"""

from __future__ import annotations

import argparse

from _harness import script_parser, set_threads
from _worker_cli import add_worker_arguments, check_worker_arguments, write_worker_result

LITE0 = "tf_efficientnet_lite0"
OUT_INDICES = (1, 2, 3)  # strides 4, 8, 16


def build_on_lite0(args: argparse.Namespace):
    """anomalib's FastFlow or U-Flow with EfficientNet-Lite0 in the place of resnet18."""
    import _anomalib_worker as worker
    import timm
    from anomalib.models import Fastflow, Uflow
    from anomalib.models.image.uflow import torch_model as uflow_model
    from anomalib.models.image.uflow.feature_extraction import LayerNormFeatureExtractor
    from anomalib.pre_processing import PreProcessor
    from torchvision.transforms.v2 import Compose, Normalize, Resize

    size = (args.image_size, args.image_size)
    normalise = Normalize(worker.IMAGENET_MEAN, worker.IMAGENET_STD)
    pre = PreProcessor(transform=Compose([Resize(size, antialias=True), normalise]))
    if args.model == "fastflow":
        create = timm.create_model
        timm.create_model = lambda name, *a, **kw: create(LITE0 if name == "resnet18" else name, *a, **kw)
        try:
            module = Fastflow(backbone="resnet18", pre_trained=False, pre_processor=pre)
        finally:
            timm.create_model = create
        extractor = module.model.feature_extractor
    else:
        uflow_model.get_feature_extractor = lambda backbone, input_size: LayerNormFeatureExtractor(
            LITE0, input_size, layers=list(OUT_INDICES)
        ).eval()
        module = Uflow(backbone="resnet18", pre_processor=pre)
        extractor = module.model.feature_extractor.feature_extractor
    return module, extractor, worker.load_backbone(extractor, args.weights)


def good_test_mean_z2(module, images, maps_out: str) -> list[float]:
    """U-Flow's good test images' mean z^2 per scale, finest first, from the pre-processed test images."""
    import numpy as np
    import torch

    good = torch.from_numpy(~np.load(maps_out)["labels"])
    net = module.model.eval()
    with torch.inference_mode():
        latents, _ = net.encode(net.feature_extractor(images[good]))
    return [float(z.pow(2).mean()) for z in latents]


def main() -> None:
    parser = script_parser(__doc__)
    add_worker_arguments(parser)
    parser.add_argument("--latent-stats", action="store_true", help="U-Flow: the good test images' mean z^2")
    args = parser.parse_args()
    check_worker_arguments(parser, args, "run")
    if args.model not in ("fastflow", "uflow"):
        parser.error(f"--model {args.model}: expected fastflow or uflow (cflow_reference_check.py runs CFLOW-AD)")
    import _anomalib_worker as worker

    worker.build = build_on_lite0
    set_threads(args.threads)
    stats = {}
    if args.latent_stats:
        score_test = worker.score_test

        def score_and_measure(module, datamodule, maps_out: str):
            images = score_test(module, datamodule, maps_out)
            stats["good_test_mean_z2"] = good_test_mean_z2(module, images, maps_out)
            print("good test images' mean z^2 per scale:", [round(v, 3) for v in stats["good_test_mean_z2"]])
            return images

        worker.score_test = score_and_measure
    write_worker_result({**worker.run(args), **stats}, args.json_out)


if __name__ == "__main__":
    main()
