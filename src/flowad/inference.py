"""Scoring images with a trained run: :class:`Detector` in memory, :func:`predict` on image files."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from flowad import distributed
from flowad.checkpoint import atomic_write, load_run
from flowad.data.datasets import list_images
from flowad.data.images import is_image_file, read_image
from flowad.engine import resolve_device
from flowad.errors import InputError
from flowad.models import AnomalyModel
from flowad.records import RunRecord
from flowad.thresholds import from_option
from flowad.visualize import mask_image, overlay


class Detector:
    """A trained run, loaded for scoring images in memory: ``Detector.load(run).predict(images)``.

    ``engine="onnx"`` scores with onnxruntime on the run's exported ``model.onnx`` instead of torch
    (``flowad export``); it gives maps and scores, so the ``nfa`` threshold, which needs latents, is torch-only.
    """

    def __init__(
        self, model: AnomalyModel | None, record: RunRecord, threshold: str | float = "f1", onnx: Any = None
    ) -> None:
        self.model, self.record, self.onnx = model, record, onnx
        self.thresholds = from_option(record.thresholds, threshold)
        self.use_nfa = threshold == "nfa"
        if self.use_nfa and model is None:
            raise InputError("--threshold nfa needs the latents: use the torch engine (--engine torch)")
        self.device = resolve_device("auto")
        if model is not None:
            model.to(self.device).eval()
        self.preprocess = record.preprocess
        self.image_size = self.preprocess.size

    @classmethod
    def load(cls, run: str | Path, threshold: str | float = "f1", engine: str = "torch") -> Detector:
        if engine == "onnx":
            from flowad.export import OnnxDetector

            onnx = OnnxDetector.load(run)
            return cls(None, onnx.record, threshold, onnx=onnx)
        if engine != "torch":
            raise InputError(f"--engine {engine!r} is not known; expected torch or onnx")
        model, record = load_run(Path(run))
        return cls(model, record, threshold)

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
            maps, latents = self._maps_and_latents(self.preprocess(rgb)[None])
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


def load(run: str | Path, threshold: str | float = "f1") -> Detector:
    """Load a run directory for in-memory scoring."""
    return Detector.load(run, threshold)


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
        scored.append((i, _score_file(detector, path, rgb, out, stems[i])))
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


def _score_file(detector: Detector, path: Path, rgb: np.ndarray, out: Path, stem: str) -> dict[str, Any]:
    """Score one image and write its heat-map overlay and mask to ``out``; returns its JSON record."""
    result = detector.predict([rgb])[0]
    heat = detector.thresholds.normalise(result["map"])
    heat_path, mask_path = out / f"{stem}_heatmap.png", out / f"{stem}_mask.png"
    _write_png(heat_path, overlay(rgb, heat))
    _write_png(mask_path, mask_image(result["mask"]))
    return {
        "path": str(path),
        "score": result["score"],
        "normalised_score": result["normalised_score"],
        "anomalous": result["anomalous"],
        **({"log_nfa_min": result["log_nfa_min"]} if "log_nfa_min" in result else {}),
        "heatmap": str(heat_path),
        "mask": str(mask_path),
    }


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


def _unique_stem(used: set[str], path: Path) -> str:
    # two inputs with the same name from different folders must not overwrite each other's outputs
    stem, n = path.stem, 1
    while stem in used:
        n += 1
        stem = f"{path.stem}-{n}"
    used.add(stem)
    return stem


def _write_png(path: Path, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    atomic_write(path, buffer.getvalue())
