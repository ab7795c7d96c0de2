"""Tests of the large frames of flowad.data.synthetic (and ``flowad demo-data --size``): any shape, the weave
at the demo's scale, small defects with exact masks, deterministic files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flowad.cli import main
from flowad.data.synthetic import (
    DEFECTS,
    FRAME_COUNTS,
    FRAME_TEXTURE_SIZE,
    area_bounds,
    finish,
    image_rng,
    make_demo_dataset,
    render_good,
    render_sample,
)
from flowad.errors import InputError

FRAME = (512, 384)  # width, height: small enough to be quick, large enough for defects under 0.1 %
FEW = {"n_train": 1, "n_test_good": 1, "n_test_per_defect": 2}


def _load(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def frames(tmp_path_factory) -> Path:
    return make_demo_dataset(tmp_path_factory.mktemp("frames"), seed=0, image_size=FRAME, **FEW)


@pytest.mark.parametrize("defect", DEFECTS["fabric"])
def test_frame_defects_are_small_exact_and_shaped(defect):
    for seed in range(2):
        good, image, mask = render_sample("fabric", defect, np.random.default_rng(seed), FRAME)
        assert good.shape == image.shape == (384, 512, 3) and mask.shape == (384, 512)
        changed = np.abs(good.astype(int) - image).max(axis=2)
        assert (changed[~mask] == 0).all()  # nothing outside the mask changed
        assert (changed[mask] > 0).all()  # every mask pixel changed visibly
        assert 0 < mask.mean() < 0.001


def test_frames_keep_the_demo_weave_period_in_pixels():
    for size in (FRAME, (300, 1200)):
        period = render_good("fabric", np.random.default_rng(0), size).scale
        assert FRAME_TEXTURE_SIZE / 30 * 0.95 <= period <= FRAME_TEXTURE_SIZE / 30 * 1.05
    assert render_good("fabric", np.random.default_rng(0), 512).scale > 15  # a square size is the demo's view


def test_frame_data_set_is_complete_and_exact(frames):
    assert sorted(p.name for p in frames.iterdir()) == ["fabric"]  # objects are square only
    base = frames / "fabric"
    assert _load(base / "train" / "good" / "000.png").shape == (384, 512, 3)
    for defect in DEFECTS["fabric"]:
        for index in range(2):
            scene = render_good("fabric", image_rng(0, "fabric", "test", defect, index), FRAME)
            good = finish(scene, scene.image).astype(int)
            image = _load(base / "test" / defect / f"{index:03d}.png").astype(int)
            mask = _load(base / "ground_truth" / defect / f"{index:03d}_mask.png") == 255
            np.testing.assert_array_equal(np.abs(image - good).max(axis=2) > 0, mask, err_msg=defect)
            low, high = area_bounds(scene)
            assert 0 < low <= mask.mean() <= high < 0.001


def test_frame_data_set_is_deterministic(frames, tmp_path):
    assert _files(make_demo_dataset(tmp_path, seed=0, image_size=FRAME, **FEW)) == _files(frames)


def test_small_frames_keep_defects_of_a_few_pixels(tmp_path):
    root = make_demo_dataset(tmp_path, image_size=(64, 40))  # the frame counts by default
    base = root / "fabric"
    counts = [len(list((base / "train" / "good").iterdir())), len(list((base / "test" / "good").iterdir()))]
    assert (*counts, len(list((base / "test" / "hole").iterdir()))) == FRAME_COUNTS
    for mask_file in (base / "ground_truth").rglob("*.png"):
        assert (_load(mask_file) == 255).sum() >= 4


@pytest.mark.parametrize("size", [(16, 384), (512, 31), (512.0, 384), [512, 384], (512,), True])
def test_bad_frame_sizes_are_named(size, tmp_path):
    with pytest.raises(InputError, match=r"image_size is .*; expected a whole number of at least 32"):
        make_demo_dataset(tmp_path, image_size=size)


def test_objects_are_square_only():
    with pytest.raises(InputError, match="category 'pill' is rendered square only"):
        render_good("pill", np.random.default_rng(0), FRAME)


def test_demo_data_command_writes_frames(tmp_path, capsys):
    counts = ["--n-train", "1", "--n-test-good", "1", "--n-test-per-defect", "1"]
    assert main(["demo-data", str(tmp_path), "--size", "100", "60", *counts]) == 0
    assert "100 x 60 frames of fabric" in capsys.readouterr().out
    assert _load(tmp_path / "fabric" / "test" / "scratch" / "000.png").shape == (60, 100, 3)
    assert main(["demo-data", str(tmp_path), "--size", "16", "60"]) == 2
    assert "--size 16 60: expected a width and a height of at least 32" in capsys.readouterr().err
    assert main(["demo-data", str(tmp_path), "--size", "100", "60", "--n-train", "0"]) == 2
    assert "n_train is 0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        main(["demo-data", str(tmp_path), "--size", "100.5", "60"])
    assert stop.value.code == 2
    assert "invalid int value: '100.5'" in capsys.readouterr().err
