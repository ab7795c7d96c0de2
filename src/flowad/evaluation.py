"""Testing a run: its test split scored, the field's metrics, RUN/metrics.json and the report's inputs.

Data flows one way: image files -> features -> latents -> maps -> scores and masks -> metrics.
"""

from __future__ import annotations

import dataclasses
import io
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from flowad import metrics
from flowad.checkpoint import atomic_write, load_run, write_json
from flowad.data.datasets import Sample, check_masks
from flowad.data.spec import DataSpec
from flowad.data.tiles import image_dataset
from flowad.engine import infer
from flowad.errors import InputError
from flowad.nfa import checked_options, describe, scored_nfa_masks, settings_of
from flowad.records import EngineSettings
from flowad.report import TEST_OUTPUTS, render_report
from flowad.runlog import log_to, logger
from flowad.thresholds import from_option


def test(
    run: str | Path,
    data: str | Path | None = None,
    category: str | None = None,
    threshold: str | float = "f1",
    settings: EngineSettings | None = None,
    write: bool = True,
    nfa_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate a run on its data set's test split (or another one); writes RUN/metrics.json. ``nfa_options``
    (:data:`flowad.nfa.NFA_OPTIONS`) test the NFA otherwise than the run's record says, without retraining; the
    settings used are in the result's ``nfa``."""
    run = Path(run)
    net, record = load_run(run)
    if nfa_options:
        net.config = dataclasses.replace(net.config, **checked_options(nfa_options))
    settings = settings or EngineSettings(seed=record.seed)
    spec = _test_spec(record.data, data, category)
    splits = spec.splits(record.seed)
    check_masks(splits.test)
    dataset = image_dataset(splits.test, record.preprocess)  # as the model was trained
    start = time.perf_counter()
    out = infer(net, dataset, settings, keep_latents=True)
    nfa = scored_nfa_masks(net, out)
    masks = out["masks"]  # read with the images: each test file is decoded once
    labels = np.array([s.label for s in splits.test])
    thresholds = from_option(record.thresholds, threshold)
    if threshold == "nfa":
        pred_masks, pred_images, method = nfa, nfa.any(axis=(1, 2)), "nfa"
    else:
        pred_images = out["scores"] >= thresholds.image
        pred_masks, method = (out["maps"] >= thresholds.pixel) & pred_images[:, None, None], thresholds.method
    result = evaluate(out["scores"], out["maps"], labels, masks, pred_images, pred_masks)
    anomalous = (labels == 1) & masks.any(axis=(1, 2))
    result["iou_nfa"] = metrics.iou(nfa[anomalous], masks[anomalous]) if anomalous.any() else None
    good = labels == 0  # the NFA's promise: fewer than one false detection per good image on average
    result["nfa_good_flagged"] = float(nfa[good].any(axis=(1, 2)).mean()) if good.any() else None
    result["nfa"] = settings_of(net.config.to_dict())
    result["threshold"] = {"image": thresholds.image, "pixel": thresholds.pixel, "method": method}
    result["test_seconds"] = time.perf_counter() - start
    result["train_seconds"] = record.train.get("seconds")
    result["test_images"] = len(dataset)
    result["data"] = f"{spec.layout}:{spec.root}" + (f"/{spec.category}" if spec.category else "")
    if write:
        write_json(run / "metrics.json", result)
        with log_to(run):
            shown = {k: result[k] for k in ("image_auroc", "pixel_auroc", "aupro", "iou", "iou_nfa", "threshold")}
            logger.info("test on %s (%d images): %s", result["data"], len(dataset), json.dumps(shown))
        _save_test_outputs(run / TEST_OUTPUTS, splits.test, out, labels, masks, pred_images, pred_masks, nfa)
        render_report(run)
    return result


def _test_spec(trained_on: DataSpec | None, data: str | Path | None, category: str | None) -> DataSpec:
    """The data to test on: the run's own, or another root or category. Only the test split is read,
    so no validation folder is needed."""
    if trained_on is None:  # a run saved from Python without a data set
        if data is None:
            raise InputError("the run records no data set; pass --data (and --category) to test it")
        return DataSpec(root=str(data), category=category)
    spec = dataclasses.replace(trained_on, val_dir=None, val_abnormal_dir=None, val_mask_dir=None)
    if data is not None:
        return dataclasses.replace(spec, root=str(data), category=category or spec.category)
    if category is not None:
        return dataclasses.replace(spec, category=category)
    return spec


def _save_test_outputs(
    path: Path,
    samples: list[Sample],
    out: dict[str, Any],
    labels: np.ndarray,
    masks: np.ndarray,
    pred_images: np.ndarray,
    pred_masks: np.ndarray,
    nfa: np.ndarray,
) -> None:
    """Per test image: path, label, score, decision; maps (float16) and masks at the model's input size."""
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer,
        paths=np.array([str(s.path) for s in samples]),
        defects=np.array([s.defect for s in samples]),
        labels=labels,
        scores=out["scores"],
        maps=out["maps"].astype(np.float16),
        masks=masks,
        pred_images=pred_images,
        pred_masks=pred_masks,
        nfa_masks=nfa,
    )
    atomic_write(path, buffer.getvalue())


