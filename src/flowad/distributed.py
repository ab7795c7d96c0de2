"""Several processes, one job: data-parallel training, sharded prediction, categories spread over processes.

Launch with ``torchrun`` (``python -m torch.distributed.run``); it sets RANK, WORLD_SIZE and LOCAL_RANK, and
:func:`session` joins its process group: NCCL on GPUs, gloo on the CPU. Without those variables (or with one
process) no group is started and every helper here answers as for a single process.

Waiting for the others comes in two kinds:

- lockstep work, the collectives of every training step, waits at most ``--dist-timeout`` seconds: a process
  that hangs makes the job fail after that long (one that dies is noticed at once, its connections close);
- waiting for work of uneven length (the main process writing the run directory, the other processes'
  share of the predictions or categories) uses a second, patient group, so that slow work is not a failure.
"""

from __future__ import annotations

import dataclasses
import os
import signal
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from flowad.errors import FlowadError, InputError

T = TypeVar("T")

DEFAULT_TIMEOUT = 1800.0  # seconds, as torch's own default
PATIENCE = timedelta(days=7)


class LostProcess(FlowadError):
    """Another process of the job died, hung, or the launcher stopped this one."""


@dataclasses.dataclass
class _Job:
    timeout: float  # seconds, for lockstep collectives
    patient: Any  # a gloo group with a long timeout
    device: torch.device  # where the main group's tensors live (a GPU for NCCL)
    deferring: int = 0  # inside uninterrupted(): a SIGTERM waits
    stop_requested: bool = False


_job: _Job | None = None
_alone = 0  # inside alone(): this process works by itself


def launched_processes() -> int:
    """How many processes torchrun started (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def world_size() -> int:
    return 1 if _job is None or _alone else dist.get_world_size()


def rank() -> int:
    return 0 if _job is None or _alone else dist.get_rank()


def is_main() -> bool:
    """The process that writes shared outputs (the run directory, merged files, tables) and prints."""
    return rank() == 0


@contextmanager
def session(timeout: float = DEFAULT_TIMEOUT, device: str = "auto") -> Iterator[None]:
    """Join torchrun's process group while the block runs; a no-op for a single process.

    ``timeout``: seconds a process waits for the others in a training step before the job fails.
    """
    global _job
    if launched_processes() <= 1 or _job is not None:
        yield
        return
    if not timeout > 0:
        raise InputError(f"--dist-timeout {timeout}: expected a positive number of seconds")
    if not dist.is_available():
        raise FlowadError("this torch build has no torch.distributed; run one process, without torchrun")
    cuda = device != "cpu" and torch.cuda.is_available()
    if cuda:  # "cuda" then means this process's own GPU
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    try:
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(seconds=timeout))
        patient = dist.new_group(backend="gloo", timeout=PATIENCE)
    except (RuntimeError, ValueError) as err:
        raise FlowadError(f"could not join the torchrun job (rank {os.environ.get('RANK')}): {err}") from err
    _job = _Job(timeout, patient, torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu"))
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    lost = False
    try:
        with peers_lost_as_error():
            yield
    except LostProcess:
        lost = True  # SIGTERM stays ignored: torchrun's stop must not cut the message that is on its way out
        raise
    finally:
        if not lost and not _job.stop_requested:
            signal.signal(signal.SIGTERM, previous)
        _job = None
        dist.destroy_process_group()


def _on_sigterm(signum: int, frame: Any) -> None:
    # torchrun stops the surviving processes with SIGTERM when one of them failed
    if _job is None:
        return
    _job.stop_requested = True
    if not _job.deferring:
        _stop()


def _stop() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # leaving anyway: let the message go out whole
    raise LostProcess(
        f"process {rank()} of {world_size()} was stopped by torchrun (SIGTERM): another process of the job failed"
    )


@contextmanager
def uninterrupted() -> Iterator[None]:
    """A stop from the launcher waits until the block is done (so that a set of files is written whole)."""
    if _job is None:
        yield
        return
    _job.deferring += 1
    try:
        yield
    finally:
        _job.deferring -= 1
        if not _job.deferring and _job.stop_requested:
            _stop()


def _communication_failed(err: BaseException) -> bool:
    text = str(err)
    return isinstance(err, dist.DistError) or any(k in text for k in ("gloo", "NCCL", "Connection", "Timed out"))


@contextmanager
def peers_lost_as_error(hint: str = "") -> Iterator[None]:
    """Turn a failed collective (a process died or hung) or a stop from torchrun into a clear LostProcess."""
    try:
        yield
    except LostProcess as err:
        if hint and hint not in str(err):
            raise LostProcess(f"{err}. {hint}") from None
        raise
    except RuntimeError as err:
        if _job is None or not _communication_failed(err):
            raise
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # torchrun's stop would cut the message short
        cause = str(err).splitlines()[0] if str(err) else type(err).__name__
        message = (
            f"process {rank()} of {world_size()} lost touch with the other processes of the job: one of them died "
            f"or did not answer within --dist-timeout {_job.timeout:g} s ({cause})"
        )
        raise LostProcess(f"{message}. {hint}" if hint else message) from err


@contextmanager
def alone() -> Iterator[None]:
    """Inside the block this process works by itself (world size 1), e.g. on its share of the categories."""
    global _alone
    _alone += 1
    try:
        yield
    finally:
        _alone -= 1


def shard(items: Sequence[T]) -> Sequence[T]:
    """This process's share of ``items``: every world_size-th one from its rank on; together, each item once."""
    return items[rank() :: world_size()]


