"""Soak test: ``flowad.api.predict`` over many images in one process; memory growth and throughput.

Not part of CI. Run alone (other jobs on the same cores distort the throughput):

    python benchmarks/soak.py --images 10000 --threads 1 --append benchmarks/RESULTS.md

Without ``--run`` it first trains a tiny FastFlow run (64 px, 1 epoch) on the synthetic demo data.
It writes ``--unique`` distinct 64 px demo images (default 200) to a temporary folder once and lists
them over and over until the input list holds ``--images`` entries, so 10,000 files are never written
as inputs; predict still reads, scores and writes a heat map and a mask for every entry (it names the
repeats ``a``, ``a-2``, ...), into a temporary folder deleted at the end.

Memory is measured after a warm-up predict call over the first ``--warmup`` images (model loaded,
buffers allocated) and again after the long call: the current RSS (``/proc/self/statm``) and the peak
RSS (``ru_maxrss``), each with its growth in percent. Target: no growth beyond 10 %.
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch
from _results import cpu_name, publish

from flowad import api
from flowad.cli import main as flowad_main
from flowad.data.synthetic import make_demo_dataset

TARGET_GROWTH = 10.0  # percent


def current_rss_mib() -> float:
    """Resident set size now, from /proc/self/statm (second field, in pages)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def memory() -> tuple[float, float]:
    gc.collect()
    return current_rss_mib(), peak_rss_mib()


def train_tiny_run(work: Path) -> Path:
    data = make_demo_dataset(
        work / "data", seed=1, categories=("fabric",), image_size=64, n_train=10, n_test_good=1, n_test_per_defect=1
    )
    run = work / "run"
    args = ["train", "--data", str(data), "--category", "fabric", "--out", str(run), "--image-size", "64"]
    if flowad_main([*args, "--epochs", "1", "--batch-size", "4", "--quiet"]) != 0:
        sys.exit("training the tiny run failed")
    return run


def input_list(work: Path, unique: int, total: int) -> list[Path]:
    """``unique`` distinct 64 px images on disk, listed repeatedly up to ``total`` entries."""
    pool = make_demo_dataset(
        work / "pool", seed=2, categories=("fabric",), image_size=64, n_train=unique, n_test_good=1, n_test_per_defect=1
    )
    files = sorted((pool / "fabric" / "train" / "good").iterdir())
    return [files[i % len(files)] for i in range(total)]


def machine() -> str:
    cpu = cpu_name()
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


def growth(start: float, end: float) -> str:
    return f"{100 * (end - start) / start:+.1f} %"


def report(
    args: argparse.Namespace, unique: int, seconds: float, start: tuple[float, float], end: tuple[float, float]
) -> str:
    worst = max(100 * (e - s) / s for s, e in zip(start, end, strict=True))
    verdict = "met" if worst <= TARGET_GROWTH else "missed"
    return "\n".join(
        [
            f"### Soak, {date.today()}: {machine()}",
            "",
            f"Command: `python benchmarks/soak.py {' '.join(sys.argv[1:])}`; `flowad.api.predict` over "
            f"{args.images} inputs in one process ({unique} distinct 64 px files listed repeatedly), "
            f"memory after a warm-up of {args.warmup} images and at the end.",
            "",
            "| images | seconds | images/s | RSS start MiB | RSS end MiB | RSS growth | "
            "peak RSS start MiB | peak RSS end MiB | peak growth |",
            "|---|---|---|---|---|---|---|---|---|",
            f"| {args.images} | {seconds:.1f} | {args.images / seconds:.1f} | {start[0]:.0f} | {end[0]:.0f} | "
            f"{growth(start[0], end[0])} | {start[1]:.0f} | {end[1]:.0f} | {growth(start[1], end[1])} |",
            "",
            f"Target (no growth beyond {TARGET_GROWTH:.0f} %): {verdict}.",
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000, help="input entries to predict (default 10000)")
    parser.add_argument("--unique", type=int, default=200, help="distinct image files behind them (default 200)")
    parser.add_argument("--warmup", type=int, default=50, help="images of the warm-up call (default 50)")
    parser.add_argument("--run", type=Path, help="run directory to use (default: train a tiny one)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--append", help="append the Markdown block to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="flowad-soak-") as tmp:
        work = Path(tmp)
        run = args.run or train_tiny_run(work)
        inputs = input_list(work, min(args.unique, args.images), args.images)
        api.predict(run, inputs[: args.warmup], work / "warmup", quiet=True)
        start = memory()
        t0 = time.perf_counter()
        records = api.predict(run, inputs, work / "out", quiet=True)
        seconds = time.perf_counter() - t0
        end = memory()
    if len(records) != args.images:
        sys.exit(f"predict scored {len(records)} of {args.images} images")
    text = report(args, min(args.unique, args.images), seconds, start, end)
    publish(text, args.append)


if __name__ == "__main__":
    main()
