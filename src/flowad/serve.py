"""The inspection service (``flowad serve``): an HTTP API over a loaded :class:`~flowad.inference.Detector`.

Endpoints: ``POST /v1/predict`` (one image: the request body, or the ``image`` field of a multipart form),
``POST /v1/predict/batch`` (the ``images`` fields of a multipart form), ``GET /v1/model``, ``GET /healthz``,
``GET /readyz`` and ``GET /metrics`` (Prometheus' text format). Concurrent requests are scored together:
a micro-batcher collects images for up to ``max_wait_ms`` or ``batch_size`` images, whichever comes first, and
scores them in one engine call. Bad input is a 4xx with ``{"error": "..."}``; nothing from a request reaches
the file system. With an API key every endpoint but ``/healthz`` and the page wants ``Authorization: Bearer KEY``.
"""

from __future__ import annotations

import asyncio
import base64
import time
from pathlib import Path
from typing import Any

import numpy as np

from flowad.checkpoint import flowad_version, read_json
from flowad.inference import Detector
from flowad.nfa import settings_of
from flowad.visualize import png_bytes

DEFAULT_BODY_LIMIT = 32 * 1024 * 1024  # bytes of one request
IMAGE_TYPES = ("image/png", "image/jpeg", "image/bmp", "image/tiff", "application/octet-stream")


class MicroBatcher:
    """Images from concurrent requests scored together (up to the detector's ``batch_size`` at once), in the
    order they came."""

    def __init__(self, detector: Detector, max_wait_ms: float) -> None:
        self.detector, self.batch_size, self.max_wait = detector, detector.batch_size, max_wait_ms / 1000
        self.queue: asyncio.Queue = asyncio.Queue()
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()

    async def score(self, rgb: np.ndarray) -> dict[str, Any]:
        """One image's result (as :meth:`Detector.predict` gives it), once its batch is scored."""
        done = asyncio.get_running_loop().create_future()
        await self.queue.put((rgb, done))
        return await done

    async def _run(self) -> None:
        while True:
            batch = [await self.queue.get()]
            deadline = time.perf_counter() + self.max_wait
            while len(batch) < self.batch_size and (left := deadline - time.perf_counter()) > 0:
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), left))
                except TimeoutError:
                    break
            try:
                results = await asyncio.to_thread(self.detector.predict, [rgb for rgb, _ in batch])
                for (_, done), result in zip(batch, results, strict=True):
                    done.set_result(result)
            except Exception as err:  # noqa: BLE001 - handed to each waiting request
                for _, done in batch:
                    done.set_exception(err)


def png_base64(array: np.ndarray) -> str:
    return base64.b64encode(png_bytes(array, compress_level=1)).decode("ascii")


def response(detector: Detector, rgb: np.ndarray, result: dict[str, Any], pictures: bool) -> dict[str, Any]:
    """A scored image as JSON: scores, verdict, threshold and, unless ``pictures`` is off, the mask and the
    heat-map overlay as base64 PNGs (and the map's range, for a client that re-thresholds)."""
    out = {
        "score": result["score"],
        "normalised_score": result["normalised_score"],
        "anomalous": bool(result["anomalous"]),
        "threshold": {"image": detector.thresholds.image, "pixel": detector.thresholds.pixel},
        "height": int(rgb.shape[0]),
        "width": int(rgb.shape[1]),
    }
    if "log_nfa_min" in result:
        out["log_nfa_min"] = result["log_nfa_min"]
    if pictures:
        drawn = detector.pictures(rgb, result)
        out["mask_png"] = png_base64(drawn["mask"])
        out["heatmap_png"] = png_base64(drawn["heatmap"])
        # the normalised map as 8-bit grey: what the review page re-thresholds (0.5 = the image threshold)
        out["normalised_map_png"] = png_base64(np.round(drawn["heat"] * 255).astype(np.uint8))
    return out


def model_info(run: str, detector: Detector) -> dict[str, Any]:
    record = detector.record
    metrics_file = Path(run) / "metrics.json"
    metrics = read_json(metrics_file) if metrics_file.is_file() else None
    return {
        "model": record.model,
        "image_size": list(record.preprocess.size),
        "data": None if record.data is None else {"root": record.data.root, "category": record.data.category},
        "metrics": metrics,
        "thresholds": {"image": detector.thresholds.image, "pixel": detector.thresholds.pixel},
        "threshold_method": "nfa" if detector.use_nfa else detector.thresholds.method,
        "nfa": settings_of(record.model_config) if detector.use_nfa else None,  # the test's, as chosen to serve
        "engine": detector.engine.name,
        "flowad_version": flowad_version(),
        "trained_with": record.flowad_version,
    }
