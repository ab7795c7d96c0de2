"""Training a run: ``train`` writes a run directory, ``resume`` finishes an interrupted one.

A run directory holds the trained model (see :mod:`flowad.checkpoint`), the thresholds chosen on the
validation split, what was asked for (``request.json``) and, while training, the state after the last epoch.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from flowad import distributed, metrics
from flowad.checkpoint import (
    BEST_STATE,
    TRAIN_STATE_JSON,
    TRAIN_STATE_TENSORS,
    load_best_state,
    read_json,
    save_run,
    write_json,
)
from flowad.data.datasets import ImageDataset, check_masks
from flowad.data.spec import DataSpec
from flowad.data.tiles import WholeImages, image_dataset, training_dataset
from flowad.engine import divergence_message, infer, running
from flowad.engine import train as train_head
from flowad.errors import FlowadError, InputError
from flowad.latent_stats import latent_statistics, readiness_warnings
from flowad.models import AnomalyModel, model_class
from flowad.nfa import rescaled, scored_nfa_masks
from flowad.preprocess import Preprocess
from flowad.records import EngineSettings, TrainRequest
from flowad.runlog import log_to, logger
from flowad.thresholds import DEFAULT_FPR, from_validation

REQUEST_FILE = "request.json"  # what was asked for: lets --resume restart an interrupted run


def train(
    model: str = "fastflow",
    data: str | Path | DataSpec = "",
    out: str | Path = "runs/run",
    category: str | None = None,
    layout: str = "mvtec",
    seed: int = 0,
    force: bool = False,
    fpr: float = DEFAULT_FPR,
    settings: EngineSettings | None = None,
    **options: Any,
) -> Path:
    """Train ``model`` on the good images of ``data`` and write a run directory to ``out``.

    ``options`` are the model's config fields (backbone, weights, image_size, epochs, batch_size, lr, ...).
    Thresholds are chosen on the validation split (see :mod:`flowad.thresholds`). Returns the run path.
    The training state is saved after every epoch: :func:`resume` continues an interrupted run.
    """
    spec = data if isinstance(data, DataSpec) else DataSpec(root=str(data), category=category, layout=layout)
    settings = dataclasses.replace(settings or EngineSettings(), seed=seed)
    request = TrainRequest(model, spec, options, fpr, settings)  # bad options fail before anything is written
    spec.splits(seed)

    def prepare() -> Path:  # under torchrun the main process alone writes the run directory
        run_dir = _prepare_run_dir(out, force)
        write_json(run_dir / REQUEST_FILE, request.to_json())
        return run_dir

    return _train_run(distributed.on_main(prepare), request, resume=False)


def resume(run: str | Path, settings: EngineSettings | None = None) -> Path:
    """Continue an interrupted ``train`` from its last finished epoch; ends with the same weights.

    Only how it runs may change (``settings``' device and progress bars); what it learns comes from the run."""
    run_dir = Path(run)
    path = run_dir / REQUEST_FILE
    request = TrainRequest.from_json(distributed.on_main(lambda: read_json(path)), path)
    if settings is not None:
        request.settings = dataclasses.replace(request.settings, device=settings.device, quiet=settings.quiet)
    return _train_run(run_dir, request, resume=True)


def validation_metrics(
    val_set: Dataset, labels: np.ndarray, settings: EngineSettings
) -> Callable[[AnomalyModel], dict[str, float]]:
    """A scorer of models on a split with anomalies: image AUROC, and pixel AUROC given masks."""
    quiet = dataclasses.replace(settings, quiet=True)

    def validate(net: AnomalyModel) -> dict[str, float]:
        out = infer(net, val_set, quiet)
        result = {"image_auroc": metrics.image_auroc(out["scores"], labels)}
        if out["masks"].any():
            result["pixel_auroc"] = metrics.pixel_auroc(out["maps"], out["masks"])
        return result

    return validate


def latent_readiness(
    net: AnomalyModel,
    val_set: ImageDataset | WholeImages,
    scored: dict[str, Any],
    good: np.ndarray,
    device: torch.device | str,
    which: str = "good validation images",
) -> dict[str, Any]:
    """How far the latents of the ``good`` images of ``val_set`` are from N(0, 1) per scale
    (:mod:`flowad.latent_stats`), how many of them log NFA < 0 flags (the promise, measured), and the warnings that
    follow (naming the images as ``which``). ``scored``: ``infer(net, val_set, ..., keep_latents=True)``, so the
    images are scored once; ``device``: where the model is, for a tiled run's tiles."""
    flags = scored_nfa_masks(net, scored)[good]
    flagged = int(flags.any(axis=(1, 2)).sum())
    if val_set.preprocess.tiling is not None:  # a tiled run's statistics are its tiles', as the flow sees them
        tiles = training_dataset([s for s, g in zip(val_set.samples, good, strict=True) if g], val_set.preprocess)
        latents = _item_latents(net, tiles, device)
    else:
        latents = scored["latents"] if good.all() else [z[torch.from_numpy(good)] for z in scored["latents"]]
    if net.config.nfa_rescale:  # the statistics of the latents the test counts on
        latents = rescaled(latents)
    level = min(np.atleast_1d(net.config.nfa_probability_threshold))  # several levels: the candidate rate at the lowest
    stats = latent_statistics(latents, float(level))
    warnings = readiness_warnings(stats, flagged, len(flags), which)
    nfa_flagged = {"good_images": len(flags), "flagged": flagged}
    return {"latents": [s.to_dict() for s in stats], "nfa_flagged": nfa_flagged, "nfa_warnings": warnings}


def _item_latents(net: AnomalyModel, items: Dataset, device: torch.device | str) -> list[torch.Tensor]:
    chunks = []
    with torch.no_grad():
        net.eval()
        for batch in torch.utils.data.DataLoader(items, batch_size=8):
            chunks.append([z.cpu() for z in net.latents(batch["image"].to(device))])
    return [torch.cat(scale) for scale in zip(*chunks, strict=True)]


def _prepare_run_dir(out: str | Path, force: bool) -> Path:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} exists and is not a folder")
    if out.exists() and any(out.iterdir()):
        if not force:
            raise InputError(f"run directory {out} already exists and is not empty; pass --force to overwrite it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _train_run(run_dir: Path, request: TrainRequest, resume: bool) -> Path:
    config, spec, seed, settings = request.model_config(), request.data, request.seed, request.settings
    splits = spec.splits(seed)
    reused = not splits.val and spec.val_fraction == 0 and spec.val_dir is None
    if reused:  # every good image trains; the thresholds come from the training images themselves
        splits.val = list(splits.train)
    if not splits.val:
        raise InputError("the validation split is empty; use a larger data set or --val-fraction > 0")
    check_masks(splits.test)
    check_masks(splits.val)

    torch.manual_seed(seed)  # the flows' initial weights
    net = model_class(request.model)(config)
    preprocess = Preprocess.from_model(net)  # save_run stores the same one in the run
    train_set = training_dataset(splits.train, preprocess)  # the tiles of a tiled run
    val_set = image_dataset(splits.val, preprocess)
    val_labels = np.array([s.label for s in splits.val])
    if not (val_labels == 0).any():
        raise InputError(
            f"the validation split holds {len(val_labels)} anomalous images and no good one; expected good images "
            "too, to choose the thresholds on (use --val-fraction > 0, or add good images to --val-dir)"
        )
    validate = validation_metrics(val_set, val_labels, settings) if 0 < val_labels.sum() < len(val_labels) else None
    with log_to(run_dir):
        logger.info(
            "train %s on %s: %d images (%d items), %d for validation",
            request.model,
            spec.root,
            len(splits.train),
            len(train_set),  # the tiles of a tiled run
            len(val_set),
        )
        resume_hint = f"the run directory keeps the last finished epoch: continue with flowad train --resume {run_dir}"
        with distributed.peers_lost_as_error(resume_hint):
            log = train_head(net, train_set, settings, state_dir=run_dir, resume=resume, validate=validate)
        if not distributed.is_main():
            return run_dir  # the main process writes the run
        summary = _summary(log, len(splits.train), len(splits.val), config.lr)
        if preprocess.tiling is not None:
            summary["tiles"] = len(train_set)
        summary["thresholds_from"] = "training images" if reused else "held-out validation images"
        saved = {"data": spec, "seed": seed, "train": dict(summary)}
        which_good = "good training images" if reused else "good validation images"  # what the warnings say
        validation = (val_set, val_labels, settings, request.fpr, which_good)
        summary |= _save_with_thresholds(run_dir, net, *validation, saved)
        _warn(summary["nfa_warnings"], settings)
        write_json(run_dir / "train_log.json", log)
        if "best" in log:  # the best validation epoch, as a run of its own
            load_best_state(run_dir, net)
            _warn(_save_with_thresholds(run_dir / "best", net, *validation, saved)["nfa_warnings"], settings, "best/: ")
        if "diverged" not in log:  # finished: the per-epoch state has nothing left to resume
            for name in (TRAIN_STATE_TENSORS, TRAIN_STATE_JSON, BEST_STATE):
                (run_dir / name).unlink(missing_ok=True)
        logger.info("finished: %s", json.dumps(summary))
    if "diverged" in log:
        raise FlowadError(
            f"{summary['stopped']}. The weights of the last good epoch ({len(log['epochs'])}) are saved in {run_dir}"
        )
    return run_dir


def _summary(log: dict[str, Any], n_train: int, n_val: int, lr: float) -> dict[str, Any]:
    """What config.json says of the training: sizes, epochs, time, and the best and last epochs' validation."""
    summary = {
        "images": n_train,
        "validation_images": n_val,
        "epochs_completed": len(log["epochs"]),
        "seconds": log["train_seconds"],
        "feature_cache": log["cache"],
    }
    if "diverged" in log:
        summary["stopped"] = divergence_message(log, lr)
    if "best" in log:
        summary["best"] = {**log["best"], "run": "best"}
        summary["last"] = {"epoch": len(log["epochs"]), "val": log["epochs"][-1]["val"]}
    return summary


def _save_with_thresholds(
    run_dir: Path,
    net: AnomalyModel,
    val_set: ImageDataset | WholeImages,
    labels: np.ndarray,
    settings: EngineSettings,
    fpr: float,
    which: str,
    saved: dict[str, Any],
) -> dict[str, Any]:
    """Choose the thresholds of ``net`` on the validation split, measure its latents' readiness for the NFA on the
    split's good images (:func:`latent_readiness`, returned; ``which`` names them), and save both as a run."""
    val = infer(net, val_set, settings, keep_latents=True)
    masks = val["masks"] if val["masks"].any() else None
    thresholds = from_validation(val["scores"], labels, val["maps"], masks, fpr)
    with running(net, settings) as device:
        readiness = latent_readiness(net, val_set, val, labels == 0, device, which)
    save_run(run_dir, net, thresholds, **{**saved, "train": {**saved["train"], **readiness}})
    return readiness


def _warn(messages: list[str], settings: EngineSettings, where: str = "") -> None:
    """Log each message, and print it on stderr unless quiet."""
    for message in messages:
        logger.warning("%s%s", where, message)
        if not settings.quiet:
            print(f"warning: {where}{message}", file=sys.stderr)
