"""Property tests on random inputs (hypothesis): metrics, the image and mask readers, the NFA.

The slow metric references are those of tests/reference.py, written straight from the definitions.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import reference
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from flowad import metrics
from flowad.data.images import read_image, read_mask
from flowad.errors import InputError
from flowad.nfa import log_nfa

FAST = settings(max_examples=60, deadline=None)

# Strictly increasing, and exact enough on the grid of quarters that no two scores merge.
TRANSFORMS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "3x+1": lambda x: 3 * x + 1,
    "exp(x/10)": lambda x: np.exp(x / 10),
    "x^3+x": lambda x: x**3 + x,
}
QUARTERS = st.integers(-20, 20).map(lambda k: k / 4)  # few values: many ties
VALUES = st.one_of(QUARTERS, st.floats(-1e6, 1e6, allow_nan=False, allow_subnormal=False))


# --- metrics -------------------------------------------------------------------------------------


def _two_classes(n: int) -> st.SearchStrategy[list[bool]]:
    return st.lists(st.booleans(), min_size=n, max_size=n).filter(lambda labels: any(labels) and not all(labels))


@st.composite
def scored_labels(draw: st.DrawFn, values: st.SearchStrategy[float] = QUARTERS) -> tuple[np.ndarray, np.ndarray]:
    n = draw(st.integers(2, 40))
    scores = draw(st.lists(values, min_size=n, max_size=n))
    return np.array(scores, dtype=np.float64), np.array(draw(_two_classes(n)))


@st.composite
def maps_and_masks(draw: st.DrawFn, values: st.SearchStrategy[float] = QUARTERS) -> tuple[np.ndarray, np.ndarray]:
    shape = (draw(st.integers(1, 3)), draw(st.integers(2, 6)), draw(st.integers(2, 6)))
    size = int(np.prod(shape))
    maps = np.array(draw(st.lists(values, min_size=size, max_size=size)), dtype=np.float64)
    return maps.reshape(shape), np.array(draw(_two_classes(size))).reshape(shape)


@FAST
@given(scored_labels(), maps_and_masks(), st.sampled_from(sorted(TRANSFORMS)))
def test_metrics_are_invariant_to_strictly_monotone_transforms(
    scored: tuple[np.ndarray, np.ndarray], pixels: tuple[np.ndarray, np.ndarray], name: str
) -> None:
    (scores, labels), (maps, masks), f = scored, pixels, TRANSFORMS[name]
    assert metrics.auroc(f(scores), labels) == metrics.auroc(scores, labels)
    assert metrics.pixel_auroc(f(maps), masks) == metrics.pixel_auroc(maps, masks)
    assert metrics.aupro(f(maps), masks) == pytest.approx(metrics.aupro(maps, masks), abs=1e-12)
    best, threshold = metrics.f1_max(scores, labels)
    best_f, threshold_f = metrics.f1_max(f(scores), labels)
    assert best_f == best and threshold_f == f(scores)[scores == threshold][0]


@FAST
@given(scored_labels(VALUES), maps_and_masks(VALUES), st.floats(0.01, 1.0))
def test_metrics_agree_with_slow_references_and_lie_in_the_unit_interval(
    scored: tuple[np.ndarray, np.ndarray], pixels: tuple[np.ndarray, np.ndarray], fpr_limit: float
) -> None:
    (scores, labels), (maps, masks) = scored, pixels
    auroc, pixel_auroc = metrics.auroc(scores, labels), metrics.pixel_auroc(maps, masks)
    aupro, (f1, threshold) = metrics.aupro(maps, masks, fpr_limit), metrics.f1_max(scores, labels)
    assert auroc == pytest.approx(reference.auroc(scores, labels), abs=1e-12)
    assert pixel_auroc == pytest.approx(reference.auroc(maps, masks), abs=1e-12)
    assert aupro == pytest.approx(reference.aupro(maps, masks, fpr_limit), abs=1e-9)
    assert (f1, threshold) == pytest.approx(reference.f1_max(scores, labels), abs=1e-12)
    assert all(0.0 <= value <= 1.0 for value in (auroc, pixel_auroc, aupro, f1))


# --- readers -------------------------------------------------------------------------------------

MAGIC = [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*", b"BM", b"GIF89a"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    # A low pixel limit, so that a damaged header claiming a large image cannot make a test slow.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FLOWAD_MAX_IMAGE_PIXELS", "1000000")
        yield tmp_path_factory.mktemp("fuzz")


def _read_both_or_input_error(path: Path) -> None:
    """Each reader returns a well-formed array or raises InputError; any other exception fails the test."""
    try:
        rgb = read_image(path)
        assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3 and min(rgb.shape[:2]) >= 2
    except InputError as err:
        assert str(path) in str(err)
    try:
        mask = read_mask(path)
        assert mask.dtype == bool and mask.ndim == 2
    except InputError as err:
        assert str(path) in str(err)


@st.composite
def damaged_files(draw: st.DrawFn) -> bytes:
    """A small valid image with a few bytes overwritten (mostly in the header) and maybe cut short."""
    fmt = draw(st.sampled_from(["PNG", "JPEG", "BMP", "TIFF", "GIF"]))
    mode = draw(st.sampled_from(["RGB", "L", "CMYK", "1"] if fmt == "TIFF" else ["RGB", "L"]))
    seed = draw(st.integers(0, 2**16))
    pixels = np.random.default_rng(seed).integers(0, 256, (draw(st.integers(2, 12)), draw(st.integers(2, 12)), 3))
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).convert(mode).save(buffer, format=fmt)
    data = bytearray(buffer.getvalue())
    for _ in range(draw(st.integers(1, 4))):
        data[draw(st.integers(0, min(len(data), 200) - 1))] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about damaged TIFF tags
@FAST
@given(st.sampled_from(MAGIC), st.binary(max_size=300), st.sampled_from([".png", ".jpg", ".tif", ".bmp"]))
def test_readers_on_random_bytes(folder: Path, magic: bytes, tail: bytes, suffix: str) -> None:
    path = folder / f"random{suffix}"
    path.write_bytes(magic + tail)
    _read_both_or_input_error(path)


@pytest.mark.filterwarnings("ignore::UserWarning")
@settings(max_examples=150, deadline=None)
@given(damaged_files())
def test_readers_on_damaged_images(folder: Path, data: bytes) -> None:
    path = folder / "damaged.png"
    path.write_bytes(data)
    _read_both_or_input_error(path)


@FAST
@given(
    st.integers(2, 40), st.integers(2, 40), st.sampled_from(["L", "RGB", "RGBA", "P", "I;16"]), st.integers(0, 2**16)
)
def test_readers_round_trip_random_valid_images(folder: Path, width: int, height: int, mode: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        values = rng.integers(0, 65536, (height, width)).astype(np.uint16)
        image, expected = Image.fromarray(values), np.rint(values / 257)[:, :, None].repeat(3, axis=2)
    else:
        channels = {"L": 1, "RGB": 3, "RGBA": 4, "P": 3}[mode]
        values = (
            rng.integers(0, 256, (height, width, channels)).astype(np.uint8).squeeze(axis=2 if channels == 1 else ())
        )
        image = Image.fromarray(values)
        if mode == "P":
            image = image.quantize(colors=16)
        expected = np.asarray(image.convert("RGB"))
    assert image.mode == mode
    path = folder / "valid.png"
    image.save(path)
    rgb = read_image(path)
    assert rgb.dtype == np.uint8 and rgb.shape == (height, width, 3)
    np.testing.assert_array_equal(rgb, expected)
    np.testing.assert_array_equal(read_mask(path, expected_size=(height, width)), expected.max(axis=2) > 127)


# --- NFA -----------------------------------------------------------------------------------------


@st.composite
def latent_maps(draw: st.DrawFn) -> list[torch.Tensor]:
    """1 to 3 scales of (B, C, H, W) noise, each half the size of the one before, at a random scale."""
    batch, height, width = draw(st.integers(1, 2)), draw(st.integers(2, 12)), draw(st.integers(2, 12))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    scale = draw(st.sampled_from([0.0, 0.1, 1.0, 3.0, 1e3]))
    return [
        torch.randn(batch, draw(st.integers(1, 4)), max(height >> s, 1), max(width >> s, 1), generator=generator)
        * scale
        for s in range(draw(st.integers(1, 3)))
    ]


NFA_OPTIONS = st.fixed_dictionaries(
    {
        "size": st.tuples(st.integers(2, 24), st.integers(2, 24)),
        "window_size": st.integers(1, 9),
        "probability_threshold": st.floats(0.05, 0.95),
        "high_precision": st.booleans(),
    }
)


@FAST
@given(latent_maps(), NFA_OPTIONS)
def test_log_nfa_is_finite_everywhere(latents: list[torch.Tensor], options: dict) -> None:
    out = log_nfa(latents, **options)
    assert out.dtype == np.float64 and out.shape == (latents[0].shape[0], *options["size"])
    assert np.isfinite(out).all()


def _shifted(latents: list[torch.Tensor], box: tuple[float, float, float, float], shift: float) -> list[torch.Tensor]:
    """Move every latent inside ``box`` (fractions top, left, bottom, right) ``shift`` further from 0.

    (Adding a plain +shift would not be monotone: a negative entry's z^2 first falls.)
    """
    out = []
    for z in latents:
        h, w = z.shape[-2:]
        rows = slice(int(box[0] * h), max(int(box[2] * h), int(box[0] * h) + 1))
        cols = slice(int(box[1] * w), max(int(box[3] * w), int(box[1] * w) + 1))
        z = z.clone()
        region = z[:, :, rows, cols]
        z[:, :, rows, cols] = region + shift * torch.where(region >= 0, 1.0, -1.0)
        out.append(z)
    return out


@FAST
@given(
    latent_maps(),
    NFA_OPTIONS,
    st.tuples(st.floats(0, 0.9), st.floats(0, 0.9), st.floats(0.1, 1), st.floats(0.1, 1)),
    st.lists(st.floats(0, 5), min_size=2, max_size=4),
)
def test_min_log_nfa_does_not_increase_with_the_shift(
    latents: list[torch.Tensor], options: dict, box: tuple[float, float, float, float], shifts: list[float]
) -> None:
    top, left, bottom, right = box
    box = (top, left, max(bottom, top), max(right, left))
    maps = [log_nfa(_shifted(latents, box, shift), **options) for shift in sorted(shifts)]
    for before, after in zip(maps, maps[1:], strict=False):
        assert (after <= before + 1e-9).all()  # pointwise, hence for the minimum too
        assert after.min() <= before.min() + 1e-9
