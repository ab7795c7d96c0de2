"""Speed of flowad's models on this machine: backbone alone, end-to-end inference, training epochs.

Run alone (other jobs on the same cores distort every figure):

    python benchmarks/bench_speed.py --threads 2 --models fastflow --append benchmarks/RESULTS.md

For each model it prints, per image: the backbone's forward time and the whole model's inference time
at batch 1 and 16 (warm, inference mode), and the time of a training epoch on cached features versus
recomputing the features every epoch (streaming). Medians over ``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import date

import torch
from _results import publish

from flowad.models import MODELS, build_model


def alternating_medians(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median time of each function, their runs interleaved so that drifts of the machine hit all alike."""
    for fn in fns.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


def bench_model(name: str, image_size: int, train_images: int, repeats: int) -> dict[str, float]:
    torch.manual_seed(0)
    model = build_model(name, image_size=image_size).eval()
    images = torch.randn(16, 3, image_size, image_size)
    out: dict[str, float] = {}
    with torch.inference_mode():
        for batch in (1, 16):
            x = images[:batch]
            pair = alternating_medians(
                {"backbone": lambda x=x: model.encoder(x), "infer": lambda x=x: model(x)}, repeats
            )
            out[f"backbone_b{batch}"] = pair["backbone"] / batch
            out[f"infer_b{batch}"] = pair["infer"] / batch

    onnx = _onnx_session(model)
    if onnx is not None:
        for batch in (1, 16):
            x, xn = images[:batch], images[:batch].numpy()
            with torch.inference_mode():
                pair = alternating_medians(
                    {"torch": lambda x=x: model(x), "ort": lambda xn=xn: onnx.maps_and_scores(xn)}, repeats
                )
            out[f"onnx_b{batch}"] = pair["ort"] / batch
            out[f"torch_vs_onnx_b{batch}"] = pair["torch"] / batch

    # training epochs: the same batches, with features from the cache or recomputed
    data = torch.randn(train_images, 3, image_size, image_size)
    with torch.no_grad():
        per_image = [model.extract(data[i : i + 1]) for i in range(train_images)]
        cache = [torch.cat(parts) for parts in zip(*per_image, strict=True)]
    optimizer = model.optimizer()
    model.train()

    def epoch(streaming: bool) -> None:
        generator = torch.Generator().manual_seed(0)
        order = torch.randperm(train_images, generator=generator)
        for start in range(0, train_images, model.config.batch_size):
            idx = order[start : start + model.config.batch_size]
            if streaming:  # one image per encoder call, as the engine streams by default
                with torch.no_grad():
                    per_image = [model.extract(data[i : i + 1]) for i in idx]
                    features = [torch.cat(parts) for parts in zip(*per_image, strict=True)]
            else:
                features = [f[idx] for f in cache]
            for batch in model.training_batches(features, generator):
                loss = model.training_loss(batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()

    epochs = alternating_medians(
        {"cached": lambda: epoch(False), "streamed": lambda: epoch(True)}, max(repeats // 2, 1)
    )
    out["epoch_cached"], out["epoch_streamed"] = epochs["cached"], epochs["streamed"]
    return out


def _onnx_session(model):
    """The model exported to ONNX and opened in onnxruntime (same threads), or None without onnxruntime."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return None
    import tempfile

    from flowad.checkpoint import save_run
    from flowad.export import OnnxDetector, export_onnx

    run = tempfile.mkdtemp(prefix="flowad-bench-")
    save_run(run, model, {"thresholds": {}})
    export_onnx(run)
    return OnnxDetector.load(run, threads=torch.get_num_threads())


def bench_nfa(repeats: int) -> dict[str, float]:
    """Seconds per image of the log NFA map, on latents of U-Flow's shapes (random N(0, 1) values)."""
    from flowad.nfa import log_nfa

    shapes = {
        "lite0 U-Flow latents -> 256": ([(30, 64, 64), (30, 32, 32), (56, 16, 16)], (256, 256)),
        "lite0 U-Flow latents -> 448": ([(30, 112, 112), (30, 56, 56), (56, 28, 28)], (448, 448)),
        "MS-CaiT latents -> 448": ([(816, 28, 28), (192, 14, 14)], (448, 448)),
    }
    out = {}
    for name, (latent_shapes, size) in shapes.items():
        latents = [torch.randn(1, *shape) for shape in latent_shapes]
        for precise in (False, True):
            key = f"{name}{' (high precision)' if precise else ''}"
            out[key] = alternating_medians(
                {key: lambda lt=latents, sz=size, p=precise: log_nfa(lt, sz, high_precision=p)}, repeats
            )[key]
    return out


def report(results: dict[str, dict[str, float]], nfa: dict[str, float], args: argparse.Namespace) -> str:
    lines = [
        f"### Speed, {date.today()}: {machine()}",
        "",
        f"Command: `python benchmarks/bench_speed.py {' '.join(sys.argv[1:])}`; image {args.image_size} px, "
        f"{args.train_images} training images, medians of {args.repeats} runs, random inputs.",
        "",
        "| model | backbone b1 ms/img | infer b1 ms/img | backbone b16 ms/img | infer b16 ms/img | "
        "infer/backbone b16 | epoch cached s | epoch streamed s | streamed/cached |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {1e3 * r['backbone_b1']:.1f} | {1e3 * r['infer_b1']:.1f} | {1e3 * r['backbone_b16']:.1f} | "
            f"{1e3 * r['infer_b16']:.1f} | {r['infer_b16'] / r['backbone_b16']:.2f}x | {r['epoch_cached']:.2f} | "
            f"{r['epoch_streamed']:.2f} | {r['epoch_streamed'] / r['epoch_cached']:.1f}x |"
        )
    if any("onnx_b1" in r for r in results.values()):
        lines += [
            "",
            "| model | torch b1 ms/img | onnxruntime b1 ms/img | torch b16 ms/img | onnxruntime b16 ms/img |",
            "|---|---|---|---|---|",
        ]
        for name, r in results.items():
            lines.append(
                f"| {name} | {1e3 * r['torch_vs_onnx_b1']:.1f} | {1e3 * r['onnx_b1']:.1f} | "
                f"{1e3 * r['torch_vs_onnx_b16']:.1f} | {1e3 * r['onnx_b16']:.1f} |"
            )
    if nfa:
        lines += ["", "| NFA step (log NFA map, one image) | ms |", "|---|---|"]
        lines += [f"| {name} | {1e3 * t:.1f} |" for name, t in nfa.items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=sorted(MODELS), choices=sorted(MODELS))
    parser.add_argument("--threads", type=int, default=2, help="torch threads (set explicitly: default 2)")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--train-images", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--append", help="append the Markdown table to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = {}
    for name in args.models:
        results[name] = bench_model(name, args.image_size, args.train_images, args.repeats)
        print(name, {k: round(v, 4) for k, v in results[name].items()}, flush=True)
    nfa = bench_nfa(args.repeats) if "uflow" in args.models else {}
    text = report(results, nfa, args)
    publish(text, args.append)


if __name__ == "__main__":
    main()
