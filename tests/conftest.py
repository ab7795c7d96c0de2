"""Session fixtures: the tiny demo data set and a tiny trained run, each built once for the whole test session.

Both are read by many tests and must stay as built: a test that changes files copies them first
(``demo_data_copy``, or ``shutil.copytree`` into its own folder). Each is checked at the end of the session.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from ci_policy import pytest_runtest_makereport  # noqa: F401 - the hook: a skip on CI needs a documented reason
from helpers import DEMO_SEED, DEMO_SIZES, TINY_TRAIN

from flowad.cli import main
from flowad.data.synthetic import CATEGORIES, make_demo_dataset


def _contents(folder: Path) -> dict[str, str]:
    """Every file and link under ``folder``: its relative path and a digest of its bytes (or its target)."""
    found = {}
    for path in sorted(folder.rglob("*")):
        if path.is_symlink():
            found[str(path.relative_to(folder))] = f"link to {path.readlink()}"
        elif path.is_file():
            found[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def _unchanged(folder: Path, before: dict[str, str]) -> None:
    after = _contents(folder)
    changed = sorted(name for name in before.keys() | after.keys() if before.get(name) != after.get(name))
    assert not changed, f"a test changed the shared {folder} (copy it first): {changed}"


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The demo data set (both categories, sizes in helpers.DEMO_SIZES) under a folder whose name has spaces and
    non-ASCII letters, so that every test reading it also reads such paths."""
    root = tmp_path_factory.mktemp("demo") / "données à tester"
    make_demo_dataset(root, seed=DEMO_SEED, categories=CATEGORIES, **DEMO_SIZES)
    built = _contents(root)
    yield root
    _unchanged(root, built)


@pytest.fixture
def demo_data_copy(demo_data: Path, tmp_path: Path) -> Path:
    """A copy of the demo data set for one test to change."""
    return Path(shutil.copytree(demo_data, tmp_path / "demo copy", symlinks=True))


@pytest.fixture(scope="session")
def fastflow_run(demo_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """FastFlow trained by ``flowad train`` on the demo fabric with helpers.TINY_TRAIN, tested by ``flowad test``
    (so it holds metrics.json, test_outputs.npz and report.html) and exported to ONNX and OpenVINO."""
    run = tmp_path_factory.mktemp("runs") / "fastflow"
    assert main(["train", "--data", str(demo_data), "--category", "fabric", "--out", str(run), *TINY_TRAIN]) == 0
    assert main(["test", "--run", str(run), "--quiet"]) == 0
    # the files the default engine would export on first use, so that predicting leaves the run as it is
    assert main(["export", "--run", str(run), "--format", "onnx"]) == 0
    assert main(["export", "--run", str(run), "--format", "openvino"]) == 0
    built = _contents(run)
    yield run
    _unchanged(run, built)
