"""On CI a skipped test fails the run unless its reason is documented in ci_policy.py."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

POLICY = Path(__file__).with_name("ci_policy.py")


def _run_pytest(folder: Path, ci: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    command = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", str(folder)]
    return subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=120)


def test_an_undocumented_skip_fails_on_ci_only(tmp_path: Path) -> None:
    shutil.copy(POLICY, tmp_path / "conftest.py")  # the policy alone, as a conftest
    (tmp_path / "test_skips.py").write_text(
        "import pytest\n\n"
        "def test_gone():\n    pytest.skip('some tool is missing')\n\n"
        "def test_gpu():\n    pytest.skip('needs a CUDA device')\n\n"
        "def test_runs():\n    assert True\n"
    )
    on_ci = _run_pytest(tmp_path, "true")
    assert on_ci.returncode == 1, on_ci.stdout
    assert "1 failed, 1 passed, 1 skipped" in on_ci.stdout
    assert "skipped on CI without a documented reason" in on_ci.stdout
    locally = _run_pytest(tmp_path, None)
    assert locally.returncode == 0, locally.stdout
    assert "1 passed, 2 skipped" in locally.stdout and "some tool is missing" in locally.stdout
