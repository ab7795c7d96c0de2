"""The ``flowad`` command: argument parsing only; each command's work is in :mod:`flowad.cli_commands`,
a call into :mod:`flowad.api`.

Exit status: 0 on success, 2 on bad usage or bad input (the message goes to stderr).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
from pathlib import Path

from flowad import distributed
from flowad.cli_commands import COMMANDS
from flowad.cli_options import (
    OPTION_HELP,
    add_model_args,
    add_several_values_arg,
    category_model_options,
    flags_given,
    read_config_file,
    subparser,
    typed_option,
)
from flowad.data.spec import LAYOUTS
from flowad.data.synthetic import DEMO_COUNTS, FRAME_COUNTS, MIN_IMAGE_SIZE
from flowad.engines import ENGINES
from flowad.errors import FlowadError, InputError
from flowad.inference import DEFAULT_BATCH
from flowad.nfa import NFA_SWITCHES
from flowad.ranges import option_flag


def _add_engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "bf16", "fp16"],
        help="the backbone's precision: fp32 (default) or bf16/fp16 autocast, for GPUs; the flows stay float32",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the model for scoring (long runs, GPUs)")
    _add_dist_timeout(p)


def _add_dist_timeout(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dist-timeout",
        type=float,
        default=distributed.DEFAULT_TIMEOUT,
        help="under torchrun: seconds a process waits for the others in a training step before the job fails "
        f"(default {distributed.DEFAULT_TIMEOUT:g})",
    )


def _add_threshold_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--threshold",
        default="f1",
        help="f1 (default: the threshold chosen on validation data), nfa (log NFA < 0, no calibration) or a number",
    )


def _add_nfa_args(p: argparse.ArgumentParser) -> None:
    """The NFA's options again, to test it otherwise than the run was trained to, without retraining."""
    run = "(default: the run's own, set at training)"
    for field in ("nfa_window_size", "nfa_probability_threshold"):
        add_several_values_arg(p, field, f"{OPTION_HELP[field]} {run}")
    for field in NFA_SWITCHES:
        p.add_argument(option_flag(field), action=argparse.BooleanOptionalAction, help=f"{OPTION_HELP[field]} {run}")


def _add_config_arg(p: argparse.ArgumentParser, holding: str) -> None:
    p.add_argument("--config", type=Path, help=f"a YAML or JSON file of {holding}")


def build_parser() -> argparse.ArgumentParser:
    """The whole command line."""
    parser = argparse.ArgumentParser(prog="flowad", description="Visual anomaly detection with normalizing flows.")
    sub = parser.add_subparsers(dest="command", required=True)
    for add_command in (
        _add_demo_data,
        _add_demo,
        _add_train,
        _add_benchmark,
        _add_test,
        _add_report,
        _add_predict,
        _add_export,
        _add_serve,
    ):
        add_command(sub)
    return parser


def _add_demo_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo-data", help="write the synthetic demo data set (MVTec AD layout)")
    p.add_argument("out", type=Path, help="folder to write the data set to")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0): the same seed gives the same files")
    p.add_argument(
        "--size",
        type=int,
        nargs=2,
        metavar=("W", "H"),
        help="large W x H frames of the fabric web instead of the 256 x 256 demo of fabric and pill: the cloth at "
        "the demo's scale, so a larger frame shows more of it, with small defects (0.01 to 0.08 %% of a frame of "
        f"at least 256 x 256) and exact masks; each side at least {MIN_IMAGE_SIZE}",
    )
    flags = (
        ("--n-train", "training images"),
        ("--n-test-good", "good test images"),
        ("--n-test-per-defect", "test images per defect type"),
    )
    for (flag, what), demo, frames in zip(flags, DEMO_COUNTS, FRAME_COUNTS, strict=True):
        p.add_argument(flag, type=int, metavar="N", help=f"{what} per category (default {demo}; {frames} with --size)")


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="generate demo data, train, test and predict: the whole pipeline on built-in defaults"
    )
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder (default runs/demo)")
    p.add_argument("--model", default="fastflow", help="model to train: fastflow (default), cflow, uflow or msflow")
    p.add_argument("--force", action="store_true", help="overwrite an existing output folder")
    add_model_args(p)  # over the demo's presets
    _add_engine_args(p)


