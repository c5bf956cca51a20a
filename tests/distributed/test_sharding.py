"""freezeflow.distributed.sharding: each rank's share of the data. Without a process group
loaders are left as they are; under 2 gloo ranks (tests/_distributed_worker.py) a training
loader is rebuilt over a DistributedSampler (every rank the same number of batches, the
dataset covered, shuffled by seed and epoch), an evaluation loader over an unpadded, ordered
shard, and loaders that cannot be rebuilt are left alone with the reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from _two_ranks import run_scenarios
from paths import TESTS
from torch.utils.data import DataLoader, TensorDataset

from freezeflow.distributed import sharding

WORKER = TESTS / "_distributed_worker.py"


def dataset(n: int) -> TensorDataset:
    return TensorDataset(torch.arange(n))


def test_without_a_process_group_loaders_are_left_alone() -> None:
    loader = DataLoader(dataset(10), batch_size=4, shuffle=True)
    assert sharding.shard_loader(loader, train=True) == (loader, None)
    assert sharding.shard_loader(loader, train=False) == (loader, None)
    assert sharding.distributed_sampler(dataset(4)) is None


@pytest.mark.parametrize(("n", "world"), [(37, 3), (10, 2), (1, 4), (0, 2)])
def test_unpadded_shards_split_exactly(n: int, world: int) -> None:
    shards = [list(sharding.UnpaddedShardSampler(dataset(n), world, r)) for r in range(world)]
    assert sorted(i for s in shards for i in s) == list(range(n))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    for r, s in enumerate(shards):
        assert s == list(range(r, n, world))
        assert len(sharding.UnpaddedShardSampler(dataset(n), world, r)) == len(s)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out: Path = tmp_path_factory.mktemp("sharding")
    both = run_scenarios(WORKER, out, "sharding", "the sharding of loaders", 120.0)
    return [r["sharding"] for r in both]


def test_training_shards_cover_the_data_in_equal_steps(ranks: list[dict[str, Any]]) -> None:
    for epoch in (0, 1):
        batches = [r["train"][epoch] for r in ranks]
        assert [len(b) for b in batches] == [3, 3]  # ceil(11 / 2) = 6 samples, batches of 2
        drawn = [i for b in batches for batch in b for i in batch]
        assert len(drawn) == 12 and set(drawn) == set(range(11))  # one sample repeated
    assert ranks[0]["train"][0] != ranks[0]["train"][1]  # set_epoch reshuffles
    for r in ranks:
        assert r["why_train"] is None and r["train_batch_size"] == 2
        assert r["train_generator_kept"]


def test_evaluation_shards_are_exact_and_in_order(ranks: list[dict[str, Any]]) -> None:
    assert ranks[0]["eval"] == [[0, 2, 4, 6], [8, 10]]
    assert ranks[1]["eval"] == [[1, 3, 5, 7], [9]]
    assert all(r["why_eval"] is None for r in ranks)


def test_loaders_that_cannot_be_rebuilt_are_left_with_the_reason(
    ranks: list[dict[str, Any]],
) -> None:
    for r in ranks:
        assert r["weighted"] == "a WeightedRandomSampler" and r["weighted_same"]
        assert r["stream"] == "an IterableDataset or batch_size=None"
        assert r["already_same"]


def test_the_distributed_sampler_splits_the_dataset(ranks: list[dict[str, Any]]) -> None:
    a, b = ranks[0]["sampler"], ranks[1]["sampler"]
    assert len(a) == len(b) == 6 and set(a + b) == set(range(11))
    for r in ranks:
        assert "distributed_sampler needs a dataset with a length, got Stream" in r["refused"]