def evaluate(
    scores: np.ndarray,
    maps: np.ndarray,
    labels: np.ndarray,
    masks: np.ndarray,
    pred_images: np.ndarray,
    pred_masks: np.ndarray,
) -> dict[str, Any]:
    """The field's metrics; a metric undefined on this test set (e.g. one class only) is None.

    IoU is the mean over the anomalous test images (those with a defect mask), as U-Flow reports it; the
    oracle IoU beside it uses the best threshold on the test set itself, so it is a bound, not a result.
    """

    def defined(fn: Callable[..., float], *args: Any) -> float | None:
        try:
            return fn(*args)
        except InputError:
            return None

    has_masks = bool(masks.any())
    anomalous = (labels == 1) & masks.any(axis=(1, 2))
    return {
        "image_auroc": defined(metrics.image_auroc, scores, labels),
        "pixel_auroc": defined(metrics.pixel_auroc, maps, masks) if has_masks else None,
        "aupro": defined(metrics.aupro, maps, masks) if has_masks else None,
        "image_f1": metrics.f1_score(pred_images, labels),
        "pixel_f1": metrics.f1_score(pred_masks, masks) if has_masks else None,
        "iou": metrics.iou(pred_masks[anomalous], masks[anomalous]) if anomalous.any() else None,
        "image_f1_max": defined(lambda: metrics.f1_max(scores, labels)[0]),
        "oracle_iou": metrics.oracle_iou(maps[anomalous], masks[anomalous])[0] if anomalous.any() else None,
    }


PRINTED_METRICS = (
    "image_auroc",
    "pixel_auroc",
    "aupro",
    "image_f1",
    "pixel_f1",
    "iou",
    "iou_nfa",
    "nfa_good_flagged",
    "oracle_iou",
    "image_f1_max",
)


def format_metrics(result: dict[str, Any]) -> str:
    """A two-column table of the metrics; iou_nfa is the IoU of the log NFA < 0 masks, always reported, and
    nfa_good_flagged the share of good test images with any pixel at log NFA < 0."""
    lines = [f"{'metric':<18}{'value':>8}"]
    for key in PRINTED_METRICS:
        value = result.get(key)
        lines.append(f"{key:<18}{'n/a' if value is None else f'{value:.4f}':>8}")
    t = result.get("threshold", {})
    if t:
        lines.append(
            f"{'threshold':<18}log NFA < 0 (nfa)"
            if t["method"] == "nfa"
            else f"{'threshold':<18}{t['image']:.4g} ({t['method']})"
        )
    if "nfa" in result:  # the settings of the NFA test behind iou_nfa (and the masks, with --threshold nfa)
        lines.append(f"{'nfa test':<18}{describe(result['nfa'])}")
    return "\n".join(lines)
