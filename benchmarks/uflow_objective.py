"""Where the reference's U-Flow beats flowad's on real photographs, is it flowad's fault: its learning-rate
schedule, or the reference's loss?

    python benchmarks/uflow_objective.py --out runs/uflow-objective --seeds 0 1 2 --threads 2 \\
        --append benchmarks/RESULTS.md

Data: texture_check.py's brick, grass and gravel and object_data.py's coffee cup. Settings: the held-out
real-photograph check's (256 px, batch 16, 30 epochs, ImageNet input statistics, every good training image
trains). Three ways to train flowad's U-Flow, the rest of it unchanged:

- "flowad": as it ships: the learning rate falls linearly to 0.4x over ``lr_decay_epochs`` (500) epochs,
  whatever the run's length (a 30-epoch run ends at 0.964x);
- "decay over the run": it falls to 0.4x over the run's own 30 epochs (flowad's schedule before this check);
- "reference loss": the reference's U-Flow loss, ``sum(stack([0.5 * sum(z_s^2, dims (C, H, W))])) -
  log|det|`` then a mean over the batch: the first sum runs over the batch as well, so the likelihood term
  weighs B times the log-determinant's and the optimum squeezes the latents to variance ~1/B instead of
  N(0, 1). Learning rate as "flowad".

Per way: image / pixel AUROC, AUPRO, IoU at log NFA < 0, the share of good test images with a pixel flagged
by the NFA, and the good test images' mean z^2 per scale (1 under N(0, 1)). ``lite0_reference.py
--latent-stats`` prints the reference's own mean z^2 on the same images.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from _harness import (
    add_append_argument,
    add_threads_argument,
    engine_settings,
    publish,
    run_metrics,
    script_parser,
    set_threads,
    spread_cell,
    table_section,
    train_run,
)
from object_data import CATEGORY as OBJECT
from object_data import write_object_data
from texture_check import TEXTURES, write_data

SETTINGS = {"batch_size": 16, "epochs": 30, "input_statistics": "imagenet"}
WAYS = ("flowad", "decay over the run", "reference loss")
KEYS = ("image_auroc", "pixel_auroc", "aupro", "iou_nfa", "good_flagged")


@contextlib.contextmanager
def reference_loss() -> Iterator[None]:
    """U-Flow trains with the reference's loss (module docstring) inside the block."""
    from flowad.flows import gaussian_nll
    from flowad.models.uflow import UFlow

    def loss(self: UFlow, latents: list, log_det: Any) -> Any:
        return sum(gaussian_nll(z) for z in latents).sum() - log_det.mean()

    UFlow.loss = loss
    try:
        yield
    finally:
        del UFlow.loss  # back to the inherited loss


def options_of(way: str) -> dict[str, Any]:
    return {**SETTINGS, "lr_decay_epochs": SETTINGS["epochs"]} if way == "decay over the run" else dict(SETTINGS)


def measure(run: Path) -> tuple[dict[str, float], list[float]]:
    """The run's test metrics with the NFA's good-image flag rate; the good test images' mean z^2 per scale."""
    from flowad.checkpoint import load_run
    from flowad.data.datasets import ImageDataset
    from flowad.engine import infer
    from flowad.latent_stats import latent_statistics
    from flowad.nfa import log_nfa, settings_of

    metrics = run_metrics(run)
    net, record = load_run(run)
    good = [s for s in record.data.splits(record.seed).test if s.label == 0]
    out = infer(net, ImageDataset(good, record.preprocess), engine_settings(), keep_latents=True)
    latents = [z.numpy() for z in out["latents"]]
    found = log_nfa(latents, record.preprocess.size, **settings_of(record.model_config)) < 0
    metrics["good_flagged"] = float(found.any(axis=(1, 2)).mean())
    return metrics, [s.mean_z2 for s in latent_statistics(latents)]


def main() -> None:
    args = _parser().parse_args()
    set_threads(args.threads)
    from flowad.data.spec import DataSpec

    data = args.out / "data"
    if not (data / TEXTURES[-1] / "ground_truth").is_dir():
        write_data(data)
    if not (data / OBJECT / "ground_truth").is_dir():
        write_object_data(data)
    rows = []
    for category in args.categories:
        spec = DataSpec(str(data), category, val_fraction=0.0)  # every good image trains, as in the check
        for way in WAYS:
            results, energies = [], []
            for seed in args.seeds:
                run = args.out / category / way.replace(" ", "-") / f"seed-{seed}"
                with reference_loss() if way == "reference loss" else contextlib.nullcontext():
                    train_run(run, "uflow", spec, None, options_of(way), seed=seed)
                metrics, mean_z2 = measure(run)
                results.append(metrics)
                energies.append(mean_z2)
                print(category, way, seed, {k: round(metrics[k], 4) for k in KEYS}, np.round(mean_z2, 3), flush=True)
            cells = [spread_cell([r[k] for r in results]) for k in KEYS]
            rows.append([category, way, *cells, " / ".join(f"{v:.2f}" for v in np.mean(energies, axis=0))])
    headers = ("data", "way", "image AUROC", "pixel AUROC", "AUPRO", "IoU at NFA", "good flagged", "mean z^2 per scale")
    about = f"\n\nSeeds {', '.join(map(str, args.seeds))}; cells: mean ± sample standard deviation. Ways: docstring.\n"
    publish(table_section("U-Flow's objective and schedule", args.threads, about, headers, rows), args.append)


def _parser() -> Any:
    parser = script_parser(__doc__)
    parser.add_argument("--out", type=Path, default=Path("runs/uflow-objective"), help="data and runs go here")
    parser.add_argument("--categories", nargs="+", default=[*TEXTURES, OBJECT], choices=[*TEXTURES, OBJECT])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    add_threads_argument(parser)
    add_append_argument(parser)
    return parser


if __name__ == "__main__":
    main()
