"""Worker for tests/distributed/test_process_group.py and test_sharding.py, run as 2 gloo
ranks by tests/_two_ranks.py: ``python _distributed_worker.py OUT_DIR SCENARIO,...``, each
scenario's result saved in OUT_DIR/rank<r>.pt.

- ``collectives``: rank, world size, the means, gathering and broadcasting of
  freezeflow.distributed.process_group under a real process group;
- ``sharding``: the loaders freezeflow.distributed.sharding rebuilds for each rank (training:
  padded and shuffled by seed; evaluation: exact and in order) and those it leaves alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from _two_ranks import serve
from torch import nn
from torch.utils.data import (
    DataLoader,
    DistributedSampler,
    IterableDataset,
    TensorDataset,
    WeightedRandomSampler,
)

from freezeflow.distributed import process_group as pg
from freezeflow.distributed import sharding


def collectives() -> dict[str, Any]:
    r = pg.rank()
    given = torch.tensor([1.0, 2.0]) * (r + 1)
    bn = nn.BatchNorm1d(2)
    running = bn.running_mean
    assert running is not None
    with torch.no_grad():
        running.fill_(r + 1.0)
    pg.broadcast_buffers(bn)
    out = {
        "rank": r,
        "world": pg.world_size(),
        "main": pg.is_main_process(),
        "distributed": pg.is_distributed(),
        "device": str(pg.collective_device()),
        "mean": pg.all_reduce_mean(float(r)),
        "tmean": pg.all_reduce_mean(given),
        "given": given,
        "half": pg.all_reduce_mean(torch.tensor([1.0, 3.0], dtype=torch.float16) * (r + 1)),
        "ints": pg.all_reduce_mean(torch.tensor([3 * r])),
        "gathered": pg.all_gather_objects({"rank": r, "loss": 0.25 * r}),
        "buffer": running.clone(),
    }
    pg.barrier()
    return out


class Stream(IterableDataset[torch.Tensor]):
    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter(torch.arange(4))


def indices(loader: DataLoader[Any]) -> list[list[int]]:
    return [[int(i) for i in batch[0]] for batch in loader]


def sharding_scenario() -> dict[str, Any]:
    data = TensorDataset(torch.arange(11))
    gen = torch.Generator().manual_seed(5)
    shuffled = DataLoader(data, batch_size=2, shuffle=True, generator=gen)
    train, why_train = sharding.shard_loader(shuffled, train=True, seed=3)
    assert isinstance(train.sampler, DistributedSampler)
    epochs = []
    for epoch in (0, 1):
        train.sampler.set_epoch(epoch)
        epochs.append(indices(train))
    ordered = DataLoader(data, batch_size=4)
    evaluation, why_eval = sharding.shard_loader(ordered, train=False)
    weighted = DataLoader(data, sampler=WeightedRandomSampler([1.0] * 11, 11), batch_size=2)
    already = DataLoader(data, sampler=DistributedSampler(data), batch_size=2)
    sampler = sharding.distributed_sampler(data, shuffle=True, seed=3)
    assert sampler is not None
    try:
        sharding.distributed_sampler(Stream())
        refused = ""
    except Exception as exc:  # the message is checked by the test
        refused = f"{type(exc).__name__}: {exc}"
    return {
        "train": epochs,
        "why_train": why_train,
        "train_batch_size": train.batch_size,
        "train_generator_kept": train.generator is gen,
        "eval": indices(evaluation),
        "why_eval": why_eval,
        "weighted": sharding.shard_loader(weighted, train=True)[1],
        "weighted_same": sharding.shard_loader(weighted, train=True)[0] is weighted,
        "stream": sharding.shard_loader(DataLoader(Stream(), batch_size=2), train=True)[1],
        "already_same": sharding.shard_loader(already, train=True) == (already, None),
        "sampler": list(sampler),
        "refused": refused,
    }


def run(out_dir: str, name: str) -> dict[str, Any]:
    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    if name == "collectives":
        return collectives()
    if name == "sharding":
        return sharding_scenario()
    raise ValueError(f"unknown scenario {name!r}")


if __name__ == "__main__":
    serve(run)
