"""The engines that score images for :class:`flowad.inference.Detector`: torch, onnxruntime and OpenVINO.

Every engine takes a batch of uint8 images already at the model's size (``Preprocess.resized``) and returns
the maps at that size, the scores and, when asked, the latents: what follows (the maps at each image's size,
thresholds, masks, the NFA) is the same code for all of them. The exported engines run the run's exported
file, ``RUN/model.onnx`` or ``RUN/openvino/model.xml``, exported on first use when it is missing or was
made from other weights or by another graph format, and replaced in place (atomically).

``auto`` picks the fastest installed: OpenVINO, then onnxruntime, then torch; an export that fails falls back
to the next, with a warning.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flowad.errors import InputError
from flowad.preprocess import Preprocess

ENGINES = ("auto", "torch", "onnx", "openvino")
AUTO_ORDER = ("openvino", "onnx", "torch")
RUNTIME_MODULES = {"onnx": "onnxruntime", "openvino": "openvino"}


@dataclass
class EngineOutput:
    """One batch scored: maps (N, h, w) float32 at the model's size, scores (N,) float32, latents or None."""

    maps: np.ndarray
    scores: np.ndarray
    latents: list[np.ndarray] | None


class TorchEngine:
    name = "torch"

    def __init__(self, model: Any, preprocess: Preprocess, device: torch.device) -> None:
        self.model, self.preprocess, self.device = model.to(device).eval(), preprocess, device
        self.source = "PyTorch"

    @torch.inference_mode()
    def run(self, images: np.ndarray, latents: bool = False) -> EngineOutput:
        normalised = self.preprocess.normalised(images).transpose(0, 3, 1, 2)
        z = self.model.latents(torch.from_numpy(np.ascontiguousarray(normalised)).to(self.device))
        maps = self.model.anomaly_map(z)
        scores = self.model.image_scores(z, maps)
        kept = [t.float().cpu().numpy() for t in z] if latents else None
        return EngineOutput(maps.float().cpu().numpy(), scores.float().cpu().numpy(), kept)


class OnnxEngine:
    name = "onnx"

    def __init__(self, path: Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # noqa: BLE001 - onnxruntime raises its own error types for bad files
            raise InputError(f"{path} is not a readable ONNX model ({err})") from err
        self.metadata = self.session.get_modelmeta().custom_metadata_map
        self.latent_names = [o.name for o in self.session.get_outputs() if o.name.startswith("latent_")]
        self.source = str(path)

    def run(self, images: np.ndarray, latents: bool = False) -> EngineOutput:
        names = ["anomaly_map", "score", *(self.latent_names if latents else [])]
        out = self.session.run(names, {"image": np.ascontiguousarray(images, dtype=np.uint8)})
        return EngineOutput(out[0], out[1], out[2:] if latents else None)


class OpenVinoEngine:
    name = "openvino"

    def __init__(self, path: Path, threads: int | None = None) -> None:
        import openvino as ov

        core = ov.Core()
        # f32: not bf16 on CPUs that have it (the FP32 results); one stream, all threads on each request
        config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = threads
        try:
            model = core.read_model(str(path))
            self.compiled = core.compile_model(model, "CPU", config)
        except Exception as err:  # noqa: BLE001 - OpenVINO raises its own error types for bad files
            raise InputError(f"{path} is not a readable OpenVINO model ({err})") from err
        self.metadata = {key: _rt_info(model, key) for key in ("flowad.graph", "flowad.weights_sha256")}
        self.latent_names = sorted(
            (n for o in self.compiled.outputs for n in o.get_names() if n.startswith("latent_")),
            key=lambda n: int(n.split("_")[1]),
        )
        self.request = self.compiled.create_infer_request()
        self.source = str(path)

    def run(self, images: np.ndarray, latents: bool = False) -> EngineOutput:
        self.request.infer({0: np.ascontiguousarray(images, dtype=np.uint8)})
        result = self.request.get_tensor
        kept = [result(name).data.copy() for name in self.latent_names] if latents else None
        return EngineOutput(result("anomaly_map").data.copy(), result("score").data.copy(), kept)


def _rt_info(model: Any, key: str) -> str:
    return model.get_rt_info(key).astype(str) if model.has_rt_info(key) else ""


def open_engine(run_dir: Path, engine: str = "auto", threads: int | None = None, exported: Path | None = None) -> Any:
    """The engine named (``auto``: the fastest installed, module docstring) on the run's current export, or on
    the file ``exported`` (an .onnx or OpenVINO .xml file exported from this run, e.g. in FP16 or INT8)."""
    if engine not in ENGINES:
        raise InputError(f"--engine {engine!r} is not known; expected one of {', '.join(ENGINES)}")
    if exported is not None:
        return _given_file(Path(exported), engine, threads)
    if engine == "torch":
        return _torch_engine(run_dir)
    if engine != "auto":
        _require_runtime(engine)
        return _exported_engine(run_dir, engine, threads)
    for name in AUTO_ORDER[:-1]:
        if importlib.util.find_spec(RUNTIME_MODULES[name]) is None:
            continue
        try:
            return _exported_engine(run_dir, name, threads)
        except Exception as err:  # noqa: BLE001 - any failure of an optional engine falls back to the next
            print(f"warning: the {name} engine is unavailable for {run_dir} ({err}); trying the next", file=sys.stderr)
    return _torch_engine(run_dir)


def _given_file(path: Path, engine: str, threads: int | None) -> Any:
    kind = {".onnx": "onnx", ".xml": "openvino"}.get(path.suffix.lower())
    if kind is None or engine not in ("auto", kind):
        raise InputError(f"--exported {path}: expected an .onnx file (onnx engine) or an OpenVINO .xml (openvino)")
    if not path.is_file():
        raise InputError(f"--exported {path} does not exist")
    _require_runtime(kind)
    return (OnnxEngine if kind == "onnx" else OpenVinoEngine)(path, threads)


def _torch_engine(run_dir: Path) -> TorchEngine:
    from flowad.checkpoint import load_run
    from flowad.engine import resolve_device

    model, record = load_run(run_dir)
    return TorchEngine(model, record.preprocess, resolve_device("auto"))


def _require_runtime(engine: str) -> None:
    if importlib.util.find_spec(RUNTIME_MODULES[engine]) is None:  # each engine's extra is named after it
        raise InputError(f"--engine {engine} needs {RUNTIME_MODULES[engine]}: pip install 'flowad[{engine}]'")


def _exported_engine(run_dir: Path, engine: str, threads: int | None) -> Any:
    """The engine on the run's export, exported (again) first when missing or stale."""
    from flowad.export import GRAPH_FORMAT, ONNX_FILE, export_onnx, weights_fingerprint
    from flowad.openvino_export import XML_FILE, default_folder, export_openvino

    path = run_dir / ONNX_FILE if engine == "onnx" else run_dir / default_folder() / XML_FILE
    opener = OnnxEngine if engine == "onnx" else OpenVinoEngine
    fingerprint = weights_fingerprint(run_dir)
    if path.is_file():
        try:
            opened = opener(path, threads)
        except InputError:
            opened = None  # a damaged file is exported again
        meta = opened.metadata if opened is not None else {}
        if meta.get("flowad.graph") == GRAPH_FORMAT and meta.get("flowad.weights_sha256") == fingerprint:
            return opened
    print(f"exporting {run_dir} for the {engine} engine to {path}", file=sys.stderr)
    if engine == "onnx":
        export_onnx(run_dir)
    else:
        export_openvino(run_dir)
    return opener(path, threads)
