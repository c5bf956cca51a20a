"""freezeflow.unfreezer.agreement in one process: the collectives' logic and messages, with
the gathered rows of two ranks stood in (the 2-rank runs are in tests/distributed)."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch import nn

from freezeflow.errors import DistributedError
from freezeflow.unfreezer import agreement


def test_not_distributed_without_a_process_group_of_two() -> None:
    assert not agreement.distributed()


def test_names_hash_is_exact_in_a_float_and_ignores_order() -> None:
    h = agreement.names_hash(["b", "a"])
    assert h == agreement.names_hash(["a", "b"]) != agreement.names_hash(["a"])
    assert float(h) == h and h < 2**52


def two_ranks(monkeypatch: pytest.MonkeyPatch, other: list[float]) -> None:
    """Make the gather return this rank's row and ``other`` as rank 1's."""
    monkeypatch.setattr(agreement, "_gather", lambda mine: [mine, other])


def test_same_stage_passes_and_a_different_one_raises_naming_each_rank(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    names = ["head.weight", "head.bias"]
    row = [1.0, float(agreement.names_hash(names)), 2.0]
    two_ranks(monkeypatch, row)
    agreement.check_same_stage(1, ["head", "body"], names)
    two_ranks(monkeypatch, [0.0, float(agreement.names_hash(names[:1])), 1.0])
    with pytest.raises(DistributedError) as info:
        agreement.check_same_stage(1, ["head", "body"], names)
    msg = str(info.value)
    assert "rank 0: stage 1 ('body') with 2 trainable tensors" in msg
    assert "rank 1: stage 0 ('head') with 1 trainable tensors" in msg
    assert "hint: a plateau trigger must read a metric reduced over the ranks" in msg


def test_gradients_that_differ_between_ranks_raise(monkeypatch: pytest.MonkeyPatch) -> None:
    p = nn.Parameter(torch.ones(3))
    p.grad = torch.tensor([1.0, -2.0, 3.0])
    two_ranks(monkeypatch, [2.0, 6.0, 1.0])  # the same sums: all-reduced
    agreement.check_synchronized("stage 1 ('body')", [("body.w", p)])
    two_ranks(monkeypatch, [2.5, 6.5, 1.0])
    with pytest.raises(DistributedError, match=r"made 'body\.w' trainable.*differ between the"):
        agreement.check_synchronized("stage 1 ('body')", [("body.w", p)])


def test_parameters_without_a_whole_gradient_are_left_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No gradient, or one that is not the parameter's whole (FSDP2's DTensor shard): not
    summed, so ranks holding different shards do not look out of sync."""
    seen: list[list[float]] = []

    def gather(mine: list[float]) -> list[list[float]]:
        seen.append(mine)
        return [mine, mine]

    monkeypatch.setattr(agreement, "_gather", gather)
    p = nn.Parameter(torch.ones(4))  # no gradient
    agreement.check_synchronized("stage 1", [("w", p)])
    assert seen == [[0.0, 0.0, 0.0]]
    assert not agreement._is_local(torch.ones(2), p)  # a shard's shape
    assert agreement._is_local(torch.ones(4), p)


def test_the_gather_runs_on_a_real_process_group() -> None:
    """One rank of gloo: the rows come back as sent."""
    store = dist.HashStore()  # type: ignore[attr-defined]
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        assert agreement._gather([1.0, 2.5]) == [[1.0, 2.5]]
        assert not agreement.distributed()  # world size 1: nothing to agree on
    finally:
        dist.destroy_process_group()
