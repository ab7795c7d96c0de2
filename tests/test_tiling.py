"""Tiling large images: tile positions, seamless blending, the NFA's count over tiles, tiled runs end to end."""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from flowad.cli import main
from flowad.data.synthetic import make_demo_dataset
from flowad.errors import InputError
from flowad.nfa import log_nfa
from flowad.tiling import MapBlender, Tiling, blend_window, score_tiled, starts, tiling_of

TILED_TRAIN = ["--image-size", "64", "--tile", "64", "--epochs", "1", "--batch-size", "16", "--quiet"]


@pytest.mark.parametrize(("length", "tile", "stride"), [(64, 32, 16), (100, 32, 16), (32, 32, 8), (257, 64, 64)])
def test_tiles_cover_every_pixel_and_end_at_the_border(length: int, tile: int, stride: int) -> None:
    found = starts(length, tile, stride)
    covered = np.zeros(length, int)
    for s in found:
        covered[s : s + tile] += 1
    assert covered.min() >= 1
    assert found[0] == 0 and found[-1] == length - tile
    assert all(0 < b - a <= stride for a, b in zip(found, found[1:], strict=False))


def test_bad_tilings_and_small_images_are_named() -> None:
    with pytest.raises(InputError, match="tile is 4"):
        Tiling(4, 2)
    with pytest.raises(InputError, match="tile stride is 40"):
        Tiling(32, 40)
    with pytest.raises(InputError, match="20x50 pixels is smaller than the tile"):
        Tiling(32, 16).positions(50, 20)
    assert tiling_of(64, None) == Tiling(64, 32) and tiling_of(None, 8) is None


@pytest.mark.parametrize(("height", "width", "tiling"), [(96, 160, Tiling(32, 16)), (70, 45, Tiling(32, 11))])
def test_a_constant_map_per_tile_blends_to_the_same_constant(height: int, width: int, tiling: Tiling) -> None:
    blender = MapBlender(height, width, tiling.tile)
    for y, x in tiling.positions(height, width):
        blender.add(np.full((tiling.tile, tiling.tile), 0.37, np.float32), y, x)
    np.testing.assert_allclose(blender.result(), 0.37, rtol=1e-6)


def test_tiles_that_agree_blend_to_the_image_itself() -> None:
    """Tiles scored by a model that returns each pixel's own value: the blend is the image, at every offset."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (70, 103, 3), dtype=np.uint8)
    seen = []

    def run_tiles(tiles: np.ndarray, latents: bool) -> SimpleNamespace:
        seen.append(len(tiles))
        return SimpleNamespace(maps=tiles[..., 0].astype(np.float32), latents=None)

    tiled = score_tiled(rgb, Tiling(32, 20), lambda tile: tile, run_tiles, batch=3)
    np.testing.assert_allclose(tiled.map, rgb[..., 0], rtol=1e-5)
    assert tiled.score == pytest.approx(rgb[..., 0].max(), rel=1e-5)
    assert max(seen) == 3  # never more than a batch of tiles at once
    assert sum(seen) == Tiling(32, 20).count(70, 103)


def test_the_window_adds_up_to_a_constant_at_half_the_tile() -> None:
    """sin^2 windows shifted by half a tile sum to a constant: inside the image no tile's border dominates."""
    v = blend_window(32)[16]
    total = v[:16] + v[16:]
    np.testing.assert_allclose(total, total[0], rtol=1e-5)


def test_the_number_of_tests_counts_every_tile() -> None:
    z = np.random.default_rng(1).standard_normal((1, 8, 16, 16)).astype(np.float32)
    one = log_nfa([z], (64, 64))
    np.testing.assert_allclose(log_nfa([z], (64, 64), tiles=49), one + math.log10(49), rtol=0, atol=1e-12)
    with pytest.raises(InputError, match="tiles is 0"):
        log_nfa([z], (64, 64), tiles=0)


def test_pure_noise_latents_of_tiled_images_flag_nothing() -> None:
    """40 images of 49 tiles each, every tile's latents N(0, 1): log NFA < 0 nowhere (the promise, whole image)."""
    rng = np.random.default_rng(2)
    tiling = Tiling(64, 32)
    flagged = 0
    for _ in range(40):

        def run_tiles(tiles: np.ndarray, latents: bool) -> SimpleNamespace:
            n = len(tiles)
            z = [rng.standard_normal((n, 16, 16, 16)).astype(np.float32), rng.standard_normal((n, 32, 8, 8))]
            return SimpleNamespace(maps=np.zeros((n, 64, 64), np.float32), latents=z)

        def nfa(latents: list[np.ndarray], tiles: int) -> np.ndarray:
            assert tiles == 49
            return log_nfa(latents, (64, 64), tiles=tiles)

        tiled = score_tiled(np.zeros((256, 256, 3), np.uint8), tiling, lambda t: t, run_tiles, batch=8, nfa=nfa)
        flagged += bool((tiled.log_nfa < 0).any())
        assert np.isfinite(tiled.log_nfa).all()  # every pixel got a test
    assert flagged == 0


