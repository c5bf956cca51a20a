"""freezeflow.training.probe: the batches and loss an ``ff.auto`` schedule measures, drawn
from fit()'s training data with their own generator: the same batches for the same seed, the
loader's batch size and collate function, nothing consumed from the loader and no random
stream of training touched; any other re-iterable gives its first batches, cycled. (How the
auto planner uses them: tests/unfreezer/test_auto.py.)"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from snapshot import unchanged
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from freezeflow.training.probe import probe_for, probe_over

pytestmark = pytest.mark.usefixtures("single_thread")

CPU = torch.device("cpu")


def loader(n: int = 20, batch_size: int = 4) -> DataLoader[Any]:
    x = torch.arange(n, dtype=torch.float32).unsqueeze(1)  # sample i holds the value i
    y = torch.arange(n) % 3
    gen = torch.Generator().manual_seed(7)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True, generator=gen)


def indices(batches: Any) -> list[list[int]]:
    return [[int(v) for v in x.squeeze(1)] for x, _ in batches]


def test_the_same_seed_draws_the_same_batches_of_the_loaders_size() -> None:
    probe = probe_for(loader(), nn.functional.cross_entropy, CPU)
    first = indices(probe.batches(3, 11))
    assert first == indices(probe.batches(3, 11))
    assert first != indices(probe.batches(3, 12))
    assert [len(b) for b in first] == [4, 4, 4]
    drawn = [i for b in first for i in b]
    assert len(set(drawn)) == len(drawn)  # without replacement while the dataset lasts
    assert all(0 <= i < 20 for i in drawn)


def test_more_batches_than_the_dataset_holds_go_round_it_again() -> None:
    probe = probe_for(loader(n=6, batch_size=4), nn.functional.cross_entropy, CPU)
    drawn = [i for b in indices(probe.batches(3, 0)) for i in b]
    assert len(drawn) == 12
    assert sorted(set(drawn)) == list(range(6))
    assert all(drawn.count(i) == 2 for i in range(6))


def test_drawing_touches_neither_the_loader_nor_any_random_stream() -> None:
    data = loader()
    before = indices(iter(loader()))  # the epoch order a fresh loader gives
    probe = probe_for(data, nn.functional.cross_entropy, CPU)
    with unchanged():  # torch, numpy and Python random states
        probe.batches(4, 3)
    assert indices(iter(data)) == before


def test_an_iterable_of_batches_gives_its_first_batches_cycled() -> None:
    batches = [(torch.full((2, 1), float(k)), torch.zeros(2, dtype=torch.long)) for k in range(3)]
    probe = probe_for(batches, nn.functional.cross_entropy, CPU)
    assert [int(x[0, 0]) for x, _ in probe.batches(2, 0)] == [0, 1]
    assert [int(x[0, 0]) for x, _ in probe.batches(5, 0)] == [0, 1, 2, 0, 1]
    assert probe_for([], nn.functional.cross_entropy, CPU).batches(3, 0) == []


def test_the_loss_is_the_loss_function_of_the_models_outputs() -> None:
    torch.manual_seed(0)
    model = nn.Linear(1, 3)
    probe = probe_for(loader(), nn.functional.cross_entropy, CPU)
    (batch,) = probe.batches(1, 0)
    x, y = batch
    assert torch.equal(probe.loss(model, batch), nn.functional.cross_entropy(model(x), y))


def test_probe_over_asks_for_the_data_when_it_draws_and_moves_each_batch() -> None:
    asked: list[int] = []
    moved: list[Any] = []

    def data() -> list[Any]:
        asked.append(1)
        return [torch.ones(1)]

    def move(batch: Any) -> Any:
        moved.append(batch)
        return ("moved", batch)

    probe = probe_over(data, lambda model, batch: torch.zeros(()), move)
    assert asked == []  # built before the framework's loader exists
    out = probe.batches(2, 0)
    assert asked == [1] and len(moved) == 2
    assert all(b[0] == "moved" for b in out)
