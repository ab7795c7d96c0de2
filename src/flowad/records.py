"""What a run needs to be reproduced, as typed records with their JSON forms in one place.

- :class:`EngineSettings`: how to run (device, cache, precision, the seed); never what is learnt.
- :class:`TrainRequest`: what was asked for, ``RUN/request.json``: model, options, data, threshold rule,
  settings. ``flowad train --resume`` rebuilds the run from it.
- :class:`RunRecord`: what was made, ``RUN/config.json``: model and its config, preprocessing, backbone
  fingerprint, tensors, thresholds, data, training summary and versions, written once beside the weights.

Every record checks its values when it is built (see :mod:`flowad.ranges`), so a bad option is refused
where it enters, before any work starts.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from flowad.data.spec import DataSpec
from flowad.distributed import DEFAULT_TIMEOUT
from flowad.errors import InputError
from flowad.models import ModelConfig, model_class
from flowad.preprocess import Preprocess
from flowad.ranges import check_ranges, check_value
from flowad.thresholds import DEFAULT_FPR, Thresholds

CACHE_MODES = ("auto", "on", "off")
PRECISION_NAMES = ("fp32", "bf16", "fp16")
FORMAT = "flowad-run"
FORMAT_VERSION = 1


@dataclasses.dataclass
class EngineSettings:
    """How to run, not what to learn: these never change a model's results (except ``seed``)."""

    seed: int = 0
    device: str = "auto"
    cache: str = "auto"  # "auto": cache when it fits cache_limit_gb; "on"; "off" (stream)
    cache_limit_gb: float = 4.0
    # images per encoder call (scoring, filling the feature cache, streaming); on the CPU 1 is the fastest per image
    inference_batch_size: int = 1
    num_workers: int = 0
    quiet: bool = False
    dist_timeout: float = DEFAULT_TIMEOUT  # torchrun jobs: seconds to wait for the others in a step
    precision: str = "fp32"  # the backbone's: fp32, or bf16 / fp16 autocast (the flows stay float32)
    compile: bool = False  # torch.compile the model for inference (pays off on long runs, on GPUs)

    def __post_init__(self) -> None:
        check_ranges(self)
        if self.cache not in CACHE_MODES:
            raise InputError(f"--cache {self.cache}: expected one of {', '.join(CACHE_MODES)}")
        if self.precision not in PRECISION_NAMES:
            raise InputError(f"--precision {self.precision}: expected one of {', '.join(PRECISION_NAMES)}")


def _fields_of(cls: type, values: dict[str, Any], where: str) -> dict[str, Any]:
    """``values`` restricted to the fields of ``cls``; an unknown key is an error naming ``where``."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise InputError(f"{where}: unknown key(s) {unknown}; expected some of {sorted(names)}")
    return values


def _mapping(values: Any, where: str) -> dict[str, Any]:
    if not isinstance(values, dict):
        raise InputError(f"{where} must hold a JSON object, not {type(values).__name__}")
    return values


@dataclasses.dataclass
class TrainRequest:
    """What ``flowad train`` was asked for. The seed lives in ``settings``."""

    model: str
    data: DataSpec
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    fpr: float = DEFAULT_FPR
    settings: EngineSettings = dataclasses.field(default_factory=EngineSettings)

    def __post_init__(self) -> None:
        check_value("fpr", self.fpr)
        self.model_config()  # bad model options fail here, before anything is written

    @property
    def seed(self) -> int:
        return self.settings.seed

    def model_config(self) -> ModelConfig:
        return model_class(self.model).config_class.from_dict(self.options)

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "options": self.options,
            "data": dataclasses.asdict(self.data),
            "fpr": self.fpr,
            "settings": dataclasses.asdict(self.settings),
        }

    @classmethod
    def from_json(cls, values: Any, where: str | Path = "request.json") -> TrainRequest:
        values = dict(_mapping(values, str(where)))
        values.pop("seed", None)  # written beside the settings' own seed by older releases
        _fields_of(cls, values, str(where))
        settings = EngineSettings(**_fields_of(EngineSettings, values.pop("settings", {}), f"{where} settings"))
        data = DataSpec(**_fields_of(DataSpec, values.pop("data"), f"{where} data"))
        return cls(data=data, settings=settings, **values)


@dataclasses.dataclass
class RunRecord:
    """A trained run: ``RUN/config.json``, read by testing, inference, export, the report and the service."""

    model: str
    model_config: dict[str, Any]
    preprocess: Preprocess
    backbone_fingerprint: str
    backbone_stored: bool  # the backbone's weights are in the run (they do not ship with flowad)
    tensors: dict[str, list[int]]
    thresholds: Thresholds
    data: DataSpec | None = None
    seed: int = 0
    train: dict[str, Any] = dataclasses.field(default_factory=dict)  # sizes, epochs, time, best/last epochs
    flowad_version: str = "unknown"

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "flowad_version": self.flowad_version,
            "model": self.model,
            "model_config": self.model_config,
            # the statistics alone, as users of an exported graph read them; the whole preprocessing beside them
            "normalisation": {"mean": list(self.preprocess.mean), "std": list(self.preprocess.std)},
            "preprocess": self.preprocess.to_dict(),
            "backbone": {"fingerprint": self.backbone_fingerprint, "stored": self.backbone_stored},
            "tensors": self.tensors,
            "thresholds": dataclasses.asdict(self.thresholds),
            "data": None if self.data is None else dataclasses.asdict(self.data),
            "seed": self.seed,
            "train": self.train,
        }

    @classmethod
    def from_json(cls, values: Any, where: str | Path = "config.json") -> RunRecord:
        values = _mapping(values, str(where))
        if values.get("format") != FORMAT:
            raise InputError(f"{where} is not a flowad run config")
        if values.get("format_version") != FORMAT_VERSION:
            raise InputError(
                f"{where} has format version {values.get('format_version')!r}; "
                f"this flowad reads version {FORMAT_VERSION}"
            )
        try:
            data = values.get("data")
            return cls(
                model=values["model"],
                model_config=values["model_config"],
                preprocess=_stored_preprocess(values),
                backbone_fingerprint=values["backbone"]["fingerprint"],
                backbone_stored=values["backbone"]["stored"],
                tensors=values["tensors"],
                thresholds=Thresholds(**values["thresholds"]),
                data=None if data is None else DataSpec(**data),
                seed=values.get("seed", 0),
                train=values.get("train", {}),
                flowad_version=values.get("flowad_version", "unknown"),
            )
        except (KeyError, TypeError) as err:
            raise InputError(f"{where} lacks or garbles {err}; the run is damaged") from err


def _stored_preprocess(values: dict[str, Any]) -> Preprocess:
    """Runs written before config.json held the preprocessing say it by their ``normalisation`` and
    ``model_config.image_size`` (bilinear resizing, the only filter then)."""
    if "preprocess" in values:
        return Preprocess.from_dict(values["preprocess"])
    norm = values["normalisation"]
    return Preprocess(values["model_config"]["image_size"], tuple(norm["mean"]), tuple(norm["std"]))