def _add_train(sub: argparse._SubParsersAction) -> None:
    # no abbreviated flags where a config file can give options: a flag given must be seen whole to win over it
    p = sub.add_parser("train", help="train a model on good images and write a run directory", allow_abbrev=False)
    _add_config_arg(p, "train options (keys as the flags, e.g. image_size: 256); flags override it")
    p.add_argument("--model", default="fastflow", help="fastflow (default), cflow, uflow or msflow")
    _add_data_args(p)
    p.add_argument(
        "--fpr",
        type=float,
        default=0.01,
        help="false-positive rate on good validation images for the threshold (default 0.01)",
    )
    add_model_args(p)
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--cache",
        default="auto",
        choices=["auto", "on", "off"],
        help="feature cache: auto (default) uses it when it fits --cache-limit-gb",
    )
    p.add_argument("--cache-limit-gb", type=float, default=4.0, help="memory budget of the feature cache (default 4)")
    p.add_argument("--out", type=Path, help="run directory to write")
    p.add_argument("--force", action="store_true", help="overwrite an existing run directory")
    p.add_argument(
        "--resume",
        type=Path,
        metavar="RUN_DIR",
        help="continue an interrupted run from its last finished epoch (every other option comes from RUN_DIR)",
    )
    _add_engine_args(p)


def _add_data_args(p: argparse.ArgumentParser) -> None:
    """Where train finds its images and how it picks validation images (the fields of flowad.api.DataSpec)."""
    p.add_argument(
        "--data", type=Path, help="data set root, folder of good images (--layout folder) or manifest (--layout csv)"
    )
    p.add_argument("--category", help="category of the data set (every layout but folder and csv)")
    p.add_argument("--layout", default="mvtec", choices=LAYOUTS, help="data set layout (default mvtec; README: Data)")
    p.add_argument("--abnormal", help="folder layout: folder of anomalous test images")
    p.add_argument("--masks", help="folder layout: folder of their masks (default: <stem>_mask files beside them)")
    p.add_argument(
        "--val-dir",
        help="folder of good validation images (default: the layout's own, else a fraction of the training images)",
    )
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.2,
        help="fraction of good training images held out to set thresholds, where the layout has no validation "
        "images of its own (default 0.2)",
    )
    p.add_argument(
        "--val-abnormal",
        help="folder of anomalous validation images: F1 thresholds, and the best epoch kept beside the last",
    )
    p.add_argument("--val-masks", help="folder of their masks (default: <stem>_mask files beside them)")


def _add_benchmark(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "benchmark",
        help="train and test one model on every category of a data set: the papers' table",
        allow_abbrev=False,
    )
    _add_config_arg(p, "model options, with optional per_category entries (e.g. configs/uflow.yaml)")
    p.add_argument("--data", required=True, type=Path, help="data set root (or, --layout csv, the manifest)")
    p.add_argument("--model", default="fastflow", help="fastflow (default), cflow, uflow or msflow")
    layouts = [name for name in LAYOUTS if name != "folder"]
    p.add_argument("--layout", default="mvtec", choices=layouts, help="data set layout (default mvtec; README: Data)")
    p.add_argument("--categories", nargs="+", help="only these categories (default: every category)")
    p.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        metavar="SEED",
        help="train every category once per seed, in OUT/CATEGORY/seed-SEED; the table gives each metric's mean "
        "and sample standard deviation over the seeds, table_seeds.csv every run (default: seed 0, in OUT/CATEGORY)",
    )
    p.add_argument("--out", type=Path, default=Path("runs/benchmark"), help="runs and tables (default runs/benchmark)")
    p.add_argument("--force", action="store_true", help="overwrite existing runs")
    add_model_args(p)
    _add_engine_args(p)


