"""Silent misuse the unfreezer and schedules now catch (issue 14): the optimizer's weight
decay kept, parameters replaced under the unfreezer, an LR scheduler never attached,
ReduceLROnPlateau's eps under lr_decay, tied parameters under lr_decay, and schedule misuse
(epochs going backwards, steps without epochs, stages that cannot start in order, stages
re-selecting part of what is already trainable).

Each error leaves the model and the optimizer as they were; each warning is given once per
unfreezer.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from models import flags, group_view, make_tiny_lm
from torch import nn
from torch.optim import lr_scheduler as lrs

import freezeflow as ff

pytestmark = pytest.mark.usefixtures("single_thread")


@contextmanager
def no_warnings() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


@contextmanager
def unchanged(uf: ff.GradualUnfreezer) -> Iterator[None]:
    """The model's flags, the optimizer's groups and the unfreezer's counters stay put."""
    before = (flags(uf.model), group_view(uf.optimizer), uf.stage_index, uf.epoch, uf.global_step)
    yield
    after = (flags(uf.model), group_view(uf.optimizer), uf.stage_index, uf.epoch, uf.global_step)
    assert after == before


def _wd(uf: ff.GradualUnfreezer) -> dict[str, float]:
    return {g["name"]: g["weight_decay"] for g in uf.optimizer.param_groups}


def _plain_two() -> list[ff.Stage]:
    """Two stages that set no weight decay."""
    return [ff.Stage("head", lr=1e-2), ff.Stage("body.1", lr=1e-3, start=1)]


# --------------------------------------------------------------------------- 4. ReduceLROnPlateau


def test_plateau_reductions_follow_the_formula_in_deep_blocks() -> None:
    """lr_decay=0.1 over 12 blocks puts the deepest groups far below torch's eps (1e-8):
    every group still follows base_lr * lr_decay**depth * factor**n."""
    torch.manual_seed(0)
    model = nn.Sequential(*(nn.Linear(2, 2) for _ in range(12)))
    sched = [ff.Stage(ff.everything(), lr=1e-3, lr_decay=0.1)]
    uf = ff.GradualUnfreezer(model, sched, torch.optim.SGD(model.parameters(), lr=0.1))
    plateau = lrs.ReduceLROnPlateau(uf.optimizer, factor=0.5, patience=0)
    uf.attach(plateau)
    for n in range(6):
        plateau.step(1.0)  # no improvement after the first: one reduction per later step
        for g in uf.optimizer.param_groups:
            expected = g["base_lr"] * 0.5 ** max(n, 0)
            assert g["lr"] == pytest.approx(expected, rel=1e-12, abs=0.0), (n, g["name"])
    assert min(g["base_lr"] for g in uf.optimizer.param_groups) < 1e-12
    assert plateau.get_last_lr() == [g["lr"] for g in uf.optimizer.param_groups]


def test_plateau_keeps_its_floor_and_its_eps_on_the_largest_lr() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(*(nn.Linear(2, 2) for _ in range(6)))
    sched = [ff.Stage(ff.everything(), lr=1e-3, lr_decay=0.1)]
    uf = ff.GradualUnfreezer(model, sched, torch.optim.SGD(model.parameters(), lr=0.1))
    plateau = lrs.ReduceLROnPlateau(uf.optimizer, factor=0.5, patience=0, min_lr=1e-6)
    uf.attach(plateau)
    for _ in range(4):
        plateau.step(1.0)
    for g in uf.optimizer.param_groups:
        base = g["base_lr"]  # a group starting below the floor stays where it is
        expected = base if base <= 1e-6 else max(base * 0.5**3, 1e-6)
        assert g["lr"] == pytest.approx(expected, rel=1e-12, abs=0.0), g["name"]
    assert {g["lr"] for g in uf.optimizer.param_groups} >= {1e-6, 1e-3 * 0.5**3}
    # an eps larger than every drop stops all groups, as torch stops its one group
    plateau.eps = 1.0
    before = [g["lr"] for g in uf.optimizer.param_groups]
    plateau.step(1.0)
    assert [g["lr"] for g in uf.optimizer.param_groups] == before


# --------------------------------------------------------------------------- 5. tied parameters


def test_a_tied_parameter_takes_the_scale_of_its_output_side_block() -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(10, 4)
            self.mid = nn.Linear(4, 4)
            self.out = nn.Linear(4, 10, bias=False)
            self.out.weight = self.embed.weight

    model = Tied()
    opt = torch.optim.AdamW(model.parameters())
    uf = ff.GradualUnfreezer(model, [ff.Stage(ff.everything(), lr=1e-3, lr_decay=0.5)], opt)
    (tied,) = [g for g in opt.param_groups if any(p is model.embed.weight for p in g["params"])]
    assert tied["lr_scale"] == 1.0
    assert tied["name"] == "stage0/out/decay"
    assert next(s for s in uf.plan().stages[0].groups if s[0] == tied["name"])[1] == 1e-3


def test_the_tied_embedding_of_a_language_model_trains_at_the_head_lr() -> None:
    model = make_tiny_lm()
    groups = ff.param_groups(model, lr=1e-3, lr_decay=0.5)
    (tied,) = [g for g in groups if any(p is model.lm_head.weight for p in g["params"])]
    assert tied["lr_scale"] == 1.0
