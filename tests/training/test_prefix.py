"""The frozen prefix: how many leading blocks are frozen, and cutting the model after them
(the prefix's output, and the rest of the model run on given features)."""

from __future__ import annotations

import pytest
import torch
from cache_models import Net, Skip, data
from torch import nn

import freezeflow as ff
from freezeflow.errors import CacheRefused
from freezeflow.training.prefix import Cut, frozen_prefix


def test_frozen_prefix_counts_leading_frozen_blocks() -> None:
    model = Net()
    assert frozen_prefix(model) == 0
    ff.freeze(model, ff.first(2))
    assert frozen_prefix(model) == 2
    ff.freeze(model, ff.everything())
    assert frozen_prefix(model) == len(ff.find_blocks(model)) - 1  # never the whole model


def test_frozen_prefix_with_parameters_a_later_stage_trains() -> None:
    model = Net()
    ff.freeze(model, ff.first(3))
    assert frozen_prefix(model) == 3
    later = list(model.blocks[1].parameters())  # blocks.1 is block 2
    assert frozen_prefix(model, will_train=later) == 2
    assert frozen_prefix(model, will_train=model.stem.parameters()) == 0


def sample() -> torch.Tensor:
    return data(4).tensors[0]


def test_replaying_the_prefix_output_gives_the_model_output() -> None:
    model = Net()
    ff.freeze(model, ff.first(3))
    model.eval()
    cut = Cut(model, 3, sample)
    assert cut.last is model.blocks[1]  # the stem, bn and blocks 0-1: blocks.1 ends them
    x = data(8).tensors[0]
    heads: list[int] = []
    model.head.register_forward_hook(lambda m, a, o: heads.append(1))
    feats = cut.prefix(x)
    assert heads == [], "prefix() stops at the cut"
    with torch.no_grad():
        full = model(x)
        with cut.replaying(feats):
            replayed = model(torch.empty(0))  # the inputs are not read: the cut returns feats
    torch.testing.assert_close(replayed, full)
    assert "forward" not in model.blocks[1].__dict__  # the modules are put back


def test_replaying_puts_the_modules_back_after_an_error() -> None:
    model = Net()
    ff.freeze(model, ff.first(3))
    cut = Cut(model, 3, sample)
    with pytest.raises(RuntimeError, match="no cached features"), cut.replaying():
        model(torch.empty(0))
    assert all("forward" not in m.__dict__ for m in cut.modules)
    assert model(sample()).shape == (4, 4)


def test_a_cut_is_invalid_once_its_prefix_trains() -> None:
    model = Net()
    ff.freeze(model, ff.first(3))
    cut = Cut(model, 3, sample)
    assert cut.still_valid()
    ff.unfreeze(model, "blocks.0")
    assert not cut.still_valid()


def test_a_cut_needs_modules_that_forward_calls() -> None:
    class Loose(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.ones(()))
            self.head = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(x * self.scale)  # type: ignore[no-any-return]

    with pytest.raises(CacheRefused, match="loose parameters"):
        Cut(Loose(), 1, lambda: torch.zeros(2, 4))
    with pytest.raises(CacheRefused, match="trial forward pass failed"):
        Cut(Skip(), 2, lambda: torch.zeros(2, 5))  # wrong input shape
