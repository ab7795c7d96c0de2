"""Tests of flowad.data.images: every common image mode in, uint8 RGB out; clear errors otherwise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flowad.data import images
from flowad.data.images import read_image, read_image_size, read_mask
from flowad.errors import InputError


def _save(path: Path, image: Image.Image, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)
    return path


def _noise_rgb(height: int = 24, width: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


# --- modes ---------------------------------------------------------------------------------------


def test_rgb_png_round_trips_exactly(tmp_path):
    pixels = _noise_rgb()
    out = read_image(_save(tmp_path / "a.png", Image.fromarray(pixels)))
    assert out.dtype == np.uint8 and out.shape == (24, 32, 3)
    np.testing.assert_array_equal(out, pixels)


def test_grayscale_is_repeated_over_three_channels(tmp_path):
    gray = np.full((10, 12), 100, dtype=np.uint8)
    out = read_image(_save(tmp_path / "g.png", Image.fromarray(gray, mode="L")))
    assert out.shape == (10, 12, 3)
    assert (out == 100).all()


def test_rgba_alpha_is_dropped_not_composited(tmp_path):
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[...] = (10, 20, 30, 0)  # fully transparent: compositing would give black
    out = read_image(_save(tmp_path / "a.png", Image.fromarray(rgba, mode="RGBA")))
    assert out.shape == (8, 8, 3)
    assert (out == (10, 20, 30)).all()


def test_la_mode_becomes_gray_rgb(tmp_path):
    la = Image.new("LA", (6, 5), (77, 0))
    out = read_image(_save(tmp_path / "la.png", la))
    assert out.shape == (5, 6, 3) and (out == 77).all()


@pytest.mark.parametrize("transparency", [False, True])
def test_palette_image_uses_palette_colours(tmp_path, transparency):
    pixels = _noise_rgb(16, 16)
    palette = Image.fromarray(pixels).quantize(colors=8)
    kwargs = {"transparency": 0} if transparency else {}
    path = _save(tmp_path / "p.png", palette, **kwargs)
    assert _mode(path) == "P"
    out = read_image(path)
    np.testing.assert_array_equal(out, np.asarray(palette.convert("RGB")))


def test_one_bit_image_is_black_and_white(tmp_path):
    bits = np.zeros((6, 8), dtype=bool)
    bits[:, 4:] = True
    out = read_image(_save(tmp_path / "b.png", Image.fromarray(bits)))
    assert out.shape == (6, 8, 3)
    assert (out[:, :4] == 0).all() and (out[:, 4:] == 255).all()


def test_sixteen_bit_png_is_scaled_by_257(tmp_path):
    values = np.array([[0, 257 * 100, 65535, 257 * 200]], dtype=np.uint16).repeat(3, axis=0)
    path = _save(tmp_path / "d.png", Image.fromarray(values))
    assert _mode(path).startswith("I")
    out = read_image(path)
    assert out.dtype == np.uint8 and out.shape == (3, 4, 3)
    np.testing.assert_array_equal(out[0, :, 0], [0, 100, 255, 200])


def test_float_tiff_in_unit_range_is_scaled(tmp_path):
    values = np.array([[0.0, 0.25, 1.0]], dtype=np.float32).repeat(2, axis=0)
    out = read_image(_save(tmp_path / "f.tif", Image.fromarray(values)))
    np.testing.assert_array_equal(out[0, :, 1], [0, 64, 255])


def test_float_tiff_beyond_unit_range_is_clipped(tmp_path):
    values = np.array([[-5.0, 100.0, 300.0]], dtype=np.float32).repeat(2, axis=0)
    out = read_image(_save(tmp_path / "f.tif", Image.fromarray(values)))
    np.testing.assert_array_equal(out[0, :, 2], [0, 100, 255])


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    cmyk = Image.new("CMYK", (16, 12), (0, 255, 255, 0))  # pure red in CMYK
    out = read_image(_save(tmp_path / "c.jpg", cmyk, quality=95))
    assert out.shape == (12, 16, 3)
    red, green, blue = out.reshape(-1, 3).mean(axis=0)
    assert red > 200 and green < 60 and blue < 60


@pytest.mark.parametrize("name", ["x.tif", "x.tiff", "x.bmp", "x.jpg", "x.jpeg", "X.PNG"])
def test_common_formats_read_as_rgb(tmp_path, name):
    pixels = _noise_rgb(20, 30)
    out = read_image(_save(tmp_path / name, Image.fromarray(pixels)))
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8
    if not name.endswith(("jpg", "jpeg")):
        np.testing.assert_array_equal(out, pixels)


def test_exif_orientation_is_applied(tmp_path):
    pixels = _noise_rgb(20, 40)  # 40 wide, 20 high
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = _save(tmp_path / "phone.jpg", Image.fromarray(pixels), exif=exif, quality=95)
    out = read_image(path)
    assert out.shape == (40, 20, 3)
    assert read_image_size(path) == (40, 20)


def test_non_ascii_path_with_spaces(tmp_path):
    path = _save(tmp_path / "Prüfung 日本" / "bild mit leerzeichen.png", Image.fromarray(_noise_rgb()))
    assert read_image(path).shape == (24, 32, 3)
    assert read_image(str(path)).shape == (24, 32, 3)


def test_pil_limit_is_restored(tmp_path):
    before = Image.MAX_IMAGE_PIXELS
    read_image(_save(tmp_path / "a.png", Image.fromarray(_noise_rgb())))
    assert Image.MAX_IMAGE_PIXELS == before


# --- errors --------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    path = tmp_path / "nope.png"
    with pytest.raises(InputError, match=rf"image {_re(path)} does not exist"):
        read_image(path)


def test_folder_instead_of_file(tmp_path):
    with pytest.raises(InputError, match="is not a file"):
        read_image(tmp_path)


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(InputError, match=rf"{_re(path)} is empty \(0 bytes\)"):
        read_image(path)


def test_text_file_named_png(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is not an image\n")
    with pytest.raises(InputError, match=rf"cannot read image {_re(path)}: .*expected a PNG, JPEG, BMP or TIFF"):
        read_image(path)


@pytest.mark.parametrize("name", ["cut.png", "cut.jpg"])
def test_truncated_file(tmp_path, name):
    full = _save(tmp_path / f"full_{name}", Image.fromarray(_noise_rgb(64, 64)))
    path = tmp_path / name
    path.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(InputError, match=rf"cannot read image {_re(path)}: "):
        read_image(path)


def test_one_pixel_image(tmp_path):
    path = _save(tmp_path / "dot.png", Image.new("RGB", (1, 1)))
    with pytest.raises(InputError, match=r"is 1x1 pixels; expected at least 2x2"):
        read_image(path)


def test_decompression_bomb_is_refused_before_decoding(tmp_path, monkeypatch):
    path = _save(tmp_path / "big.png", Image.new("RGB", (30, 20)))
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 500)
    with pytest.raises(InputError, match=rf"{_re(path)} is 30x20 = 600 pixels.*limit of 500.*MAX_IMAGE_PIXELS"):
        read_image(path)


def test_pixel_limit_environment_variable(tmp_path, monkeypatch):
    path = _save(tmp_path / "big.png", Image.new("RGB", (30, 20)))
    monkeypatch.setenv("FLOWAD_MAX_IMAGE_PIXELS", "100")
    with pytest.raises(InputError, match="limit of 100 pixels"):
        read_image(path)
    monkeypatch.setenv("FLOWAD_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(InputError, match="FLOWAD_MAX_IMAGE_PIXELS is 'lots'"):
        read_image(path)


# --- masks ---------------------------------------------------------------------------------------


def test_non_binary_mask_is_thresholded_at_half_range(tmp_path):
    values = np.array([[0, 100, 127, 128, 200, 255]], dtype=np.uint8).repeat(2, axis=0)
    mask = read_mask(_save(tmp_path / "m.png", Image.fromarray(values)))
    assert mask.dtype == bool and mask.shape == (2, 6)
    np.testing.assert_array_equal(mask[0], [False, False, False, True, True, True])


def test_one_bit_and_sixteen_bit_and_colour_masks(tmp_path):
    bits = np.zeros((4, 4), dtype=bool)
    bits[1:3, 1:3] = True
    np.testing.assert_array_equal(read_mask(_save(tmp_path / "b.png", Image.fromarray(bits))), bits)
    deep = (bits * 65535).astype(np.uint16)
    np.testing.assert_array_equal(read_mask(_save(tmp_path / "d.png", Image.fromarray(deep))), bits)
    red = np.zeros((4, 4, 3), dtype=np.uint8)
    red[bits] = (255, 0, 0)
    np.testing.assert_array_equal(read_mask(_save(tmp_path / "r.png", Image.fromarray(red))), bits)


def test_mask_size_mismatch_names_both_sizes(tmp_path):
    path = _save(tmp_path / "m.png", Image.new("L", (30, 20)))
    assert read_mask(path, expected_size=(20, 30)).shape == (20, 30)
    with pytest.raises(InputError, match=rf"mask {_re(path)} is 30x20 but its image is 20x30; expected the same size"):
        read_mask(path, expected_size=(30, 20))


def test_mask_errors_say_mask(tmp_path):
    with pytest.raises(InputError, match=r"^mask .* does not exist"):
        read_mask(tmp_path / "gone.png")


def _mode(path: Path) -> str:
    with Image.open(path) as image:
        return image.mode


def _re(path: Path) -> str:
    """The full path as it appears in messages, escaped for pytest's regex match."""
    import re

    return re.escape(str(path.absolute()))
