"""The verbs users call, from Python or through the CLI: train, test, predict, load.

Data flows one way: image files -> features -> latents -> maps -> scores and masks -> metrics.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from flowad import distributed, metrics
from flowad.checkpoint import (
    BEST_STATE,
    TRAIN_STATE_JSON,
    TRAIN_STATE_TENSORS,
    atomic_write,
    load_best_state,
    load_run,
    read_config,
    read_json,
    save_run,
    write_json,
)
from flowad.data.datasets import (
    DatasetSplits,
    ImageDataset,
    Sample,
    anomalies_from_folder,
    btad_splits,
    check_masks,
    folder_splits,
    list_images,
    mvtec_splits,
    split_validation,
    validation_from_folder,
)
from flowad.data.images import is_image_file, read_image
from flowad.engine import EngineSettings, divergence_message, infer, resolve_device
from flowad.engine import train as train_head
from flowad.errors import FlowadError, InputError
from flowad.models import AnomalyModel, model_class
from flowad.thresholds import DEFAULT_FPR, Thresholds, fixed, from_validation
from flowad.visualize import mask_image, overlay

LAYOUTS = ("mvtec", "btad", "folder")
LOG_FILE = "flowad.log"  # what train and test did, epoch by epoch, in the run directory
logger = logging.getLogger("flowad.run")  # flowad.engine sets it up: INFO, not propagated


@dataclasses.dataclass
class DataSpec:
    """Where the images are. ``root`` is the data set root (mvtec, btad) or the good-images folder."""

    root: str
    category: str | None = None
    layout: str = "mvtec"
    abnormal_dir: str | None = None  # folder layout: anomalous test images
    mask_dir: str | None = None  # folder layout: their masks (else <stem>_mask beside them)
    val_dir: str | None = None  # good validation images; else a fraction of the training images
    val_fraction: float = 0.2
    val_abnormal_dir: str | None = None  # anomalous validation images: F1 thresholds, best-epoch selection
    val_mask_dir: str | None = None  # their masks (else <stem>_mask beside them)

    def splits(self, seed: int) -> DatasetSplits:
        if self.layout not in LAYOUTS:
            raise InputError(f"unknown layout {self.layout!r}; expected one of {', '.join(LAYOUTS)}")
        if self.layout in ("mvtec", "btad") and not self.category:
            raise InputError(
                f"layout {self.layout} needs a category (e.g. --category {'01' if self.layout == 'btad' else 'bottle'})"
            )
        if self.layout == "mvtec":
            splits = mvtec_splits(self.root, self.category)
        elif self.layout == "btad":
            splits = btad_splits(self.root, self.category)
        else:
            splits = folder_splits(self.root, self.abnormal_dir, self.mask_dir, seed=seed)
        if self.val_dir is not None:
            splits.val = validation_from_folder(self.val_dir)
        else:
            splits.train, splits.val = split_validation(splits.train, self.val_fraction, seed)
        if self.val_mask_dir is not None and self.val_abnormal_dir is None:
            raise InputError(f"validation masks {self.val_mask_dir} given without anomalous validation images")
        if self.val_abnormal_dir is not None:
            splits.val += anomalies_from_folder(self.val_abnormal_dir, self.val_mask_dir)
        return splits


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
    model_class(model).config_class.from_dict(options)  # bad options fail before anything is written
    spec.splits(seed)
    request = {"model": model, "options": options, "data": dataclasses.asdict(spec), "seed": seed, "fpr": fpr}

    def prepare() -> Path:  # under torchrun the main process alone writes the run directory
        run_dir = _prepare_run_dir(out, force)
        write_json(run_dir / REQUEST_FILE, {**request, "settings": dataclasses.asdict(settings)})
        return run_dir

    return _train_run(distributed.on_main(prepare), request, settings, resume=False)


def resume(run: str | Path, settings: EngineSettings | None = None) -> Path:
    """Continue an interrupted ``train`` from its last finished epoch; ends with the same weights."""
    run_dir = Path(run)
    request = distributed.on_main(lambda: read_json(run_dir / REQUEST_FILE))
    saved = EngineSettings(**request.pop("settings"))
    settings = dataclasses.replace(saved, device=settings.device, quiet=settings.quiet) if settings else saved
    return _train_run(run_dir, request, settings, resume=True)


def _train_run(run_dir: Path, request: dict[str, Any], settings: EngineSettings, resume: bool) -> Path:
    cls = model_class(request["model"])
    config = cls.config_class.from_dict(request["options"])
    spec, seed = DataSpec(**request["data"]), request["seed"]
    splits = spec.splits(seed)
    if not splits.val:
        raise InputError("the validation split is empty; use a larger data set or --val-fraction > 0")
    check_masks(splits.test)
    check_masks(splits.val)

    torch.manual_seed(seed)  # the flows' initial weights
    net = cls(config)
    train_set = ImageDataset(splits.train, config.image_size, *net.input_statistics)
    val_set = ImageDataset(splits.val, config.image_size, *net.input_statistics)
    val_labels = np.array([s.label for s in splits.val])
    validate = _validation_metrics(val_set, val_labels, settings) if 0 < val_labels.sum() < len(val_labels) else None
    with log_to(run_dir):
        logger.info(
            "train %s on %s: %d images, %d for validation", request["model"], spec.root, len(train_set), len(val_set)
        )
        resume_hint = f"the run directory keeps the last finished epoch: continue with flowad train --resume {run_dir}"
        with distributed.peers_lost_as_error(resume_hint):
            log = train_head(net, train_set, settings, state_dir=run_dir, resume=resume, validate=validate)
        if not distributed.is_main():
            return run_dir  # the main process writes the run
        summary = {
            "images": len(splits.train),
            "validation_images": len(splits.val),
            "epochs_completed": len(log["epochs"]),
            "seconds": log["train_seconds"],
            "feature_cache": log["cache"],
        }
        if "diverged" in log:
            summary["stopped"] = divergence_message(log, config.lr)
        if "best" in log:
            summary["best"] = {**log["best"], "run": "best"}
            summary["last"] = {"epoch": len(log["epochs"]), "val": log["epochs"][-1]["val"]}
        extra = {"data": request["data"], "seed": seed, "train": summary}
        _save_with_thresholds(run_dir, net, val_set, val_labels, settings, request["fpr"], extra)
        write_json(run_dir / "train_log.json", log)
        if "best" in log:  # the best validation epoch, as a run of its own
            load_best_state(run_dir, net)
            _save_with_thresholds(run_dir / "best", net, val_set, val_labels, settings, request["fpr"], extra)
        if "diverged" not in log:  # finished: the per-epoch state has nothing left to resume
            for name in (TRAIN_STATE_TENSORS, TRAIN_STATE_JSON, BEST_STATE):
                (run_dir / name).unlink(missing_ok=True)
        logger.info("finished: %s", json.dumps(summary))
    if "diverged" in log:
        raise FlowadError(
            f"{summary['stopped']}. The weights of the last good epoch ({len(log['epochs'])}) are saved in {run_dir}"
        )
    return run_dir


def _validation_metrics(val_set: ImageDataset, labels: np.ndarray, settings: EngineSettings):
    """Image AUROC (and pixel AUROC given masks) of a model on a validation split with anomalies."""
    quiet = dataclasses.replace(settings, quiet=True)

    def validate(net: AnomalyModel) -> dict[str, float]:
        out = infer(net, val_set, quiet)
        result = {"image_auroc": metrics.image_auroc(out["scores"], labels)}
        if out["masks"].any():
            result["pixel_auroc"] = metrics.pixel_auroc(out["maps"], out["masks"])
        return result

    return validate


def _save_with_thresholds(
    run_dir: Path,
    net: AnomalyModel,
    val_set: ImageDataset,
    labels: np.ndarray,
    settings: EngineSettings,
    fpr: float,
    extra: dict[str, Any],
) -> None:
    """Choose the thresholds of ``net`` on the validation split and save it as a run."""
    val = infer(net, val_set, settings)
    masks = val["masks"] if val["masks"].any() else None
    thresholds = from_validation(val["scores"], labels, val["maps"], masks, fpr)
    save_run(run_dir, net, {**extra, "thresholds": dataclasses.asdict(thresholds)})


@contextlib.contextmanager
def log_to(run_dir: Path):
    """Append flowad's log lines to RUN_DIR/flowad.log while the block runs (from the main process)."""
    if not distributed.is_main():
        yield
        return
    handler = logging.FileHandler(Path(run_dir) / LOG_FILE, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    logger.addHandler(handler)
    try:
        yield
    except Exception as err:
        logger.error("stopped: %s", err)
        raise
    finally:
        logger.removeHandler(handler)
        handler.close()


def _thresholds(config: dict[str, Any], threshold: str | float) -> Thresholds:
    """The stored (validation) thresholds, or a user's value. ``nfa`` keeps the stored ones for scores."""
    stored = Thresholds(**config["thresholds"])
    if threshold in ("f1", "auto", "val", "nfa", None):
        return stored
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        raise InputError(f"--threshold {threshold!r} is not understood; expected f1, nfa or a number") from None
    return fixed(value, stored.low, stored.high)


def _nfa_masks(net: AnomalyModel, latents: list[torch.Tensor], batch: int = 16) -> np.ndarray:
    """log NFA < 0 for every image, a batch at a time (the NFA needs no threshold)."""
    n = latents[0].shape[0]
    return np.concatenate([(net.log_nfa([z[i : i + batch] for z in latents]) < 0).numpy() for i in range(0, n, batch)])


def test(
    run: str | Path,
    data: str | Path | None = None,
    category: str | None = None,
    threshold: str | float = "f1",
    settings: EngineSettings | None = None,
    write: bool = True,
) -> dict[str, Any]:
    """Evaluate a run on its data set's test split (or another one); writes RUN/metrics.json."""
    run = Path(run)
    net, config = load_run(run)
    settings = settings or EngineSettings(seed=config.get("seed", 0))
    spec = DataSpec(**config["data"])  # testing reads the test split only: no validation folder is needed
    spec = dataclasses.replace(spec, val_dir=None, val_abnormal_dir=None, val_mask_dir=None)
    if data is not None:
        spec = dataclasses.replace(spec, root=str(data), category=category or spec.category)
    elif category is not None:
        spec = dataclasses.replace(spec, category=category)
    splits = spec.splits(config.get("seed", 0))
    check_masks(splits.test)
    dataset = ImageDataset(splits.test, net.config.image_size, *net.input_statistics)
    start = time.perf_counter()
    out = infer(net, dataset, settings, keep_latents=True)
    nfa = _nfa_masks(net, out["latents"])
    masks = out["masks"]  # read with the images: each test file is decoded once
    labels = np.array([s.label for s in splits.test])
    thresholds = _thresholds(config, threshold)
    if threshold == "nfa":
        pred_masks, pred_images, method = nfa, nfa.any(axis=(1, 2)), "nfa"
    else:
        pred_images = out["scores"] >= thresholds.image
        pred_masks, method = (out["maps"] >= thresholds.pixel) & pred_images[:, None, None], thresholds.method
    result = evaluate(out["scores"], out["maps"], labels, masks, pred_images, pred_masks)
    anomalous = (labels == 1) & masks.any(axis=(1, 2))
    result["iou_nfa"] = metrics.iou(nfa[anomalous], masks[anomalous]) if anomalous.any() else None
    result["threshold"] = {"image": thresholds.image, "pixel": thresholds.pixel, "method": method}
    result["test_seconds"] = time.perf_counter() - start
    result["train_seconds"] = config["train"]["seconds"]
    result["test_images"] = len(dataset)
    result["data"] = f"{spec.layout}:{spec.root}" + (f"/{spec.category}" if spec.category else "")
    if write:
        from flowad.report import render_report

        write_json(run / "metrics.json", result)
        with log_to(run):
            shown = {k: result[k] for k in ("image_auroc", "pixel_auroc", "aupro", "iou", "iou_nfa", "threshold")}
            logger.info("test on %s (%d images): %s", result["data"], len(dataset), json.dumps(shown))
        _save_test_outputs(run / TEST_OUTPUTS, splits.test, out, labels, masks, pred_images, pred_masks, nfa)
        render_report(run)
    return result


TEST_OUTPUTS = "test_outputs.npz"  # what the report is drawn from, so that it can be re-rendered


def _save_test_outputs(path: Path, samples, out, labels, masks, pred_images, pred_masks, nfa) -> None:
    """Per test image: path, label, score, decision; maps (float16) and masks at the model's input size."""
    import io

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

    def defined(fn, *args):
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


def format_metrics(result: dict[str, Any]) -> str:
    """A two-column table of the metrics; iou_nfa is the IoU of the log NFA < 0 masks, always reported."""
    rows = [
        "image_auroc",
        "pixel_auroc",
        "aupro",
        "image_f1",
        "pixel_f1",
        "iou",
        "iou_nfa",
        "oracle_iou",
        "image_f1_max",
    ]
    lines = [f"{'metric':<14}{'value':>8}"]
    for key in rows:
        value = result.get(key)
        lines.append(f"{key:<14}{'n/a' if value is None else f'{value:.4f}':>8}")
    t = result.get("threshold", {})
    if t:
        lines.append(
            "threshold     log NFA < 0 (nfa)"
            if t["method"] == "nfa"
            else f"threshold     {t['image']:.4g} ({t['method']})"
        )
    return "\n".join(lines)


TABLE_KEYS = ("image_auroc", "pixel_auroc", "aupro", "iou")


def category_table(results: dict[str, dict[str, Any]], keys: Sequence[str] = TABLE_KEYS) -> list[dict[str, Any]]:
    """Rows of the papers' table: one per category, then the mean over categories (undefined cells skipped)."""
    rows = [{"category": c, **{k: r.get(k) for k in keys}} for c, r in results.items()]
    mean: dict[str, Any] = {"category": "mean"}
    for k in keys:
        values = [r[k] for r in rows if r[k] is not None]
        mean[k] = sum(values) / len(values) if values else None
    return [*rows, mean]


def format_table(rows: list[dict[str, Any]], style: str = "text") -> str:
    """The category table as aligned text, Markdown or CSV."""
    keys = [k for k in rows[0] if k != "category"]

    def cell(v: Any) -> str:
        return "n/a" if v is None else f"{v:.4f}"

    if style == "csv":
        return (
            "\n".join(
                [",".join(["category", *keys])] + [",".join([r["category"], *(cell(r[k]) for k in keys)]) for r in rows]
            )
            + "\n"
        )
    if style == "markdown":
        head = "| category | " + " | ".join(keys) + " |\n|---" + "|---" * len(keys) + "|\n"
        return head + "".join("| " + " | ".join([r["category"], *(cell(r[k]) for k in keys)]) + " |\n" for r in rows)
    lines = [f"{'category':<16}" + "".join(f"{k:>13}" for k in keys)]
    lines += [f"{r['category']:<16}" + "".join(f"{cell(r[k]):>13}" for k in keys) for r in rows]
    return "\n".join(lines)


def list_categories(root: str | Path, layout: str = "mvtec") -> list[str]:
    """The category folders of an MVTec AD (``train/good``) or BTAD (``train/ok``) root, sorted."""
    good = "good" if layout == "mvtec" else "ok"
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"data set root {root} does not exist")
    found = sorted(p.name for p in root.iterdir() if (p / "train" / good).is_dir())
    if not found:
        raise InputError(f"{root} holds no category folder with train/{good}; expected the {layout} layout")
    return found


