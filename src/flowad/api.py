"""The verbs users call, from Python or through the CLI; each lives in a module of its own:

- :mod:`flowad.training`: ``train``, ``resume``;
- :mod:`flowad.evaluation`: ``test``, ``evaluate``, ``format_metrics``;
- :mod:`flowad.benchmark`: ``benchmark``; :mod:`flowad.tables`: its category table;
- :mod:`flowad.inference`: ``Detector``, ``load``; :mod:`flowad.predict_files`: ``predict``;
- :mod:`flowad.export` and :mod:`flowad.openvino_export`: ``export_onnx``, ``export_openvino``.

Data flows one way: image files -> features -> latents -> maps -> scores and masks -> metrics.
"""

from __future__ import annotations

from flowad.benchmark import benchmark
from flowad.checkpoint import read_json, read_record
from flowad.data.datasets import Sample
from flowad.data.spec import DataSpec, list_categories
from flowad.evaluation import evaluate, format_metrics, test
from flowad.export import export_onnx
from flowad.inference import Detector, load
from flowad.openvino_export import export_openvino
from flowad.predict_files import predict
from flowad.records import EngineSettings, RunRecord, TrainRequest
from flowad.tables import Spread, category_table, format_table
from flowad.training import resume, train, validation_metrics

__all__ = [
    "DataSpec",
    "Detector",
    "EngineSettings",
    "RunRecord",
    "Sample",
    "Spread",
    "benchmark",
    "category_table",
    "evaluate",
    "export_onnx",
    "export_openvino",
    "format_metrics",
    "format_table",
    "list_categories",
    "load",
    "predict",
    "read_record",
    "read_json",
    "resume",
    "test",
    "train",
    "TrainRequest",
    "validation_metrics",
]
