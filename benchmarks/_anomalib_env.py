"""anomalib's own virtual environment (``.venv-anomalib/`` at the repository root): created on first use and
checked on every use by ``vs_anomalib.py``.

    python benchmarks/_anomalib_env.py [--venv .venv-anomalib]   # create or check it, print what it runs

It is created with ``--system-site-packages`` over the base interpreter of the Python that runs this. When that
Python is itself a virtual environment (flowad's), its packages are not visible there, so anomalib's install
brings torch from the package index: the install pins it to this side's release (``torch==2.14.1``, the local
tag dropped, torchvision likewise), and onnx, onnxruntime and openvino to this side's versions where this side
has them. onnxscript comes too: anomalib 2.7 exports ONNX only with torch's dynamo exporter, which needs it.

Both sides must run the same torch: the same release and build, i.e. equal ``torch.__version__`` (with its
local tag, +cpu or +cu130), ``torch.version.cuda``, ``torch.version.hip`` and ``torch.version.git_version``
(the commit it was built from). Where it is installed does not matter. One difference is let through, with a
note: the same release built from the same commit for another accelerator (e.g. this side's +cpu wheel and
the index's +cu130 one, which pip cannot tell apart by ``torch==2.14.1``), since the comparison runs on the
CPU, whose code is then the same. This module imports only the standard library at module level: ``--probe``
runs it inside the anomalib environment.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

ANOMALIB_VERSION = "2.7.0"
REPOSITORY = Path(__file__).resolve().parent.parent
# what the anomalib environment needs beyond anomalib: torch's pair, and the export and deployment runtimes
PINNED_LIKE_THIS_SIDE = ("torch", "torchvision", "onnx", "onnxruntime", "openvino")
UNPINNED = ("onnxscript", "safetensors")
# what makes a torch the torch it is: the release and the commit (must be equal on both sides) ...
SAME_CODE_FIELDS = {"release": "torch.__version__ without its local tag", "git": "torch.version.git_version"}
# ... and the accelerator it was built for (may differ, with a note: the comparison runs on the CPU)
ACCELERATOR_FIELDS = {"version": "torch.__version__", "cuda": "torch.version.cuda", "hip": "torch.version.hip"}


def installed(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def torch_build() -> dict:
    """What makes this process's torch the torch it is (and, for the reader, where it lies)."""
    import torch

    return {
        "version": torch.__version__,
        "release": torch.__version__.split("+")[0],
        "cuda": torch.version.cuda,
        "hip": torch.version.hip,
        "git": torch.version.git_version,
        "file": torch.__file__,
    }


def probe_here() -> dict:
    """The packages of this Python that the comparison depends on, and its torch's build."""
    found: dict = {name: installed(name) for name in ("anomalib", *PINNED_LIKE_THIS_SIDE, *UNPINNED)}
    try:
        found["torch_build"] = torch_build()
    except Exception as err:  # noqa: BLE001 - reported, not raised: the caller says what is wrong
        found["torch_error"] = repr(err)
    if found["anomalib"]:
        try:
            import anomalib  # noqa: F401 - installed is not enough: it must import next to this torch
        except Exception as err:  # noqa: BLE001
            found["anomalib_error"] = repr(err)
    return found


def probe(python: Path) -> dict | None:
    """:func:`probe_here` run by another Python; None when it cannot run."""
    if not python.exists():
        return None
    out = subprocess.run(
        [str(python), "-W", "ignore", __file__, "--probe"], capture_output=True, text=True, cwd=REPOSITORY
    )
    if out.returncode != 0:
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def build_differences(ours: dict, theirs: dict | None, fields: dict[str, str]) -> list[str]:
    """Which of ``fields`` differ between two torch builds, one line each naming both values."""
    if theirs is None:
        return ["torch does not import there"]
    return [
        f"{shown} is {theirs.get(key)!r} there, {ours.get(key)!r} here"
        for key, shown in fields.items()
        if theirs.get(key) != ours.get(key)
    ]


