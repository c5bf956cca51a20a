"""Toy models, schedules and helpers for the GradualUnfreezer tests (self-contained).

``Net`` has four blocks, input to output: ``stem`` (conv + BatchNorm), ``body.0``, ``body.1``
(conv + BatchNorm each) and ``head`` (linear). Every factory seeds torch itself, so two calls
give bit-identical models, and :func:`batch` gives the same data for the same step in any
process.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

import freezeflow as ff

BLOCKS = ("stem", "body.0", "body.1", "head")


class Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1, bias=False)  # BatchNorm follows
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.bn(self.conv(x)))


class Net(nn.Module):
    """stem -> body.0 -> body.1 -> head."""

    def __init__(self, classes: int = 3, c: int = 4) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU()
        )
        self.body = nn.Sequential(Block(c), Block(c))
        self.head = nn.Linear(c, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.body(self.stem(x))
        return self.head(x.mean(dim=(2, 3)))


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch single-threaded: these models are tiny, and on a busy 2-core machine
    intra-op threads cost far more than they give. Restores the previous setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def make_net(classes: int = 3, seed: int = 0) -> Net:
    torch.manual_seed(seed)
    return Net(classes)


def block_of(param_name: str) -> str:
    """The block of a parameter of :class:`Net` (independent of freezeflow's discovery)."""
    for b in BLOCKS:
        if param_name.startswith(b + "."):
            return b
    raise AssertionError(param_name)


def three_stage(*, reset_state: bool = False, weight_decay: float = 0.1) -> ff.Schedule:
    """head at 1e-2 (epoch 0), + body.1 at 3e-3 (epoch 2), + everything at 1e-3 with
    lr_decay 0.5 (epoch 4)."""
    return ff.Schedule(
        [
            ff.Stage("head", lr=1e-2, weight_decay=weight_decay),
            ff.Stage("body.1", lr=3e-3, start=2, reset_state=reset_state),
            ff.Stage(ff.everything(), lr=1e-3, start=4, lr_decay=0.5, reset_state=reset_state),
        ]
    )


# trainable parameter names of Net per stage of three_stage()
HEAD = frozenset({"head.weight", "head.bias"})
BODY1 = frozenset({"body.1.conv.weight", "body.1.bn.weight", "body.1.bn.bias"})
ALL_NAMES = frozenset(n for n, _ in Net().named_parameters())
STAGE_SETS = (HEAD, HEAD | BODY1, ALL_NAMES)
# lr_scale of each block under lr_decay=0.5 (head is the last of four blocks)
DECAY_SCALE = {"head": 1.0, "body.1": 0.5, "body.0": 0.25, "stem": 0.125}


def batch(step: int, n: int = 4, classes: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    return torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, classes, (n,), generator=g)


def train_step(
    model: nn.Module, opt: torch.optim.Optimizer, step: int, *, set_to_none: bool = True
) -> float:
    x, y = batch(step)
    opt.zero_grad(set_to_none=set_to_none)
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    return loss.item()


def trainable_names(model: nn.Module) -> frozenset[str]:
    return frozenset(n for n, p in model.named_parameters() if p.requires_grad)


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def flags(model: nn.Module) -> dict[str, bool]:
    return {n: p.requires_grad for n, p in model.named_parameters()}


def norm_state(model: nn.Module) -> dict[str, tuple[str | None, bool]]:
    """(freezeflow norm mode, training flag) of every BatchNorm layer."""
    return {
        path: (ff.core.norm_mode(m), m.training)
        for path, m in model.named_modules()
        if isinstance(m, nn.BatchNorm2d)
    }


def group_view(opt: torch.optim.Optimizer) -> list[dict[str, Any]]:
    """Every param group's hyper-parameters and parameter identities (for "nothing changed")."""
    return [
        {**{k: v for k, v in g.items() if k != "params"}, "params": [id(p) for p in g["params"]]}
        for g in opt.param_groups
    ]


def names_of(model: nn.Module, params: Iterable[torch.Tensor]) -> set[str]:
    by_id = {id(p): n for n, p in model.named_parameters()}
    return {by_id[id(p)] for p in params}
