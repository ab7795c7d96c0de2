"""Run directories: weights in safetensors beside a JSON config, loaded without unpickling anything.

A run directory holds ``config.json`` (model, its config, input preprocessing, thresholds, data,
format and flowad versions), ``model.safetensors`` (the trained head) and, unless the backbone's
weights ship with flowad, ``backbone.safetensors`` (so the run does not depend on a file or a download
that may be gone later). Every file is written atomically: a temporary file, then a rename.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from flowad.backbones import OFFLINE_BACKBONE, fingerprint
from flowad.data.spec import DataSpec
from flowad.errors import InputError
from flowad.models import AnomalyModel, model_class
from flowad.preprocess import Preprocess
from flowad.records import FORMAT_VERSION, RunRecord
from flowad.thresholds import Thresholds

TRAIN_STATE_TENSORS = "train_state.safetensors"
TRAIN_STATE_JSON = "train_state.json"
BEST_STATE = "best_state.safetensors"  # the head at the best validation epoch, while training

CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
BACKBONE_FILE = "backbone.safetensors"


def flowad_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("flowad")
    except PackageNotFoundError:
        return "unknown"


def atomic_write(path: Path, data: bytes | str, durable: bool = True) -> None:
    """Write ``data`` to ``path`` so that a reader sees the old file or the new one, never half of one.

    ``durable``: the data reaches the disk before the file replaces the old one (fsync), so a power cut cannot
    leave an empty file behind; outputs that a run can make again (per-image pictures) skip it for speed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes files private; outputs get the usual permissions
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, value: Any) -> None:
    atomic_write(path, json.dumps(value, indent=2, sort_keys=False) + "\n")


def read_json(path: Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path} does not exist")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{path} is not valid JSON: {err}") from err


def _save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save

    atomic_write(path, save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}))


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    if not path.is_file():
        raise InputError(f"{path} does not exist; the run directory is incomplete")
    try:
        return load(path.read_bytes())
    except Exception as err:  # noqa: BLE001 - truncated or tampered files raise various errors
        raise InputError(f"{path} is not a readable safetensors file ({err}); it may be truncated or damaged") from err


def backbone_ships_with_flowad(model: AnomalyModel) -> bool:
    return model.config.backbone == OFFLINE_BACKBONE and model.config.weights == "pretrained"


def save_run(
    run_dir: Path,
    model: AnomalyModel,
    thresholds: Thresholds,
    data: DataSpec | None = None,
    seed: int = 0,
    train: dict[str, Any] | None = None,
) -> RunRecord:
    """Write the model's weights and its record (config.json) into ``run_dir``; returns the record."""
    run_dir = Path(run_dir)
    store_backbone = not backbone_ships_with_flowad(model)
    head = model.trainable_state()
    _save_tensors(run_dir / MODEL_FILE, head)
    if store_backbone:
        _save_tensors(run_dir / BACKBONE_FILE, model.encoder.state_dict())
    record = RunRecord(
        model=model.name,
        model_config=model.config.to_dict(),
        preprocess=Preprocess.from_model(model),
        backbone_fingerprint=fingerprint(model.encoder),
        backbone_stored=store_backbone,
        tensors={k: list(v.shape) for k, v in head.items()},
        thresholds=thresholds,
        data=data,
        seed=seed,
        train=train or {},
        flowad_version=flowad_version(),
    )
    write_json(run_dir / CONFIG_FILE, record.to_json())
    return record


