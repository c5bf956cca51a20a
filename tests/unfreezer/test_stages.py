"""freezeflow.unfreezer.stages: applying a stage flips exactly the parameters that change,
gives back the optimizer state of those frozen, and sets each active group's base LR, scale
and weight decay (a scale the planner left out is kept)."""

from __future__ import annotations

import torch
from models import batch, make_net, three_stage, train_step

import freezeflow as ff
from freezeflow.unfreezer.lr_schedulers import Schedulers
from freezeflow.unfreezer.stages import apply_stage


def test_apply_stage_changes_exactly_what_the_stage_changes() -> None:
    net = make_net()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    uf = ff.GradualUnfreezer(net, three_stage(), opt)
    lay = uf.layout
    for step in range(3):
        train_step(net, opt, step)
    before = uf.trainable_ids()
    assert before and all(lay.params[i] in opt.state for i in before)
    now = lay.trainable_ids[2] - before  # train only what stage 2 adds: the rest freezes
    active = apply_stage(
        net, lay, opt, Schedulers(opt, None), uf.schedule, 2, before, now, None,
        norm="eval", eval_frozen=False, default_weight_decay=0.01,
    )  # fmt: skip
    assert uf.trainable_ids() == now
    assert not any(lay.params[i] in opt.state for i in before)  # state given back
    stage = uf.schedule.stages[2]
    for i, name in active.items():
        group, spec = opt.param_groups[i], lay.groups[i]
        assert group["name"] == name and any(j in now for j in spec.params)
        assert group["base_lr"] == stage.lr * lay.scale(stage, spec)
    assert set(active) == {i for i, g in enumerate(lay.groups) if any(j in now for j in g.params)}
    x, y = batch(0)
    assert torch.isfinite(torch.nn.functional.cross_entropy(net(x), y))


def test_a_scale_the_planner_leaves_out_is_kept() -> None:
    net = make_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    uf = ff.GradualUnfreezer(net, three_stage(), opt)
    lay = uf.layout
    now = lay.trainable_ids[1]
    blocks = {g.block for g in lay.groups if any(j in now for j in g.params)}
    decided = min(b for b in blocks if b is not None)
    for g in opt.param_groups:
        g["lr_scale"] = 0.25
    active = apply_stage(
        net, lay, opt, Schedulers(opt, None), uf.schedule, 1, uf.trainable_ids(), now,
        {decided: 0.5}, norm="eval", eval_frozen=False, default_weight_decay=0.0,
    )  # fmt: skip
    for i in active:
        block = lay.groups[i].block
        assert opt.param_groups[i]["lr_scale"] == (0.5 if block == decided else 0.25)
