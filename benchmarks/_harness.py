"""What the scripts in benchmarks/ share: their command line, the machine they ran on, torch's thread count,
a small trained run on the demo data, timing, and the section they append to RESULTS.md. (The worker processes of
vs_anomalib.py share ``_worker_cli.py``, and the ONNX and OpenVINO timings ``_runtimes.py``.)

Every script runs as ``python benchmarks/NAME.py``, so this folder is on ``sys.path`` and this module imports
as ``_harness``. It imports no flowad name at module level: anomalib's worker (``_anomalib_worker.py``) uses it
in an environment where flowad is not importable.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import date
from pathlib import Path
from typing import Any

import torch

REPOSITORY = Path(__file__).resolve().parent.parent
MODEL_NAMES = ("fastflow", "cflow", "uflow")  # the default of scripts that compare with the reference library
ALL_MODELS = (*MODEL_NAMES, "msflow")
DEMO_CATEGORY = "fabric"
# trains in seconds: benchmarks of prediction need a run to load and score with, not a good one
TINY_RUN_OPTIONS: dict[str, Any] = {"epochs": 1, "batch_size": 4}
TINY_RUN_TRAIN_IMAGES = 10

# --------------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------------


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The script's docstring as written, and each argument's default after its help (when it has one)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


def script_parser(doc: str | None) -> argparse.ArgumentParser:
    """An argument parser whose ``--help`` opens with the script's docstring: the question it answers."""
    return argparse.ArgumentParser(description=doc, formatter_class=_HelpFormatter)


def add_subcommand(subparsers: Any, name: str, doc: str) -> argparse.ArgumentParser:
    """A subcommand with the same help layout as :func:`script_parser`; its first line is the summary."""
    return subparsers.add_parser(name, help=doc.splitlines()[0], description=doc, formatter_class=_HelpFormatter)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is less than 1")
    return value


