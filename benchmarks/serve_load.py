"""Does ``flowad serve`` hold up under load: throughput, latency, errors and memory with 1, 4 and 16 clients?

    python benchmarks/serve_load.py --run runs/demo/fastflow/fabric --threads 2 --append benchmarks/RESULTS.md

Starts ``flowad serve`` on a free loopback port (default engine), then for each client count sends requests for
``--seconds`` from that many client threads (urllib, one request at a time each): demo images as PNG bodies,
and a ``--bad-fraction`` of bad requests (bytes that are no image), which must get a 400. Reports images per
second (good requests answered), p50/p95/p99 latency of the good ones, errors other than the bad requests' 400
(target 0), the server's resident memory at the start and at the end (target: growth under 10 %), and the
same images through ``flowad.predict_files.predict_with`` (files in, maps, masks and JSON out) for the ratio
(target: the service at 16 clients >= 0.8x predict's images per second). The start's memory is taken after a
short warm-up at the largest client count: the engine allocates its buffers for each batch size once. The
clients share the machine's cores with the server, as they would on a one-box line.
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
from _harness import (
    add_append_argument,
    add_threads_argument,
    child_environment,
    demo_images,
    machine_description,
    markdown_table,
    positive_int,
    publish,
    script_parser,
    section,
    train_tiny_run,
)

from flowad.inference import Detector
from flowad.predict_files import predict_with


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_server(run: Path, threads: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, "-m", "flowad", "serve", "--run", str(run), "--port", str(port)]
    process = subprocess.Popen(command, env=child_environment(threads), stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            with urllib.request.urlopen(base + "/readyz", timeout=5):
                return process, base
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit("flowad serve did not become ready in 120 s")


def post(url: str, body: bytes) -> tuple[int, float]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "image/png"}, method="POST")
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=120) as answer:
            answer.read()
            status = answer.status
    except urllib.error.HTTPError as err:
        status = err.code
    except OSError:
        status = -1  # a dropped connection: an error
    return status, time.perf_counter() - started


def load(base: str, bodies: list[bytes], clients: int, seconds: float, bad_fraction: float) -> dict:
    latencies: list[float] = []
    counts = {"good": 0, "bad_answered": 0, "unexpected": 0}
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def client(seed: int) -> None:
        rng = random.Random(seed)
        while time.perf_counter() < stop:
            bad = rng.random() < bad_fraction
            status, took = post(base + "/v1/predict?pictures=false", b"no image" if bad else rng.choice(bodies))
            with lock:
                if bad and status == 400:
                    counts["bad_answered"] += 1
                elif not bad and status == 200:
                    counts["good"] += 1
                    latencies.append(took)
                else:
                    counts["unexpected"] += 1

    workers = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - started
    ms = np.percentile(np.array(latencies) * 1000, [50, 95, 99]) if latencies else [float("nan")] * 3
    return {"images_per_second": counts["good"] / elapsed, "p": ms, **counts}


def predict_rate(run: Path, images: list[Path], threads: int) -> float:
    detector = Detector.load(run, threads=threads)
    with tempfile.TemporaryDirectory(prefix="flowad-serve-load-") as out:
        predict_with(detector, images, out, quiet=True)  # warm
        started = time.perf_counter()
        predict_with(detector, images, out, quiet=True)
        return len(images) / (time.perf_counter() - started)


def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--run", help="run to serve (default: a tiny FastFlow run on demo images, trained here)")
    parser.add_argument("--clients", type=positive_int, nargs="+", default=[1, 4, 16], help="client counts")
    parser.add_argument("--seconds", type=float, default=60.0, help="seconds per client count")
    parser.add_argument("--bad-fraction", type=float, default=0.1, help="share of bad requests")
    parser.add_argument("--images", type=positive_int, default=48, help="demo images sent (and predicted)")
    parser.add_argument("--work", default="runs/serve_load", help="where demo images and a run trained here go")
    add_threads_argument(parser)
    add_append_argument(parser)
    args = parser.parse_args()
    work = Path(args.work)
    run = Path(args.run) if args.run else train_tiny_run(work / "run", 256)
    images = demo_images(work / "images", args.images, 256)
    bodies = [path.read_bytes() for path in images]
    process, base = start_server(run, args.threads)
    try:
        memory_ready = rss_mib(process.pid)
        # warm: the engine's buffers for every batch size a burst makes are allocated once, on first use
        load(base, bodies, max(args.clients), min(args.seconds, 10.0), 0.0)
        memory_start = rss_mib(process.pid)
        rows = []
        for clients in args.clients:
            found = load(base, bodies, clients, args.seconds, args.bad_fraction)
            rows.append([clients, f"{found['images_per_second']:.1f}", *(f"{v:.0f}" for v in found["p"])])
            rows[-1] += [found["bad_answered"], found["unexpected"], f"{rss_mib(process.pid):.0f}"]
            print(" | ".join(map(str, rows[-1])), flush=True)
        memory_end = rss_mib(process.pid)
    finally:
        process.terminate()
        process.wait(timeout=60)
    os.environ.update(child_environment(args.threads))
    predicted = predict_rate(run, images, args.threads)
    ratio = float(rows[-1][1]) / predicted
    headers = ["clients", "images/s", "p50 ms", "p95 ms", "p99 ms", "bad requests answered 400", "other errors"]
    headers.append("server RSS after, MiB")
    growth = (memory_end - memory_start) / memory_start
    text = section(
        "flowad serve under load",
        machine_description(args.threads),
        f" (`benchmarks/serve_load.py`): run {run}, {args.seconds:.0f} s per client count, "
        f"{args.bad_fraction:.0%} bad requests, {len(images)} demo images of 256 px.",
        [
            *markdown_table(headers, rows),
            "",
            f"Server memory: {memory_ready:.0f} MiB when ready, {memory_start:.0f} MiB after a "
            f"{min(args.seconds, 10.0):.0f}-s warm-up at {max(args.clients)} clients (the start), {memory_end:.0f} MiB "
            f"at the end ({growth:+.1%}; target < 10 %). `flowad predict` on the same images: {predicted:.1f} "
            f"images/s; the service at {args.clients[-1]} clients: {ratio:.2f}x (target >= 0.8x).",
        ],
    )
    publish(text, args.append)


if __name__ == "__main__":
    main()
