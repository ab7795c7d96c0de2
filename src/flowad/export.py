"""Export of a trained run: one self-contained ONNX graph (images in, maps, scores, verdicts and masks out),
OpenVINO IR made from it (:mod:`flowad.openvino_export`), or the raw model graph.

The deployable graph (:func:`export_onnx`):

- input ``image``: uint8 (N, H, W, 3) RGB, any N, H, W (one size per batch);
- it resizes as training does (:func:`flowad.preprocess.resize_uint8`, bit for bit), normalises, runs the model;
- outputs ``anomaly_map`` float32 (N, H, W) at the input's size, ``score`` float32 (N,) (the model's image score:
  the maximum of the map at the model's size; MSFlow's is a top-k mean), ``normalised_score`` float64 (N,) (0.5
  at the image threshold), ``anomalous`` bool (N,), ``mask`` bool (N, H, W) at the stored thresholds, and
  ``latent_0``, ``latent_1``, ... float32 (N, C, h, w): the model's latents, from which
  :func:`flowad.nfa.log_nfa` gives the a contrario masks;
- metadata (``flowad.*`` keys, strings): the version, the model, its input size and normalisation, the
  thresholds, the NFA settings, the run's whole record and a fingerprint of its weights.

``raw=True`` writes the model alone: normalised float32 (N, 3, h, w) in, ``anomaly_map`` and ``score`` out.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import io
import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from flowad.checkpoint import BACKBONE_FILE, CONFIG_FILE, MODEL_FILE, atomic_write, flowad_version, load_run
from flowad.errors import InputError
from flowad.models import AnomalyModel
from flowad.nfa import settings_of
from flowad.records import RunRecord
from flowad.thresholds import Thresholds, from_option

ONNX_FILE = "model.onnx"
RAW_ONNX_FILE = "model_raw.onnx"
INPUT_NAME = "image"
GRAPH_FORMAT = "flowad-deploy-1"  # what the graph takes and returns; a cached export of another format is redone
RESULT_NAMES = ("anomaly_map", "score", "normalised_score", "anomalous", "mask")
INSTALL_HINT = "pip install 'flowad[onnx]'"


class _ModelGraph(nn.Module):
    """Normalised images (N, 3, h, w) -> maps (N, h, w), scores (N,) and, unless ``raw``, the latents."""

    def __init__(self, model: AnomalyModel, raw: bool) -> None:
        super().__init__()
        self.model, self.raw = model, raw

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        latents = self.model.latents(image)
        maps = self.model.anomaly_map(latents)
        scores = self.model.image_scores(latents, maps)
        return (maps, scores) if self.raw else (maps, scores, *list(latents))


def export_onnx(
    run_dir: str | Path,
    out: str | Path | None = None,
    raw: bool = False,
    threshold: str | float = "f1",
    opset: int = 17,
) -> Path:
    """Export the run to one ONNX file, written atomically: the deployable graph (module docstring), or with
    ``raw`` the model alone. ``out`` is the file, or a folder for ``model.onnx`` (default ``RUN/model.onnx``,
    ``RUN/model_raw.onnx`` for ``raw``). ``threshold`` picks the thresholds baked in (as ``--threshold``; ``nfa``
    keeps the stored ones: the NFA masks come from the latents). Returns the path written; an ``out`` that
    cannot be written raises :class:`~flowad.errors.InputError` naming it."""
    if importlib.util.find_spec("onnx") is None:
        raise InputError(f"ONNX export needs the 'onnx' package: {INSTALL_HINT}")
    run_dir = Path(run_dir)
    model, record = load_run(run_dir)
    out = export_target(run_dir, out, RAW_ONNX_FILE if raw else ONNX_FILE)  # before the export, which takes a while
    core = (
        deployable_proto(run_dir, model, record, threshold, opset)
        if not raw
        else _model_proto(model, record, True, opset)
    )
    try:
        atomic_write(out, core.SerializeToString())
    except OSError as err:
        raise InputError(f"cannot write the ONNX model to {out}: {err.strerror or err}") from err
    return out


def deployable_proto(
    run_dir: Path,
    model: AnomalyModel,
    record: RunRecord,
    threshold: str | float,
    opset: int = 17,
    any_size: bool = True,
) -> Any:
    """The deployable graph as an ``onnx.ModelProto``, its metadata set (``any_size``: see :func:`_deployable`)."""
    from onnx import helper

    thresholds = from_option(record.thresholds, threshold)
    proto = _deployable(_model_proto(model.eval(), record, False, opset), record, thresholds, any_size)
    helper.set_model_props(proto, metadata(run_dir, record, thresholds, threshold))
    return proto


def _model_proto(model: AnomalyModel, record: RunRecord, raw: bool, opset: int) -> Any:
    import onnx

    graph = _ModelGraph(model, raw).eval()
    example = torch.zeros(2, 3, *record.preprocess.size)  # batch 2: the tracer must not specialise on 1
    with torch.no_grad():
        shapes = [] if raw else [tuple(z.shape[1:]) for z in model.latents(example[:1])]
    outputs = ["anomaly_map", "score"] + [f"latent_{i}" for i in range(len(shapes))]
    input_name = INPUT_NAME if raw else "normalised"
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
            input_names=[input_name],
            output_names=outputs,
            dynamic_axes={name: {0: "batch"} for name in (input_name, *outputs)},
            opset_version=opset,
        )
    proto = onnx.load_from_string(buffer.getvalue())
    # the tracer names the latents' fixed sizes as if they varied, and alike across latents, which misleads
    # onnxruntime's memory planning: each gets its own (batch, C, h, w)
    for output in proto.graph.output[2:]:
        shape = shapes[int(output.name.split("_")[1])]
        output.CopyFrom(onnx.helper.make_tensor_value_info(output.name, onnx.TensorProto.FLOAT, ["batch", *shape]))
    return proto


def _deployable(core: Any, record: RunRecord, thresholds: Thresholds, any_size: bool = True) -> Any:
    """The model graph between the uint8 images and the results (module docstring). Without ``any_size`` the
    images come at the model's size and the results stay at it (no resize in the graph: OpenVINO's CPU plugin
    computes integer arithmetic in float32, which the exact resize cannot bear)."""
    from onnx import TensorProto, helper

    from flowad import onnx_graph

    pre, post = onnx_graph.GraphBuilder("pre/"), onnx_graph.GraphBuilder("post/")
    images = onnx_graph.image_batch_to_nchw(pre, INPUT_NAME)
    if any_size:
        images = onnx_graph.resize_uint8(pre, images, record.preprocess.size)
        onnx_graph.map_at_image_size(post, "model/anomaly_map", INPUT_NAME, name="anomaly_map")
        _rename(core.graph, "anomaly_map", "model/anomaly_map")
    onnx_graph.normalise(pre, images, record.preprocess.mean, record.preprocess.std, name="normalised")
    onnx_graph.verdict_and_mask(post, "anomaly_map", "score", thresholds, {n: n for n in RESULT_NAMES})
    height, width = ("height", "width") if any_size else record.preprocess.size
    latents = [o for o in core.graph.output if o.name.startswith("latent_")]
    image = helper.make_tensor_value_info(INPUT_NAME, TensorProto.UINT8, ["batch", height, width, 3])
    outputs = [
        helper.make_tensor_value_info("anomaly_map", TensorProto.FLOAT, ["batch", height, width]),
        helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"]),
        helper.make_tensor_value_info("normalised_score", TensorProto.DOUBLE, ["batch"]),
        helper.make_tensor_value_info("anomalous", TensorProto.BOOL, ["batch"]),
        helper.make_tensor_value_info("mask", TensorProto.BOOL, ["batch", height, width]),
        *latents,
    ]
    nodes = [*pre.nodes, *core.graph.node, *post.nodes]
    initializers = [*pre.initializers, *core.graph.initializer, *post.initializers]
    merged = helper.make_graph(nodes, "flowad", [image], outputs, initializer=initializers)
    model = helper.make_model(merged, opset_imports=core.opset_import, producer_name="flowad")
    model.ir_version = core.ir_version
    return model


def _rename(graph: Any, old: str, new: str) -> None:
    """Every use of the tensor ``old`` in ``graph``'s nodes, as inputs and outputs, renamed to ``new``."""
    for node in graph.node:
        for names in (node.input, node.output):
            names[:] = [new if name == old else name for name in names]