def all_sum(value: torch.Tensor) -> torch.Tensor:
    """The sum of ``value`` over the processes (a lockstep collective)."""
    if world_size() == 1:
        return value
    total = value.detach().to(_job.device, copy=True)
    dist.all_reduce(total)
    return total.to(value.device)


def wait_for_all() -> None:
    """Wait, patiently, until every process got here."""
    if world_size() > 1:
        dist.barrier(group=_job.patient)


def all_gather(value: T) -> list[T]:
    """Every process's ``value`` (picklable), in rank order, on every process; waits patiently."""
    if world_size() == 1:
        return [value]
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, value, group=_job.patient)
    return gathered


def on_main(work: Callable[[], T]) -> T:
    """Run ``work`` on the main process only and hand its result, or its FlowadError, to every process."""
    if world_size() == 1:
        return work()
    outcome: list[Any] = [None]
    if is_main():
        try:
            outcome[0] = (True, work())
        except FlowadError as err:
            outcome[0] = (False, err)
    dist.broadcast_object_list(outcome, src=0, group=_job.patient)
    ok, value = outcome[0]
    if not ok:
        value.reported_by_main = not is_main()  # the main process prints it; the others need not repeat it
        raise value
    return value


class _TrainingLoss(torch.nn.Module):
    """What DDP wraps: the model's training loss, or for no batch a zero that still reaches every weight."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Any) -> torch.Tensor:
        if batch is None:  # this process has no part in the step but must join its gradient all-reduce
            return sum(p.sum() for p in self.model.parameters() if p.requires_grad) * 0.0
        return self.model.training_loss(batch)


class DataParallelLoss:
    """The loss of one data-parallel step, with DistributedDataParallel averaging the gradients.

    Each process weighs its loss by its ``share`` of the step (its samples / the step's samples) times the
    world size, so the averaged gradient is the gradient of the whole step's mean loss: for image batches,
    exactly that of a one-process run with the same global batch.
    """

    def __init__(self, model: torch.nn.Module, every_weight_each_step: bool = True) -> None:
        wait_for_all()  # the processes may take unequal times to get here (their feature caches)
        self.ddp = DistributedDataParallel(
            _TrainingLoss(model), find_unused_parameters=not every_weight_each_step, forward_sync_buffers=False
        )

    def __call__(self, batch: Any, share: float) -> tuple[torch.Tensor, float]:
        """(the loss to backpropagate, the step's mean loss over every process, the same on each)."""
        loss = self.ddp(batch)
        step_loss = all_sum(loss.detach() * share).item()
        return loss * (share * world_size()), step_loss
