"""OpenVINO IR of a trained run: FP32, FP16 (weights stored in float16) or INT8 (NNCF's post-training
quantisation on good images), from the deployable ONNX graph of :mod:`flowad.export`.

The IR takes uint8 (N, h, w, 3) images already at the model's size (h, w), resized as
:func:`flowad.preprocess.resize_uint8` does, and returns the results of the ONNX graph at that size: OpenVINO's
CPU plugin computes integer arithmetic in float32, and the exact resize of the ONNX graph needs integers up to
2^30 (measured: off by up to 177 grey levels), so the resize stays outside. The ``flowad.*`` metadata of the
ONNX graph is in the IR's runtime info (``model.get_rt_info("flowad.model")``).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from flowad.checkpoint import load_run
from flowad.data.datasets import list_images_at_any_depth
from flowad.data.images import read_image
from flowad.errors import InputError
from flowad.export import deployable_proto, export_target
from flowad.records import RunRecord

XML_FILE = "model.xml"
PRECISIONS = ("fp32", "fp16")
INSTALL_HINT = "pip install 'flowad[openvino]'"
CALIBRATION_LIMIT = 300  # NNCF's default subset size: more images only take longer


def default_folder(precision: str = "fp32", int8: bool = False) -> str:
    """Where in a run an export of this kind goes: ``openvino``, ``openvino-fp16`` or ``openvino-int8``."""
    return "openvino-int8" if int8 else ("openvino" if precision == "fp32" else f"openvino-{precision}")


def export_openvino(
    run_dir: str | Path,
    out: str | Path | None = None,
    precision: str = "fp32",
    int8: bool = False,
    calibration: str | Path | None = None,
    threshold: str | float = "f1",
) -> Path:
    """Write the run's OpenVINO IR (``model.xml`` and ``model.bin``); returns the .xml path.

    ``out``: the .xml file, or a folder for it (default ``RUN/openvino``, ``RUN/openvino-fp16``,
    ``RUN/openvino-int8``). ``int8`` quantises the backbone's weights and activations with NNCF, calibrated
    on the images of the folder ``calibration`` (good images, any depth, up to 300 used); the flow heads and
    everything after them stay in float32.
    """
    ov = _openvino()
    if precision not in PRECISIONS:
        raise InputError(f"--precision {precision!r} is not known for OpenVINO; expected one of {list(PRECISIONS)}")
    if int8 and calibration is None:
        raise InputError("--int8 needs --calibration GOOD_IMAGES_DIR: images to calibrate the quantisation on")
    run_dir = Path(run_dir)
    model, record = load_run(run_dir)
    target = export_target(run_dir / default_folder(precision, int8), out, XML_FILE)
    samples = calibration_images(calibration, record) if int8 else None
    proto = deployable_proto(run_dir, model, record, threshold, any_size=False)
    ov_model = _convert(ov, proto)
    if samples is not None:
        ov_model = _quantise(ov_model, samples)
    _save(ov, ov_model, target, compress_to_fp16=precision == "fp16")
    return target


def _openvino() -> Any:
    try:
        import openvino as ov
    except ImportError as err:
        raise InputError(f"OpenVINO export and inference need openvino: {INSTALL_HINT}") from err
    return ov


def _convert(ov: Any, proto: Any) -> Any:
    """The ONNX graph read by OpenVINO, with its metadata moved to the runtime info."""
    with tempfile.TemporaryDirectory(prefix="flowad-openvino-") as folder:
        path = Path(folder) / "model.onnx"
        path.write_bytes(proto.SerializeToString())
        ov_model = ov.convert_model(str(path))
    for prop in proto.metadata_props:
        ov_model.set_rt_info(prop.value, prop.key)
    return ov_model


def calibration_images(folder: str | Path, record: RunRecord) -> list[np.ndarray]:
    """Up to 300 images of ``folder`` (any depth), each resized to the model's size: uint8 (1, h, w, 3)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"--calibration {folder} is not a folder; expected a folder of good images")
    files = list_images_at_any_depth(folder)
    if not files:
        raise InputError(f"--calibration {folder} holds no image (.png, .jpg, .jpeg, .bmp, .tif or .tiff)")
    step = max(len(files) // CALIBRATION_LIMIT, 1)  # spread over the folder, not its first subfolder
    return [record.preprocess.resized(read_image(path))[None] for path in files[::step][:CALIBRATION_LIMIT]]


def _quantise(ov_model: Any, samples: list[np.ndarray]) -> Any:
    try:
        import nncf
    except ImportError as err:
        raise InputError(f"INT8 quantisation needs nncf: {INSTALL_HINT}") from err
    # the frozen backbone only: the flows' exp and log-det amplify INT8's error (measured on the demo: CFLOW's
    # image AUROC 0.91 -> 0.43 with every layer quantised, 0.91 -> 0.92 with the backbone alone, at the same speed)
    heads = nncf.IgnoredScope(patterns=[r"^(?!/encoder/).*"], validate=False)
    return nncf.quantize(ov_model, nncf.Dataset(samples), subset_size=len(samples), ignored_scope=heads)


def _save(ov: Any, ov_model: Any, target: Path, compress_to_fp16: bool) -> None:
    """model.xml and model.bin beside it, each replaced whole (the .bin first: the .xml names it)."""
    with tempfile.TemporaryDirectory(prefix=".flowad-openvino-", dir=target.parent) as folder:
        staged = Path(folder) / XML_FILE
        try:
            ov.save_model(ov_model, str(staged), compress_to_fp16=compress_to_fp16)
        except Exception as err:  # noqa: BLE001 - OpenVINO raises its own error types
            raise InputError(f"cannot write the OpenVINO model to {target}: {err}") from err
        os.replace(staged.with_suffix(".bin"), target.with_suffix(".bin"))
        os.replace(staged, target)
