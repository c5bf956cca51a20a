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
