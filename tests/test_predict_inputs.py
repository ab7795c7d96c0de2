"""What ``flowad predict`` takes as input and how it names its outputs; where ``flowad export`` writes."""

import json
from pathlib import Path

import pytest
from helpers import DEMO_TEST_IMAGES
from PIL import Image

import flowad
from flowad import distributed
from flowad.cli import main
from flowad.data.datasets import list_images_at_any_depth
from flowad.errors import InputError


@pytest.fixture
def demo(demo_data: Path) -> Path:
    """The shared demo data set: fabric's test folder holds good/ and four defect folders, each with a 000.png."""
    return demo_data


@pytest.fixture
def run(fastflow_run: Path) -> Path:
    return fastflow_run  # read only: predictions and exports go to each test's own folder


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]


def _image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (90, 40, 20)).save(path)
    return path


def test_listing_at_any_depth_is_in_tree_order(tmp_path: Path) -> None:
    for name in ("c.png", "a.png", "b/001.png", "b/000.png", "b/deep/x.jpg", "a-b/y.png"):
        _image(tmp_path / name)
    _image(tmp_path / ".hidden" / "h.png")  # hidden folder: not entered
    _image(tmp_path / "b" / "000_mask.png")  # a mask beside its image: not an image to score
    _image(tmp_path / "out" / "old_heatmap.png")  # the output folder, when skipped
    (tmp_path / "b" / "up").symlink_to("..")  # a link to a folder is not followed, so it cannot loop
    found = list_images_at_any_depth(tmp_path, skip=[tmp_path / "out"])
    relative = [p.relative_to(tmp_path).as_posix() for p in found]
    # name by name, part by part: a subfolder's images stay together ("a-b" < "a.png" < "b")
    assert relative == ["a-b/y.png", "a.png", "b/000.png", "b/001.png", "b/deep/x.jpg", "c.png"]


def test_predict_mirrors_the_subfolders_of_an_mvtec_test_folder(run: Path, demo: Path, tmp_path: Path) -> None:
    test_root = demo / "fabric" / "test"
    expected = sorted((p.relative_to(test_root) for p in test_root.rglob("*.png")), key=lambda relative: relative.parts)
    assert (
        len(expected) == DEMO_TEST_IMAGES["fabric"] and sum(p.name == "000.png" for p in expected) == 5
    )  # equal stems in five folders
    out = tmp_path / "out"
    assert main(["predict", "--run", str(run), "--input", str(test_root), "--out", str(out), "--quiet"]) == 0
    records = _records(out)
    assert [r["relative_path"] for r in records] == [p.as_posix() for p in expected]  # sorted, every image once
    for record, relative in zip(records, expected, strict=True):
        assert Path(record["path"]) == test_root.absolute() / relative
        stem = out / relative.parent / relative.stem
        assert record["heatmap"] == f"{stem}_heatmap.png" and record["mask"] == f"{stem}_mask.png"
        assert Image.open(record["heatmap"]).size == (64, 64)
    assert (
        len(list(out.rglob("*_heatmap.png"))) == len(list(out.rglob("*_mask.png"))) == len(expected)
    )  # none overwritten


def test_files_given_directly_keep_flat_names(run: Path, demo: Path, tmp_path: Path) -> None:
    test_root = demo / "fabric" / "test"
    images = [test_root / "good" / "000.png", test_root / "hole" / "000.png"]
    records = flowad.predict(run, images, tmp_path / "out", quiet=True)
    assert [Path(r["heatmap"]).name for r in records] == ["000_heatmap.png", "000-2_heatmap.png"]
    assert [r["relative_path"] for r in records] == ["000.png", "000.png"]
    assert {p.parent for p in (tmp_path / "out").rglob("*.png")} == {tmp_path / "out"}


