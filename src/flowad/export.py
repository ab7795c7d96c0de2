"""ONNX export of a trained run, and inference on the exported graph with onnxruntime.

The graph takes what the model takes: a batch of images already resized and normalised the way the run
says (see :func:`export_onnx`), and returns the anomaly maps and image scores that ``model(images)`` returns.
Thresholds, resizing to the caller's image size and the a contrario (NFA) masks stay in Python.
"""

from __future__ import annotations

import importlib.util
import io
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from flowad.checkpoint import atomic_write, load_run, read_record
from flowad.errors import InputError
from flowad.models import AnomalyModel
from flowad.records import RunRecord

ONNX_FILE = "model.onnx"
INPUT_NAME = "image"
OUTPUT_NAMES = ("anomaly_map", "score")
INSTALL_HINT = "pip install 'flowad[onnx]'"


class _MapsAndScores(nn.Module):
    """The exported graph: normalised images (N, 3, H, W) -> (maps (N, H, W), scores (N,))."""

    def __init__(self, model: AnomalyModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model(image)


def export_onnx(run_dir: str | Path, out: str | Path | None = None, opset: int = 17) -> Path:
    """Export the run's model to one ONNX graph (default ``RUN/model.onnx``, written atomically).

    ``out`` is the file to write, or a folder to write ``model.onnx`` in: an existing folder, or a
    path that ends with a path separator (created if missing). Returns the path written; an ``out``
    that cannot be written raises :class:`~flowad.errors.InputError` naming it.

    Input ``image``: float32 (N, 3, height, width), any N: images as the run's
    :class:`~flowad.preprocess.Preprocess` makes them (the run's :class:`~flowad.records.RunRecord`):
    resized (bilinear) to its ``size``, scaled to [0, 1] (/255) and normalised per channel as
    (x - mean) / std, exactly as :class:`flowad.inference.Detector` does before the model.
    Outputs ``anomaly_map``: float32 (N, image_size, image_size), higher is more anomalous, and ``score``:
    float32 (N,), the maximum of each map: the same values as ``model(images)`` in PyTorch.
    """
    if importlib.util.find_spec("onnx") is None:
        raise InputError(f"ONNX export needs the 'onnx' package: {INSTALL_HINT}")
    run_dir = Path(run_dir)
    model, record = load_run(run_dir)
    out = _onnx_target(run_dir, out)  # before the export, which takes a while
    graph = _MapsAndScores(model).eval()
    example = torch.zeros(2, 3, *record.preprocess.size)  # batch 2: the tracer must not specialise on 1
    batch_axis = {0: "batch"}
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        # shape checks (e.g. U-Flow's) become constants: right, as a run's input size is fixed
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # the TorchScript exporter is deprecated in favour of one that needs onnxscript; it still works
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            graph,
            (example,),
            buffer,
            dynamo=False,  # the TorchScript exporter: needs only 'onnx', and takes dynamic_axes
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_axes={name: batch_axis for name in (INPUT_NAME, *OUTPUT_NAMES)},
            opset_version=opset,
        )
    try:
        atomic_write(out, buffer.getvalue())
    except OSError as err:
        raise InputError(f"cannot write the ONNX model to {out}: {err.strerror or err}") from err
    return out


def _onnx_target(run_dir: Path, out: str | Path | None) -> Path:
    """The file that :func:`export_onnx` writes for ``out``, its folder made; InputError if it cannot be."""
    if out is None:
        return run_dir / ONNX_FILE
    # Path() drops a trailing separator, so "models/" is recognised on the string
    names_folder = str(out).endswith(tuple(sep for sep in (os.sep, os.altsep, "/") if sep))
    target = Path(out)
    if names_folder or target.is_dir():
        target = target / ONNX_FILE
    if target.is_dir():
        raise InputError(f"cannot write the ONNX model to {target}: it is a folder")
    blocking = next((p for p in target.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise InputError(f"cannot write the ONNX model to {target}: {blocking} is a file, not a folder")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"cannot write the ONNX model to {target}: {err.strerror or err}") from err
    return target


class OnnxDetector:
    """An exported run on onnxruntime (CPU): ``OnnxDetector.load(run).maps_and_scores(batch)``."""

    def __init__(self, session: Any, record: RunRecord) -> None:
        self.session, self.record = session, record
        self.preprocess = record.preprocess  # what makes the graph's input of an image
        self.image_size: tuple[int, int] = self.preprocess.size

    @classmethod
    def load(cls, run_dir: str | Path, onnx_path: str | Path | None = None, threads: int | None = None) -> OnnxDetector:
        """Open ``onnx_path`` (default ``RUN/model.onnx``) with the run's record; ``threads`` caps intra-op threads."""
        try:
            import onnxruntime as ort
        except ImportError as err:
            raise InputError(f"the ONNX engine needs onnxruntime: {INSTALL_HINT}") from err
        run_dir = Path(run_dir)
        record = read_record(run_dir)
        path = run_dir / ONNX_FILE if onnx_path is None else Path(onnx_path)
        if not path.is_file():
            raise InputError(
                f"{path} does not exist; export it first with: flowad export --run {run_dir} --format onnx"
            )
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        try:
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # noqa: BLE001 - onnxruntime raises its own error types for bad files
            raise InputError(f"{path} is not a readable ONNX model ({err})") from err
        return cls(session, record)

    def maps_and_scores(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Normalised float32 images (N, 3, H, W) -> (anomaly maps (N, H, W), scores (N,)), as ``model(images)``."""
        batch = np.asarray(batch)
        if batch.ndim != 4 or batch.shape[1:] != (3, *self.image_size):
            raise InputError(
                f"batch of shape {batch.shape}; expected (N, 3, {self.image_size[0]}, {self.image_size[1]})"
            )
        maps, scores = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: np.ascontiguousarray(batch, np.float32)})
        return maps, scores
