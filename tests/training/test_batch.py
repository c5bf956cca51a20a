"""One batch: splitting, moving, counting, and the default metrics."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from freezeflow.errors import TrainingTypeError
from freezeflow.training.batch import accuracy, batch_size, metric_fns, split_batch, to_device


def test_split_batch_takes_pairs_and_names_what_else_it_got() -> None:
    x, y = torch.zeros(2, 3), torch.ones(2)
    assert split_batch((x, y)) == (x, y) and split_batch([x, y]) == (x, y)
    with pytest.raises(TrainingTypeError, match="got a tuple of length 3"):
        split_batch((x, y, y))
    with pytest.raises(TrainingTypeError, match="got a Tensor;"):
        split_batch(x)


def test_to_device_moves_every_tensor_and_keeps_the_containers() -> None:
    meta = torch.device("meta")
    batch: Any = {"a": (torch.zeros(1), [torch.ones(2), "text"]), "b": 3}
    moved = to_device(batch, meta)
    assert moved["a"][0].device == meta and moved["a"][1][0].device == meta
    assert isinstance(moved["a"], tuple) and isinstance(moved["a"][1], list)
    assert moved["a"][1][1] == "text" and moved["b"] == 3
    same = torch.zeros(2)
    assert to_device(same, torch.device("cpu")) is same


@pytest.mark.parametrize(
    ("x", "n"),
    [
        (torch.zeros(5, 3), 5),
        (torch.tensor(1.0), 1),
        ((torch.zeros(4), torch.zeros(9)), 4),
        ({"ids": torch.zeros(7, 2)}, 7),
        (["a", "b"], 1),
        ("abc", 3),
        (object(), 1),
    ],
)
def test_batch_size_is_the_first_tensors_length(x: Any, n: int) -> None:
    assert batch_size(x) == n


def test_accuracy_and_the_default_metrics() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0]])
    labels = torch.tensor([0, 1, 1])
    assert accuracy(logits, labels) == pytest.approx(2 / 3)
    assert dict(metric_fns(None, logits, labels)) == {"accuracy": accuracy}
    assert dict(metric_fns(None, logits, labels.float())) == {}  # regression targets
    assert dict(metric_fns(None, logits[:, 0], labels)) == {}  # not class logits
    mine = {"top": accuracy}
    assert metric_fns(mine, logits, labels.float()) is mine
