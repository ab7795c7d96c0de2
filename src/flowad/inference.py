"""Scoring images in memory with a trained run: :class:`Detector` (``Detector.load(run).predict(images)``).

Every engine (:mod:`flowad.engines`) takes the images resized to the model's size and gives maps at that
size, scores and latents; the maps at each image's own size, the verdicts, masks and a contrario (NFA) masks
are computed here, by the same code for every engine.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from flowad.checkpoint import read_record
from flowad.engines import EngineOutput, open_engine
from flowad.errors import InputError
from flowad.nfa import checked_options, log_nfa, settings_of
from flowad.records import RunRecord
from flowad.resize import resize_bilinear
from flowad.thresholds import from_option
from flowad.tiling import score_tiled
from flowad.visualize import mask_image, overlay

DEFAULT_BATCH = 8


class Detector:
    """A trained run, loaded for scoring images in memory: ``Detector.load(run).predict(images)``.

    ``engine``: ``auto`` (default: OpenVINO, else onnxruntime, on the run's exported file, exported on first
    use; else torch), ``torch``, ``onnx`` or ``openvino``; ``self.engine.name`` says which one scores.
    """

    def __init__(self, engine: Any, record: RunRecord, threshold: str | float = "f1", batch_size: int = DEFAULT_BATCH):
        self.engine, self.record, self.batch_size = engine, record, batch_size
        self.thresholds = from_option(record.thresholds, threshold)
        self.use_nfa = threshold == "nfa"
        self.preprocess = record.preprocess
        self.image_size = self.preprocess.size
        self.tiling = self.preprocess.tiling  # a tiled run scores each image tile by tile (flowad.tiling)

    @classmethod
    def load(
        cls,
        run: str | Path,
        threshold: str | float = "f1",
        engine: str = "auto",
        threads: int | None = None,
        exported: str | Path | None = None,
        nfa_options: dict[str, Any] | None = None,
    ) -> Detector:
        """Open ``run`` on ``engine``; ``threads`` caps an exported engine's threads (torch: torch's own setting);
        ``exported`` scores with that exported file of the run (e.g. an FP16 or INT8 OpenVINO .xml);
        ``nfa_options`` (:data:`flowad.nfa.NFA_OPTIONS`) test the NFA otherwise than the run's record says."""
        record = read_record(Path(run))
        if nfa_options:
            record = dataclasses.replace(record, model_config={**record.model_config, **checked_options(nfa_options)})
        from_option(record.thresholds, threshold)  # a bad threshold fails before any export
        return cls(open_engine(Path(run), engine, threads, exported), record, threshold)

    def predict(self, images: Sequence[np.ndarray] | np.ndarray) -> list[dict[str, Any]]:
        """RGB uint8 images (H, W, 3) -> per image: map and mask at the image's own size, score, decision.

        With the ``nfa`` threshold the mask is log NFA < 0 and the image is anomalous iff its mask is not empty.
        """
        images = [_checked(rgb) for rgb in images]
        if self.tiling is not None:
            return [self.predict_tiled(rgb) for rgb in images]
        results = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            scored = self.score_resized(np.stack([self.preprocess.resized(rgb) for rgb in chunk]))
            results.extend(self.result(scored, i, rgb.shape[:2]) for i, rgb in enumerate(chunk))
        return results

    def check_size(self, rgb: np.ndarray) -> None:
        """InputError when this run cannot score ``rgb``: a tiled run needs images at least as large as its tile."""
        if self.tiling is not None:
            self.tiling.positions(*rgb.shape[:2])

    def score_resized(self, resized: np.ndarray) -> EngineOutput:
        """uint8 (N, h, w, 3) at the model's size -> the engine's maps, scores (and latents for the NFA)."""
        return self.engine.run(resized, latents=self.use_nfa)

    def predict_tiled(self, rgb: np.ndarray) -> dict[str, Any]:
        """One image of a tiled run, scored ``batch_size`` tiles at a time, as :meth:`result` gives it."""
        nfa = self._log_nfa if self.use_nfa else None
        tiled = score_tiled(rgb, self.tiling, self.preprocess.resized, self.engine.run, self.batch_size, nfa)
        return self._decided(tiled.map, tiled.score, tiled.log_nfa)

    def _log_nfa(self, latents: list[np.ndarray], tiles: int = 1) -> np.ndarray:
        return log_nfa(latents, self.image_size, **settings_of(self.record.model_config), tiles=tiles)

    def result(self, scored: EngineOutput, i: int, image_size: tuple[int, int]) -> dict[str, Any]:
        """Image ``i`` of a scored batch at its own ``image_size``: map, mask, score, normalised score, verdict."""
        full_log_nfa = None
        if self.use_nfa:
            small = self._log_nfa([z[i : i + 1] for z in scored.latents])
            full_log_nfa = resize_bilinear(small[0].astype(np.float32), image_size)
        return self._decided(resize_bilinear(scored.maps[i], image_size), float(scored.scores[i]), full_log_nfa)

    def _decided(self, full_map: np.ndarray, score: float, full_log_nfa: np.ndarray | None) -> dict[str, Any]:
        """The result of an image from its map and score (and log NFA) at its own size."""
        result = {"map": full_map, "score": score}
        result["normalised_score"] = float(self.thresholds.normalise(np.array([score]))[0])
        if full_log_nfa is not None:
            result["mask"] = full_log_nfa < 0
            result["anomalous"] = bool(result["mask"].any())
            result["log_nfa_min"] = float(full_log_nfa.min())
        else:
            result["anomalous"] = score >= self.thresholds.image
            result["mask"] = (full_map >= self.thresholds.pixel) & result["anomalous"]
        return result

    def pictures(self, rgb: np.ndarray, result: dict[str, Any]) -> dict[str, np.ndarray]:
        """What an image's result looks like: ``heat`` (the map normalised, 0.5 = the image threshold, float),
        ``heatmap`` (its colours over the image) and ``mask`` (0/255), uint8 at the image's size."""
        heat = self.thresholds.normalise(result["map"])
        return {"heat": heat, "heatmap": overlay(rgb, heat), "mask": mask_image(result["mask"])}


def _checked(rgb: Any) -> np.ndarray:
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise InputError(f"image of shape {rgb.shape} and dtype {rgb.dtype}; expected (H, W, 3) uint8 RGB")
    return rgb


def load(
    run: str | Path, threshold: str | float = "f1", engine: str = "auto", nfa_options: dict[str, Any] | None = None
) -> Detector:
    """Load a run directory for in-memory scoring (:meth:`Detector.load`)."""
    return Detector.load(run, threshold, engine, nfa_options=nfa_options)