def metadata(run_dir: Path, record: RunRecord, thresholds: Thresholds, option: str | float) -> dict[str, str]:
    """The ``flowad.*`` metadata of an exported file (strings): what a user needs, and what makes it current."""
    tiling = record.preprocess.tiling
    return {
        "flowad.graph": GRAPH_FORMAT,
        "flowad.version": flowad_version(),
        "flowad.model": record.model,
        "flowad.image_size": json.dumps(list(record.preprocess.size)),
        "flowad.normalisation": json.dumps({"mean": list(record.preprocess.mean), "std": list(record.preprocess.std)}),
        "flowad.thresholds": json.dumps({**dataclasses.asdict(thresholds), "option": str(option)}),
        "flowad.nfa": json.dumps(settings_of(record.model_config)),
        # a tiled run's graph scores one tile: the caller cuts the tiles and blends their maps (README, Large images)
        "flowad.tiling": json.dumps(None if tiling is None else dataclasses.asdict(tiling)),
        "flowad.weights_sha256": weights_fingerprint(run_dir),
        "flowad.record": json.dumps(record.to_json()),
    }


def weights_fingerprint(run_dir: Path) -> str:
    """sha256 over the run's config and weight files: an exported file made from other ones is stale."""
    digest = hashlib.sha256()
    for name in (CONFIG_FILE, MODEL_FILE, BACKBONE_FILE):
        path = run_dir / name
        if path.is_file():
            digest.update(name.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def export_target(default_folder: Path, out: str | Path | None, file_name: str) -> Path:
    """The file an export writes for ``out`` (None: ``default_folder/file_name``; a folder: ``folder/file_name``),
    its folder made; InputError if it cannot be."""
    # Path() drops a trailing separator, so "models/" is recognised on the string
    names_folder = out is not None and str(out).endswith(tuple(sep for sep in (os.sep, os.altsep, "/") if sep))
    target = Path(default_folder if out is None else out)
    if out is None or names_folder or target.is_dir():
        target = target / file_name
    if target.is_dir():
        raise InputError(f"cannot write the exported model to {target}: it is a folder")
    blocking = next((p for p in target.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise InputError(f"cannot write the exported model to {target}: {blocking} is a file, not a folder")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"cannot write the exported model to {target}: {err.strerror or err}") from err
    return target
