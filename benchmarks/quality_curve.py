"""How does test quality grow with training length? Image and pixel AUROC after every epoch of one run.

    python benchmarks/quality_curve.py --model cflow --category fabric --data runs/demo/data \\
        --options '{"epochs": 70}'
    python benchmarks/quality_curve.py cflow fabric runs/demo/data '{"epochs": 70}'   # the same

The model is trained on the training split (less the validation fifth ``flowad train`` holds out) and,
after every epoch, calibrated and scored on the test split; one JSON line per epoch. A model without a
learning-rate schedule (CFLOW-AD) at epoch k is the model a k-epoch run ends with.
"""

from __future__ import annotations

import json
import time

import numpy as np
import torch
from _harness import (
    engine_settings,
    parse_run_arguments,
    run_argument_parser,
)

from flowad.api import DataSpec, validation_metrics
from flowad.data.datasets import ImageDataset
from flowad.engine import train
from flowad.models import AnomalyModel, model_class
from flowad.preprocess import Preprocess

RUN_ARGUMENTS = ("model", "category", "data", "options")


def main() -> None:
    args = parse_run_arguments(run_argument_parser(__doc__, RUN_ARGUMENTS, device="auto"), RUN_ARGUMENTS)
    settings = engine_settings(args.device)
    cls = model_class(args.model)
    config = cls.config_class.from_dict(args.options)
    splits = DataSpec(root=str(args.data), category=args.category).splits(seed=0)  # the split flowad train makes
    torch.manual_seed(0)
    net = cls(config)
    train_set = ImageDataset(splits.train, Preprocess.from_model(net))
    test_set = ImageDataset(splits.test, Preprocess.from_model(net))
    test_metrics = validation_metrics(test_set, np.array([s.label for s in splits.test]), settings)
    epoch, start = [0], time.perf_counter()

    # called by the engine after every epoch, on the calibrated model
    def score(trained: AnomalyModel) -> dict[str, float]:
        epoch[0] += 1
        result = test_metrics(trained)
        seconds = round(time.perf_counter() - start)
        print(json.dumps({"epoch": epoch[0], **{k: round(v, 4) for k, v in result.items()}, "seconds": seconds}))
        return result

    train(net, train_set, settings, validate=score)


if __name__ == "__main__":
    main()
