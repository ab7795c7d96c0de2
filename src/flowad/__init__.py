"""flowad: visual anomaly detection with normalizing flows (FastFlow, CFLOW-AD, U-Flow).

The public face: ``train``, ``test``, ``predict``, ``load`` (see :mod:`flowad.api`), the model classes,
and the metrics in :mod:`flowad.metrics`. Heavy imports (torch, timm) happen on first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_API = {"train", "resume", "test", "predict", "load", "Detector", "DataSpec"}
_MODELS = {"FastFlow", "CFlow", "UFlow", "build_model"}

__all__ = sorted(_API | _MODELS)


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(import_module("flowad.api"), name)
    if name in _MODELS:
        return getattr(import_module("flowad.models"), name)
    raise AttributeError(f"module 'flowad' has no attribute {name!r}")
