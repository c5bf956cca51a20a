"""freezeflow.training.setup, from fit()'s arguments to a run: the device, seeding, the data
checks (which draw no random number), the optimizer of a run without a schedule, and the
mixed-precision dtype. (fit() as a whole, and the unfreezer, scheduler and callbacks it sets
up: tests/training/test_loop.py.)"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from snapshot import unchanged
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import freezeflow as ff
from freezeflow.training.setup import (
    amp_dtype,
    batch_count,
    build_optimizer,
    check_data,
    pick_device,
    seed_everything,
)

CPU = torch.device("cpu")


def draws() -> tuple[float, float, float]:
    return float(torch.rand(())), float(np.random.rand()), random.random()


# --------------------------------------------------------------------------- device, seeds


def test_pick_device() -> None:
    assert pick_device("cpu") == CPU
    assert pick_device(torch.device("meta")) == torch.device("meta")
    auto = pick_device()
    if torch.cuda.is_available():
        assert auto.type == "cuda"
    elif torch.backends.mps.is_available():
        assert auto.type == "mps"
    else:
        assert auto == CPU


@given(st.integers(0, 2**63 - 1))
def test_the_same_seed_gives_the_same_draws_from_every_generator(seed: int) -> None:
    seed_everything(seed)
    first = draws()
    seed_everything(seed)
    assert draws() == first
    seed_everything(seed + 1)
    assert draws() != first


# --------------------------------------------------------------------------- data


def loader(n: int) -> DataLoader[Any]:
    data = TensorDataset(torch.randn(n, 2), torch.zeros(n, dtype=torch.long))
    return DataLoader(data, batch_size=2, shuffle=n > 0)


def test_batch_count_is_the_length_or_none() -> None:
    assert batch_count(loader(7)) == 4
    assert batch_count([1, 2]) == 2
    assert batch_count(x for x in range(3)) is None


def test_re_iterable_data_passes_without_drawing_a_random_number() -> None:
    """iter() of a shuffling DataLoader draws its base seed: checking must not."""
    for data in (loader(6), [(torch.zeros(1), torch.zeros(1))]):
        with unchanged():
            check_data(data)


def _batches() -> Iterator[int]:
    yield 1


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (_batches(), r"re-iterable.*got generator; hint: a generator is used up"),
        (iter([1, 2]), r"re-iterable.*got list_iterator"),
        (5, r"re-iterable.*got int"),
        ([], r"train_data is empty \(len 0, a list\)"),
        (loader(0), r"train_data is empty \(len 0, a DataLoader\)"),
    ],
    ids=["generator", "iterator", "int", "empty-list", "empty-loader"],
)
def test_data_that_cannot_train_is_refused(data: Any, match: str) -> None:
    with unchanged(), pytest.raises(ff.errors.FreezeflowError, match=match):
        check_data(data)


# --------------------------------------------------------------------------- optimizer, AMP


def half_frozen() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    model[0].requires_grad_(False)
    return model


def test_an_optimizer_given_is_used_as_it_is() -> None:
    model = half_frozen()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with unchanged(model, opt):
        assert build_optimizer(model, opt) is opt


@pytest.mark.parametrize("factory", [None, torch.optim.SGD, lambda ps: torch.optim.Adam(ps)])
def test_a_class_or_factory_is_given_the_trainable_parameters_only(factory: Any) -> None:
    model = half_frozen()
    if factory is torch.optim.SGD:
        factory = lambda ps: torch.optim.SGD(ps, lr=0.1)  # noqa: E731 - SGD needs an lr
    opt = build_optimizer(model, factory)
    held = [p for g in opt.param_groups for p in g["params"]]
    assert [id(p) for p in held] == [id(p) for p in model[1].parameters()]
    assert isinstance(opt, torch.optim.AdamW if factory is None else torch.optim.Optimizer)


def test_a_factory_that_builds_no_optimizer_is_refused() -> None:
    model = half_frozen()
    with unchanged(model), pytest.raises(ff.errors.FreezeflowError, match=r"returned \[\].*list"):
        build_optimizer(model, lambda ps: [])  # type: ignore[arg-type, return-value]


@pytest.mark.parametrize(
    ("amp", "expected"),
    [
        (None, None),
        (False, None),
        (True, torch.bfloat16),
        ("bf16", torch.bfloat16),
        ("fp16", torch.float16),
    ],
)
def test_amp_on_the_cpu(amp: Any, expected: torch.dtype | None) -> None:
    assert amp_dtype(amp, CPU) == expected


def test_amp_is_on_by_default_on_cuda_only() -> None:
    cuda = torch.device("cuda")
    assert amp_dtype("bf16", cuda) == torch.bfloat16
    if torch.cuda.is_available():  # None and True ask the card what it supports
        assert amp_dtype(None, cuda) in (torch.bfloat16, torch.float16)


@pytest.mark.parametrize("amp", ["fp8", 16, "BF16"])
def test_an_unknown_amp_is_refused(amp: Any) -> None:
    with pytest.raises(ff.errors.FreezeflowError, match=rf"fit\(amp={amp!r}\): expected None"):
        amp_dtype(amp, CPU)
