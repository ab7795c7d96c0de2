"""The training and inference loop, in plain PyTorch.

The backbone is frozen and no augmentation is used, so the encoder's features are computed once and
every epoch trains the flow head on the cache. When the cache would not fit the memory budget the
features are recomputed each epoch instead (streaming); both paths see the same batches in the same
order for the same seed. Under torchrun the same loop trains data-parallel: each process holds its share
of the images and every step averages the processes' gradients (see :func:`flowad.batches.epoch_steps`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from flowad import distributed
from flowad.batches import (
    FeatureSource,
    StreamedFeatures,
    calibration_batches,
    epoch_steps,
    feature_cache_bytes,
)
from flowad.checkpoint import load_train_state, save_best_state, save_train_state
from flowad.engines import TorchEngine
from flowad.errors import FlowadError
from flowad.models.base import AnomalyModel
from flowad.nfa import log_nfa, settings_of
from flowad.records import EngineSettings
from flowad.runlog import logger  # what a run did, for RUN_DIR/flowad.log
from flowad.tiling import score_tiled

# the backbone's autocast dtype per precision name (records.PRECISION_NAMES)
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@contextlib.contextmanager
def running(model: AnomalyModel, settings: EngineSettings) -> Iterator[torch.device]:
    """Move ``model`` to the settings' device and run its backbone at their precision while the block runs."""
    device = resolve_device(settings.device)
    model.to(device)
    before, model.encoder_dtype = model.encoder_dtype, PRECISIONS[settings.precision]
    try:
        yield device
    finally:
        model.encoder_dtype = before


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise FlowadError(f"unknown device {name!r}; expected auto, cpu, cuda or cuda:N") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FlowadError(f"device {name!r} asked for, but no CUDA device is available")
    return device


def progress(iterable, total: int | None, desc: str, quiet: bool):
    """A tqdm bar with rate and ETA on stderr, or the bare iterable when quiet."""
    if quiet:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)


def _loader(dataset: Dataset, batch_size: int, settings: EngineSettings, device: torch.device) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=settings.num_workers,
        pin_memory=device.type == "cuda",
    )


@torch.inference_mode()
def extract_features(
    model: AnomalyModel, dataset: Dataset, settings: EngineSettings, device: torch.device
) -> list[torch.Tensor]:
    """Encoder features of every image of ``dataset``, stacked per scale, on ``device``."""
    loader = _loader(dataset, settings.inference_batch_size, settings, device)
    chunks: list[list[torch.Tensor]] = []
    for batch in progress(loader, len(loader), "features", settings.quiet):
        chunks.append(model.extract(batch["image"].to(device, non_blocking=True)))
    return [torch.cat(scale) for scale in zip(*chunks, strict=True)]


def _plain_loss(model: AnomalyModel) -> Callable[[Any, float], tuple[torch.Tensor, float]]:
    """One process: the model's loss, and its value."""

    def loss_and_value(batch: Any, share: float) -> tuple[torch.Tensor, float]:
        loss = model.training_loss(batch)
        return loss, loss.item()

    return loss_and_value


def _restore(
    state_dir: Path | None,
    model: AnomalyModel,
    optimizer: torch.optim.Optimizer,
    scheduler: Any | None,
    generator: torch.Generator,
) -> dict[str, Any]:
    """The saved training state; in a data-parallel run the main process reads it and hands it to the others."""
    if distributed.world_size() == 1:
        return load_train_state(state_dir, model, optimizer, scheduler, generator)

    def read() -> tuple:
        log = load_train_state(state_dir, model, optimizer, scheduler, generator)
        head = {k: v.cpu() for k, v in model.trainable_state().items()}
        schedule = None if scheduler is None else scheduler.state_dict()
        return log, head, optimizer.state_dict(), schedule, generator.get_state()

    log, head, optim, schedule, generator_state = distributed.on_main(read)
    if not distributed.is_main():
        model.load_state_dict(head, strict=False)
        optimizer.load_state_dict(optim)
        if scheduler is not None:
            scheduler.load_state_dict(schedule)
        generator.set_state(generator_state)
    return log


def train(
    model: AnomalyModel,
    train_set: Dataset,
    settings: EngineSettings,
    state_dir: Path | None = None,
    resume: bool = False,
    validate: Callable[[AnomalyModel], dict[str, float]] | None = None,
) -> dict[str, Any]:
    """Train the model's head on ``train_set`` (normal images only). Returns the training log.

    ``validate`` (given a validation split with anomalies) scores the calibrated model after every
    epoch; its first metric picks the best epoch, whose weights are kept in ``state_dir`` beside the last.

    With ``state_dir`` the training state (head, optimiser, schedule, shuffling generator) is saved
    atomically after every epoch, so ``resume=True`` continues an interrupted run from its last finished
    epoch and ends with the same weights as an uninterrupted run. A non-finite loss stops training at
    once: the head goes back to the last finished epoch's weights, and the log says where it stopped
    (``log["diverged"]``); without any finished epoch, :class:`TrainingDiverged` is raised.
    """
    with running(model, settings) as device:
        return _train(model, train_set, settings, device, state_dir, resume, validate)


