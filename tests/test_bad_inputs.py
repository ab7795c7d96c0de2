"""A corpus of bad inputs, each with its documented behaviour: accepted and converted, or a clear InputError.

Image files go through the data set loader (list_images + ImageDataset) and through ``flowad predict``;
data set problems (masks, empty folders, symlink loops) through the loaders and ``flowad train``.
docs/bad_inputs.md lists every case with the test that checks it.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from helpers import DEMO_TEST_IMAGES, TINY_TRAIN
from PIL import Image

from flowad.cli import main
from flowad.data import images
from flowad.data.datasets import ImageDataset, Sample, folder_splits, list_images, mvtec_splits
from flowad.data.images import read_image, read_mask
from flowad.errors import InputError
from flowad.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess

Check = Callable[[np.ndarray], bool]

# --- writers -------------------------------------------------------------------------------------


def _noise(height: int = 64, width: int = 64) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _saved(image: Image.Image, **kwargs: object) -> Callable[[Path], None]:
    return lambda path: image.save(path, **kwargs)


def _truncated(fmt: str) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        buffer = io.BytesIO()
        Image.fromarray(_noise()).save(buffer, format=fmt)
        path.write_bytes(buffer.getvalue()[: buffer.tell() // 2])

    return write


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _bomb(path: Path) -> None:
    """A valid PNG header claiming 20000x20000 1-bit pixels with one row of data: 82 bytes on disk."""
    header = struct.pack(">IIBBBBB", 20000, 20000, 1, 0, 0, 0, 0)
    rows = zlib.compress(bytes(1 + 20000 // 8))
    chunks = _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", rows) + _png_chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunks)


def _tiff_with_float_offsets(path: Path) -> None:
    """A TIFF whose StripOffsets tag is typed FLOAT: Pillow raised TypeError on it (found by tests/test_fuzz.py)."""
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, format="TIFF")
    data = bytearray(buffer.getvalue())
    ifd = struct.unpack_from("<I", data, 4)[0]
    for i in range(struct.unpack_from("<H", data, ifd)[0]):
        entry = ifd + 2 + 12 * i
        if struct.unpack_from("<H", data, entry)[0] == 273:  # StripOffsets
            struct.pack_into("<H", data, entry + 2, 11)  # type FLOAT
    path.write_bytes(bytes(data))


def _exif_rotated(path: Path) -> None:
    """40 wide, 20 high, left half black; EXIF orientation 6 shows it turned clockwise (20 wide, 40 high)."""
    pixels = np.full((20, 40, 3), 255, dtype=np.uint8)
    pixels[:, :20] = 0
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(path, exif=exif, quality=95)


def _palette(path: Path) -> None:
    image = Image.new("RGB", (30, 20), (200, 30, 60)).quantize(colors=4)
    assert image.mode == "P"
    image.save(path)


def _symlink_to(target: str) -> Callable[[Path], None]:
    return lambda path: path.symlink_to(target)


def _constant(rgb: tuple[int, int, int], tol: int = 0) -> Check:
    return lambda out: bool(np.abs(out.astype(int) - rgb).max() <= tol)


def _upright(out: np.ndarray) -> bool:
    """The EXIF case after orientation: the black half is on top."""
    half = out.shape[0] // 2
    return bool(out[:half].mean() < 30 and out[half:].mean() > 225)


# --- the corpus ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    name: str  # file name in the corpus folder
    write: Callable[[Path], None]
    error: str | None = None  # regex of the InputError, with {path} for the file's full path; None: accepted
    check: Check | None = None  # for accepted files: a test of the RGB pixels (any size)
    size: tuple[int, int] = (30, 20)  # (W, H) of an accepted file as read, EXIF orientation applied
    listed: bool = True  # whether list_images lists it (symlink loops are skipped)


CORPUS = [
    Case("empty.png", lambda path: path.write_bytes(b""), error=r"image {path} is empty \(0 bytes\)"),
    Case("truncated.png", _truncated("PNG"), error=r"cannot read image {path}: .*expected a PNG, JPEG, BMP or TIFF"),
    Case("truncated.jpg", _truncated("JPEG"), error=r"cannot read image {path}: "),
    Case(
        "notes.png", lambda path: path.write_text("not an image\n"), error=r"cannot read image {path}: cannot identify"
    ),
    Case("dot.png", _saved(Image.new("RGB", (1, 1))), error=r"image {path} is 1x1 pixels; expected at least 2x2"),
    Case("bomb.png", _bomb, error=r"image {path} is 20000x20000 = 400000000 pixels, more than the limit of 100000000"),
    Case("float_offsets.tif", _tiff_with_float_offsets, error=r"cannot read image {path}: "),
    Case("loop.png", _symlink_to("loop.png"), error=r"image {path} is a broken or looping symbolic link", listed=False),
    Case("dirloop.png", _symlink_to("."), error=r"image {path} is not a file", listed=False),
    Case("gray.png", _saved(Image.new("L", (30, 20), 77)), check=_constant((77, 77, 77))),
    Case("deep.png", _saved(Image.fromarray(np.full((20, 30), 257 * 100, np.uint16))), check=_constant((100,) * 3)),
    Case("palette.png", _palette, check=_constant((200, 30, 60))),
    Case(
        "cmyk.jpg", _saved(Image.new("CMYK", (30, 20), (0, 255, 255, 0)), quality=95), check=_constant((255, 0, 0), 2)
    ),
    Case("rgba.png", _saved(Image.new("RGBA", (30, 20), (10, 20, 30, 0))), check=_constant((10, 20, 30))),
    Case("phone.jpg", _exif_rotated, check=_upright, size=(20, 40)),
    Case("bild mit leerzeichen ü 日本.png", _saved(Image.new("RGB", (30, 20), (1, 2, 3))), check=_constant((1, 2, 3))),
    Case("dup.png", _saved(Image.new("RGB", (30, 20), (9, 9, 9))), check=_constant((9, 9, 9))),
    Case("dup.jpg", _saved(Image.new("RGB", (30, 20), (9, 9, 9))), check=_constant((9, 9, 9), 2)),
]
BAD = [case for case in CORPUS if case.error]
GOOD = [case for case in CORPUS if not case.error]


def _write_corpus(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for case in CORPUS:
        case.write(folder / case.name)
    (folder / "readme.txt").write_text("not an image suffix: never listed\n")


def _pattern(case: Case, path: Path) -> str:
    return case.error.format(path=re.escape(str(path.absolute())))


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data(demo_data: Path) -> Path:
    """The demo data set, under a root whose name has spaces and non-ASCII letters."""
    return demo_data


@pytest.fixture(scope="module")
def run(fastflow_run: Path) -> Path:
    """The session's FastFlow run, trained on ``data``; these tests only read it."""
    return fastflow_run


