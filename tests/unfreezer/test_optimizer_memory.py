"""Frozen parameters hold no optimizer state: never-trained ones never get any, and a
parameter frozen again by a later stage gives its state back."""

from __future__ import annotations

import torch
from torch import nn

import freezeflow as ff


def state_bytes(opt: torch.optim.Optimizer, params: list[nn.Parameter]) -> int:
    ids = {id(p) for p in params}
    return sum(
        t.numel() * t.element_size()
        for p, st in opt.state.items()
        if id(p) in ids
        for t in st.values()
        if isinstance(t, torch.Tensor)
    )


def step(model: nn.Module, opt: torch.optim.Optimizer, uf: ff.GradualUnfreezer) -> None:
    opt.zero_grad()
    model(torch.randn(4, 6)).pow(2).mean().backward()
    opt.step()
    uf.step()


def test_frozen_parameters_hold_no_optimizer_state() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 2))
    opt = torch.optim.AdamW(model.parameters(), weight_decay=0.1)
    sched = ff.Schedule(
        [
            ff.Stage(["2", "4"], lr=1e-2),
            ff.Stage("4", lr=1e-2, start=ff.at_step(3), exclusive=True),  # "2" is frozen again
        ]
    )
    uf = ff.GradualUnfreezer(model, sched, opt)
    first, middle, last = (list(model[i].parameters()) for i in (0, 2, 4))
    for _ in range(2):
        step(model, opt, uf)
    assert state_bytes(opt, first) == 0  # never trained: never any state
    assert state_bytes(opt, middle) > 0
    kept = {k: v.clone() for k, v in opt.state[last[0]].items()}
    step(model, opt, uf)  # step 3: the exclusive stage begins
    assert uf.stage_index == 1
    assert state_bytes(opt, middle) == 0  # given back
    assert all(not p.requires_grad and p.grad is None for p in middle)
    # the parameter that stays trainable kept its state through the transition
    assert kept["exp_avg"].shape == opt.state[last[0]]["exp_avg"].shape
    assert float(opt.state[last[0]]["step"]) == float(kept["step"]) + 1
    before = [p.detach().clone() for p in middle]
    for _ in range(3):
        step(model, opt, uf)
    assert all(torch.equal(a, b) for a, b in zip(before, middle))
    assert state_bytes(opt, middle) == 0


def test_transition_counts_what_is_really_trainable_with_sticky_frozen_norms() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    ff.freeze(model, "1", norm="frozen")  # a frozen-BN convention, kept by later unfreezes
    sched = ff.Schedule([ff.Stage("2", lr=1e-2), ff.Stage(ff.everything(), lr=1e-3, start=1)])
    uf = ff.GradualUnfreezer(model, sched, torch.optim.SGD)
    (t,) = uf.on_epoch_start(1)
    really = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert not model[1].weight.requires_grad
    assert t.n_trainable == really == 20 + 10
