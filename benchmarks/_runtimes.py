"""What both sides of ``vs_anomalib.py`` use to time an exported graph outside torch: onnxruntime and OpenVINO
sessions on the CPU with a given thread count, timed per image at batch 1 and 16.

Imports no flowad name and neither runtime at module level (each side imports the runtime it times).

- onnxruntime: ``CPUExecutionProvider``, ``intra_op_num_threads = threads``, ``inter_op_num_threads = 1``,
  sequential execution, every graph optimisation (its default).
- OpenVINO: ``Core().compile_model(path, "CPU", {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT":
  "LATENCY"})``: one inference stream of ``threads`` threads, the model read from the ONNX or IR file as is
  (f32 on a CPU without bf16 support; OpenVINO's default inference precision otherwise).
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np
from _harness import alternating_medians

ENGINES = ("onnxruntime", "openvino")
BATCHES = (1, 16)
Run = Callable[[np.ndarray], list[np.ndarray]]


def openvino_config(threads: int) -> dict[str, str]:
    """OpenVINO's CPU plug-in settings for ``threads`` threads and one stream (also given to anomalib's
    ``OpenVINOInferencer``)."""
    return {"INFERENCE_NUM_THREADS": str(threads), "PERFORMANCE_HINT": "LATENCY"}


def onnxruntime_run(path: Path, threads: int) -> Run:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda images: session.run(None, {name: images})


def openvino_run(path: Path, threads: int) -> Run:
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU", openvino_config(threads))
    request = compiled.create_infer_request()  # one request reused, as a deployed service would

    def run(images: np.ndarray) -> list[np.ndarray]:
        results = request.infer({0: images})
        return [results[output] for output in compiled.outputs]

    return run


def open_engine(engine: str, path: Path, threads: int) -> Run:
    """The graph at ``path`` (ONNX, or OpenVINO IR for openvino) opened in ``engine``: images -> outputs."""
    opener = {"onnxruntime": onnxruntime_run, "openvino": openvino_run}[engine]
    return opener(Path(path), threads)


def batches_ms(run: Callable[[np.ndarray], object], images: np.ndarray, rounds: int) -> dict[str, float]:
    """Median milliseconds per image to run ``images`` through ``run`` in batches of 1 and of 16:
    ``{"b1_ms": ..., "b16_ms": ...}``."""
    out = {}
    for batch in BATCHES:

        def all_images(batch: int = batch) -> None:
            for start in range(0, len(images), batch):
                run(images[start : start + batch])

        out[f"b{batch}_ms"] = alternating_medians({"all": all_images}, rounds)["all"] / len(images) * 1000
    return out


def failure(err: BaseException) -> str:
    """An exception as one line for a JSON result: its type, message, and the innermost frame that raised it."""
    frame = traceback.extract_tb(err.__traceback__)[-1] if err.__traceback__ else None
    where = f" ({Path(frame.filename).name}:{frame.lineno})" if frame else ""
    message = " ".join(str(err).split())
    return f"{type(err).__name__}: {message[:600]}{where}"


def time_engines(
    files: dict[str, Path], images: np.ndarray, threads: int, rounds: int, reference: list[np.ndarray] | None = None
) -> dict[str, dict]:
    """Each engine's per-image time at batch 1 and 16 on its file (``files``: engine -> path), and where
    ``reference`` is given (torch's outputs of all ``images`` as one batch, in the graph's output order) the
    largest absolute difference of each output from it. An engine that fails to open or run is reported, not
    raised."""
    out: dict[str, dict] = {}
    for engine, path in files.items():
        try:
            run = open_engine(engine, path, threads)
            result: dict = {"file": str(path)}
            if reference is not None:
                outputs = run(images)
                result["max_abs_diff"] = [float(np.max(np.abs(o - r))) for o, r in zip(outputs, reference, strict=True)]
            result.update(batches_ms(run, images, rounds))
        except Exception as err:  # noqa: BLE001 - a runtime's failure is a result of the comparison
            result = {"file": str(path), "error": failure(err)}
        out[engine] = result
    return out
