"""Images per second of sharded prediction: ``flowad predict`` as one process and under torchrun.

Run alone (other jobs on the same cores distort every figure):

    python benchmarks/bench_distributed.py --images 200 --append benchmarks/RESULTS.md

It trains a tiny FastFlow run (EfficientNet-Lite0, ``--image-size`` px, 1 epoch) on the synthetic demo data,
writes ``--images`` demo images of that size, and runs the whole ``flowad predict`` command, started as
a fresh process (or torchrun job), in three set-ups that use the same two cores:

- one process with 1 torch thread, one process with 2 threads;
- two processes under torchrun (gloo on loopback), 1 thread each, each scoring half of the files.

The scoring rate leaves start-up (imports, model loading, the process group) out: it is (images - 1) over
the time from the first mask file written to the last (file modification times, every process's files).
The end-to-end rate is images over the command's whole wall time.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch
from _results import cpu_name, publish

from flowad.cli import main as flowad_main
from flowad.data.synthetic import make_demo_dataset

SETUPS = (("1 process, 1 thread", 1, 1), ("1 process, 2 threads", 1, 2), ("2 processes, 1 thread each", 2, 1))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def predict_command(processes: int, run: Path, folder: Path, out: Path) -> list[str]:
    args = ["predict", "--run", str(run), "--input", str(folder), "--out", str(out), "--quiet"]
    if processes == 1:
        return [sys.executable, "-m", "flowad", *args]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes)]
    return [*launcher, "--master-addr", "127.0.0.1", "--master-port", str(free_port()), "-m", "flowad", "--", *args]


def timed(command: list[str], threads: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONWARNINGS": "ignore"}
    t0 = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return seconds


def scoring_rate(out: Path) -> tuple[int, float]:
    """(images scored, images per second between the first and the last mask written)."""
    times = sorted(p.stat().st_mtime_ns for p in out.glob("*_mask.png"))
    return len(times), (len(times) - 1) / ((times[-1] - times[0]) / 1e9)


def prepare(work: Path, images: int, size: int) -> tuple[Path, Path]:
    """A tiny trained run and a folder of ``images`` inputs."""
    demo = {"categories": ("fabric",), "image_size": size, "n_test_good": 1, "n_test_per_defect": 1}
    data = make_demo_dataset(work / "data", seed=1, n_train=10, **demo)
    run = work / "run"
    args = ["train", "--data", str(data), "--category", "fabric", "--out", str(run), "--image-size", str(size)]
    if flowad_main([*args, "--epochs", "1", "--batch-size", "4", "--quiet"]) != 0:
        sys.exit("training the tiny run failed")
    pool = make_demo_dataset(work / "pool", seed=2, n_train=images, **demo)
    return run, pool / "fabric" / "train" / "good"


def machine() -> str:
    cpu = cpu_name()
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} cores, {memory:.0f} GiB, {gpu}, torch {torch.__version__}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200, help="images to score (default 200)")
    parser.add_argument("--image-size", type=int, default=256, help="model input and image size in px (default 256)")
    parser.add_argument("--append", help="append the Markdown block to this file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory(prefix="flowad-dist-") as tmp:
        work = Path(tmp)
        run, inputs = prepare(work, args.images, args.image_size)
        for i, (name, processes, threads) in enumerate(SETUPS):
            out = work / f"out{i}"
            total = timed(predict_command(processes, run, inputs, out), threads)
            lines = len((out / "predictions.jsonl").read_text().splitlines())
            scored, rate = scoring_rate(out)
            if lines != args.images or scored != args.images:
                sys.exit(f"{name}: {lines} JSON lines and {scored} masks for {args.images} images")
            rows.append(f"| {name} | {total:.1f} | {rate:.2f} | {args.images / total:.2f} |")
            print(rows[-1], flush=True)
    command = f"python benchmarks/bench_distributed.py {' '.join(sys.argv[1:])}"
    text = "\n".join(
        [
            f"### Sharded prediction, {date.today()}: {machine()}",
            "",
            f"Command: `{command}`; `flowad predict` over {args.images} demo images of {args.image_size} px "
            "(a FastFlow run, EfficientNet-Lite0), each set-up started afresh; 2 processes = torchrun, gloo "
            "on loopback. Scoring images/s: from the first output written to the last (start-up left out).",
            "",
            "| set-up | wall s | scoring images/s | end-to-end images/s |",
            "|---|---|---|---|",
            *rows,
            "",
        ]
    )
    publish(text, args.append)


if __name__ == "__main__":
    main()
