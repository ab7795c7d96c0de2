"""What a command line or a config file may set: a flag per model option, and config files checked
against the flags of the command they are given to."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from flowad.errors import InputError
from flowad.ranges import option_flag

# What each model-config field means on the command line; every field of every model's config gets a
# flag (--image-size for image_size), with the models' own defaults listed in its help.
OPTION_HELP = {
    "backbone": "timm backbone name (tf_efficientnet_lite0's ImageNet weights ship with flowad; U-Flow: also 'mcait')",
    "weights": "backbone weights: 'pretrained' (offline for tf_efficientnet_lite0, else downloaded by timm), "
    "'random', or a path to a .pth/.safetensors file",
    "image_size": "input size in pixels: one value (square) or H W, each a multiple of the backbone's largest stride",
    "lr": "Adam learning rate",
    "weight_decay": "Adam weight decay",
    "batch_size": "training batch size (images)",
    "epochs": "training epochs",
    "flow_steps": "coupling blocks per flow stage",
    "conv3x3_only": "FastFlow: 3x3 kernels in every subnet (else 3 and 1 alternate)",
    "hidden_ratio": "FastFlow: subnet hidden channels / input channels",
    "clamp": "FastFlow: soft clamp of the coupling's log-scale",
    "strides": "CFLOW: encoder stages to model, by stride",
    "fiber_batch_size": "CFLOW: fibers (feature vectors) per optimiser step",
    "condition_vector": "CFLOW, MSFlow: channels of the positional encoding (a multiple of 4)",
    "coupling_blocks": "CFLOW: conditional coupling blocks per decoder",
    "clamp_alpha": "CFLOW, MSFlow: soft clamp of the coupling's log-scale",
    "permute_soft": "a random rotation instead of a channel shuffle between coupling blocks (slow above 512 channels)",
    "affine_clamp": "U-Flow: soft clamp of the coupling's log-scale",
    "affine_subnet_channels_ratio": "U-Flow: subnet hidden channels / input channels",
    "lr_end_factor": "U-Flow: the learning rate decays linearly to this fraction of --lr over --lr-decay-epochs",
    "lr_decay_epochs": "U-Flow: epochs over which the learning rate falls to --lr-end-factor (then stays)",
    "parallel_blocks": "MSFlow: coupling blocks of each scale's parallel flow, finest scale first (three counts)",
    "pool_type": "MSFlow: pooling of the CNN stages before the flows (3x3, stride 2): 'avg', 'max' or 'none'",
    "top_k": "MSFlow: the image score is the mean of this share of the pixels, the most anomalous",
    "lr_warmup_fraction": "MSFlow: share of the run over which the learning rate warms up linearly from 0.1 --lr",
    "lr_decay_milestones": "MSFlow: shares of the run at which the learning rate is multiplied by --lr-decay-factor",
    "lr_decay_factor": "MSFlow: the learning rate's factor at each of --lr-decay-milestones",
    "max_grad_norm": "MSFlow: the gradients' total norm is clipped to this before each step (0: no clipping)",
    "nfa_window_size": "--threshold nfa: window at the finest latent scale (pixels); several sizes (3 7 15) test "
    "each and count every test",
    "nfa_probability_threshold": "--threshold nfa: a latent value is a candidate when P(chi2(1) >= z^2) < 1 - this; "
    "several levels (0.5 0.9 0.99) test each and count every test",
    "nfa_high_precision": "--threshold nfa: binomial tails in exact integer arithmetic (slower)",
    "nfa_rescale": "--threshold nfa: divide each image's latents by their own spread first, when wider than "
    "N(0, 1): fewer false alarms on good images unlike the training images, fewer detections (README, Thresholds)",
    "nfa_anchor": "--threshold nfa with several windows or levels: the first window and level (the paper's test) "
    "delineate where they detect and keep 0.98 of the false-alarm budget; the others add detections elsewhere "
    "(README, Thresholds)",
    "tile": "large images: train on TILE x TILE crops at full resolution and score images tile by tile, "
    "blending the tiles' maps (each tile resized to --image-size; 0: whole images, resized)",
    "tile_stride": "pixels between tiles (0: half the tile; the last tiles end at the image's border)",
    "input_statistics": "input normalisation: 'weights' (the backbone weights' own mean/std) or 'imagenet' "
    "(ImageNet's for any backbone, as anomalib)",
}
# model options that take one value or several (metavar, type): a square or height and width; one window size or
# several; one candidate level or several
SEVERAL_VALUES_OPTIONS = {
    "image_size": (("H", "W"), int),
    "nfa_window_size": ("PIXELS", int),
    "nfa_probability_threshold": ("P", float),
}


class OneOrSeveralValues(argparse.Action):
    """One value is stored as itself, so that a square (one window size) gives the config it always gave; several
    as a list (the model's config refuses more than two image sizes, naming them)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: list[int] | list[float],
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, values[0] if len(values) == 1 else list(values))


def add_several_values_arg(p: argparse.ArgumentParser, field: str, text: str) -> None:
    """The flag of a :data:`SEVERAL_VALUES_OPTIONS` field: one value stored as itself, several as a list."""
    metavar, kind = SEVERAL_VALUES_OPTIONS[field]
    p.add_argument(
        option_flag(field), dest=field, type=kind, nargs="+", action=OneOrSeveralValues, metavar=metavar, help=text
    )


