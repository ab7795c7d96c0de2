"""Reading images and defect masks from disk into numpy arrays.

Every reader turns the many modes Pillow can decode into one predictable format:

* :func:`read_image` gives ``uint8`` RGB arrays of shape ``(H, W, 3)``;
* :func:`read_mask` gives ``bool`` arrays of shape ``(H, W)`` (``True`` = defect).

Conversion rules (documented here because they decide what the model sees):

* ``L``, ``P``, ``1``, ``CMYK``, ``YCbCr`` and friends are converted by Pillow.
* Alpha channels (``RGBA``, ``LA``, ``PA``, palettes with transparency) are dropped,
  not composited: the colour values under the alpha are kept as they are.
* 16-bit grayscale (``I;16``, ``I;16B``, ``I;16L``) is scaled to 8 bits (value / 257).
  32-bit integer images (``I``) are taken to hold 16-bit data, as Pillow decodes 16-bit
  PNG/TIFF files that way, so they are clipped to ``[0, 65535]`` and scaled the same way.
* Float images (``F``) whose maximum is at most 1 are taken as ``[0, 1]`` data and
  multiplied by 255; otherwise their values are clipped to ``[0, 255]``.
* The EXIF orientation tag is applied, so a phone photo comes out the right way up.

Files larger than :data:`MAX_IMAGE_PIXELS` pixels are refused before they are decoded
(a guard against decompression bombs); the environment variable
``FLOWAD_MAX_IMAGE_PIXELS`` overrides the limit.
"""

from __future__ import annotations

import io
import os
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from flowad.errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
"""File suffixes flowad treats as images (matched case-insensitively)."""

MAX_IMAGE_PIXELS = 100_000_000
"""Largest image (width * height) flowad decodes; ``FLOWAD_MAX_IMAGE_PIXELS`` overrides it."""

MIN_IMAGE_SIDE = 2

_EXPECTED_FORMATS = "expected a PNG, JPEG, BMP or TIFF file"
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
# EXIF orientations 5-8 rotate by 90 degrees, which swaps width and height.
_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)
_EXIF_ORIENTATION = 0x0112

# What Pillow raises on malformed files: besides its documented OSError/ValueError, corrupt TIFF tags reach
# TypeError (a float or bytes where an offset belongs), and broken headers struct.error, EOFError or KeyError.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, IndexError, TypeError, KeyError, EOFError, struct.error)

_pil_limit_lock = threading.Lock()
_pil_limit_users = 0
_saved_pil_limit: int | None = None


def is_image_file(path: str | Path) -> bool:
    """True if ``path`` has one of :data:`IMAGE_SUFFIXES` (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as a ``uint8`` RGB array of shape ``(H, W, 3)``.

    Raises :class:`~flowad.errors.InputError` if the file is missing, empty, not a
    decodable image, truncated, smaller than 2x2 pixels or larger than
    :data:`MAX_IMAGE_PIXELS`.
    """
    with _open_decoded(path, "image") as img:
        return _rgb_array(img)


def decode_image(data: bytes, name: str = "in the request") -> np.ndarray:
    """An image sent as bytes (a request to the service) -> ``uint8`` RGB ``(H, W, 3)``, with the checks of
    :func:`read_image`; ``name`` says where it came from in the errors. Nothing touches the file system."""
    if not data:
        raise InputError(f"image {name} is empty (0 bytes); {_EXPECTED_FORMATS}")
    with _decoded(io.BytesIO(data), name, "image") as img:
        return _rgb_array(img)


def _rgb_array(img: Image.Image) -> np.ndarray:
    if img.mode in _SIXTEEN_BIT_MODES or img.mode == "F":
        gray = _gray_to_uint8(img)
        return np.repeat(gray[:, :, None], 3, axis=2)
    return np.asarray(_to_rgb(img), dtype=np.uint8).copy()


def read_mask(path: str | Path, expected_size: tuple[int, int] | None = None, any_nonzero: bool = False) -> np.ndarray:
    """Read a defect mask as a ``bool`` array of shape ``(H, W)``.

    The mask is converted to 8 bits (16-bit and float masks are scaled as described in
    the module docstring) and a pixel is defect if its value, or for colour masks any of
    its channels, is above 127.
    Masks that are not strictly binary (e.g. anti-aliased or JPEG-compressed) are thus
    thresholded at half range. With ``any_nonzero`` every nonzero value is defect instead,
    for data sets whose masks hold small labels such as 1 (VisA, MVTec LOCO); 16-bit and
    float masks are then compared before scaling. ``expected_size`` is the ``(H, W)`` of
    the image the mask belongs to; a mask of another size raises :class:`~flowad.errors.InputError`.
    """
    with _open_decoded(path, "mask") as img:
        if expected_size is not None and _hw(img) != tuple(expected_size):
            raise InputError(
                f"mask {_full(path)} is {_wxh(_hw(img))} but its image is {_wxh(expected_size)}; expected the same size"
            )
        if img.mode == "1":
            return np.asarray(img, dtype=bool).copy()
        cut = 0 if any_nonzero else 127
        if img.mode in _SIXTEEN_BIT_MODES or img.mode == "F":
            values = np.nan_to_num(np.asarray(img, dtype=np.float64)) if any_nonzero else _gray_to_uint8(img)
            return values > cut
        # Max over channels rather than luminance, so coloured (e.g. pure red) masks work too.
        return np.asarray(_to_rgb(img), dtype=np.uint8).max(axis=2) > cut


