"""Scoring images with a trained run: :class:`Detector` in memory, :func:`predict` on image files."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from flowad import distributed
from flowad.checkpoint import atomic_write, load_run
from flowad.data.datasets import list_images_at_any_depth
from flowad.data.images import is_image_file, read_image
from flowad.engine import resolve_device
from flowad.errors import InputError
from flowad.models import AnomalyModel
from flowad.records import RunRecord
from flowad.resize import resize_bilinear
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
                log_nfa = resize_bilinear(self.model.log_nfa(latents).astype(np.float32), rgb.shape[:2])[0]
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

    Folders are searched at any depth (:func:`~flowad.data.datasets.list_images_at_any_depth`), and
    their subfolders are mirrored in ``out``: ``ROOT/scratch/000.png`` gives ``out/scratch/000_heatmap.png``
    and ``out/scratch/000_mask.png``; an image directly in ``ROOT`` or a file given directly gives
    ``out/<stem>_heatmap.png``. Two inputs that would get the same name (``a/x.png`` and ``b/x.png`` given
    as files, ``x.png`` and ``x.jpg``) get ``x`` and ``x-2``. Each JSON line holds the image's ``path``, its
    ``relative_path`` (to the folder given, or its file name when given directly) and its output paths.

    Unreadable files are skipped with one warning line each on stderr; the good ones are still written.
    When no file at all can be scored an :class:`~flowad.errors.InputError` is raised and nothing is written.
    Under torchrun each process scores its share of the files, and the main process writes the JSON lines
    of all of them, in the order of the inputs, as one process would.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"output folder {out} exists and is not a folder")
    files = _expand_inputs(inputs, out)
    # output names are set over every input before sharding, so that each process names files alike
    names = _output_names(files)
    detector = Detector.load(run, threshold, engine)
    shares = distributed.all_gather(_score_share(detector, files, names, out))
    records = [record for _, record in sorted((p for part, _ in shares for p in part), key=lambda p: p[0])]
    skipped = sum(n for _, n in shares)
    if not records:
        # nothing was written yet: outputs only follow a readable image
        error = InputError(
            f"no input image could be read ({skipped} skipped, see the warnings above); nothing written to {out}"
        )
        error.reported_by_main = not distributed.is_main()  # every process knows it; the main one prints it
        raise error
    if not distributed.is_main():
        return records
    _write_output(out / "predictions.jsonl", "".join(json.dumps(record) + "\n" for record in records))
    if not quiet:
        flagged = sum(r["anomalous"] for r in records)
        print(
            f"scored {len(records)} images ({flagged} anomalous), skipped {skipped}; results in {out}",
            file=sys.stderr,
        )
    return records


def _score_share(
    detector: Detector, files: list[_InputFile], names: list[str], out: Path
) -> tuple[list[tuple[int, dict[str, Any]]], int]:
    """This process's share of the files scored and written: (input index, JSON record) each, and how many
    were skipped (one warning line each on stderr)."""
    scored, skipped = [], 0
    for i in distributed.shard(range(len(files))):
        found = files[i]
        try:
            if not is_image_file(found.path):
                raise InputError(f"{found.path} is not an image file (expected .png, .jpg, .jpeg, .bmp, .tif or .tiff)")
            rgb = read_image(found.path)
        except InputError as err:
            skipped += 1
            print(f"warning: skipped {err}", file=sys.stderr)
            continue
        scored.append((i, _score_file(detector, found, rgb, out, names[i])))
    return scored, skipped


@dataclass(frozen=True)
class _InputFile:
    """One file to score: where it is, and the path its outputs are named after."""

    path: Path
    relative_path: str  # to the folder given, "/"-separated; the file name for a file given directly


def _score_file(detector: Detector, found: _InputFile, rgb: np.ndarray, out: Path, name: str) -> dict[str, Any]:
    """Score one image and write its heat-map overlay and mask to ``out``; returns its JSON record."""
    result = detector.predict([rgb])[0]
    heat = detector.thresholds.normalise(result["map"])
    heat_path, mask_path = out / f"{name}_heatmap.png", out / f"{name}_mask.png"
    _write_png(heat_path, overlay(rgb, heat))
    _write_png(mask_path, mask_image(result["mask"]))
    return {
        "path": str(found.path),
        "relative_path": found.relative_path,
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


def _expand_inputs(inputs: Sequence[str | Path], out: Path) -> list[_InputFile]:
    """Files given directly, and the images of folders given at any depth, in the order of the inputs."""
    files: list[_InputFile] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            root = path.expanduser().absolute()  # as the listing's paths are
            # an output folder inside the input folder is not scored again on a second run
            for image in list_images_at_any_depth(root, skip=[out]):
                files.append(_InputFile(image, image.relative_to(root).as_posix()))
        elif path.exists() or path.suffix:
            files.append(_InputFile(path, path.name))
        else:
            raise InputError(f"input {path} does not exist")
    return files


def _output_names(files: Sequence[_InputFile]) -> list[str]:
    """Per file, the output name (relative path without suffix) that no other file of ``files`` has."""
    used: set[str] = set()
    names = []
    for found in files:
        if not is_image_file(found.path):
            names.append("")  # skipped when scored
            continue
        base = str(PurePosixPath(found.relative_path).with_suffix(""))
        name, n = base, 1
        # x.png and x.jpg, or two folders given that both hold x.png, must not overwrite each other's outputs;
        # compared without case, as on a case-insensitive file system X and x are one file
        while name.casefold() in used:
            n += 1
            name = f"{base}-{n}"
        used.add(name.casefold())
        names.append(name)
    return names


def _write_png(path: Path, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    _write_output(path, buffer.getvalue())


def _write_output(path: Path, data: bytes | str) -> None:
    try:
        atomic_write(path, data)
    except OSError as err:
        raise InputError(f"cannot write {path}: {err.strerror or err}") from err
