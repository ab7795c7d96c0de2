"""Does ``flowad.api.predict`` hold its memory and pace over many images in one process? A soak test.

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
from pathlib import Path

from _harness import (
    add_append_argument,
    add_threads_argument,
    demo_images,
    machine_description,
    markdown_table,
    positive_int,
    publish,
    script_parser,
    section,
    set_threads,
    train_tiny_run,
)

from flowad import api

TARGET_GROWTH = 10.0  # percent
IMAGE_SIZE = 64  # small images: the test is about memory over many calls, not the model's speed


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


def input_list(files: list[Path], total: int) -> list[Path]:
    """``files`` listed over and over up to ``total`` entries."""
    return [files[i % len(files)] for i in range(total)]


def growth(start: float, end: float) -> str:
    return f"{100 * (end - start) / start:+.1f} %"


def report(
    args: argparse.Namespace,
    threads: int,
    unique: int,
    seconds: float,
    start: tuple[float, float],
    end: tuple[float, float],
) -> str:
    worst = max(100 * (e - s) / s for s, e in zip(start, end, strict=True))
    verdict = "met" if worst <= TARGET_GROWTH else "missed"
    headers = ["images", "seconds", "images/s", "RSS start MiB", "RSS end MiB", "RSS growth"]
    headers += ["peak RSS start MiB", "peak RSS end MiB", "peak growth"]
    row = [args.images, f"{seconds:.1f}", f"{args.images / seconds:.1f}", f"{start[0]:.0f}", f"{end[0]:.0f}"]
    row += [growth(start[0], end[0]), f"{start[1]:.0f}", f"{end[1]:.0f}", growth(start[1], end[1])]
    return section(
        "Soak",
        machine_description(threads),
        f"; `flowad.api.predict` over {args.images} inputs in one process ({unique} distinct {IMAGE_SIZE} px files "
        f"listed repeatedly), memory after a warm-up of {args.warmup} images and at the end.",
        [
            "",
            *markdown_table(headers, [row]),
            "",
            f"Target (no growth beyond {TARGET_GROWTH:.0f} %): {verdict}.",
        ],
    )


def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--images", type=positive_int, default=10_000, help="input entries to predict")
    parser.add_argument("--unique", type=positive_int, default=200, help="distinct image files behind them")
    parser.add_argument("--warmup", type=positive_int, default=50, help="images of the warm-up call")
    parser.add_argument("--run", type=Path, help="run directory to use (default: train a tiny one)")
    add_threads_argument(parser, default=1)
    add_append_argument(parser)
    args = parser.parse_args()
    threads = set_threads(args.threads)
    unique = min(args.unique, args.images)
    with tempfile.TemporaryDirectory(prefix="flowad-soak-") as tmp:
        work = Path(tmp)
        run = args.run or train_tiny_run(work, IMAGE_SIZE)
        inputs = input_list(demo_images(work / "pool", unique, IMAGE_SIZE), args.images)
        api.predict(run, inputs[: args.warmup], work / "warmup", quiet=True)
        start = memory()
        t0 = time.perf_counter()
        records = api.predict(run, inputs, work / "out", quiet=True)
        seconds = time.perf_counter() - t0
        end = memory()
    if len(records) != args.images:
        sys.exit(f"predict scored {len(records)} of {args.images} images")
    publish(report(args, threads, unique, seconds, start, end), args.append)


if __name__ == "__main__":
    main()