def _train(
    model: AnomalyModel,
    train_set: Dataset,
    settings: EngineSettings,
    device: torch.device,
    state_dir: Path | None,
    resume: bool,
    validate: Callable[[AnomalyModel], dict[str, float]] | None,
) -> dict[str, Any]:
    torch.manual_seed(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    optimizer = model.optimizer()
    scheduler = model.scheduler(optimizer, model.config.epochs)  # stepped once per epoch
    log: dict[str, Any] = {"epochs": []}
    if resume:
        log = _restore(state_dir, model, optimizer, scheduler, generator)
    # data-parallel (under torchrun): each process trains on its share of the images; only the main one writes
    parallel = distributed.world_size() > 1
    save_dir = state_dir if distributed.is_main() else None
    settings = settings if distributed.is_main() else dataclasses.replace(settings, quiet=True)
    start = time.perf_counter()
    source, everything = _feature_sources(model, train_set, settings, device, log)
    step_loss = distributed.DataParallelLoss(model, model.image_batches) if parallel else _plain_loss(model)

    model.train()
    first = len(log["epochs"])
    epochs = progress(range(first, model.config.epochs), model.config.epochs - first, "training", settings.quiet)
    for epoch in epochs:
        t0 = time.perf_counter()
        losses, bad_loss = _optimise_epoch(model, source, generator, len(train_set), step_loss, optimizer)
        if bad_loss is not None:
            log["diverged"] = {"epoch": epoch + 1, "loss": bad_loss}
            _back_to_last_good(log, model, state_dir, optimizer, scheduler, generator)
            break
        if scheduler is not None:
            scheduler.step()
        entry = {"epoch": epoch + 1, "loss": float(np.mean(losses)), "seconds": time.perf_counter() - t0}
        log["epochs"].append(entry)
        improved = False
        if validate is not None and distributed.is_main():  # the other processes' models are not kept
            entry["val"] = _validate(model, everything, validate)
            improved = _is_best(log, entry)
        _report_epoch(epochs, entry, model.config.epochs, validate is not None)
        if save_dir is not None:
            with distributed.uninterrupted():  # a stop from torchrun lets the epoch's state be written whole
                if improved:
                    save_best_state(save_dir, model)
                save_train_state(save_dir, model, optimizer, scheduler, generator, log)  # last: it names the best
        distributed.wait_for_all()  # the others wait for the main process's writing without a timeout
    model.eval()
    with torch.no_grad():
        model.calibrate(calibration_batches(model, everything))
    log["train_seconds"] = time.perf_counter() - start
    return log


def _feature_sources(
    model: AnomalyModel, train_set: Dataset, settings: EngineSettings, device: torch.device, log: dict[str, Any]
) -> tuple[FeatureSource, FeatureSource]:
    """What the epochs read (this process's images: cached if they fit the budget, else streamed) and what
    calibration reads (every training image; a data-parallel run streams them, only models that calibrate read)."""
    parallel = distributed.world_size() > 1
    images = Subset(train_set, distributed.shard(range(len(train_set)))) if parallel else train_set
    for message in model.training_warnings(len(images)):
        warnings.warn(message, stacklevel=4)  # on stderr for the person at the command line
        logger.warning(message)  # and in the run's log
    needed = feature_cache_bytes(model, len(images))
    use_cache = settings.cache == "on" or (settings.cache == "auto" and needed <= settings.cache_limit_gb * 2**30)
    log.update(cache=use_cache, cache_bytes=needed)
    start = time.perf_counter()
    chunk = settings.inference_batch_size  # the encoder's images per call, as when the cache is filled
    source = (
        extract_features(model, images, settings, device)
        if use_cache
        else StreamedFeatures(model, images, device, chunk)
    )
    log["feature_seconds"] = time.perf_counter() - start
    return source, (StreamedFeatures(model, train_set, device, chunk) if parallel else source)


def _optimise_epoch(
    model: AnomalyModel,
    source: FeatureSource,
    generator: torch.Generator,
    n_images: int,
    step_loss: Callable[[Any, float], tuple[torch.Tensor, float]],
    optimizer: torch.optim.Optimizer,
) -> tuple[list[float], float | None]:
    """One epoch of optimiser steps: the losses, and the first non-finite one, at which it stopped (else None)."""
    losses = []
    for batch, share in epoch_steps(model, source, generator, n_images):
        loss, value = step_loss(batch, share)
        if not math.isfinite(value):
            return losses, value
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        model.clip_gradients()
        optimizer.step()
        losses.append(value)
    return losses, None


def _validate(model: AnomalyModel, source, validate: Callable[[AnomalyModel], dict[str, float]]) -> dict[str, float]:
    model.eval()
    with torch.no_grad():
        model.calibrate(calibration_batches(model, source))  # the maps as the finished model would make them
        metrics = validate(model)
    model.train()
    return metrics


def _is_best(log: dict[str, Any], entry: dict[str, Any]) -> bool:
    """Whether this epoch has the highest first validation metric so far (the earliest of equals wins)."""
    key, value = next(iter(entry["val"].items()))
    best = log.get("best")
    if best is not None and value <= best["val"][key]:
        return False
    log["best"] = {"epoch": entry["epoch"], "val": entry["val"]}
    return True


def _report_epoch(bar, entry: dict[str, Any], total: int, validating: bool) -> None:
    """Loss (and validation metrics) in the progress bar, the log file, and a line per epoch when validating."""
    val = " ".join(f"{k} {v:.4f}" for k, v in entry.get("val", {}).items() if v is not None)
    line = f"epoch {entry['epoch']}/{total} loss {entry['loss']:.5g} ({entry['seconds']:.1f} s)" + (
        f" val {val}" if val else ""
    )
    logger.info(line)
    if hasattr(bar, "set_postfix"):
        bar.set_postfix(loss=f"{entry['loss']:.4g}")
        if validating:
            bar.write(line)


class TrainingDiverged(FlowadError):
    """The loss became NaN or infinite before any epoch finished."""


def divergence_message(log: dict[str, Any], lr: float) -> str:
    d = log["diverged"]
    return (
        f"training diverged at epoch {d['epoch']}: the loss became {d['loss']}; the learning rate (lr={lr}) "
        "is likely too high for this data, or the coupling's clamp too loose: lower --lr (or the clamp)"
    )


def _back_to_last_good(log, model, state_dir, optimizer, scheduler, generator) -> None:
    if not log["epochs"] or state_dir is None:
        raise TrainingDiverged(divergence_message(log, model.config.lr) + "; no epoch had finished, nothing was kept")
    diverged = log.pop("diverged")
    kept = _restore(state_dir, model, optimizer, scheduler, generator)
    log.clear()
    log.update(kept, diverged=diverged)


@torch.inference_mode()
def infer(
    model: AnomalyModel, dataset: Dataset, settings: EngineSettings, keep_latents: bool = False
) -> dict[str, Any]:
    """Maps (N, H, W), scores (N,), ground-truth masks (N, H, W) bool, and optionally latents, of ``dataset``."""
    with running(model, settings) as device:
        return _infer(model, dataset, settings, device, keep_latents)


def _infer(model, dataset, settings, device, keep_latents) -> dict[str, Any]:
    if getattr(dataset, "tiling", None) is not None:
        return _infer_tiled(model, dataset, settings, device, keep_latents)
    model.eval()
    latents_of = torch.compile(model.latents, dynamic=True) if settings.compile else model.latents
    loader = _loader(dataset, settings.inference_batch_size, settings, device)
    maps, scores, masks, latents = [], [], [], []
    for batch in progress(loader, len(loader), "scoring", settings.quiet):
        masks.append(batch["mask"][:, 0] > 0.5)
        z = latents_of(batch["image"].to(device, non_blocking=True))
        batch_maps = model.anomaly_map(z)
        maps.append(batch_maps.cpu())
        scores.append(model.image_scores(z, batch_maps).cpu())
        if keep_latents:
            latents.append([t.cpu() for t in z])
    out: dict[str, Any] = {
        "maps": torch.cat(maps).numpy(),
        "scores": torch.cat(scores).numpy(),
        "masks": torch.cat(masks).numpy(),
    }
    if keep_latents:
        out["latents"] = [torch.cat(scale) for scale in zip(*latents, strict=True)]
    return out


def _infer_tiled(model, dataset, settings, device, with_nfa) -> dict[str, Any]:
    """A tiled run's images scored tile by tile at full resolution (:mod:`flowad.tiling`); with ``with_nfa``,
    the log NFA < 0 masks over all tiles (``nfa_masks``) instead of the latents. The images must share a size."""
    scorer = TorchEngine(model, dataset.preprocess, device)
    nfa_settings = settings_of(model.config.to_dict())

    def nfa(latents: list[np.ndarray], tiles: int) -> np.ndarray:
        return log_nfa(latents, model.image_size, **nfa_settings, tiles=tiles)

    maps, scores, masks, nfa_masks = [], [], [], []
    for i in progress(range(len(dataset)), len(dataset), "scoring tiles", settings.quiet):
        item = dataset[i]
        if maps and item["rgb"].shape[:2] != maps[0].shape:
            raise FlowadError(
                f"{dataset.samples[i].path} is {tuple(item['rgb'].shape[:2])} (height, width) but the first image is "
                f"{maps[0].shape}; a tiled run is evaluated on images of one size"
            )
        rgb = item["rgb"].numpy()
        resize, batch = dataset.preprocess.resized, settings.inference_batch_size
        tiled = score_tiled(rgb, dataset.tiling, resize, scorer.run, batch, nfa if with_nfa else None)
        maps.append(tiled.map)
        scores.append(tiled.score)
        masks.append(item["mask"][0].numpy() > 0.5)
        if with_nfa:
            nfa_masks.append(tiled.log_nfa < 0)
    out: dict[str, Any] = {"maps": np.stack(maps), "scores": np.array(scores, np.float32), "masks": np.stack(masks)}
    if with_nfa:
        out["nfa_masks"] = np.stack(nfa_masks)
    return out