def model_fields() -> dict[str, dict[str, object]]:
    """Every model-config field -> {model name: its default}."""
    from flowad.models import MODELS

    fields: dict[str, dict[str, object]] = {}
    for name, cls in MODELS.items():
        for f in dataclasses.fields(cls.config_class):
            fields.setdefault(f.name, {})[name] = f.default
    return fields


def given_model_options(args: argparse.Namespace) -> dict[str, object]:
    """The model options given on the command line (or by a config file): the flags not left at None."""
    return {k: getattr(args, k) for k in model_fields() if getattr(args, k, None) is not None}


def add_model_args(p: argparse.ArgumentParser) -> None:
    """A flag per model option, left at None unless given, so that each model keeps its own default."""
    for field, defaults in model_fields().items():
        values = set(map(repr, defaults.values()))
        shown = (
            next(iter(defaults.values())) if len(values) == 1 else ", ".join(f"{m} {v}" for m, v in defaults.items())
        )
        text = f"{OPTION_HELP.get(field, field)} (default: {shown})"
        flag = option_flag(field)
        example = next(iter(defaults.values()))
        if isinstance(example, bool):
            p.add_argument(flag, dest=field, action="store_const", const=True, help=text)
        elif field in SEVERAL_VALUES_OPTIONS:
            add_several_values_arg(p, field, text)
        elif isinstance(example, tuple):
            p.add_argument(flag, dest=field, type=type(example[0]), nargs="+", help=text)
        else:
            p.add_argument(flag, dest=field, type=type(example), help=text)


def subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    """The parser of one command of ``parser``."""
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[name]


def read_options_file(
    path: Path, parser: argparse.ArgumentParser, command: str = "train", category: str | None = None
) -> dict[str, object]:
    """Options of ``command`` from a YAML or JSON file, checked against its flags.

    A ``per_category`` mapping (category -> options) overrides the file's other options for that category,
    as papers that tune settings per category ship them; ``category`` picks the entry (else the file's own
    ``category``).
    """
    options, per_category = read_config_file(path, parser, command)
    return {**options, **per_category.get(category or options.get("category"), {})}


def category_model_options(
    options: dict[str, object], per_category: dict[str, dict[str, object]], given: set[str]
) -> dict[str, dict[str, object]]:
    """Category -> the model options a config file gives it (its own options, then its per_category entry),
    less those ``given`` on the command line, which win."""
    fields = set(model_fields()) - given
    return {c: {k: v for k, v in {**options, **own}.items() if k in fields} for c, own in per_category.items()}


def flags_given(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The destinations of the options that ``argv`` spells out (``--epochs 3`` or ``--epochs=3``); the
    parser takes no abbreviations, so every flag given appears whole."""
    given = set()
    for action in parser._actions:
        if any(token == flag or token.startswith(flag + "=") for flag in action.option_strings for token in argv):
            given.add(action.dest)
    return given


def typed_option(parser: argparse.ArgumentParser, dest: str, value: object) -> object:
    """A config file's value as its flag would give it: a string, or each string of a list, through the flag's type
    (a Path; YAML reads 1e-2 as a string)."""
    action = next((a for a in parser._actions if a.dest == dest), None)
    if action is None or not callable(action.type):
        return value
    if isinstance(value, list):
        return [action.type(v) if isinstance(v, str) else v for v in value]
    return action.type(value) if isinstance(value, str) else value


def read_config_file(
    path: Path, parser: argparse.ArgumentParser, command: str
) -> tuple[dict[str, object], dict[str, dict[str, object]]]:
    """A config file's options for ``command`` and its per_category entries, each checked; read once."""
    if not path.is_file():
        raise InputError(f"config file {path} does not exist")
    try:
        import yaml

        values = yaml.safe_load(path.read_text())  # YAML is a superset of JSON
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise InputError(f"config file {path} is not valid YAML or JSON: {err}") from err
    if not isinstance(values, dict):
        raise InputError(f"config file {path} must hold a mapping of option: value")
    known = {a.dest for a in subparser(parser, command)._actions} - {"help", "config"}
    options = _checked_options(values, known | {"per_category"}, path, "")
    per_category = options.pop("per_category", None) or {}
    if not isinstance(per_category, dict) or not all(isinstance(v, dict) for v in per_category.values()):
        raise InputError(f"config file {path}: per_category must map category names to mappings of options")
    # the options a category may change: the model's (and, in train, the data's)
    own = known - {"category"} if command == "train" else set(model_fields())
    checked = {str(c): _checked_options(v, own, path, f"per_category.{c}") for c, v in per_category.items()}
    return options, checked


def _checked_options(values: dict, known: set[str], path: Path, where: str) -> dict[str, object]:
    options = {str(k).replace("-", "_"): v for k, v in values.items()}
    unknown = sorted(set(options) - known)
    if unknown:
        place = f" ({where})" if where else ""
        raise InputError(
            f"config file {path}{place}: unknown option(s) {unknown}; expected options such as {sorted(known)[:6]}"
        )
    return options