def json_object(text: str) -> dict[str, Any]:
    """A JSON object given on the command line, e.g. '{"epochs": 10}'."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not JSON ({err.msg} at character {err.pos}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object such as '{{\"epochs\": 10}}', got {text!r}")
    return value


def add_threads_argument(parser: argparse.ArgumentParser, default: int = 2) -> None:
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=default,
        help="torch threads; set explicitly, as torch's own default takes every core",
    )


def add_append_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--append", metavar="RESULTS_MD", help="also append the Markdown section to this file (benchmarks/RESULTS.md)"
    )


def add_models_argument(
    parser: argparse.ArgumentParser, default: Sequence[str] = MODEL_NAMES, choices: Sequence[str] = ALL_MODELS
) -> None:
    parser.add_argument("--models", nargs="+", choices=choices, default=list(default), help="models to measure")


def add_seeded_runs_arguments(parser: argparse.ArgumentParser, out: str, seeds: Sequence[int]) -> None:
    """The options of a script that trains the seed models over seeds: --out (data and runs, default ``out``),
    --seeds (default ``seeds``), --models, --threads and --append."""
    parser.add_argument("--out", type=Path, default=Path(out), help="data and runs go here")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(seeds))
    add_models_argument(parser, default=("fastflow", "cflow", "uflow"))
    add_threads_argument(parser)
    add_append_argument(parser)


def add_device_argument(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument("--device", default=default, help="auto (CUDA when present), cpu, cuda or cuda:N")


_RUN_ARGUMENTS: dict[str, dict[str, Any]] = {
    "model": {"choices": MODEL_NAMES, "help": "flowad model"},
    "category": {"help": "category folder under --data"},
    "data": {"type": Path, "help": "data root in the MVTec AD layout (e.g. runs/demo/data after `flowad demo`)"},
    "out": {"type": Path, "help": "folder for the run (replaced if it exists)"},
    "options": {
        "type": json_object,
        "help": "model options (config fields) as a JSON object, e.g. '{\"epochs\": 70}'; its keys threads and device "
        "(the older form) set --threads and --device",
    },
}


def add_run_arguments(
    parser: argparse.ArgumentParser, names: Sequence[str], helps: dict[str, str] | None = None
) -> None:
    """``--model``, ``--category``, ``--data``, ``--out``, ``--options`` (those in ``names``), each also taken as a
    positional in that order, the form these scripts had before the flags (older command lines keep working).
    ``helps`` replaces the help of those whose meaning differs in a script.

    Call :func:`resolve_run_arguments` after parsing.
    """
    helps = helps or {}
    for name in names:
        spec = dict(_RUN_ARGUMENTS[name])
        spec["help"] = helps.get(name, spec["help"])
        parser.add_argument(f"--{name}", **spec)
    for name in names:
        spec = {k: v for k, v in _RUN_ARGUMENTS[name].items() if k != "help"}
        same = f"the same as --{name} (the older, positional form)"
        parser.add_argument(f"{name}_positional", nargs="?", metavar=name.upper(), help=same, **spec)


def check_data_arguments(parser: argparse.ArgumentParser, data: Path | None, category: str | None) -> None:
    """A usage error naming ``--data`` or ``--category`` when the folder it points to is not there."""
    if data is None:
        return
    if not Path(data).is_dir():
        parser.error(f"argument --data: {data} is not a folder")
    if category is not None and not (Path(data) / category / "train").is_dir():
        parser.error(f"argument --category: {Path(data) / category / 'train'} is not a folder")


def run_argument_parser(
    doc: str | None, names: Sequence[str], device: str, helps: dict[str, str] | None = None
) -> argparse.ArgumentParser:
    """A parser for a script that trains: :func:`add_run_arguments` with ``names``, ``--threads``, ``--device``."""
    parser = script_parser(doc)
    add_run_arguments(parser, names, helps)
    add_threads_argument(parser)
    add_device_argument(parser, device)
    return parser


def parse_run_arguments(parser: argparse.ArgumentParser, names: Sequence[str]) -> argparse.Namespace:
    """Parse a :func:`run_argument_parser`'s command line, merge the positional form, and set torch's threads."""
    args = parser.parse_args()
    resolve_run_arguments(parser, args, names)
    set_threads(args.threads)
    return args


def resolve_run_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace, names: Sequence[str]) -> None:
    """Merge each flag of :func:`add_run_arguments` with its positional; a missing or doubly given one is a usage
    error naming it. ``--options`` defaults to ``{}``; its ``threads`` and ``device`` keys (the older form's way
    to give them) move to ``--threads`` and ``--device``."""
    for name in names:
        flag, positional = getattr(args, name), getattr(args, f"{name}_positional")
        delattr(args, f"{name}_positional")
        if flag is not None and positional is not None and flag != positional:
            parser.error(f"argument --{name}: given twice, as {flag} and as the positional {positional}")
        value = flag if flag is not None else positional
        if value is None and name == "options":
            value = {}
        elif value is None:
            parser.error(f"argument --{name} is required (or {name.upper()} in the positional form)")
        setattr(args, name, value)
    check_data_arguments(parser, getattr(args, "data", None), getattr(args, "category", None))
    if "options" in names:
        for key in ("threads", "device"):
            if key not in args.options or not hasattr(args, key):
                continue
            value = args.options.pop(key)
            if key == "threads" and (not isinstance(value, int) or value < 1):
                parser.error(f"argument --options: 'threads' must be a whole number of at least 1, got {value!r}")
            if getattr(args, key) not in (parser.get_default(key), value):
                parser.error(f"argument --{key}: {getattr(args, key)} contradicts {key!r}: {value!r} in --options")
            setattr(args, key, value)


# --------------------------------------------------------------------------------------------------
# the machine and its threads
# --------------------------------------------------------------------------------------------------


def set_threads(threads: int) -> int:
    """Pin torch's intra-op threads (torch's default takes every core, and timings on a shared machine drift)."""
    torch.set_num_threads(threads)
    return torch.get_num_threads()


def child_environment(threads: int) -> dict[str, str]:
    """This process's environment for a child Python: ``threads`` threads (torch reads OMP_NUM_THREADS at start),
    warnings off so that a child's output is its result."""
    count = str(threads)
    return {**os.environ, "OMP_NUM_THREADS": count, "MKL_NUM_THREADS": count, "PYTHONWARNINGS": "ignore"}


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def memory_gib() -> float | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return None


def machine_description(threads: int | None = None) -> str:
    """CPU, cores, memory, GPU, torch version and, when given, the torch threads a measurement used."""
    parts = [cpu_name(), f"{os.cpu_count()} cores"]
    memory = memory_gib()
    if memory is not None:
        parts.append(f"{memory:.0f} GiB")
    parts.append(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")
    parts.append(f"torch {torch.__version__}")
    if threads is not None:
        parts.append(f"{threads} thread" + ("s" if threads != 1 else ""))
    return ", ".join(parts)


# --------------------------------------------------------------------------------------------------
# results: printed, and appended to RESULTS.md when asked
# --------------------------------------------------------------------------------------------------


def command_line() -> str:
    """How this script was started, as typed from the repository root (quoted, so JSON options survive)."""
    script = Path(sys.argv[0]).resolve()
    shown = script.relative_to(REPOSITORY) if script.is_relative_to(REPOSITORY) else script
    return shlex.join(["python", str(shown), *sys.argv[1:]])


def spread_cell(values: Sequence[float | None], digits: int = 3) -> str:
    """``mean ± sample standard deviation`` of ``values`` (``flowad.tables.spread``), just the mean for one value,
    "n/a" for none."""
    from flowad.tables import spread

    s = spread(values)
    if s.mean is None:
        return "n/a"
    return f"{s.mean:.{digits}f}" + ("" if s.std is None else f" ± {s.std:.{digits}f}")


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]


