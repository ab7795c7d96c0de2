"""Tests of flowad.data.synthetic: deterministic, complete, and with masks that fake nothing."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flowad.data.synthetic import (
    CATEGORIES,
    DEFECTS,
    MAX_DEFECT_AREA,
    MIN_DEFECT_AREA,
    apply_defect,
    finish,
    image_rng,
    make_demo_dataset,
    render_good,
    render_sample,
)
from flowad.errors import InputError

SMALL = {"image_size": 32, "n_train": 2, "n_test_good": 1, "n_test_per_defect": 1}


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _load(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return make_demo_dataset(tmp_path_factory.mktemp("demo"), seed=0, **SMALL)


# sha256 (first 16 hex digits) of good + image + mask of the first test image of each kind at seed 0 and 256 px,
# as the generator wrote them before large frames existed: the demo's files must not change.
DEMO_DIGESTS = {
    ("fabric", "good"): "0fef915c8db8fc9d",
    ("fabric", "hole"): "fc929124f2a48e78",
    ("fabric", "stain"): "1f191f3a940df2ca",
    ("fabric", "thread"): "5283dead885667eb",
    ("fabric", "scratch"): "c32f140e297a0b9f",
    ("pill", "good"): "9b7adc49095f6de9",
    ("pill", "crack"): "9314911ed0db5a5c",
    ("pill", "missing"): "6138f30412eedc89",
    ("pill", "contamination"): "fb379957b87883c0",
    ("pill", "color"): "6a09e9d2d3574b95",
}


@pytest.mark.parametrize(("category", "defect"), list(DEMO_DIGESTS))
def test_demo_images_are_unchanged(category, defect):
    arrays = render_sample(category, defect, image_rng(0, category, "test", defect, 0), 256)
    assert hashlib.sha256(b"".join(a.tobytes() for a in arrays)).hexdigest()[:16] == DEMO_DIGESTS[category, defect]


def test_categories_have_at_least_three_defects():
    assert set(CATEGORIES) == set(DEFECTS) and len(CATEGORIES) >= 2
    assert all(len(defects) >= 3 and "good" not in defects for defects in DEFECTS.values())


def test_same_seed_gives_identical_files(demo, tmp_path):
    again = make_demo_dataset(tmp_path / "again", seed=0, **SMALL)
    assert _files(again) == _files(demo)


def test_different_seed_gives_different_images(demo, tmp_path):
    other = _files(make_demo_dataset(tmp_path / "other", seed=1, **SMALL))
    same = _files(demo)
    assert other.keys() == same.keys()
    assert all(other[name] != same[name] for name in same if name.endswith("000.png"))


def test_images_do_not_depend_on_the_counts(demo, tmp_path):
    bigger = make_demo_dataset(tmp_path / "bigger", seed=0, categories=("fabric",), **{**SMALL, "n_train": 3})
    name = "fabric/train/good/001.png"
    assert (bigger / name).read_bytes() == (demo / name).read_bytes()


def test_layout_is_complete(demo):
    for category in CATEGORIES:
        base = demo / category
        assert sorted(p.name for p in (base / "train" / "good").iterdir()) == ["000.png", "001.png"]
        assert sorted(p.name for p in (base / "test").iterdir()) == sorted(("good", *DEFECTS[category]))
        assert sorted(p.name for p in (base / "ground_truth").iterdir()) == sorted(DEFECTS[category])
        for defect in DEFECTS[category]:
            for image in (base / "test" / defect).iterdir():
                mask = _load(base / "ground_truth" / defect / f"{image.stem}_mask.png")
                assert mask.dtype == np.uint8 and mask.shape == (32, 32)
                assert set(np.unique(mask).tolist()) == {0, 255}
                assert MIN_DEFECT_AREA <= (mask == 255).mean() <= MAX_DEFECT_AREA
                assert _load(image).shape == (32, 32, 3)


def test_saved_mask_is_exactly_where_the_saved_image_differs_from_its_good_twin(demo):
    # Re-render the good twin of a saved defect image with the generator's own per-image seed.
    for category in CATEGORIES:
        for defect in DEFECTS[category]:
            scene = render_good(category, image_rng(0, category, "test", defect, 0), 32)
            good = finish(scene, scene.image).astype(int)
            image = _load(demo / category / "test" / defect / "000.png").astype(int)
            mask = _load(demo / category / "ground_truth" / defect / "000_mask.png") == 255
            changed = np.abs(image - good).max(axis=2) > 0
            np.testing.assert_array_equal(changed, mask, err_msg=f"{category}/{defect}")


@pytest.mark.parametrize(("category", "defect"), [(c, d) for c in CATEGORIES for d in DEFECTS[c]])
def test_render_sample_masks_are_exact_and_sized(category, defect):
    for seed in range(3):
        good, image, mask = render_sample(category, defect, np.random.default_rng(seed), 48)
        assert good.dtype == image.dtype == np.uint8 and good.shape == image.shape == (48, 48, 3)
        assert mask.dtype == bool and mask.shape == (48, 48)
        changed = np.abs(good.astype(int) - image).max(axis=2)
        assert (changed[~mask] == 0).all()  # nothing outside the mask changed
        assert (changed[mask] > 0).all()  # every mask pixel changed visibly
        assert MIN_DEFECT_AREA <= mask.mean() <= MAX_DEFECT_AREA


@pytest.mark.parametrize("defect", DEFECTS["pill"])
def test_pill_defects_lie_on_the_tablet(defect):
    rng = np.random.default_rng(7)
    scene = render_good("pill", rng, 64)
    _, mask = apply_defect(scene, defect, rng)
    assert (scene.support[mask] > 0).all()


def test_good_sample_has_no_mask():
    good, image, mask = render_sample("fabric", "good", np.random.default_rng(0), 32)
    np.testing.assert_array_equal(good, image)
    assert not mask.any()


def test_good_images_vary_between_seeds():
    first, _, _ = render_sample("pill", "good", np.random.default_rng(0), 32)
    second, _, _ = render_sample("pill", "good", np.random.default_rng(1), 32)
    assert np.abs(first.astype(int) - second).mean() > 1


def test_errors(tmp_path):
    with pytest.raises(InputError, match="synthetic category 'carpet' is unknown; expected one of fabric, pill"):
        make_demo_dataset(tmp_path, categories=("carpet",))
    with pytest.raises(InputError, match="defect 'crack' is unknown for category 'fabric'; expected one of hole"):
        render_sample("fabric", "crack", np.random.default_rng(0), 32)
    with pytest.raises(InputError, match="image_size is 8; expected a whole number of at least 32"):
        make_demo_dataset(tmp_path, image_size=8)
    with pytest.raises(InputError, match="n_train is 0"):
        make_demo_dataset(tmp_path, n_train=0)
    with pytest.raises(InputError, match="seed is -1"):
        make_demo_dataset(tmp_path, seed=-1)
