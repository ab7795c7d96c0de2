"""The range of every numeric option, in one table: a value outside it is refused where it enters.

The run records (model configs, engine settings, data request) call :func:`check_ranges` when they are
built, so a bad value from the command line, a config file or Python is one line naming the option, the
value and what is expected, before any work starts.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from flowad.errors import InputError


@dataclasses.dataclass(frozen=True)
class Range:
    """Numbers from ``low`` to ``high`` (None: unbounded); ``open_low``/``open_high`` exclude the ends."""

    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    integer: bool = False

    def holds(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.integer and not isinstance(value, int):
            return False
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.open_low else value < self.low):
            return False
        return self.high is None or (value < self.high if self.open_high else value <= self.high)

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a number"
        low = None if self.low is None else f"{'>' if self.open_low else '>='} {self.low:g}"
        high = None if self.high is None else f"{'<' if self.open_high else '<='} {self.high:g}"
        return f"{kind} {' and '.join(part for part in (low, high) if part)}".strip()


COUNT = Range(low=1, integer=True)  # sizes, epochs, steps
NON_NEGATIVE_INT = Range(low=0, integer=True)
POSITIVE = Range(low=0, open_low=True)
NON_NEGATIVE = Range(low=0)
FRACTION = Range(low=0, high=1, open_high=True)  # a share of something, [0, 1)
PROBABILITY = Range(low=0, high=1, open_low=True, open_high=True)  # (0, 1)

# field name -> its range; a field name means the same thing in every record that has it
RANGES: dict[str, Range] = {
    "image_size": COUNT,
    "lr": POSITIVE,
    "weight_decay": NON_NEGATIVE,
    "batch_size": COUNT,
    "epochs": COUNT,
    "nfa_window_size": COUNT,
    "nfa_probability_threshold": PROBABILITY,
    "flow_steps": COUNT,
    "hidden_ratio": POSITIVE,
    "clamp": POSITIVE,
    "fiber_batch_size": COUNT,
    "condition_vector": COUNT,
    "coupling_blocks": COUNT,
    "clamp_alpha": POSITIVE,
    "affine_clamp": POSITIVE,
    "affine_subnet_channels_ratio": POSITIVE,
    "lr_end_factor": Range(low=0, high=1, open_low=True),
    "lr_decay_epochs": COUNT,
    "parallel_blocks": COUNT,
    "top_k": Range(low=0, high=1, open_low=True),
    "lr_warmup_fraction": FRACTION,
    "lr_decay_milestones": FRACTION,
    "lr_decay_factor": Range(low=0, high=1, open_low=True),
    "max_grad_norm": NON_NEGATIVE,  # 0: no clipping
    "strides": COUNT,
    "seed": NON_NEGATIVE_INT,
    "cache_limit_gb": NON_NEGATIVE,
    "inference_batch_size": COUNT,
    "num_workers": NON_NEGATIVE_INT,
    "dist_timeout": POSITIVE,
    "val_fraction": FRACTION,
    "fpr": FRACTION,  # 0: the threshold is the good validation scores' maximum
    "tile": NON_NEGATIVE_INT,  # 0: no tiling
    "tile_stride": NON_NEGATIVE_INT,  # 0: half the tile
}


def option_flag(name: str) -> str:
    """How the command line spells a field: image_size -> --image-size."""
    return "--" + name.replace("_", "-")


def check_value(name: str, value: Any) -> None:
    """Raise InputError when ``value`` (or any item of a tuple/list value) is outside ``name``'s range."""
    rule = RANGES.get(name)
    if rule is None:
        return
    items = value if isinstance(value, tuple | list) else (value,)
    if not items or not all(rule.holds(item) for item in items):
        shown = " ".join(map(str, items)) if isinstance(value, tuple | list) else value
        raise InputError(f"{option_flag(name)} {shown}: expected {rule.describe()}")


def check_ranges(record: Any) -> None:
    """Check every field of a dataclass instance that has a range."""
    for field in dataclasses.fields(record):
        check_value(field.name, getattr(record, field.name))
