"""Several processes under torchrun (gloo on loopback): the same weights and predictions as one process,
categories shared out, and a clear failure that keeps the last finished epoch when a process dies."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from helpers import DEMO_TEST_IMAGES
from safetensors.torch import load_file

import flowad
from flowad import distributed
from flowad.checkpoint import load_train_state
from flowad.cli import main
from flowad.models.fastflow import FastFlow, FastFlowConfig

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="this torch has no torch.distributed with gloo"
)

TINY = {"image_size": 64, "epochs": 3, "batch_size": 4, "flow_steps": 2}
TIMEOUT = 20  # --dist-timeout for the processes started here


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the processes started below use one each too
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(demo_data: Path) -> Path:
    """The session's demo data set, both categories."""
    return demo_data


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(*args: str, processes: int = 2, wait: bool = True):
    """``python -m torch.distributed.run -m flowad -- ARGS`` on loopback; the ``--`` keeps torchrun off --run."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes)]
    launcher += ["--master-addr", "127.0.0.1", "--master-port", str(_free_port()), "-m", "flowad", "--"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen([*launcher, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if not wait:
        return proc
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err[-3000:]
    return out


def _train_args(data: Path, out: Path, **options) -> list[str]:
    args = ["train", "--data", str(data), "--category", "fabric", "--out", str(out), "--quiet"]
    args += ["--dist-timeout", str(TIMEOUT)]
    for key, value in {**TINY, **options}.items():
        args += ["--" + key.replace("_", "-"), str(value)]
    return args


def _max_difference(a: Path, b: Path) -> float:
    first, second = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert first.keys() == second.keys()
    return max((first[k] - second[k]).abs().max().item() for k in first)


@pytest.fixture(scope="module")
def runs(data: Path, tmp_path_factory) -> tuple[Path, Path]:
    """The same training as one process and as two."""
    root = tmp_path_factory.mktemp("runs")
    one = flowad.train("fastflow", data, out=root / "one", category="fabric", **TINY)
    out = _torchrun(*_train_args(data, root / "two"))
    assert out.count("run directory") == 1  # the main process alone reports
    return one, root / "two"


@pytest.mark.slow
def test_two_processes_train_the_weights_of_one(runs: tuple[Path, Path]) -> None:
    one, two = runs
    assert _max_difference(one, two) < 1e-5
    losses = [[e["loss"] for e in flowad.api.read_json(run / "train_log.json")["epochs"]] for run in runs]
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)  # the logged loss is the whole step's, not one share's
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())  # written once, whole


@pytest.mark.slow
def test_sharded_prediction_scores_every_image_once_as_one_process(
    runs: tuple[Path, Path], data: Path, tmp_path: Path
) -> None:
    run = runs[1]
    folders = [str(p) for p in sorted((data / "fabric" / "test").iterdir())]  # a 000.png in every folder
    alone = flowad.predict(run, folders, tmp_path / "one", quiet=True)
    _torchrun("predict", "--run", str(run), "--input", *folders, "--out", str(tmp_path / "two"), "--quiet")

    lines = (tmp_path / "two" / "predictions.jsonl").read_text().splitlines()
    shared = [json.loads(line) for line in lines]
    assert len(shared) == len(alone) == DEMO_TEST_IMAGES["fabric"]
    assert sorted(r["path"] for r in shared) == sorted({r["path"] for r in shared})  # none doubled
    for a, b in zip(alone, shared, strict=True):  # the same order, scores and output names
        assert b["path"] == a["path"] and b["anomalous"] == a["anomalous"]
        assert b["score"] == pytest.approx(a["score"], abs=1e-6)
        assert Path(b["heatmap"]).name == Path(a["heatmap"]).name and Path(b["heatmap"]).is_file()
    outputs = sorted(p.name for p in (tmp_path / "two").iterdir())
    assert outputs == sorted(p.name for p in (tmp_path / "one").iterdir())  # no part files left behind
    for name in outputs:
        if name.endswith("_mask.png"):
            assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


@pytest.mark.slow
def test_benchmark_shares_the_categories_and_prints_one_table(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    args = ["benchmark", "--data", str(data), "--categories", "fabric", "pill", "--out", str(out), "--quiet"]
    printed = _torchrun(*args, "--image-size", "64", "--epochs", "1", "--batch-size", "4", "--flow-steps", "2")
    assert printed.count("mean") == 1 and "fabric" in printed and "pill" in printed
    table = (out / "table.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in table] == ["category", "fabric", "pill", "mean"]
    for row in table[1:3]:
        category, auroc = row.split(",")[:2]
        assert float(auroc) == pytest.approx(flowad.api.read_json(out / category / "metrics.json")["image_auroc"])


def _child_with_rank(parent: int, rank: int) -> int:
    """The pid of the worker torchrun (``parent``) started as ``rank``, found through /proc."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and f"RANK={rank}".encode() in environ:
            return int(entry.name)
    raise AssertionError(f"no worker of rank {rank} under process {parent}")


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the worker processes through /proc")
@pytest.mark.slow
def test_a_killed_process_fails_the_job_clearly_and_the_last_epoch_resumes(data: Path, tmp_path: Path) -> None:
    run = tmp_path / "killed"
    epochs = {"epochs": 60}  # long enough to be killed in the middle
    proc = _torchrun(*_train_args(data, run, **epochs), wait=False)
    try:
        deadline = time.monotonic() + 120
        while not (run / "train_state.json").exists():  # the first epoch is saved
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
            time.sleep(0.05)
        os.kill(_child_with_rank(proc.pid, 1), signal.SIGKILL)
        killed = time.monotonic()
        _, err = proc.communicate(timeout=TIMEOUT + 40)
    finally:
        proc.kill()
    assert proc.returncode != 0 and time.monotonic() - killed < TIMEOUT + 40
    assert "flowad: error: process 0 of 2" in err and f"continue with flowad train --resume {run}" in err, err[-3000:]
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]  # no file left half-written

    net = FastFlow(FastFlowConfig(**{**TINY, **epochs}))
    optimizer = net.optimizer()
    saved = load_train_state(run, net, optimizer, None, torch.Generator())["epochs"]
    assert 1 <= len(saved) < 60
    assert main(["train", "--resume", str(run), "--quiet"]) == 0  # one process takes over
    finished = flowad.api.read_json(run / "train_log.json")["epochs"]
    assert [e["epoch"] for e in finished] == list(range(1, 61)) and finished[: len(saved)] == saved


def test_one_process_needs_no_process_group(monkeypatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with distributed.session(timeout=5):
        assert not dist.is_initialized()
        assert distributed.world_size() == 1 and distributed.is_main()
        assert list(distributed.shard(range(5))) == [0, 1, 2, 3, 4]
        assert distributed.on_main(lambda: 7) == 7 and distributed.all_gather("x") == ["x"]


def test_bad_timeout_is_a_clear_error(monkeypatch, capsys) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["predict", "--run", "x", "--input", "y", "--out", "z", "--dist-timeout", "0"]) == 2
    assert "--dist-timeout 0.0: expected a positive number of seconds" in capsys.readouterr().err


def test_commands_without_a_parallel_form_refuse_torchrun(monkeypatch, capsys) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["report", "some_run"]) == 2
    assert "flowad report runs in one process; run it without torchrun" in capsys.readouterr().err
