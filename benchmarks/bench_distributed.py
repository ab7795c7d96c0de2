"""How many images per second does sharded prediction score: ``flowad predict`` as one process and under torchrun?

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

import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _harness import (
    DEMO_CATEGORY,
    add_append_argument,
    child_environment,
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

# (name, processes, torch threads per process): the same two cores in each
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
    t0 = time.perf_counter()
    done = subprocess.run(command, env=child_environment(threads), capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return seconds


def scoring_rate(out: Path) -> tuple[int, float]:
    """(images scored, images per second between the first and the last mask written)."""
    times = sorted(p.stat().st_mtime_ns for p in out.glob("*_mask.png"))
    return len(times), (len(times) - 1) / ((times[-1] - times[0]) / 1e9)


def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--images", type=positive_int, default=200, help="images to score")
    parser.add_argument("--image-size", type=positive_int, default=256, help="model input and image size in px")
    add_append_argument(parser)
    args = parser.parse_args()
    if args.images < 2:
        parser.error("argument --images: the scoring rate needs at least 2 images")
    set_threads(1)  # the tiny run's training; each set-up sets its own threads
    rows = []
    with tempfile.TemporaryDirectory(prefix="flowad-dist-") as tmp:
        work = Path(tmp)
        run = train_tiny_run(work, args.image_size)
        inputs = demo_images(work / "pool", args.images, args.image_size)[0].parent
        for i, (name, processes, threads) in enumerate(SETUPS):
            out = work / f"out{i}"
            total = timed(predict_command(processes, run, inputs, out), threads)
            lines = len((out / "predictions.jsonl").read_text().splitlines())
            scored, rate = scoring_rate(out)
            if lines != args.images or scored != args.images:
                sys.exit(f"{name}: {lines} JSON lines and {scored} masks for {args.images} images")
            rows.append([name, f"{total:.1f}", f"{rate:.2f}", f"{args.images / total:.2f}"])
            print(" | ".join(rows[-1]), flush=True)
    text = section(
        "Sharded prediction",
        machine_description(),
        f"; `flowad predict` over {args.images} demo images of {args.image_size} px (a FastFlow run, "
        f"EfficientNet-Lite0, trained 1 epoch on {DEMO_CATEGORY}), each set-up started afresh; 2 processes = "
        "torchrun, gloo on loopback. Scoring images/s: from the first output written to the last (start-up left out).",
        [
            "",
            *markdown_table(["set-up", "wall s", "scoring images/s", "end-to-end images/s"], rows),
        ],
    )
    publish(text, args.append)


if __name__ == "__main__":
    main()