def read_record(run_dir: Path) -> RunRecord:
    """The record of a run directory (its config.json); a missing or damaged one is a clear error."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputError(f"run directory {run_dir} does not exist")
    return RunRecord.from_json(read_json(run_dir / CONFIG_FILE), run_dir / CONFIG_FILE)


def load_run(run_dir: Path) -> tuple[AnomalyModel, RunRecord]:
    """Rebuild the model of a run directory; every mismatch is a clear error, never a silent guess."""
    run_dir = Path(run_dir)
    record = read_record(run_dir)
    cls = model_class(record.model)
    model_config = cls.config_class.from_dict(record.model_config)
    if record.backbone_stored:
        model_config.weights = "random"  # replaced by the stored tensors just below
    model = cls(model_config)
    if record.backbone_stored:
        _load_into(model.encoder, _load_tensors(run_dir / BACKBONE_FILE), run_dir / BACKBONE_FILE)
        model.config.weights = record.model_config["weights"]
    found = fingerprint(model.encoder)
    if found != record.backbone_fingerprint:
        raise InputError(
            f"the backbone weights of {run_dir} differ from those it was trained with "
            f"(fingerprint {found}, expected {record.backbone_fingerprint})"
        )
    head = _load_tensors(run_dir / MODEL_FILE)
    declared = {k: list(v.shape) for k, v in head.items()}
    if declared != record.tensors:
        raise InputError(f"{run_dir / MODEL_FILE} does not match the tensors its config lists; the run is damaged")
    _load_into(model, head, run_dir / MODEL_FILE, partial=True)
    model.eval()
    return model, record


def _load_into(module: torch.nn.Module, state: dict[str, torch.Tensor], path: Path, partial: bool = False) -> None:
    own = module.state_dict()
    expected = {k for k in own if not k.startswith("encoder.")} if partial else set(own)
    if set(state) != expected:
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        raise InputError(f"{path} does not fit its model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    for k, v in state.items():
        if v.shape != own[k].shape:
            raise InputError(f"{path}: tensor {k} is {tuple(v.shape)}, the model expects {tuple(own[k].shape)}")
    module.load_state_dict(state, strict=not partial)


def save_train_state(
    run_dir: Path,
    model: AnomalyModel,
    optimizer: torch.optim.Optimizer,
    scheduler: Any | None,
    generator: torch.Generator,
    log: dict[str, Any],
) -> None:
    """Everything needed to continue training after the last finished epoch, without pickle.

    Tensors (head, optimiser moments, generator state) go to safetensors, the rest to JSON; the JSON is
    written last, so a state is only ever read whole.
    """
    optim = optimizer.state_dict()
    tensors = {f"model.{k}": v for k, v in model.trainable_state().items()}
    plain_state: dict[str, dict[str, Any]] = {}
    for pid, state in optim["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{pid}.{key}"] = value
            else:
                plain_state.setdefault(str(pid), {})[key] = value
    tensors["generator"] = generator.get_state()
    _save_tensors(Path(run_dir) / TRAIN_STATE_TENSORS, tensors)
    write_json(
        Path(run_dir) / TRAIN_STATE_JSON,
        {
            "format_version": FORMAT_VERSION,
            "param_groups": optim["param_groups"],
            "optim_plain": plain_state,
            "scheduler": None if scheduler is None else scheduler.state_dict(),
            "log": log,
        },
    )


def save_best_state(run_dir: Path, model: AnomalyModel) -> None:
    _save_tensors(Path(run_dir) / BEST_STATE, model.trainable_state())


def load_best_state(run_dir: Path, model: AnomalyModel) -> None:
    _load_into(model, _load_tensors(Path(run_dir) / BEST_STATE), Path(run_dir) / BEST_STATE, partial=True)


def load_train_state(
    run_dir: Path | None,
    model: AnomalyModel,
    optimizer: torch.optim.Optimizer,
    scheduler: Any | None,
    generator: torch.Generator,
) -> dict[str, Any]:
    """Restore what :func:`save_train_state` wrote; returns the training log up to that epoch."""
    if run_dir is None or not (Path(run_dir) / TRAIN_STATE_JSON).is_file():
        raise InputError(f"{run_dir} holds no training state to resume from ({TRAIN_STATE_JSON} is missing)")
    meta = read_json(Path(run_dir) / TRAIN_STATE_JSON)
    tensors = _load_tensors(Path(run_dir) / TRAIN_STATE_TENSORS)
    head = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    _load_into(model, head, Path(run_dir) / TRAIN_STATE_TENSORS, partial=True)
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = value
    for pid, values in meta["optim_plain"].items():
        state.setdefault(int(pid), {}).update(values)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    if scheduler is not None and meta["scheduler"] is not None:
        scheduler.load_state_dict(meta["scheduler"])
    generator.set_state(tensors["generator"])
    return meta["log"]
