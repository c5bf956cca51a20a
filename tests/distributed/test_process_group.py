"""freezeflow.distributed.process_group: without a process group every helper gives the
single-process answer and changes nothing; under a real one (2 gloo ranks,
tests/_distributed_worker.py) ranks, means, gathering and broadcasting are the collective
ones."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from _two_ranks import run_scenarios
from paths import TESTS
from snapshot import unchanged
from torch import nn

from freezeflow.distributed import process_group as pg

WORKER = TESTS / "_distributed_worker.py"


def test_without_a_process_group_the_helpers_answer_for_one_process() -> None:
    assert not pg.is_distributed()
    assert (pg.rank(), pg.world_size(), pg.is_main_process()) == (0, 1, True)
    assert pg.all_reduce_mean(2.5) == 2.5
    t = torch.tensor([1.0, 2.0])
    assert pg.all_reduce_mean(t) is t
    assert pg.all_gather_objects({"a": 1.0}) == [{"a": 1.0}]
    bn = nn.BatchNorm1d(2)
    with unchanged(bn):
        pg.broadcast_buffers(bn)
        pg.barrier()


def test_local_rank_comes_from_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert pg.local_rank() == 0
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert pg.local_rank() == 3


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out: Path = tmp_path_factory.mktemp("process_group")
    both = run_scenarios(WORKER, out, "collectives", "the process-group helpers", 120.0)
    return [r["collectives"] for r in both]


def test_each_rank_knows_its_place(ranks: list[dict[str, Any]]) -> None:
    assert [(r["rank"], r["world"], r["main"], r["distributed"]) for r in ranks] == [
        (0, 2, True, True),
        (1, 2, False, True),
    ]
    assert {r["device"] for r in ranks} == {"cpu"}  # gloo collectives run on the CPU


def test_means_over_the_ranks(ranks: list[dict[str, Any]]) -> None:
    for r in ranks:
        assert r["mean"] == 0.5
        torch.testing.assert_close(r["tmean"], torch.tensor([1.5, 3.0]))
        assert r["half"].dtype == torch.float16  # a floating tensor keeps its dtype
        torch.testing.assert_close(r["half"], torch.tensor([1.5, 4.5], dtype=torch.float16))
        assert r["ints"].dtype == torch.float64 and float(r["ints"]) == 1.5  # no rounding
    # the tensor given is not reduced in place
    torch.testing.assert_close(ranks[1]["given"], torch.tensor([2.0, 4.0]))


def test_gathering_and_broadcasting(ranks: list[dict[str, Any]]) -> None:
    expected = [{"rank": 0, "loss": 0.0}, {"rank": 1, "loss": 0.25}]
    assert ranks[0]["gathered"] == ranks[1]["gathered"] == expected
    for r in ranks:  # rank 0's buffers everywhere
        assert torch.equal(r["buffer"], torch.ones(2))