def accelerator_note(ours: dict, theirs: dict) -> str | None:
    """A note when both sides run the same torch code built for different accelerators; None when the same."""
    differences = build_differences(ours, theirs, ACCELERATOR_FIELDS)
    if not differences:
        return None
    return (
        f"torch {ours['release']} from the same commit on both sides, built for another accelerator: "
        + "; ".join(differences)
        + " (the comparison runs on the CPU)"
    )


def requirements(here: dict) -> list[str]:
    """anomalib and its company, pinned to this side's releases where this side has them."""
    reqs = [f"anomalib=={ANOMALIB_VERSION}"]
    for name in PINNED_LIKE_THIS_SIDE:
        release = here[name].split("+")[0] if here.get(name) else None
        reqs.append(f"{name}=={release}" if release else name)
    return reqs + list(UNPINNED)


def problems(found: dict | None, here: dict) -> list[str]:
    """Why the environment cannot serve as anomalib's side (empty when it can)."""
    if found is None:
        return ["its Python does not run"]
    out = []
    if found.get("anomalib") != ANOMALIB_VERSION:
        out.append(f"anomalib is {found.get('anomalib')}, not {ANOMALIB_VERSION}")
    if found.get("anomalib_error"):
        out.append(f"`import anomalib` fails: {found['anomalib_error']}")
    out += [f"{name} is not installed" for name in ("onnxscript", "onnxruntime", "openvino") if not found.get(name)]
    different = build_differences(here["torch_build"], found.get("torch_build"), SAME_CODE_FIELDS)
    out += [f"not the same torch: {d}" for d in different]
    return out


def pip_install(python: Path, reqs: list[str]) -> None:
    print(f"installing into {python.parent.parent}: {' '.join(reqs)}", flush=True)
    if subprocess.run([str(python), "-m", "pip", "install", "--quiet", *reqs]).returncode != 0:
        raise SystemExit(f"pip could not install {' '.join(reqs)} into {python.parent.parent} (its messages above)")


def ensure_anomalib(venv: Path) -> dict:
    """anomalib ``ANOMALIB_VERSION`` in ``venv`` (created when missing) on this side's torch build; returns what
    it runs (:func:`probe_here` there). Exits naming every difference when the environment cannot be made so."""
    python = venv / "bin" / "python"
    here = probe_here()
    if "torch_build" not in here:
        raise SystemExit(f"torch does not import in {sys.executable}: {here.get('torch_error')}")
    if not python.exists():
        print(f"creating {venv} (--system-site-packages over {sys.base_prefix})", flush=True)
        subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    wrong = problems(probe(python), here)
    if wrong:
        print(f"{venv}: " + "; ".join(wrong), flush=True)
        pip_install(python, requirements(here))
        wrong = problems(probe(python), here)
    if wrong:
        raise SystemExit(
            f"{venv} cannot serve as anomalib's side: " + "; ".join(wrong) + ". Both sides must run the same "
            f"torch; remove {venv} to have it made again, or install torch=={here['torch_build']['release']} "
            "from the index this side's came from there."
        )
    found = probe(python)
    found["torch_note"] = accelerator_note(here["torch_build"], found["torch_build"])
    if found["torch_note"]:
        print(f"note: {found['torch_note']}", flush=True)
    return found


def describe(found: dict) -> str:
    build = found["torch_build"]
    return (
        f"anomalib {found['anomalib']} on torch {build['version']} (CUDA {build['cuda']}, git {build['git'][:10]}) "
        f"from {build['file']}; torchvision {found['torchvision']}, onnxruntime {found['onnxruntime']}, "
        f"openvino {found['openvino']}, onnxscript {found['onnxscript']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--venv", default=str(REPOSITORY / ".venv-anomalib"), help="anomalib's virtual environment")
    parser.add_argument("--probe", action="store_true", help="print this Python's packages as JSON (used inside)")
    args = parser.parse_args()
    if args.probe:
        print(json.dumps(probe_here()))
        return
    found = ensure_anomalib(Path(args.venv).resolve())
    here = torch_build()
    print(f"{args.venv}: {describe(found)}")
    print(f"this side: torch {here['version']} (CUDA {here['cuda']}, git {here['git'][:10]}) from {here['file']}")
    print(found["torch_note"] or "the same torch build on both sides")


if __name__ == "__main__":
    main()