def test_an_output_folder_inside_the_input_folder_is_not_scored(run: Path, demo: Path, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    _image(folder / "a.png")
    _image(folder / "sub" / "b.png")
    for _ in range(2):  # the second run must not score the first one's heat maps and masks
        records = flowad.predict(run, [folder], folder / "scored", quiet=True)
        assert [r["relative_path"] for r in records] == ["a.png", "sub/b.png"]


def test_names_are_set_over_all_inputs_before_sharding(
    run: Path, demo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folders = sorted((demo / "fabric" / "test").iterdir())  # every folder holds a 000.png
    alone = flowad.predict(run, folders, tmp_path / "alone", quiet=True)
    monkeypatch.setattr(distributed, "shard", lambda items: items[1::2])  # the share of process 1 of 2
    share = flowad.predict(run, folders, tmp_path / "share", quiet=True)
    assert [Path(r["mask"]).name for r in share] == [Path(r["mask"]).name for r in alone[1::2]]
    assert len({Path(r["mask"]).name for r in alone}) == len(alone)


def test_a_folder_without_images_at_any_depth_exits_2(run: Path, tmp_path: Path, capsys) -> None:
    root = tmp_path / "test"
    (root / "good").mkdir(parents=True)
    (root / "scratch" / "deeper").mkdir(parents=True)
    (root / "scratch" / "notes.txt").write_text("no image here")
    out = tmp_path / "out"
    assert main(["predict", "--run", str(run), "--input", str(root), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("flowad: error: ") and "\n" not in err
    assert f"{root} holds no image files at any depth (looked for .png, .jpg" in err
    assert not out.exists()
    with pytest.raises(InputError, match="at any depth"):
        list_images_at_any_depth(root)


@pytest.mark.parametrize("kind", ["missing", "unreadable"])
def test_predict_with_no_readable_input_exits_2_and_writes_nothing(
    kind: str, run: Path, tmp_path: Path, capsys
) -> None:
    if kind == "missing":
        inputs = [tmp_path / "no" / "a.png", tmp_path / "no" / "b.jpg"]
    else:
        inputs = [tmp_path / "a.png", tmp_path / "b.png"]
        for path in inputs:
            path.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(["predict", "--run", str(run), "--input", *map(str, inputs), "--out", str(out)]) == 2
    said = capsys.readouterr().err.splitlines()
    assert said[0] == f"scoring with the openvino engine ({run / 'openvino' / 'model.xml'})"
    lines = said[1:]
    assert [line.startswith("warning: skipped ") for line in lines] == [True, True, False]
    assert all(str(path) in line for path, line in zip(inputs, lines, strict=False))
    why = "no input image could be read (2 skipped, see the warnings above)"
    assert lines[-1] == f"flowad: error: {why}; nothing written to {out}"
    assert not out.exists()


def test_predict_refuses_an_output_path_that_is_a_file(run: Path, demo: Path, tmp_path: Path, capsys) -> None:
    taken = tmp_path / "taken"
    taken.write_text("")
    image = demo / "fabric" / "test" / "good" / "000.png"
    assert main(["predict", "--run", str(run), "--input", str(image), "--out", str(taken)]) == 2
    assert f"output folder {taken} exists and is not a folder" in capsys.readouterr().err


def test_export_into_a_folder(run: Path, tmp_path: Path, capsys) -> None:
    existing = tmp_path / "models"
    existing.mkdir()
    assert main(["export", "--run", str(run), "--format", "onnx", "--out", str(existing)]) == 0
    assert (existing / "model.onnx").is_file() and f"wrote {existing / 'model.onnx'}" in capsys.readouterr().out
    new = tmp_path / "new"
    assert main(["export", "--run", str(run), "--out", f"{new}/"]) == 0  # a trailing separator names a folder
    assert (new / "model.onnx").is_file()
    assert sorted(p.name for p in existing.iterdir()) == ["model.onnx"]  # no temporary file left


def test_export_to_an_unwritable_path_is_one_line_exit_2(run: Path, tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("")
    out = blocker / "sub" / "m.onnx"
    capsys.readouterr()
    assert main(["export", "--run", str(run), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == f"flowad: error: cannot write the exported model to {out}: {blocker} is a file, not a folder\n"