def _add_test(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("test", help="evaluate a run on a test split; prints metrics, writes RUN/metrics.json")
    p.add_argument("--run", required=True, type=Path, help="run directory written by 'flowad train'")
    p.add_argument("--data", type=Path, help="another data set root (default: the one the run was trained on)")
    p.add_argument("--category", help="another category")
    _add_threshold_arg(p)
    _add_nfa_args(p)
    _add_engine_args(p)


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="re-render RUN/report.html from the outputs of the last 'flowad test'")
    p.add_argument("run", type=Path, help="run directory")


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="score images: heat map, mask and a JSON line per image")
    p.add_argument("--run", required=True, type=Path, help="run directory written by 'flowad train'")
    p.add_argument(
        "--input",
        required=True,
        nargs="+",
        help="image files and/or folders of images; folders are searched at any depth (e.g. an MVTec test/ folder)",
    )
    p.add_argument(
        "--out",
        required=True,
        type=Path,
        help="output folder: per image <name>_heatmap.png and <name>_mask.png, the subfolders of input folders "
        "mirrored (--input test gives OUT/scratch/000_mask.png for test/scratch/000.png), and predictions.jsonl",
    )
    _add_threshold_arg(p)
    _add_nfa_args(p)
    p.add_argument("--quiet", action="store_true", help="no summary line")
    p.add_argument(
        "--engine",
        default="auto",
        choices=list(ENGINES),
        help="auto (default): OpenVINO, else onnxruntime, on the run's exported file (exported on first use, "
        "kept in RUN), else torch; or torch, onnx, openvino. The one used is said on stderr",
    )
    p.add_argument(
        "--exported",
        type=Path,
        help="score with this file exported from the run (.onnx, or an OpenVINO .xml such as an FP16 or INT8 one)",
    )
    p.add_argument(
        "--batch-size", type=int, default=DEFAULT_BATCH, help=f"images scored at once (default {DEFAULT_BATCH})"
    )
    _add_dist_timeout(p)


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a run for deployment: uint8 images in; map, scores, verdict, mask and latents out",
    )
    p.add_argument("--run", required=True, type=Path, help="run directory")
    p.add_argument("--format", default="onnx", choices=["onnx", "openvino"], help="onnx (default) or openvino (IR)")
    p.add_argument(
        "--out",  # a string: Path() would drop the trailing separator that marks a folder
        help="output file, or a folder to write it in: an existing folder or a path ending in / (default "
        "RUN/model.onnx, RUN/model_raw.onnx with --raw, RUN/openvino[-fp16|-int8]/model.xml)",
    )
    p.add_argument(
        "--raw", action="store_true", help="onnx: the model alone (normalised float images in, map and score out)"
    )
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16"], help="openvino: weights' precision")
    p.add_argument("--int8", action="store_true", help="openvino: INT8 post-training quantisation (NNCF)")
    p.add_argument("--calibration", type=Path, help="openvino --int8: a folder of good images to calibrate on")
    _add_threshold_arg(p)


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="an HTTP inspection service over a run: API, review page, metrics")
    p.add_argument("--run", required=True, type=Path, help="run directory")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--engine", default="auto", choices=list(ENGINES), help="as for predict (default auto)")
    _add_threshold_arg(p)
    _add_nfa_args(p)
    p.add_argument("--workers", type=int, default=1, help="server processes, each with its own engine (default 1)")
    p.add_argument(
        "--api-key", help="require 'Authorization: Bearer KEY' on every endpoint but /healthz (or FLOWAD_API_KEY)"
    )
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH, help="images scored together at most")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a batch waits for more images")
    p.add_argument("--body-limit-mb", type=float, default=32.0, help="largest request accepted, MB (default 32)")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if getattr(args, "config", None) is not None:  # the file's values become defaults; flags still win
            args = _with_config_file(parser, args, argv)
        if distributed.launched_processes() > 1 and args.command not in ("train", "predict", "benchmark"):
            raise InputError(f"flowad {args.command} runs in one process; run it without torchrun")
        timeout, device = getattr(args, "dist_timeout", distributed.DEFAULT_TIMEOUT), getattr(args, "device", "auto")
        with distributed.session(timeout, device), _main_prints_only():  # under torchrun: one process group
            COMMANDS[args.command](args)
            return 0
    except FlowadError as err:
        if not getattr(err, "reported_by_main", False):  # under torchrun: the same error from every process
            print(f"flowad: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("flowad: interrupted", file=sys.stderr)
        return 130


def _with_config_file(
    parser: argparse.ArgumentParser, args: argparse.Namespace, argv: list[str] | None
) -> argparse.Namespace:
    """The --config file's options under the flags given on the command line, which win; the file is read
    once and the command line parsed once."""
    options, per_category = read_config_file(args.config, parser, args.command)
    command = subparser(parser, args.command)
    given = flags_given(command, sys.argv[1:] if argv is None else argv)
    category = getattr(args, "category", None) or options.get("category")
    for key, value in {**options, **per_category.get(category, {})}.items():
        if key not in given:
            setattr(args, key, typed_option(command, key, value))
    if args.command == "benchmark":
        args.per_category = category_model_options(options, per_category, given)
    return args


def _main_prints_only() -> contextlib.AbstractContextManager:
    """Under torchrun only the main process prints results (errors and warnings still come from every one)."""
    if distributed.is_main():
        return contextlib.nullcontext()
    return contextlib.redirect_stdout(io.StringIO())


if __name__ == "__main__":
    sys.exit(main())
