"""Which normalising constants serve CFLOW-AD's map best: the training images', the held-out good images', or
each test batch's maxima (the reference's)?

    python benchmarks/cflow_constants.py RUN [RUN ...] [--batch 16] [--append benchmarks/RESULTS.md]

CFLOW-AD's map is S_max - sum_l upsample(exp(lp_l - M_l)) (``flowad.models.cflow``). The constants M_l weigh
the layers against each other; flowad stores the training images' maxima, the reference takes each test
batch's. For every trained CFLOW-AD run given, the test split is scored with the model's own map under five
choices of (M_l, S_max), the flow unchanged:

- "training": the run's stored constants (the training images' maxima);
- "validation": the maxima over the run's held-out good validation images (none with --val-fraction 0);
- "test batches": each batch of --batch test images in test order normalised by its own maxima (the reference;
  the MVTec layout lists good test images first, so batches are mostly of one label);
- "shuffled test batches": the same after shuffling the test images (the mean over 20 random orders);
- "one test batch": the whole test split as one batch.

Image score = max of the map; image and pixel AUROC and AUPRO with ``flowad.metrics``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from _harness import (
    add_append_argument,
    add_threads_argument,
    positive_int,
    publish,
    script_parser,
    set_threads,
    table_section,
)

CHOICES = ("training", "validation", "test batches", "shuffled test batches", "one test batch")
SHUFFLES = 20  # random test orders averaged for "shuffled test batches"


def likelihoods(net: Any, samples: list, preprocess: Any) -> tuple[Any, np.ndarray]:
    """The flow's latents of all ``samples`` as one ``FlowLatents`` (with log|det|), and their masks."""
    from flowad.data.datasets import ImageDataset
    from flowad.models.cflow import FlowLatents

    loader = torch.utils.data.DataLoader(ImageDataset(samples, preprocess), batch_size=16)
    latents, masks = [], []
    with torch.inference_mode():
        for batch in loader:
            latents.append(net.latents(batch["image"]))
            masks.append(batch["mask"][:, 0].numpy() > 0.5)
    zs = [torch.cat(scale) for scale in zip(*latents, strict=True)]
    dets = [torch.cat(scale) for scale in zip(*(lat.log_det for lat in latents), strict=True)]
    return FlowLatents(zs, dets), np.concatenate(masks)


def likelihood_sums(net: Any, latents: Any, maxima: torch.Tensor) -> torch.Tensor:
    """S per pixel (N, H, W) with M_l = ``maxima``: the model's map with S_max = 0 is -S."""
    net.max_log_likelihood.copy_(maxima)
    net.max_score.zero_()
    return -net.anomaly_map(latents)


def layer_maxima(latents: Any) -> torch.Tensor:
    from flowad.models.cflow import log_likelihood

    return torch.stack([log_likelihood(z, d).amax() for z, d in zip(latents, latents.log_det, strict=True)])


def selected(latents: Any, index: torch.Tensor | slice) -> Any:
    """The images ``index`` of ``latents`` (a ``FlowLatents``)."""
    from flowad.models.cflow import FlowLatents

    return FlowLatents([z[index] for z in latents], [d[index] for d in latents.log_det])


def maps_under(choice: str, net: Any, test: Any, val: Any, stored: tuple, batch: int) -> np.ndarray:
    if choice in ("training", "validation"):
        maxima = stored[0] if choice == "training" else layer_maxima(val)
        s_max = stored[1] if choice == "training" else likelihood_sums(net, val, maxima).amax()
        return (s_max - likelihood_sums(net, test, maxima)).numpy()
    n = len(test[0])
    size = n if choice == "one test batch" else batch
    maps = []
    for start in range(0, n, size):
        group = selected(test, slice(start, start + size))
        s = likelihood_sums(net, group, layer_maxima(group))
        maps.append(s.amax() - s)
    return torch.cat(maps).numpy()


def check_run(run: Path, batch: int) -> list[list[str]]:
    from flowad import metrics
    from flowad.checkpoint import load_run

    net, record = load_run(run)
    net.eval()
    splits = record.data.splits(record.seed)  # the run's own split
    stored = (net.max_log_likelihood.clone(), net.max_score.clone())
    test, masks = likelihoods(net, splits.test, record.preprocess)
    good_val = [s for s in splits.val if s.label == 0]
    val = likelihoods(net, good_val, record.preprocess)[0] if good_val else None
    labels = np.array([s.label for s in splits.test])

    def quality(maps: np.ndarray, order: np.ndarray) -> tuple[float, float, float]:
        scores, truth = maps.reshape(len(maps), -1).max(1), masks[order]
        return (
            metrics.image_auroc(scores, labels[order]),
            metrics.pixel_auroc(maps, truth),
            metrics.aupro(maps, truth),
        )

    rows = []
    name = f"{run.parent.name}/{run.name}"
    for choice in CHOICES:
        if choice == "validation" and val is None:
            rows.append([name, choice, "n/a", "n/a", "n/a"])
            continue
        orders = [np.arange(len(labels))]
        if choice == "shuffled test batches":
            orders = [np.random.default_rng(i).permutation(len(labels)) for i in range(SHUFFLES)]
        scored = [
            quality(maps_under(choice, net, selected(test, torch.from_numpy(o)), val, stored, batch), o) for o in orders
        ]
        values = np.mean(scored, axis=0)
        rows.append([name, choice, *(f"{v:.3f}" for v in values)])
        print(" | ".join(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument("runs", type=Path, nargs="+", help="trained CFLOW-AD run directories")
    parser.add_argument("--batch", type=positive_int, default=16, help="test batch size of the reference's choice")
    add_threads_argument(parser)
    add_append_argument(parser)
    args = parser.parse_args()
    set_threads(args.threads)
    rows = [row for run in args.runs for row in check_run(run, args.batch)]
    headers = ("run", "constants", "image AUROC", "pixel AUROC", "AUPRO")
    publish(table_section("CFLOW-AD's normalising constants", args.threads, "", headers, rows), args.append)


if __name__ == "__main__":
    main()
