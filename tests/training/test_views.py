"""Views: a few fixed variants of each sample, one drawn per read, from the loader's own RNG
(or each worker's)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from cache_models import Net, data, hflip
from torch.utils.data import DataLoader

import freezeflow as ff
from freezeflow.errors import CacheRefused
from freezeflow.training.cache import FeatureCache


def test_views_draw_one_view_per_read_from_their_generator() -> None:
    base = data(6)
    flips = ff.Views(base, [lambda x: x, hflip], generator=torch.Generator().manual_seed(5))
    assert len(flips) == 6
    x, y = base[2]
    assert torch.equal(flips.view(2, 0)[0], x) and torch.equal(flips.view(2, 1)[0], hflip(x))
    assert flips.view(2, 1)[1] == y
    g = torch.Generator().manual_seed(5)
    expected = [int(torch.randint(2, (), generator=g)) for _ in range(20)]
    state = torch.get_rng_state()
    got = [int(torch.equal(flips[2][0], hflip(x))) for _ in range(20)]
    assert got == expected and set(got) == {0, 1}
    assert torch.equal(state, torch.get_rng_state()), "a generator leaves the global RNG alone"


def test_views_reject_bad_arguments() -> None:
    with pytest.raises(TypeError, match="map-style dataset"):
        ff.Views([1, 2, 3].__iter__(), [hflip])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="non-empty sequence of functions"):
        ff.Views(data(4), [])
    with pytest.raises(TypeError, match="non-empty sequence of functions"):
        ff.Views(data(4), [hflip, "flip"])  # type: ignore[list-item]


def test_views_with_worker_processes_are_not_cached_and_draw_anew_each_epoch() -> None:
    model = Net()
    ff.freeze(model, ff.first(3))
    flips = ff.Views(data(8), [lambda x: x, hflip], generator=torch.Generator().manual_seed(0))
    loader = DataLoader(flips, batch_size=4, num_workers=2)
    with pytest.raises(CacheRefused, match="worker process"):
        FeatureCache(model, loader)
    epochs = []
    for _ in range(3):  # a copied generator would give every worker the same draws each epoch
        epochs.append(
            tuple(
                int(not torch.equal(x, data(8)[4 * b + j][0]))
                for b, (xs, _) in enumerate(loader)
                for j, x in enumerate(xs)
            )
        )
    assert len(set(epochs)) > 1


def test_only_one_view_reads_without_drawing() -> None:
    flips = ff.Views(data(4), [lambda x: x, hflip], generator=torch.Generator().manual_seed(1))
    before = flips.generator.get_state() if flips.generator is not None else None
    mirrored: Any = flips.only(1)
    assert len(mirrored) == 4
    for i in range(4):
        assert torch.equal(mirrored[i][0], hflip(data(4)[i][0]))
    assert before is not None and torch.equal(before, flips.generator.get_state())  # type: ignore[union-attr]