def read_image_size(path: str | Path) -> tuple[int, int]:
    """Return ``(H, W)`` of an image from its header, without decoding the pixels.

    The EXIF orientation is taken into account, so the size matches :func:`read_image`.
    """
    file = _check_file(path, "image")
    with _pil_limit_disabled():
        try:
            with Image.open(file) as img:
                height, width = _hw(img)
                orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
        except _DECODE_ERRORS as exc:
            raise _decode_error(file, "image", exc) from exc
    if orientation in _SWAPPING_ORIENTATIONS:
        return width, height
    return height, width


def pixel_limit() -> int:
    """The pixel limit in force: ``FLOWAD_MAX_IMAGE_PIXELS`` if set, else :data:`MAX_IMAGE_PIXELS`."""
    value = os.environ.get("FLOWAD_MAX_IMAGE_PIXELS")
    if value is None:
        return MAX_IMAGE_PIXELS
    try:
        limit = int(value)
    except ValueError:
        limit = 0
    if limit <= 0:
        raise InputError(f"FLOWAD_MAX_IMAGE_PIXELS is {value!r}; expected a positive whole number of pixels")
    return limit


@contextmanager
def _open_decoded(path: str | Path, kind: str) -> Iterator[Image.Image]:
    """Open, size-check, fully decode and orient an image; yields the Pillow image."""
    file = _check_file(path, kind)
    with _decoded(file, file, kind) as img:
        yield img


@contextmanager
def _decoded(source: Path | io.BytesIO, file: Path | str, kind: str) -> Iterator[Image.Image]:
    """Open ``source`` (named ``file`` in errors), size-check, fully decode and orient it."""
    with _pil_limit_disabled():
        try:
            img = Image.open(source)
        except _DECODE_ERRORS as exc:
            raise _decode_error(file, kind, exc) from exc
        with img:
            _check_size(file, kind, img)
            try:
                # load() forces the decode here, so a truncated file fails now and not later.
                img.load()
                oriented = ImageOps.exif_transpose(img)
            except _DECODE_ERRORS as exc:
                raise _decode_error(file, kind, exc) from exc
            yield oriented


@contextmanager
def _pil_limit_disabled() -> Iterator[None]:
    """Switch off Pillow's own bomb check: ours (:func:`_check_size`) replaces it.

    Pillow's limit is a global, so concurrent readers (threads) share one switch: the first
    one in turns it off and the last one out restores it.
    """
    global _saved_pil_limit, _pil_limit_users
    with _pil_limit_lock:
        if _pil_limit_users == 0:
            _saved_pil_limit = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None
        _pil_limit_users += 1
    try:
        yield
    finally:
        with _pil_limit_lock:
            _pil_limit_users -= 1
            if _pil_limit_users == 0:
                Image.MAX_IMAGE_PIXELS = _saved_pil_limit


def _check_file(path: str | Path, kind: str) -> Path:
    file = _full(path)
    if not file.exists():
        problem = "is a broken or looping symbolic link" if file.is_symlink() else "does not exist"
        raise InputError(f"{kind} {file} {problem}; {_EXPECTED_FORMATS}")
    if not file.is_file():
        raise InputError(f"{kind} {file} is not a file; {_EXPECTED_FORMATS}")
    if file.stat().st_size == 0:
        raise InputError(f"{kind} {file} is empty (0 bytes); {_EXPECTED_FORMATS}")
    return file


def _check_size(file: Path, kind: str, img: Image.Image) -> None:
    width, height = img.size
    limit = pixel_limit()
    if width * height > limit:
        raise InputError(
            f"{kind} {file} is {width}x{height} = {width * height} pixels, more than the limit of "
            f"{limit} pixels; expected a smaller image (raise flowad.data.images.MAX_IMAGE_PIXELS or "
            "set the environment variable FLOWAD_MAX_IMAGE_PIXELS if the file is trusted)"
        )
    if width < MIN_IMAGE_SIDE or height < MIN_IMAGE_SIDE:
        raise InputError(
            f"{kind} {file} is {width}x{height} pixels; expected at least {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE}"
        )


def _decode_error(file: Path | str, kind: str, exc: BaseException) -> InputError:
    reason = str(exc) or type(exc).__name__
    if not isinstance(file, Path) and reason.startswith("cannot identify image file"):  # names a BytesIO
        reason = "not an image format Pillow can identify"
    return InputError(f"cannot read {kind} {file}: {reason}; {_EXPECTED_FORMATS}")


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any 8-bit-style mode to RGB, dropping alpha."""
    if img.mode == "RGB":
        return img
    if img.mode == "P" and "transparency" in img.info:
        # Going through RGBA avoids Pillow's warning about palette transparency.
        img = img.convert("RGBA")
    return img.convert("RGB")


def _gray_to_uint8(img: Image.Image) -> np.ndarray:
    """Scale a 16-bit, 32-bit integer or float grayscale image to uint8 (see module docstring)."""
    values = np.asarray(img).astype(np.float64)
    if img.mode == "F":
        values = np.nan_to_num(values, nan=0.0, posinf=255.0, neginf=0.0)
        if values.max(initial=0.0) <= 1.0:
            values = values * 255.0
    else:
        values = np.clip(values, 0, 65535) / 257.0
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def _hw(img: Image.Image) -> tuple[int, int]:
    width, height = img.size
    return height, width


def _wxh(hw: tuple[int, int]) -> str:
    return f"{hw[1]}x{hw[0]}"


def _full(path: str | Path) -> Path:
    return Path(path).expanduser().absolute()