@pytest.fixture
def broken(demo_data_copy: Path) -> Path:
    """A copy of the data set to break."""
    return demo_data_copy


def _train_fails(root: Path, out: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """``flowad train`` on a broken data set: exit status 2 and one error line; returns that line."""
    capsys.readouterr()
    code = main(["train", "--data", str(root), "--category", "fabric", "--out", str(out), *TINY_TRAIN])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("flowad: error: ") and err.count("\n") == 1
    return err


# --- image files ---------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CORPUS, ids=[case.name for case in CORPUS])
def test_corpus_through_the_data_set_loader(case: Case, tmp_path: Path) -> None:
    path = tmp_path / case.name
    case.write(path)
    Image.new("RGB", (4, 4)).save(tmp_path / "other.png")  # so that the folder is never empty
    assert (path.absolute() in list_images(tmp_path)) == case.listed
    dataset = ImageDataset([Sample(path, 0)], Preprocess(16, mean=(0, 0, 0), std=(1, 1, 1)))
    if case.error:
        with pytest.raises(InputError, match=_pattern(case, path)):
            dataset[0]
        return
    image = dataset[0]["image"]
    assert image.shape == (3, 16, 16)
    assert case.check(np.rint(image.permute(1, 2, 0).numpy() * 255).astype(np.uint8))


def test_corpus_through_predict(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "Eingänge mit Leerzeichen"
    _write_corpus(folder)
    loop = next(case for case in CORPUS if case.name == "loop.png")
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(["predict", "--run", str(run), "--input", str(folder), str(folder / loop.name), "--out", str(out)]) == 0
    said = capsys.readouterr().err.splitlines()
    assert said[0].startswith("scoring with the ")
    lines = said[1:]
    # one warning per bad file, in list_images order, then the loop named on the command line; then a summary
    expected = [*sorted((case for case in BAD if case.listed), key=lambda case: case.name), loop]
    assert len(lines) == len(expected) + 1
    for case, line in zip(expected, lines, strict=False):
        assert line.startswith("warning: skipped ") and re.search(_pattern(case, folder / case.name), line), line
    summary = rf"scored {len(GOOD)} images \(\d+ anomalous\), skipped {len(expected)}; results in {re.escape(str(out))}"
    assert re.fullmatch(summary, lines[-1]), lines[-1]
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    by_name = {Path(record["path"]).name: record for record in records}
    assert sorted(by_name) == sorted(case.name for case in GOOD)
    for case in GOOD:  # outputs at the image's own size, EXIF orientation applied
        record = by_name[case.name]
        with Image.open(record["mask"]) as mask, Image.open(record["heatmap"]) as heatmap:
            assert mask.size == case.size == heatmap.size
    # dup.jpg and dup.png: both scored, their outputs under distinct stems
    assert {Path(by_name[name]["mask"]).name for name in ("dup.jpg", "dup.png")} == {"dup_mask.png", "dup-2_mask.png"}


def test_bomb_is_refused_before_decoding_and_the_limit_can_be_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bomb = tmp_path / "bomb.png"
    _bomb(bomb)
    assert bomb.stat().st_size < 100
    with pytest.raises(InputError, match=rf"^mask {re.escape(str(bomb))} is 20000x20000 = 400000000 pixels"):
        read_mask(bomb)
    # FLOWAD_MAX_IMAGE_PIXELS raises a (here lowered) module limit; a real image, as decoding the bomb costs GBs
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 1000)
    big = tmp_path / "big.png"
    Image.new("RGB", (40, 40)).save(big)
    with pytest.raises(InputError, match="40x40 = 1600 pixels, more than the limit of 1000 pixels"):
        read_image(big)
    monkeypatch.setenv("FLOWAD_MAX_IMAGE_PIXELS", "2000")
    assert read_image(big).shape == (40, 40, 3)


def test_predict_names_the_pixel_limit(
    run: Path, data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    image = data / "fabric" / "test" / "good" / "000.png"
    monkeypatch.setenv("FLOWAD_MAX_IMAGE_PIXELS", "1000")
    capsys.readouterr()
    # the only input is unreadable: nothing to score, so an error (exit 2) after the warning that says why
    assert main(["predict", "--run", str(run), "--input", str(image), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"warning: skipped image {image} is 64x64 = 4096 pixels, more than the limit of 1000 pixels" in err
    assert "no input image could be read (1 skipped, see the warnings above)" in err


def test_data_root_with_spaces_and_non_ascii_letters(run: Path, data: Path) -> None:
    assert " " in str(data) and "é" in str(data)
    assert json.loads((run / "config.json").read_text(encoding="utf-8"))["data"]["root"] == str(data)


# --- masks ---------------------------------------------------------------------------------------


def test_train_refuses_a_mask_of_the_wrong_size(
    broken: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mask = broken / "fabric" / "ground_truth" / "hole" / "000_mask.png"
    Image.new("L", (32, 64)).save(mask)
    image = broken / "fabric" / "test" / "hole" / "000.png"
    err = _train_fails(broken, tmp_path / "run", capsys)
    assert f"mask {mask} is 32x64 but its image {image} is 64x64; expected the same size" in err


def test_non_binary_mask_is_thresholded_at_half_range(broken: Path) -> None:
    mask = broken / "fabric" / "ground_truth" / "hole" / "000_mask.png"
    ramp = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (64, 1))  # 0, 4, ..., 252 across
    Image.fromarray(ramp).save(mask)
    sample = next(s for s in mvtec_splits(broken, "fabric").test if s.defect == "hole")
    item = ImageDataset([sample], Preprocess(64, IMAGENET_MEAN, IMAGENET_STD))[0]
    np.testing.assert_array_equal(item["mask"][0].numpy(), (ramp > 127).astype(np.float32))


def test_train_refuses_a_missing_mask(broken: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mask = broken / "fabric" / "ground_truth" / "stain" / "000_mask.png"
    mask.unlink()
    image = broken / "fabric" / "test" / "stain" / "000.png"
    err = _train_fails(broken, tmp_path / "run", capsys)
    assert f"anomalous image {image} has no mask; expected {mask}" in err


@pytest.mark.parametrize("other", ["000.png", "000_mask.tif"])
def test_train_refuses_two_candidate_masks(
    broken: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], other: str
) -> None:
    folder = broken / "fabric" / "ground_truth" / "hole"
    shutil.copy(folder / "000_mask.png", folder / other)
    image = broken / "fabric" / "test" / "hole" / "000.png"
    err = _train_fails(broken, tmp_path / "run", capsys)
    first, second = sorted([folder / "000_mask.png", folder / other], key=lambda p: p.stem != "000_mask")
    assert f"image {image} has 2 candidate masks: {first} and {second}; expected exactly one" in err


def test_mask_folder_may_be_the_image_folder_but_not_with_duplicate_stems(tmp_path: Path) -> None:
    normal, abnormal = tmp_path / "normal", tmp_path / "abnormal"
    normal.mkdir()
    abnormal.mkdir()
    for i in range(5):
        Image.new("RGB", (8, 8)).save(normal / f"n{i}.png")
    Image.new("RGB", (8, 8)).save(abnormal / "a.png")
    Image.new("L", (8, 8)).save(abnormal / "a_mask.png")
    bad = [s for s in folder_splits(normal, abnormal, mask_dir=abnormal).test if s.label == 1]
    assert [(s.path.name, s.mask_path.name) for s in bad] == [("a.png", "a_mask.png")]  # not a.png itself
    Image.new("RGB", (8, 8)).save(abnormal / "a.tif")
    with pytest.raises(
        InputError, match=r"a.png has 2 candidate masks: .*a_mask.png and .*a.tif; expected exactly one"
    ):
        folder_splits(normal, abnormal, mask_dir=abnormal)


def test_duplicate_stems_in_a_defect_folder_share_their_mask(broken: Path) -> None:
    hole = broken / "fabric" / "test" / "hole"
    with Image.open(hole / "000.png") as image:
        image.save(hole / "000.jpg")
    samples = [s for s in mvtec_splits(broken, "fabric").test if s.defect == "hole"]
    assert [s.path.name for s in samples] == ["000.jpg", "000.png", "001.png"]
    masks = broken / "fabric" / "ground_truth" / "hole"
    assert {s.mask_path for s in samples[:2]} == {masks / "000_mask.png"}
    assert samples[2].mask_path == masks / "001_mask.png"


# --- folders -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("emptied", "message"),
    [
        ("train/good", "folder {folder} contains no images (expected .png"),
        ("test", "folder {folder} has no subfolders; expected one folder per defect type"),
        ("", "category 'fabric' not found: {folder} has no 'train' folder"),
    ],
    ids=["train-good", "test", "category"],
)
def test_train_refuses_an_empty_folder(
    broken: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], emptied: str, message: str
) -> None:
    folder = broken / "fabric" / emptied
    shutil.rmtree(folder)
    folder.mkdir()
    err = _train_fails(broken, tmp_path / "run", capsys)
    assert message.format(folder=folder) in err


def test_train_names_an_unreadable_training_image(
    broken: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = broken / "fabric" / "train" / "good" / "003.png"
    image.write_bytes(image.read_bytes()[:200])
    err = _train_fails(broken, tmp_path / "run", capsys)
    assert f"cannot read image {image}: " in err


def test_list_images_skips_symlink_loops(tmp_path: Path) -> None:
    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    (tmp_path / "link.png").symlink_to("a.png")  # a link to an image counts
    (tmp_path / "self.png").symlink_to("self.png")
    (tmp_path / "b.png").symlink_to("c.png")
    (tmp_path / "c.png").symlink_to("b.png")
    (tmp_path / "here.png").symlink_to(".")
    (tmp_path / "up").symlink_to("..")
    assert [p.name for p in list_images(tmp_path)] == ["a.png", "link.png"]
    with pytest.raises(InputError, match=r"^mask .*b.png is a broken or looping symbolic link"):
        read_mask(tmp_path / "b.png")


def test_directory_symlink_loop_in_a_test_folder(
    broken: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    test = broken / "fabric" / "test"
    (test / "self").symlink_to("self")  # not a folder: skipped
    assert len(mvtec_splits(broken, "fabric").test) == DEMO_TEST_IMAGES["fabric"]
    (test / "loop").symlink_to("..")  # a folder, followed once (never recursively): a defect folder with no images
    err = _train_fails(broken, tmp_path / "run", capsys)
    assert f"folder {test / 'loop'} contains no images" in err
