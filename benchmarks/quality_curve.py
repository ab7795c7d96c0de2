"""Test-set image and pixel AUROC after every epoch of one training run: quality against training length.

    python benchmarks/quality_curve.py cflow fabric runs/demo/data '{"epochs": 70}'

The model is trained on the training split (less the validation fifth ``flowad train`` holds out) and,
after every epoch, calibrated and scored on the test split; one JSON line per epoch. A model without a
learning-rate schedule (CFLOW-AD) at epoch k is the model a k-epoch run ends with.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch

from flowad.api import DataSpec, validation_metrics
from flowad.data.datasets import ImageDataset
from flowad.engine import EngineSettings, train
from flowad.models import model_class
from flowad.preprocess import Preprocess


def main() -> None:
    model, category, data = sys.argv[1:4]
    options = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
    torch.set_num_threads(int(options.pop("threads", 2)))
    settings = EngineSettings(quiet=True, device=options.pop("device", "auto"))
    cls = model_class(model)
    config = cls.config_class.from_dict(options)
    splits = DataSpec(root=data, category=category).splits(seed=0)  # the split flowad train makes
    torch.manual_seed(0)
    net = cls(config)
    train_set = ImageDataset(splits.train, Preprocess.from_model(net))
    test_set = ImageDataset(splits.test, Preprocess.from_model(net))
    test_metrics = validation_metrics(test_set, np.array([s.label for s in splits.test]), settings)
    epoch, start = [0], time.perf_counter()

    def score(trained) -> dict[str, float]:  # called by the engine after every epoch, on the calibrated model
        epoch[0] += 1
        result = test_metrics(trained)
        seconds = round(time.perf_counter() - start)
        print(json.dumps({"epoch": epoch[0], **{k: round(v, 4) for k, v in result.items()}, "seconds": seconds}))
        return result

    train(net, train_set, settings, validate=score)


if __name__ == "__main__":
    main()
