"""The model registry: a name on the command line -> the model class and its config."""

from __future__ import annotations

from flowad.errors import InputError
from flowad.models.base import AnomalyModel, ModelConfig
from flowad.models.cflow import CFlow, CFlowConfig
from flowad.models.fastflow import FastFlow, FastFlowConfig
from flowad.models.msflow import MSFlow, MSFlowConfig
from flowad.models.uflow import UFlow, UFlowConfig

MODELS: dict[str, type[AnomalyModel]] = {
    FastFlow.name: FastFlow,
    CFlow.name: CFlow,
    UFlow.name: UFlow,
    MSFlow.name: MSFlow,
}


def model_class(name: str) -> type[AnomalyModel]:
    if name not in MODELS:
        raise InputError(f"unknown model {name!r}; expected one of {sorted(MODELS)}")
    return MODELS[name]


def build_model(name: str, **options) -> AnomalyModel:
    cls = model_class(name)
    return cls(cls.config_class.from_dict(options))


__all__ = [
    "MODELS",
    "AnomalyModel",
    "CFlow",
    "CFlowConfig",
    "FastFlow",
    "FastFlowConfig",
    "MSFlow",
    "MSFlowConfig",
    "ModelConfig",
    "UFlow",
    "UFlowConfig",
    "build_model",
    "model_class",
]
