"""The command line of the two worker processes of ``vs_anomalib.py`` (and of ``cflow_reference_check.py``'s run
step): ``python benchmarks/_SIDE_worker.py TASK --json-out FILE ...``, one JSON object written per call.

Tasks (each side offers those it has):

- ``run`` (both): train, score the test split, time the torch module;
- ``aupro`` (both): time the side's AUPRO on saved maps;
- ``deploy`` (anomalib): export with anomalib's own API (ONNX, OpenVINO), time the exported files in
  onnxruntime and OpenVINO and anomalib's inferencers on image files;
- ``backbone`` (flowad): the frozen encoder alone in torch, onnxruntime and OpenVINO.

Imports no flowad name: anomalib's worker runs where flowad is not importable.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _harness import (
    DEMO_CATEGORY,
    MODEL_NAMES,
    REPOSITORY,
    add_threads_argument,
    child_environment,
    positive_int,
    script_parser,
    set_threads,
)

HERE = Path(__file__).resolve().parent

# the arguments each task cannot do without
NEEDED = {
    "run": ("model", "data", "weights", "maps_out"),
    "aupro": ("maps",),
    "deploy": ("model", "data", "weights"),
    "backbone": ("model", "weights"),
}


def add_comparison_arguments(parser: argparse.ArgumentParser) -> None:
    """What both sides of vs_anomalib.py are given alike: vs_anomalib.py takes these and hands them to each worker."""
    parser.add_argument("--category", default=DEMO_CATEGORY, help="category folder under --data")
    parser.add_argument("--backbone", default="resnet18", help="a timm name both libraries accept for every model")
    parser.add_argument("--image-size", type=positive_int, default=256, help="input size in px")
    parser.add_argument("--batch-size", type=positive_int, default=32, help="training batch size")
    parser.add_argument("--epochs", type=positive_int, default=3, help="training epochs")
    parser.add_argument("--seed", type=int, default=0, help="seed of the backbone's random weights and the flows")
    parser.add_argument("--rounds", type=positive_int, default=3, help="timed rounds inside each process (medians)")
    add_threads_argument(parser)


def add_worker_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments both sides' workers take (vs_anomalib.py passes them)."""
    add_comparison_arguments(parser)
    parser.add_argument("--model", choices=MODEL_NAMES, help="run, deploy, backbone: the model")
    parser.add_argument("--data", help="run, deploy: data root in the MVTec AD layout")
    parser.add_argument("--weights", help="backbone weights (.safetensors, the timm model's full state dict)")
    parser.add_argument("--work", default="runs/vs_anomalib", help="folder for the side's own outputs")
    parser.add_argument("--maps", nargs="*", default=[], help="aupro: .npz files with 'maps' and 'masks'")
    parser.add_argument("--maps-out", help="run: .npz file for the test split's maps, scores, masks and labels")
    parser.add_argument("--model-out", help="run: also save the trained model's state dict to this file")
    parser.add_argument("--model-in", help="deploy: a state dict saved by run --model-out (default: train anew)")
    parser.add_argument("--images", type=positive_int, default=16, help="deploy: image files predicted end to end")
    parser.add_argument("--json-out", required=True, help="file for the JSON result")


def check_worker_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace, task: str) -> None:
    missing = [name for name in NEEDED[task] if not getattr(args, name)]
    if missing:
        names = ", ".join("--" + name.replace("_", "-") for name in missing)
        parser.error(f"{task} needs the arguments {names}")


def write_worker_result(result: dict[str, Any], path: str) -> None:
    Path(path).write_text(json.dumps(result, indent=1))
    print(json.dumps(result))


def time_aupro(side: str, compute: Callable[[np.ndarray, np.ndarray], float], args: argparse.Namespace) -> dict:
    """Median time of ``compute(maps, masks)`` on each saved map set of ``--maps``, after one warm-up call."""
    results = []
    for path in args.maps:
        data = np.load(path)
        maps, masks = data["maps"], data["masks"]
        value = compute(maps, masks)  # the first call imports and allocates
        times = []
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            value = compute(maps, masks)
            times.append(time.perf_counter() - t0)
        results.append({"maps": path, "value": value, "seconds": statistics.median(times)})
    return {"side": side, "threads": torch.get_num_threads(), "aupro": results}


def worker_main(doc: str | None, tasks: dict[str, Callable[[argparse.Namespace], dict]]) -> None:
    """A worker's command line: one of ``tasks`` (name -> function of the parsed arguments), then
    :func:`add_worker_arguments`'s arguments."""
    parser = script_parser(doc)
    parser.add_argument("task", choices=tuple(tasks), help="what to measure (see above)")
    add_worker_arguments(parser)
    args = parser.parse_args()
    check_worker_arguments(parser, args, args.task)
    set_threads(args.threads)
    write_worker_result(tasks[args.task](args), args.json_out)


def start_worker(side: str, task: str, extra: list[str], args: argparse.Namespace, tag: str) -> tuple[dict, float]:
    """Run one worker process of ``vs_anomalib.py`` (anomalib's in ``args.venv``, flowad's in this Python) and
    return its JSON result and its peak RSS in MiB. Its output goes to ``WORK/logs/TAG.log``; a failure exits
    with the log's tail."""
    work = Path(args.work)
    python = Path(args.venv) / "bin" / "python" if side == "anomalib" else Path(sys.executable)
    json_out = work / "json" / f"{tag}.json"
    log = work / "logs" / f"{tag}.log"
    for folder in (json_out.parent, log.parent):
        folder.mkdir(parents=True, exist_ok=True)
    json_out.unlink(missing_ok=True)
    cmd = [str(python), str(HERE / f"_{side}_worker.py"), task, "--threads", str(args.threads)]
    cmd += ["--rounds", str(args.rounds), "--work", str(work), "--json-out", str(json_out), *extra]
    with open(log, "w") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=child_environment(args.threads), cwd=REPOSITORY
        )
        _, status, usage = os.wait4(proc.pid, 0)  # the child's own rusage: its peak RSS
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0 or not json_out.exists():
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-30:])
        raise SystemExit(f"{side} worker failed ({tag}, exit {proc.returncode}); log {log}:\n{tail}")
    result = json.loads(json_out.read_text())
    if result["threads"] != args.threads:
        raise SystemExit(f"{side} worker ran {result['threads']} torch threads, not {args.threads}")
    return result, usage.ru_maxrss / 1024  # Linux: KiB
