"""RNG snapshots: one format for checkpoints, resumed epochs and the feature cache's checks."""

from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, RandomSampler, TensorDataset

from freezeflow.errors import CheckpointError
from freezeflow.training.rng import data_generators, rng_state, same_rng_state, set_rng_state

DRAWS: dict[str, Callable[[], object]] = {
    "torch": lambda: torch.rand(3).tolist(),
    "python": lambda: random.random(),
    "numpy": lambda: np.random.rand(3).tolist(),
    "gauss": lambda: random.gauss(0.0, 1.0),  # Python's cached second Gaussian
}


@pytest.mark.parametrize("source", sorted(DRAWS))
def test_a_draw_is_seen_and_undone(source: str) -> None:
    random.gauss(0.0, 1.0)  # leave a cached Gaussian in Python's state
    before = rng_state()
    first = DRAWS[source]()
    assert not same_rng_state(before, rng_state())
    set_rng_state(before)
    assert same_rng_state(before, rng_state())
    assert DRAWS[source]() == first


def test_a_snapshot_survives_torch_save_with_weights_only(tmp_path) -> None:  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(3)
    before = rng_state(generators=[g])
    torch.save(before, tmp_path / "rng.pt")
    loaded = torch.load(tmp_path / "rng.pt", weights_only=True)
    expected = (
        torch.rand(2).tolist(),
        random.random(),
        np.random.rand(),
        torch.rand(1, generator=g),
    )
    set_rng_state(loaded, generators=[g])
    again = (torch.rand(2).tolist(), random.random(), np.random.rand(), torch.rand(1, generator=g))
    assert again[:3] == expected[:3] and torch.equal(again[3], expected[3])


def test_data_generators_are_found_once_each() -> None:
    data = TensorDataset(torch.arange(10.0))
    g = torch.Generator().manual_seed(0)
    assert data_generators(DataLoader(data, shuffle=True, generator=g)) == [g]
    h = torch.Generator()
    loader = DataLoader(data, sampler=RandomSampler(data, generator=h), generator=g)
    assert data_generators(loader) == [g, h]
    assert data_generators(DataLoader(data, shuffle=True)) == []
    assert data_generators([(1, 2)]) == []


def test_another_number_of_generators_is_refused_before_anything_changes() -> None:
    state = rng_state(generators=[torch.Generator()])
    torch.rand(1)
    now = rng_state()
    with pytest.raises(CheckpointError, match=r"1 data-loader generator state.*has 0"):
        set_rng_state(state)
    assert same_rng_state(now, rng_state())
