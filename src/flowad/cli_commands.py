"""What each ``flowad`` command does with its parsed arguments: a call into :mod:`flowad.api` and what it prints."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from flowad import distributed
from flowad.cli_options import given_model_options
from flowad.errors import InputError
from flowad.ranges import check_value, option_flag
from flowad.records import EngineSettings

# The demo data set has 48 training images per category: at the papers' batch of 32 that is two optimiser
# steps per epoch, so the demo trains the image-batched models with batches of 8 (more steps for the same
# compute; 8 is also the U-Flow authors' base batch). CFLOW-AD's batches are fibers, which this does not touch.
DEMO_PRESETS: dict[str, dict[str, int]] = {"fastflow": {"batch_size": 8, "epochs": 60}, "uflow": {"batch_size": 8}}


def engine_settings(args: argparse.Namespace, **extra) -> EngineSettings:
    """How to run, from the command line's engine flags (and ``extra`` settings)."""
    return EngineSettings(
        device=args.device,
        quiet=args.quiet,
        dist_timeout=args.dist_timeout,
        precision=args.precision,
        compile=args.compile,
        **extra,
    )


def nfa_options(args: argparse.Namespace, needs_nfa: bool = False) -> dict[str, object]:
    """The NFA options given to test, predict or serve (instead of the run's own); ``needs_nfa``: they only
    change anything with ``--threshold nfa``, so without it they are refused."""
    from flowad.nfa import NFA_OPTIONS

    given = {name: getattr(args, name) for name in NFA_OPTIONS if getattr(args, name, None) is not None}
    if given and needs_nfa and args.threshold != "nfa":
        flags = ", ".join(_as_typed(name, value) for name, value in given.items())
        raise InputError(f"{flags}: NFA options apply with --threshold nfa (given: --threshold {args.threshold})")
    return given


def _as_typed(name: str, value: object) -> str:
    """An option as the command line spells it: --nfa-rescale, --no-nfa-rescale, --nfa-window-size 3 15."""
    if isinstance(value, bool):
        return option_flag(name) if value else option_flag(name).replace("--", "--no-", 1)
    return " ".join([option_flag(name), *map(str, value if isinstance(value, list) else [value])])


def _demo_data(args: argparse.Namespace) -> None:
    from flowad.data.synthetic import FRAME_CATEGORIES, make_demo_dataset

    size = 256 if args.size is None else _frame_size(args.size)
    counts = {"n_train": args.n_train, "n_test_good": args.n_test_good, "n_test_per_defect": args.n_test_per_defect}
    path = make_demo_dataset(args.out, seed=args.seed, image_size=size, **counts)
    shown = "" if args.size is None else f" ({size[0]} x {size[1]} frames of {', '.join(FRAME_CATEGORIES)})"
    print(f"wrote the demo data set{shown} to {path}")


def _frame_size(size: list[int]) -> tuple[int, int]:
    """``--size W H`` as ``(width, height)``, refused with the flag's own words when a side is too small."""
    from flowad.data.synthetic import MIN_IMAGE_SIZE

    width, height = size
    if min(width, height) < MIN_IMAGE_SIZE:
        raise InputError(f"--size {width} {height}: expected a width and a height of at least {MIN_IMAGE_SIZE}")
    return width, height


def _train(args: argparse.Namespace) -> None:
    from flowad import api

    if args.resume is not None:
        run = api.resume(args.resume, engine_settings(args))
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
    settings = engine_settings(args, cache=args.cache, cache_limit_gb=args.cache_limit_gb)
    options = given_model_options(args)
    run = api.train(
        args.model, spec, args.out, seed=args.seed, force=args.force, fpr=args.fpr, settings=settings, **options
    )
    print(f"trained {args.model}; run directory: {run}")
    _print_best_and_last(run)


def _test(args: argparse.Namespace) -> None:
    from flowad import api

    result = api.test(
        args.run, args.data, args.category, args.threshold, engine_settings(args), nfa_options=nfa_options(args)
    )
    print(api.format_metrics(result))
    print(f"report: {args.run / 'report.html'}")
    print(
        f"train {result['train_seconds']:.1f} s, test {result['test_seconds']:.1f} s; wrote {args.run / 'metrics.json'}"
    )