def section(title: str, machine: str | None, about: str, lines: Sequence[str]) -> str:
    """A RESULTS.md section: ``### title, date: machine``; the command that ran it followed by ``about`` (what was
    measured, how); then ``lines``. Every section names its command, so that any figure can be measured again."""
    heading = f"### {title}, {date.today().isoformat()}" + (f": {machine}" if machine else "")
    return "\n".join([heading, "", f"Command: `{command_line()}`{about}", *lines]).rstrip("\n") + "\n"


def table_section(
    title: str, threads: int, about: str, headers: Sequence[str], rows: Iterable[Sequence[object]]
) -> str:
    """A RESULTS.md section (``section``) on this machine at ``threads`` threads whose body is one table."""
    return section(title, machine_description(threads), about, ["", *markdown_table(headers, rows)])


def publish(text: str, append_to: str | None) -> None:
    """Print a section, and append it to ``append_to`` (after a blank line) when given."""
    print(text)
    if append_to:
        with open(append_to, "a") as f:
            f.write("\n" + text.rstrip("\n") + "\n")
        print(f"appended to {append_to}")


# --------------------------------------------------------------------------------------------------
# demo data and trained runs (flowad imported here, not at module level)
# --------------------------------------------------------------------------------------------------


def write_demo_data(root: Path, image_size: int, train_images: int, seed: int = 1) -> Path:
    """The demo category ``fabric`` under ``root``: ``train_images`` training images and a minimal test split."""
    from flowad.data.synthetic import make_demo_dataset

    return make_demo_dataset(
        root,
        seed=seed,
        categories=(DEMO_CATEGORY,),
        image_size=image_size,
        n_train=train_images,
        n_test_good=1,
        n_test_per_defect=1,
    )


def demo_images(folder: Path, count: int, image_size: int, seed: int = 2) -> list[Path]:
    """``count`` distinct demo images of ``image_size`` px (the training images of demo data of its own seed)."""
    root = write_demo_data(folder, image_size, count, seed)
    return sorted((root / DEMO_CATEGORY / "train" / "good").iterdir())


def engine_settings(device: str = "cpu", **settings: Any) -> Any:
    """flowad's engine settings for a benchmark: no progress bars, the given device, and any other field given."""
    from flowad.engine import EngineSettings

    return EngineSettings(quiet=True, device=device, **settings)


def train_run(
    out: Path, model: str, data: Any, category: str | None, options: dict[str, Any], device: str = "cpu", seed: int = 0
) -> Path:
    """Train ``model`` with ``options`` (its config fields) on ``data``/``category`` (or a ``DataSpec``, category
    None) through ``flowad.api.train`` with ``seed``, replacing ``out``; returns the run directory."""
    from flowad import api

    settings = engine_settings(device)
    return api.train(model, data, out, category=category, seed=seed, force=True, settings=settings, **options)


def run_metrics(run: Path, device: str = "cpu") -> dict[str, Any]:
    """The test metrics of a trained run (``flowad.api.test``), nothing written."""
    from flowad import api

    return api.test(run, settings=engine_settings(device), write=False)


def train_tiny_run(work: Path, image_size: int = 64, model: str = "fastflow") -> Path:
    """A run trained for one epoch on a few demo images of ``image_size`` px, under ``work``: for benchmarks of
    prediction, which need a run, not a good one."""
    data = write_demo_data(work / "data", image_size, TINY_RUN_TRAIN_IMAGES)
    options = {**TINY_RUN_OPTIONS, "image_size": image_size}
    return train_run(work / "run", model, data, DEMO_CATEGORY, options)


# --------------------------------------------------------------------------------------------------
# timing
# --------------------------------------------------------------------------------------------------


def alternating_medians(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each function after one warm-up call each, their runs interleaved so that the
    machine's drifts hit all alike."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def per_image_ms(forward: Callable[[torch.Tensor], object], images: torch.Tensor, batch: int, rounds: int) -> float:
    """Median over ``rounds`` of the milliseconds per image to run ``forward`` over ``images`` in batches of
    ``batch``, in inference mode."""

    def all_images() -> None:
        for start in range(0, len(images), batch):
            forward(images[start : start + batch])

    with torch.inference_mode():
        seconds = alternating_medians({"all": all_images}, rounds)["all"]
    return seconds / len(images) * 1000
