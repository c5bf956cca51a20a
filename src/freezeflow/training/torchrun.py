"""``fit()`` under ``torchrun``: each rank's device and share of the data, and the
:class:`DistributedTraining` callback (DDP forward, the same BatchNorm statistics on every
rank before evaluating, epoch sums over the ranks).

Everything here changes nothing without a process group of world size > 1: the functions
return their input and ``fit`` adds no :class:`DistributedTraining` callback.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, DistributedSampler

from freezeflow.distributed.ddp import DDPWrapper, wrap_ddp
from freezeflow.distributed.process_group import (
    all_gather_objects,
    broadcast_buffers,
    is_main_process,
    local_rank,
    world_size,
)
from freezeflow.distributed.sharding import shard_loader
from freezeflow.errors import DistributedError, FreezeflowWarning
from freezeflow.training.callbacks import ProgressBar
from freezeflow.training.run import Callback, Run

__all__ = ["DistributedTraining", "on_this_rank", "rank_device", "shard_data"]


def rank_device(device: torch.device) -> torch.device:
    """``device``; under torchrun an index-less ``cuda`` becomes this rank's GPU (and the
    current CUDA device)."""
    if world_size() > 1 and device.type == "cuda":
        index: int | None = device.index  # None for a plain "cuda" (typed int in torch's stubs)
        if index is None:
            device = torch.device("cuda", local_rank())
        torch.cuda.set_device(device)
    return device


def _length(data: Iterable[Any]) -> int | None:
    try:
        return len(data)  # type: ignore[arg-type]
    except TypeError:
        return None


def shard_data(
    train_data: Iterable[Any], val_data: Iterable[Any] | None
) -> tuple[Iterable[Any], Iterable[Any] | None]:
    """Under torchrun: give each rank its share of the data (see
    :func:`freezeflow.distributed.shard_loader`; a training loader that shuffles gets a
    ``DistributedSampler`` with seed 0, which ``set_epoch`` reshuffles every epoch) and check
    that every rank has as many training batches (DDP needs it).

    Raises:
        DistributedError: the ranks have different numbers of training batches.
    """
    if world_size() < 2:
        return train_data, val_data
    whys = []
    if isinstance(train_data, DataLoader):
        train_data, why = shard_loader(train_data, train=True, seed=0)
        whys += [f"train_data ({why})"] if why else []
    if isinstance(val_data, DataLoader):
        val_data, why = shard_loader(val_data, train=False)
        whys += [f"val_data ({why})"] if why else []
    if whys and is_main_process():
        warnings.warn(
            f"fit() under torchrun cannot shard {' and '.join(whys)}: every rank reads all of "
            "it; hint: give it a DistributedSampler, or shard it by rank yourself",
            FreezeflowWarning,
            stacklevel=3,
        )
    lengths = all_gather_objects(_length(train_data))
    if len(set(lengths)) > 1:
        raise DistributedError(
            f"the ranks have different numbers of training batches per epoch ({lengths}); "
            "DDP needs the same number of steps on every rank; hint: pass a DataLoader "
            "(fit shards it with a DistributedSampler) or give every rank equal shards"
        )
    return train_data, val_data


def on_this_rank(callbacks: Sequence[Callback]) -> list[Callback]:
    """The callbacks that run on this rank: all on rank 0, all but the progress output
    (:class:`~freezeflow.training.callbacks.ProgressBar`) on the others."""
    if is_main_process():
        return list(callbacks)
    return [cb for cb in callbacks if not isinstance(cb, ProgressBar)]


class DistributedTraining(Callback):
    """What ``fit()`` does under ``torchrun`` besides sharding the data (``fit`` adds it first
    when the world size is above 1; see docs/distributed.md).

    - Trains through :func:`~freezeflow.distributed.wrap_ddp` (re-wrapped at each stage
      change; plain DDP without an unfreezer); evaluation and checkpoints use the plain
      model.
    - Gives each epoch a new shuffle (``set_epoch`` on a ``DistributedSampler``).
    - Before evaluating, gives every rank rank 0's buffers (BatchNorm statistics), as rank 0
      checkpoints them.
    - Sums the epoch's training loss and samples and the validation sums over the ranks
      (exactly, in the same order on every rank); the epoch's seconds are the slowest
      rank's.

    Raises:
        DistributedError: when resuming mid-epoch (the batches done depend on the sharding).
    """

    def __init__(self) -> None:
        self.ddp: DDPWrapper | None = None
        """The DDP wrapper the training forward runs through, once training started."""

    def on_train_start(self, run: Run) -> None:
        p = run.progress
        if p.batch > 0:
            raise DistributedError(
                f"cannot resume mid-epoch (epoch {p.epoch}, batch {p.batch}) under torchrun: "
                "the batches done depend on how the data was sharded; hint: resume from an "
                "end-of-epoch checkpoint (resume=<checkpoint directory>/epoch-NNNN.pt)"
            )
        ids = [run.device.index] if run.device.type == "cuda" else None
        self.ddp = wrap_ddp(run.model, run.unfreezer, device_ids=ids)

    def on_epoch_start(self, run: Run) -> None:
        data = run.train_data
        for sampler in (
            getattr(data, "sampler", None),
            getattr(getattr(data, "batch_sampler", None), "sampler", None),
        ):
            if isinstance(sampler, DistributedSampler):
                sampler.set_epoch(run.progress.epoch)
                return

    def train_forward(self, run: Run) -> Callable[[Any], Any] | None:
        return self.ddp

    def on_evaluate_start(self, run: Run) -> None:
        broadcast_buffers(run.model)  # rank 0's BatchNorm statistics, as it checkpoints

    def reduce(self, run: Run, sums: dict[str, float], count: int) -> tuple[dict[str, float], int]:
        p = run.progress
        ranks = all_gather_objects((p.loss_sum, p.samples, p.seconds, dict(sums), count))
        p.loss_sum = math.fsum(r[0] for r in ranks)
        p.samples = sum(r[1] for r in ranks)
        p.seconds = max(r[2] for r in ranks)
        names = list(dict.fromkeys(name for r in ranks for name in r[3]))
        totals = {name: math.fsum(r[3].get(name, 0.0) for r in ranks) for name in names}
        return totals, sum(r[4] for r in ranks)

    def on_teardown(self, run: Run) -> None:
        if self.ddp is not None:
            self.ddp.close()