@pytest.fixture(scope="module")
def tiled_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Demo fabric at 128 x 128: a 64-pixel tile at full resolution, every 32 pixels, gives 9 tiles per image."""
    root = tmp_path_factory.mktemp("tiled") / "demo"
    return make_demo_dataset(
        root, seed=3, categories=["fabric"], image_size=128, n_train=5, n_test_good=2, n_test_per_defect=1
    )


@pytest.mark.parametrize("model", ["fastflow", "cflow", "uflow", "msflow"])
def test_a_tiled_run_trains_tests_and_predicts_alike_on_every_engine(
    model: str, tiled_data: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    args = ["train", "--model", model, "--data", str(tiled_data), "--category", "fabric", "--out", str(run)]
    assert main([*args, *TILED_TRAIN]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["preprocess"]["tile"] == 64 and config["train"]["tiles"] == 4 * 9
    # readiness: the NFA over each whole validation image's tiles, the statistics over its tiles
    assert config["train"]["nfa_flagged"]["good_images"] == 1 and len(config["train"]["latents"]) >= 1
    log = json.loads((run / "train_log.json").read_text())
    assert log["cache_bytes"] % (4 * 9) == 0  # the cache holds the tiles' features
    assert main(["test", "--run", str(run), "--quiet"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["pixel_auroc"] is not None
    with np.load(run / "test_outputs.npz") as outputs:
        assert outputs["maps"].shape[1:] == (128, 128)  # evaluated at full resolution
    predictions = {}
    for engine in ("torch", "onnx", "openvino"):
        out = tmp_path / engine
        images = str(tiled_data / "fabric" / "test")
        assert (
            main(
                [
                    "predict",
                    "--run",
                    str(run),
                    "--input",
                    images,
                    "--out",
                    str(out),
                    "--engine",
                    engine,
                    "--threshold",
                    "nfa",
                    "--quiet",
                ]
            )
            == 0
        )
        predictions[engine] = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    for engine in ("onnx", "openvino"):
        for ours, theirs in zip(predictions[engine], predictions["torch"], strict=True):
            assert ours["score"] == pytest.approx(theirs["score"], rel=1e-4, abs=1e-4)
            assert ours["anomalous"] == theirs["anomalous"]
    meta = json.loads(_onnx_metadata(run / "model.onnx")["flowad.tiling"])
    assert meta == {"tile": 64, "stride": 32}


def _onnx_metadata(path: Path) -> dict[str, str]:
    import onnx

    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


MEMORY_PROBE = """
import re, sys, numpy as np
from flowad.inference import Detector

def peak_kib():  # this process's own peak (getrusage's ru_maxrss would include the parent's, carried over exec)
    return int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1))

detector = Detector.load(sys.argv[1], engine="torch")
rgb = np.random.default_rng(0).integers(0, 256, (int(sys.argv[2]), int(sys.argv[3]), 3), dtype=np.uint8)
detector.predict(rgb[:64, :64][None])  # warm up: the engine's buffers for a batch of tiles
before = peak_kib()
detector.predict([rgb])
print(before, peak_kib())
"""


@pytest.fixture(scope="module")
def tiled_run(tiled_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("tiled-run") / "fastflow"
    assert main(["train", "--data", str(tiled_data), "--category", "fabric", "--out", str(run), *TILED_TRAIN]) == 0
    return run


def test_a_4000x1000_image_is_predicted_within_the_memory_bound(tiled_run: Path) -> None:
    """Peak memory grows by the image's own arrays (image, map, weights, mask, a few MB each), not by its
    features: the whole image's features at once would need several hundred MB."""
    run = tiled_run
    done = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, str(run), "1000", "4000"], capture_output=True, text=True, check=True
    )
    before, after = (int(v) for v in done.stdout.split())
    pixels = 4000 * 1000
    own_arrays = pixels * (3 + 4 + 4 + 4 + 1) * 2 / 1024  # KiB: image, map, total, weight, mask, twice over
    assert after - before < own_arrays, f"peak memory grew by {(after - before) / 1024:.0f} MiB"


def test_an_image_smaller_than_the_tile_is_skipped_with_its_name(
    tiled_run: Path, tiled_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from PIL import Image

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    Image.new("RGB", (200, 40)).save(inputs / "thin.png")
    Image.open(tiled_data / "fabric" / "test" / "good" / "000.png").save(inputs / "good.png")
    out = tmp_path / "out"
    assert (
        main(["predict", "--run", str(tiled_run), "--input", str(inputs), "--out", str(out), "--engine", "torch"]) == 0
    )
    warned = capsys.readouterr().err
    assert "thin.png" in warned and "smaller than the tile" in warned
    lines = (out / "predictions.jsonl").read_text().splitlines()
    assert [json.loads(line)["relative_path"] for line in lines] == ["good.png"]


def test_the_service_scores_a_tiled_run_and_refuses_an_image_smaller_than_the_tile(
    tiled_run: Path, tiled_data: Path
) -> None:
    from fastapi.testclient import TestClient
    from PIL import Image

    from flowad.inference import Detector
    from flowad.serve_app import create_app

    detector = Detector.load(tiled_run, engine="torch")
    good = (tiled_data / "fabric" / "test" / "good" / "000.png").read_bytes()
    thin = io.BytesIO()
    Image.new("RGB", (200, 40)).save(thin, format="PNG")
    with TestClient(create_app(str(tiled_run), detector)) as client:
        answer = client.post("/v1/predict?pictures=false", content=good, headers={"content-type": "image/png"})
        assert answer.status_code == 200
        assert answer.json()["score"] == pytest.approx(detector.predict([_rgb(good)])[0]["score"], rel=1e-5)
        refused = client.post("/v1/predict", content=thin.getvalue(), headers={"content-type": "image/png"})
        assert refused.status_code == 400 and "smaller than the tile" in refused.json()["error"]


def _rgb(png: bytes) -> np.ndarray:
    from flowad.data.images import decode_image

    return decode_image(png)
