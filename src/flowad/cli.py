"""The ``flowad`` command: argument parsing only; the work is done by :mod:`flowad.api`.

Exit status: 0 on success, 2 on bad usage or bad input (the message goes to stderr).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
from collections.abc import Callable
from pathlib import Path

from flowad import distributed
from flowad.cli_options import (
    add_model_args,
    category_model_options,
    flags_given,
    given_model_options,
    read_config_file,
    subparser,
    typed_option,
)
from flowad.errors import FlowadError, InputError
from flowad.records import EngineSettings

# The demo data set has 48 training images per category: at the papers' batch of 32 that is two optimiser
# steps per epoch, so the demo trains the image-batched models with batches of 8 (more steps for the same
# compute; 8 is also the U-Flow authors' base batch). CFLOW-AD's batches are fibers, which this does not touch.
DEMO_PRESETS: dict[str, dict[str, int]] = {"fastflow": {"batch_size": 8, "epochs": 60}, "uflow": {"batch_size": 8}}


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


def _settings(args: argparse.Namespace, **extra) -> EngineSettings:
    return EngineSettings(
        device=args.device,
        quiet=args.quiet,
        dist_timeout=args.dist_timeout,
        precision=args.precision,
        compile=args.compile,
        **extra,
    )


def _add_threshold_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--threshold",
        default="f1",
        help="f1 (default: the threshold chosen on validation data), nfa (log NFA < 0, no calibration) or a number",
    )


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
    ):
        add_command(sub)
    return parser


def _add_demo_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo-data", help="write the synthetic demo data set (MVTec AD layout)")
    p.add_argument("out", type=Path, help="folder to write the data set to")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0): the same seed gives the same files")


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="generate demo data, train, test and predict: the whole pipeline on built-in defaults"
    )
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder (default runs/demo)")
    p.add_argument("--model", default="fastflow", help="model to train: fastflow (default), cflow or uflow")
    p.add_argument("--force", action="store_true", help="overwrite an existing output folder")
    add_model_args(p)  # over the demo's presets
    _add_engine_args(p)


def _add_train(sub: argparse._SubParsersAction) -> None:
    # no abbreviated flags where a config file can give options: a flag given must be seen whole to win over it
    p = sub.add_parser("train", help="train a model on good images and write a run directory", allow_abbrev=False)
    _add_config_arg(p, "train options (keys as the flags, e.g. image_size: 256); flags override it")
    p.add_argument("--model", default="fastflow", help="fastflow (default), cflow or uflow")
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
    p.add_argument("--data", type=Path, help="data set root (mvtec, btad) or folder of good images (folder)")
    p.add_argument("--category", help="category folder inside the data set root (mvtec, btad)")
    p.add_argument(
        "--layout",
        default="mvtec",
        choices=["mvtec", "btad", "folder"],
        help="data set layout (default mvtec)",
    )
    p.add_argument("--abnormal", help="folder layout: folder of anomalous test images")
    p.add_argument("--masks", help="folder layout: folder of their masks (default: <stem>_mask files beside them)")
    p.add_argument("--val-dir", help="folder of good validation images (default: a fraction of the training images)")
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.2,
        help="fraction of good training images held out to set thresholds (default 0.2)",
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
    p.add_argument("--data", required=True, type=Path, help="MVTec AD (or BTAD) root folder")
    p.add_argument("--model", default="fastflow", help="fastflow (default), cflow or uflow")
    p.add_argument("--layout", default="mvtec", choices=["mvtec", "btad"], help="data set layout (default mvtec)")
    p.add_argument("--categories", nargs="+", help="only these categories (default: every category folder)")
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
    p.add_argument("--quiet", action="store_true", help="no summary line")
    p.add_argument(
        "--engine",
        default="torch",
        choices=["torch", "onnx"],
        help="torch (default) or onnx: onnxruntime on RUN/model.onnx written by 'flowad export'",
    )
    _add_dist_timeout(p)


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a run for deployment: one ONNX graph, image batch -> map and score")
    p.add_argument("--run", required=True, type=Path, help="run directory")
    p.add_argument("--format", default="onnx", choices=["onnx"], help="onnx (default)")
    p.add_argument(
        "--out",  # a string: Path() would drop the trailing separator that marks a folder
        help="output file, or a folder to write model.onnx in: an existing folder or a path ending in / "
        "(default RUN/model.onnx)",
    )


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


def _demo_data(args: argparse.Namespace) -> None:
    from flowad.data.synthetic import make_demo_dataset

    path = make_demo_dataset(args.out, seed=args.seed)
    print(f"wrote the demo data set to {path}")


def _train(args: argparse.Namespace) -> None:
    from flowad import api

    if args.resume is not None:
        run = api.resume(args.resume, _settings(args))
        print(f"resumed and finished {run}")
        _print_best_and_last(run)
        return
    if args.data is None or args.out is None:
        raise InputError("train needs --data and --out (or --resume RUN_DIR)")
    spec = api.DataSpec(
        root=str(args.data),
        category=args.category,
        layout=args.layout,
        abnormal_dir=args.abnormal,
        mask_dir=args.masks,
        val_dir=args.val_dir,
        val_fraction=args.val_fraction,
        val_abnormal_dir=args.val_abnormal,
        val_mask_dir=args.val_masks,
    )
    settings = _settings(args, cache=args.cache, cache_limit_gb=args.cache_limit_gb)
    options = given_model_options(args)
    run = api.train(
        args.model, spec, args.out, seed=args.seed, force=args.force, fpr=args.fpr, settings=settings, **options
    )
    print(f"trained {args.model}; run directory: {run}")
    _print_best_and_last(run)


def _test(args: argparse.Namespace) -> None:
    from flowad import api

    result = api.test(args.run, args.data, args.category, args.threshold, _settings(args))
    print(api.format_metrics(result))
    print(f"report: {args.run / 'report.html'}")
    print(
        f"train {result['train_seconds']:.1f} s, test {result['test_seconds']:.1f} s; wrote {args.run / 'metrics.json'}"
    )


def _predict(args: argparse.Namespace) -> None:
    from flowad import api

    api.predict(args.run, args.input, args.out, args.threshold, quiet=args.quiet, engine=args.engine)


def _export(args: argparse.Namespace) -> None:
    from flowad.export import export_onnx

    print(f"wrote {export_onnx(args.run, args.out)}")


def _report(args: argparse.Namespace) -> None:
    from flowad.report import render_report

    print(f"wrote {render_report(args.run)}")


def _print_best_and_last(run: Path) -> None:
    """With a validation split that holds anomalies: the best epoch's run and the last epoch's."""
    from flowad.checkpoint import read_record

    if not distributed.is_main():  # the main process writes the run, maybe still now
        return
    summary = read_record(run).train
    for which, path in (("best", run / "best"), ("last", run)):
        if which in summary:
            val = ", ".join(f"{k} {v:.4f}" for k, v in summary[which]["val"].items())
            print(f"{which} epoch {summary[which]['epoch']} (validation {val}): {path}")


def _demo(args: argparse.Namespace) -> None:
    """The README's first command: demo data -> train -> test -> predict, per demo category."""
    from flowad import api
    from flowad.data.spec import DataSpec
    from flowad.data.synthetic import CATEGORIES, make_demo_dataset
    from flowad.records import TrainRequest

    out: Path = args.out
    data = out / "data"
    options = dict(DEMO_PRESETS.get(args.model, {}))
    options.update(given_model_options(args))
    settings = _settings(args)
    TrainRequest(args.model, DataSpec(str(data)), options, settings=settings)  # bad options stop it before any work
    if not (data / CATEGORIES[0]).is_dir():
        make_demo_dataset(data, seed=0)
    runs = out / args.model
    rows = api.benchmark(args.model, data, runs, CATEGORIES, force=args.force, settings=settings, **options)
    for category in CATEGORIES:
        test_folders = sorted(p for p in (data / category / "test").iterdir() if p.is_dir())
        api.predict(runs / category, test_folders, runs / category / "predictions", quiet=True)
        result = api.read_json(runs / category / "metrics.json")
        print(f"\n{args.model} on demo/{category}\n{api.format_metrics(result)}")
    print("\n" + api.format_table(rows))
    print(f"\nruns, metrics and predictions are in {runs}/")


def _benchmark(args: argparse.Namespace) -> None:
    from flowad import api

    options = given_model_options(args)
    rows = api.benchmark(
        args.model,
        args.data,
        args.out,
        args.categories,
        args.layout,
        args.force,
        _settings(args),
        per_category=getattr(args, "per_category", None),
        **options,
    )
    print(api.format_table(rows))
    print(f"\nwrote {args.out / 'table.csv'} and {args.out / 'table.md'}")


COMMANDS: dict[str, Callable[[argparse.Namespace], None]] = {
    "demo-data": _demo_data,
    "demo": _demo,
    "train": _train,
    "benchmark": _benchmark,
    "test": _test,
    "report": _report,
    "predict": _predict,
    "export": _export,
}


if __name__ == "__main__":
    sys.exit(main())
