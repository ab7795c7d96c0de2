"""How fast are flowad's models on this machine: the backbone alone, whole-model inference, and flowad's own
training epochs with the feature cache and without it?

Run alone (other jobs on the same cores distort every figure):

    python benchmarks/bench_speed.py --threads 2 --models fastflow --append benchmarks/RESULTS.md

For each model, per image: the backbone's forward time and the whole model's inference time at batch 1 and
16 (random inputs, warm, inference mode, medians over ``--repeats`` interleaved runs), and the same through
onnxruntime when it is installed. For U-Flow also the NFA step at 256 and 448 px.

Training: ``flowad.engine.train`` itself, with ``EngineSettings(cache="on")`` and ``cache="off"`` (streaming,
as ``flowad train --cache off``), runs of the two alternating, ``--train-runs`` of each. Every run trains a
fresh model for ``--epochs`` epochs on ``--train-images`` demo images (or ``--data``/``--category``). The
epoch figure is the median of the engine's own per-epoch seconds (its log's ``epochs[i]["seconds"]``), the
first epoch of each run left out (it pays for first-time allocations). Cached epochs train the flows on the
features computed once; streamed epochs also read, decode and resize the images and run the backbone. The
cache's one-off fill (the log's ``feature_seconds``) is reported beside.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path
from typing import Any

import torch
from _harness import (
    DEMO_CATEGORY,
    add_append_argument,
    add_models_argument,
    add_threads_argument,
    alternating_medians,
    check_data_arguments,
    engine_settings,
    machine_description,
    markdown_table,
    positive_int,
    publish,
    script_parser,
    section,
    set_threads,
    write_demo_data,
)

from flowad.data.datasets import ImageDataset, mvtec_splits
from flowad.engine import train
from flowad.models import AnomalyModel, build_model
from flowad.preprocess import Preprocess

CACHE_MODES = {"cached": "on", "streamed": "off"}


def time_inference(model: AnomalyModel, image_size: int, repeats: int) -> dict[str, float]:
    """Seconds per image of the backbone and the whole model (and onnxruntime's), at batch 1 and 16."""
    model.eval()
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
                pair = alternating_medians({"torch": lambda x=x: model(x), "ort": lambda xn=xn: onnx(xn)}, repeats)
            out[f"onnx_b{batch}"] = pair["ort"] / batch
            out[f"torch_vs_onnx_b{batch}"] = pair["torch"] / batch
    return out


def time_training(name: str, samples: list[Any], image_size: int, epochs: int, runs: int) -> dict[str, float]:
    """Median seconds of an epoch of ``flowad.engine.train`` with the feature cache and streamed (epochs
    2..``epochs`` of ``runs`` runs each), and the median seconds of filling the cache."""
    seconds: dict[str, list[float]] = {mode: [] for mode in CACHE_MODES}
    fills: list[float] = []
    for _ in range(runs):
        for mode, cache in CACHE_MODES.items():  # alternating, so that the machine's drifts hit both alike
            torch.manual_seed(0)
            model = build_model(name, image_size=image_size, epochs=epochs)
            dataset = ImageDataset(samples, Preprocess.from_model(model))
            log = train(model, dataset, engine_settings("cpu", cache=cache))
            if log["cache"] != (cache == "on"):
                raise SystemExit(f"{name}: the engine ran with cache={log['cache']} when asked for cache={cache!r}")
            seconds[mode] += [entry["seconds"] for entry in log["epochs"][1:]]
            if cache == "on":
                fills.append(log["feature_seconds"])
    return {
        "epoch_cached": statistics.median(seconds["cached"]),
        "epoch_streamed": statistics.median(seconds["streamed"]),
        "cache_fill": statistics.median(fills),
    }


def _onnx_session(model: AnomalyModel) -> Any | None:
    """The model alone exported to ONNX (``--raw``: normalised images in, maps and scores out) in onnxruntime
    with torch's thread count, as ``session(images) -> [maps, scores]``; None without onnxruntime."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None

    from flowad.checkpoint import save_run
    from flowad.export import export_onnx
    from flowad.thresholds import fixed

    run = tempfile.mkdtemp(prefix="flowad-bench-")
    save_run(run, model, fixed(1.0, 0.0, 2.0))  # the raw graph holds no threshold; any will do
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(str(export_onnx(run, raw=True)), options, providers=["CPUExecutionProvider"])
    return lambda images: session.run(None, {"image": images})


def time_nfa(repeats: int) -> dict[str, float]:
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


def report(results: dict[str, dict[str, float]], nfa: dict[str, float], args: argparse.Namespace, data: str) -> str:
    ms = 1e3
    speed_rows = [
        [
            name,
            f"{ms * r['backbone_b1']:.1f}",
            f"{ms * r['infer_b1']:.1f}",
            f"{ms * r['backbone_b16']:.1f}",
            f"{ms * r['infer_b16']:.1f}",
            f"{r['infer_b16'] / r['backbone_b16']:.2f}x",
            f"{r['epoch_cached']:.2f}",
            f"{r['epoch_streamed']:.2f}",
            f"{r['epoch_streamed'] / r['epoch_cached']:.1f}x",
            f"{r['cache_fill']:.2f}",
        ]
        for name, r in results.items()
    ]
    speed_headers = ["model", "backbone b1 ms/img", "infer b1 ms/img", "backbone b16 ms/img", "infer b16 ms/img"]
    speed_headers += ["infer/backbone b16", "epoch cached s", "epoch streamed s", "streamed/cached", "cache fill s"]
    about = (
        f"; image {args.image_size} px, inference on random inputs, medians of {args.repeats} runs. Epochs: "
        f"`flowad.engine.train` with the cache on and off, {args.train_runs} run(s) of {args.epochs} epochs each on "
        f"{data}, median of the engine's per-epoch seconds, first epoch of each run left out; streamed epochs "
        "include reading the images."
    )
    lines = [
        "",
        *markdown_table(speed_headers, speed_rows),
    ]
    if any("onnx_b1" in r for r in results.values()):
        onnx_rows = [
            [name, *(f"{ms * r[key]:.1f}" for key in ("torch_vs_onnx_b1", "onnx_b1", "torch_vs_onnx_b16", "onnx_b16"))]
            for name, r in results.items()
        ]
        onnx_headers = ["model", "torch b1 ms/img", "onnxruntime b1 ms/img", "torch b16 ms/img"]
        lines += ["", *markdown_table([*onnx_headers, "onnxruntime b16 ms/img"], onnx_rows)]
    if nfa:
        nfa_rows = [[name, f"{ms * t:.1f}"] for name, t in nfa.items()]
        lines += ["", *markdown_table(["NFA step (log NFA map, one image)", "ms"], nfa_rows)]
    return section("Speed", machine_description(torch.get_num_threads()), about, lines)


def training_samples(args: argparse.Namespace, work: Path) -> tuple[list[Any], str]:
    """The training images (``--data``'s, or demo images written under ``work``) and how the report names them."""
    if args.data:
        samples = mvtec_splits(args.data, args.category).train[: args.train_images]
        return samples, f"{len(samples)} training images of {args.data}/{args.category}"
    root = write_demo_data(work / "data", args.image_size, args.train_images)
    samples = mvtec_splits(root, DEMO_CATEGORY).train
    return samples, f"{len(samples)} demo images ({DEMO_CATEGORY})"


def main() -> None:
    parser = script_parser(__doc__)
    add_models_argument(parser)
    add_threads_argument(parser)
    parser.add_argument("--image-size", type=positive_int, default=256, help="input size in px")
    parser.add_argument("--repeats", type=positive_int, default=5, help="timed inference runs (medians)")
    parser.add_argument("--epochs", type=positive_int, default=3, help="epochs per training run (at least 2)")
    parser.add_argument("--train-runs", type=positive_int, default=1, help="training runs per cache mode")
    parser.add_argument("--train-images", type=positive_int, default=32, help="training images")
    parser.add_argument("--data", type=Path, help="train on this MVTec-layout root (default: demo images)")
    parser.add_argument("--category", default=DEMO_CATEGORY, help="category folder under --data")
    add_append_argument(parser)
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("argument --epochs: the first epoch of a run is left out, so at least 2 are needed")
    check_data_arguments(parser, args.data, args.category)
    set_threads(args.threads)
    results = {}
    with tempfile.TemporaryDirectory(prefix="flowad-speed-") as tmp:
        samples, data = training_samples(args, Path(tmp))
        for name in args.models:
            torch.manual_seed(0)
            results[name] = time_inference(build_model(name, image_size=args.image_size), args.image_size, args.repeats)
            results[name].update(time_training(name, samples, args.image_size, args.epochs, args.train_runs))
            print(name, {k: round(v, 4) for k, v in results[name].items()}, flush=True)
    nfa = time_nfa(args.repeats) if "uflow" in args.models else {}
    publish(report(results, nfa, args, data), args.append)


if __name__ == "__main__":
    main()