def benchmark(
    model: str,
    data: str | Path,
    out: str | Path,
    categories: Sequence[str] | None = None,
    layout: str = "mvtec",
    force: bool = False,
    settings: EngineSettings | None = None,
    per_category: dict[str, dict[str, Any]] | None = None,
    **options: Any,
) -> list[dict[str, Any]]:
    """Train and test ``model`` on every category of a data set; writes OUT/table.csv and OUT/table.md.

    ``per_category`` maps a category to options that replace ``options`` for it (per-category settings).
    """
    out = Path(out)
    names = list(categories or list_categories(data, layout))
    results = {}
    share = distributed.shard(names)  # under torchrun each process takes its share of the categories
    with distributed.alone():
        for category in share:
            own = {**options, **(per_category or {}).get(category, {})}
            run = train(
                model, data, out / category, category=category, layout=layout, force=force, settings=settings, **own
            )
            results[category] = test(run, settings=settings)
    gathered = {c: r for part in distributed.all_gather(results) for c, r in part.items()}
    rows = category_table({c: gathered[c] for c in names})
    if distributed.is_main():
        atomic_write(out / "table.csv", format_table(rows, "csv"))
        atomic_write(out / "table.md", format_table(rows, "markdown"))
    return rows


class Detector:
    """A trained run, loaded for scoring images in memory: ``Detector.load(run).predict(images)``.

    ``engine="onnx"`` scores with onnxruntime on the run's exported ``model.onnx`` instead of torch
    (``flowad export``); it gives maps and scores, so the ``nfa`` threshold, which needs latents, is torch-only.
    """

    def __init__(
        self, model: AnomalyModel | None, config: dict[str, Any], threshold: str | float = "f1", onnx: Any = None
    ) -> None:
        self.model, self.config, self.onnx = model, config, onnx
        self.thresholds = _thresholds(config, threshold)
        self.use_nfa = threshold == "nfa"
        if self.use_nfa and model is None:
            raise InputError("--threshold nfa needs the latents: use the torch engine (--engine torch)")
        self.device = resolve_device("auto")
        if model is not None:
            model.to(self.device).eval()
        size = config["model_config"]["image_size"]
        self.image_size = (size, size)
        norm = config["normalisation"]
        self._mean = torch.tensor(norm["mean"]).view(3, 1, 1)
        self._std = torch.tensor(norm["std"]).view(3, 1, 1)

    @classmethod
    def load(cls, run: str | Path, threshold: str | float = "f1", engine: str = "torch") -> Detector:
        if engine == "onnx":
            from flowad.export import OnnxDetector

            onnx = OnnxDetector.load(run)
            return cls(None, onnx.config, threshold, onnx=onnx)
        if engine != "torch":
            raise InputError(f"--engine {engine!r} is not known; expected torch or onnx")
        model, config = load_run(Path(run))
        return cls(model, config, threshold)

    def _tensor(self, rgb: np.ndarray) -> torch.Tensor:
        h, w = self.image_size
        resized = Image.fromarray(rgb).resize((w, h), Image.Resampling.BILINEAR)
        x = torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return (x - self._mean) / self._std

    def _maps_and_latents(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        if self.onnx is not None:
            maps, _ = self.onnx.maps_and_scores(x.numpy())
            return torch.from_numpy(maps), None
        latents = self.model.latents(x.to(self.device))
        return self.model.anomaly_map(latents), latents

    @torch.inference_mode()
    def predict(self, images: Sequence[np.ndarray] | np.ndarray) -> list[dict[str, Any]]:
        """RGB uint8 images (H, W, 3) -> per image: map and mask at the image's own size, score, decision.

        With the ``nfa`` threshold the mask is log NFA < 0 and the image is anomalous iff its mask is not empty.
        """
        results = []
        for rgb in images:
            rgb = np.asarray(rgb)
            if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
                raise InputError(f"image of shape {rgb.shape} and dtype {rgb.dtype}; expected (H, W, 3) uint8 RGB")
            maps, latents = self._maps_and_latents(self._tensor(rgb)[None])
            score = float(maps.amax())
            full_map = _resize(maps, rgb.shape[:2]).numpy()
            if self.use_nfa:
                log_nfa = _resize(self.model.log_nfa(latents).float(), rgb.shape[:2]).numpy()
                mask = log_nfa < 0
                anomalous = bool(mask.any())
            else:
                anomalous = score >= self.thresholds.image
                mask = (full_map >= self.thresholds.pixel) & anomalous
            result = {
                "map": full_map,
                "mask": mask,
                "score": score,
                "normalised_score": float(self.thresholds.normalise(np.array([score]))[0]),
                "anomalous": bool(anomalous),
            }
            if self.use_nfa:
                result["log_nfa_min"] = float(log_nfa.min())
            results.append(result)
        return results


def _resize(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A (1, h, w) map resized bilinearly to (H, W), on the CPU."""
    return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[0, 0].cpu()


def _expand_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files.extend(list_images(path))
        elif path.exists() or path.suffix:
            files.append(path)
        else:
            raise InputError(f"input {path} does not exist")
    return files


def predict(
    run: str | Path,
    inputs: Sequence[str | Path],
    out: str | Path,
    threshold: str | float = "f1",
    quiet: bool = False,
    engine: str = "torch",
) -> list[dict[str, Any]]:
    """Score image files; write a heat-map overlay, a mask PNG and a JSON line per image to ``out``.

    Unreadable files are skipped with one warning line each on stderr; the good ones are still written.
    Under torchrun each process scores its share of the files, and the main process writes the JSON lines
    of all of them, in the order of the inputs, as one process would.
    """
    detector = Detector.load(run, threshold, engine)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = _expand_inputs(inputs)
    used: set[str] = set()  # output names are set over every input, so that each process names files alike
    stems = [_unique_stem(used, path) if is_image_file(path) else "" for path in files]
    scored, skipped = [], 0
    for i in distributed.shard(range(len(files))):
        path = files[i]
        try:
            if not is_image_file(path):
                raise InputError(f"{path} is not an image file (expected .png, .jpg, .jpeg, .bmp, .tif or .tiff)")
            rgb = read_image(path)
        except InputError as err:
            skipped += 1
            print(f"warning: skipped {err}", file=sys.stderr)
            continue
        result = detector.predict([rgb])[0]
        heat = detector.thresholds.normalise(result["map"])
        heat_path, mask_path = out / f"{stems[i]}_heatmap.png", out / f"{stems[i]}_mask.png"
        _write_png(heat_path, overlay(rgb, heat))
        _write_png(mask_path, mask_image(result["mask"]))
        record = {
            "path": str(path),
            "score": result["score"],
            "normalised_score": result["normalised_score"],
            "anomalous": result["anomalous"],
            **({"log_nfa_min": result["log_nfa_min"]} if "log_nfa_min" in result else {}),
            "heatmap": str(heat_path),
            "mask": str(mask_path),
        }
        scored.append((i, record))
    shares = distributed.all_gather((scored, skipped))
    records = [record for _, record in sorted((p for part, _ in shares for p in part), key=lambda p: p[0])]
    skipped = sum(n for _, n in shares)
    if not distributed.is_main():
        return records
    atomic_write(out / "predictions.jsonl", "".join(json.dumps(record) + "\n" for record in records))
    if not quiet:
        flagged = sum(r["anomalous"] for r in records)
        print(
            f"scored {len(records)} images ({flagged} anomalous), skipped {skipped}; results in {out}",
            file=sys.stderr,
        )
    return records


def _unique_stem(used: set[str], path: Path) -> str:
    # two inputs with the same name from different folders must not overwrite each other's outputs
    stem, n = path.stem, 1
    while stem in used:
        n += 1
        stem = f"{path.stem}-{n}"
    used.add(stem)
    return stem


def _write_png(path: Path, array: np.ndarray) -> None:
    import io

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    atomic_write(path, buffer.getvalue())


def load(run: str | Path, threshold: str | float = "f1") -> Detector:
    """Load a run directory for in-memory scoring."""
    return Detector.load(run, threshold)


__all__ = [
    "DataSpec",
    "Detector",
    "Sample",
    "benchmark",
    "evaluate",
    "load",
    "predict",
    "read_config",
    "resume",
    "test",
    "train",
]
