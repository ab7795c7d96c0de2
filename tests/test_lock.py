"""requirements.lock pins every dependency that pyproject.toml names, within its range, with hashes."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)")


def locked_versions(text: str) -> dict[str, str]:
    """name -> pinned version of every requirement line of a pip-compile lock."""
    pins = {}
    for line in text.splitlines():
        match = PIN.match(line)
        if match:
            pins[canonicalize_name(match.group(1))] = match.group(2)
    return pins


def declared_requirements(pyproject: dict) -> list[Requirement]:
    project = pyproject["project"]
    extras = [req for group in project.get("optional-dependencies", {}).values() for req in group]
    return [Requirement(req) for req in [*project["dependencies"], *extras]]


def test_every_declared_dependency_is_pinned_within_its_range() -> None:
    pins = locked_versions((ROOT / "requirements.lock").read_text(encoding="utf-8"))
    requirements = declared_requirements(tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8")))
    assert requirements
    for req in requirements:
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is in pyproject.toml but not pinned in requirements.lock"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"requirements.lock pins {req.name}=={pins[name]}, outside pyproject.toml's range {req.specifier}"
        )


def test_every_pin_carries_a_hash() -> None:
    text = (ROOT / "requirements.lock").read_text(encoding="utf-8")
    blocks = re.split(r"\n(?=[A-Za-z0-9])", text)
    pinned = [block for block in blocks if PIN.match(block)]
    assert pinned
    for block in pinned:
        assert "--hash=sha256:" in block, f"no hash for {block.splitlines()[0]}"


def test_the_lock_reader_sees_a_pin_outside_its_range() -> None:
    # the check above must be able to fail: a pin outside the declared range is caught
    pins = locked_versions("torch==9.0.0 \\\n    --hash=sha256:00\n")
    assert pins == {"torch": "9.0.0"}
    assert not Requirement("torch>=2.4,<=2.14.1").specifier.contains(pins["torch"])