def _predict(args: argparse.Namespace) -> None:
    from flowad import api

    check_value("batch_size", args.batch_size)
    api.predict(
        args.run,
        args.input,
        args.out,
        args.threshold,
        args.quiet,
        engine=args.engine,
        batch_size=args.batch_size,
        exported=args.exported,
        nfa_options=nfa_options(args, needs_nfa=True),
    )


def _export(args: argparse.Namespace) -> None:
    from flowad import api

    if args.format == "openvino":
        if args.raw:
            raise InputError("--raw is an ONNX option: the OpenVINO IR is made from the deployable graph")
        path = api.export_openvino(args.run, args.out, args.precision, args.int8, args.calibration, args.threshold)
    else:
        if args.int8 or args.calibration is not None or args.precision != "fp32":
            raise InputError("--precision, --int8 and --calibration are OpenVINO options: add --format openvino")
        path = api.export_onnx(args.run, args.out, raw=args.raw, threshold=args.threshold)
    print(f"wrote {path}")


def _serve(args: argparse.Namespace) -> None:
    import json
    import os
    import sys

    from flowad.inference import Detector

    try:
        import uvicorn

        from flowad.serve_app import create_app
    except ImportError as err:
        raise InputError(f"flowad serve needs its extra: pip install 'flowad[serve]' ({err})") from err
    check_value("batch_size", args.batch_size)
    if args.workers < 1 or not 0 <= args.max_wait_ms <= 1000 or not 0 < args.body_limit_mb <= 4096:
        given = f"--workers {args.workers}, --max-wait-ms {args.max_wait_ms:g}, --body-limit-mb {args.body_limit_mb:g}"
        raise InputError(f"{given}: expected --workers >= 1, --max-wait-ms in 0..1000, --body-limit-mb in (0, 4096]")
    api_key = args.api_key or os.environ.get("FLOWAD_API_KEY") or None
    if api_key is None and args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving on {args.host} without an API key: anyone who reaches it can use it", file=sys.stderr)
    nfa = nfa_options(args, needs_nfa=True)
    detector = Detector.load(args.run, args.threshold, args.engine, nfa_options=nfa)  # a bad run: exit 2 here
    body_limit = int(args.body_limit_mb * 1024 * 1024)
    print(
        f"serving {args.run} with the {detector.engine.name} engine on http://{args.host}:{args.port}", file=sys.stderr
    )
    if args.workers == 1:
        app = create_app(str(args.run), detector, api_key, body_limit, args.batch_size, args.max_wait_ms)
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=30)
        return
    settings = {"run": str(args.run), "threshold": args.threshold, "engine": args.engine, "nfa": nfa}
    settings.update(body_limit=body_limit, batch_size=args.batch_size, max_wait_ms=args.max_wait_ms)
    os.environ["FLOWAD_SERVE"] = json.dumps(settings)
    if api_key:
        os.environ["FLOWAD_API_KEY"] = api_key
    uvicorn.run(
        "flowad.serve_app:app_from_environment",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level="warning",
        timeout_graceful_shutdown=30,
    )


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
    settings = engine_settings(args)
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
    from flowad.benchmark import SEED_TABLE

    options = given_model_options(args)
    rows = api.benchmark(
        args.model,
        args.data,
        args.out,
        args.categories,
        args.layout,
        args.force,
        engine_settings(args),
        per_category=getattr(args, "per_category", None),
        seeds=args.seeds,
        **options,
    )
    print(api.format_table(rows))
    tables = [str(args.out / name) for name in ["table.csv", "table.md", *([SEED_TABLE] if args.seeds else [])]]
    print(f"\nwrote {', '.join(tables[:-1])} and {tables[-1]}")


COMMANDS: dict[str, Callable[[argparse.Namespace], None]] = {
    "demo-data": _demo_data,
    "demo": _demo,
    "train": _train,
    "benchmark": _benchmark,
    "test": _test,
    "report": _report,
    "predict": _predict,
    "export": _export,
    "serve": _serve,
}
