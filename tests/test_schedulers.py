"""LR schedulers through a 3-stage schedule: every active group's LR follows

    lr(g, t) = stage.lr * lr_scale(g) * f(t)

at every step, where f(t) comes from a reference: the same scheduler class over one dummy
parameter with lr=1, stepped identically. Stage LRs differ (1e-2, 3e-3, 1e-3) and the last
stage uses lr_decay=0.5 (scales 1, 1/2, 1/4, 1/8 from the head back). eta_min / min_lr are 0.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch.optim import lr_scheduler as lrs
from unfreezer_models import (
    DECAY_SCALE,
    block_of,
    make_net,
    one_thread,
    three_stage,
    train_step,
)

import freezeflow as ff

EPOCHS = 6
STEPS = 3  # per epoch
TOTAL = EPOCHS * STEPS
# ReduceLROnPlateau: metric per epoch; with patience=0 each non-improving epoch halves the LR
PLATEAU_METRICS = [1.0, 1.0, 0.5, 0.5, 0.5, 0.2]


@pytest.fixture(autouse=True, scope="module")
def _single_thread() -> Any:
    with one_thread():
        yield


Make = Callable[[torch.optim.Optimizer, bool], Any]
"""make(optimizer, is_reference) -> scheduler"""


def _onecycle(opt: torch.optim.Optimizer, ref: bool) -> Any:
    # f(t) is OneCycle with max_lr=1; over the unfreezer's groups, each group's max_lr is its
    # base LR (for a scheduler built before, the unfreezer scales the single max_lr itself)
    if ref:
        max_lr: Any = 1.0
    elif "base_lr" in opt.param_groups[0]:
        max_lr = [g["base_lr"] for g in opt.param_groups]
    else:
        max_lr = 0.05
    return lrs.OneCycleLR(opt, max_lr=max_lr, total_steps=TOTAL + 1)


def _sequential(opt: torch.optim.Optimizer, ref: bool) -> Any:
    warm = lrs.LinearLR(opt, start_factor=0.2, total_iters=4)
    decay = lrs.ExponentialLR(opt, gamma=0.8)
    return lrs.SequentialLR(opt, [warm, decay], milestones=[5])


# (id, make, stepped per "step" or "epoch")
SCHEDULERS: list[tuple[str, Make, str]] = [
    ("LambdaLR", lambda o, r: lrs.LambdaLR(o, lambda t: 1.0 / (1.0 + 0.3 * t)), "step"),
    ("LambdaLR-warmup", lambda o, r: lrs.LambdaLR(o, lambda t: min(1.0, (t + 1) / 5)), "step"),
    ("StepLR", lambda o, r: lrs.StepLR(o, step_size=4, gamma=0.5), "step"),
    ("CosineAnnealingLR", lambda o, r: lrs.CosineAnnealingLR(o, T_max=TOTAL, eta_min=0), "step"),
    ("OneCycleLR", _onecycle, "step"),
    (
        "CosineAnnealingWarmRestarts",
        lambda o, r: lrs.CosineAnnealingWarmRestarts(o, T_0=4, T_mult=2, eta_min=0),
        "step",
    ),
    (
        "ReduceLROnPlateau",
        lambda o, r: lrs.ReduceLROnPlateau(o, factor=0.5, patience=0, min_lr=0),
        "epoch",
    ),
    ("SequentialLR", _sequential, "step"),
]


def _expected_scale(stage: ff.Stage, group_name: str) -> float:
    """lr_scale from the independent table: group names are stage/block/decay when lr_decay
    is used (``_run`` checks the block is that of the group's parameters)."""
    return 1.0 if stage.lr_decay is None else DECAY_SCALE[group_name.split("/")[1]]


def _run(make: Make, per: str, *, built_before: bool) -> list[tuple[int, str, float, float]]:
    """Train 6 epochs x 3 steps; return (step, group, lr, expected) for every active group at
    every check point."""
    model = make_net()
    schedule = three_stage()
    opt = torch.optim.AdamW(model.parameters(), lr=0.05)
    if built_before:
        sched = make(opt, False)
        uf = ff.GradualUnfreezer(model, schedule, opt, scheduler=sched)
    else:
        uf = ff.GradualUnfreezer(model, schedule, opt)
        sched = make(opt, False)
        uf.attach(sched)
    assert uf.optimizer is opt
    dummy = torch.nn.Parameter(torch.zeros(1))
    ref_opt = torch.optim.AdamW([dummy], lr=1.0)
    ref = make(ref_opt, True)
    names = {id(p): n for n, p in model.named_parameters()}
    rows: list[tuple[int, str, float, float]] = []

    def check(t: int) -> None:
        stage = schedule[uf.stage]
        f = ref_opt.param_groups[0]["lr"]
        active = uf.layout.trainable[uf.stage]
        for spec, group in zip(uf.layout.groups, opt.param_groups):
            assert group["name"] == spec.name
            if not any(i in active for i in spec.params):
                continue
            if stage.lr_decay is not None:
                blocks = {block_of(names[id(p)]) for p in group["params"]}
                assert blocks == {spec.name.split("/")[1]}
            expected = stage.lr * _expected_scale(stage, spec.name) * f
            rows.append((t, spec.name, float(group["lr"]), expected))

    t = 0
    for epoch in range(EPOCHS):
        uf.on_epoch_start(epoch)
        check(t)
        for _ in range(STEPS):
            train_step(model, opt, t)
            ref_opt.step()
            t += 1
            if per == "step":
                sched.step()
                ref.step()
            uf.step()
            check(t)
        if per == "epoch":
            sched.step(PLATEAU_METRICS[epoch])
            ref.step(PLATEAU_METRICS[epoch])
            check(t)
    assert uf.stage == 2
    return rows


@pytest.mark.parametrize("built_before", [False, True], ids=["attached-after", "handed-over"])
@pytest.mark.parametrize(
    ("make", "per"), [(m, p) for _, m, p in SCHEDULERS], ids=[i for i, _, _ in SCHEDULERS]
)
def test_lr_formula_every_step(make: Make, per: str, built_before: bool) -> None:
    rows = _run(make, per, built_before=built_before)
    bad = [r for r in rows if r[2] != pytest.approx(r[3], rel=1e-9, abs=0.0)]
    assert not bad, bad[:5]
    # the LR really moved and groups of all three stages were checked
    assert len({r[3] for r in rows}) > 3
    assert {r[1] for r in rows} >= {"stage0/head/decay", "stage2/stem/decay"}


def test_reference_factor_changes_for_every_scheduler() -> None:
    """Guard against a vacuous formula test: each reference f(t) takes several values."""
    for sid, make, per in SCHEDULERS:
        dummy = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.AdamW([dummy], lr=1.0)
        sched = make(opt, True)
        seen = {opt.param_groups[0]["lr"]}
        for epoch in range(EPOCHS):
            for _ in range(STEPS):
                opt.step()
                if per == "step":
                    sched.step()
                seen.add(opt.param_groups[0]["lr"])
            if per == "epoch":
                sched.step(PLATEAU_METRICS[epoch])
                seen.add(opt.param_groups[0]["lr"])
        assert len(seen) >= 3, sid


def test_scheduler_built_after_keeps_its_first_step() -> None:
    """A warm-up scheduler built after the unfreezer starts at base * f(0), and attach()
    must not reset the groups to their base LR."""
    model = make_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    uf = ff.GradualUnfreezer(model, three_stage(), opt)
    sched = lrs.LambdaLR(opt, lambda t: 0.1 * (t + 1))
    before = [g["lr"] for g in opt.param_groups]
    uf.attach(sched)
    assert [g["lr"] for g in opt.param_groups] == before
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-2 * 0.1)


def test_warns_on_scheduler_not_handed_over() -> None:
    model = make_net()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    lrs.StepLR(opt, step_size=2)
    with pytest.warns(ff.FreezeflowWarning, match="scheduler="):
        ff.GradualUnfreezer(model, three_stage(), opt)


def test_no_warning_when_handed_over() -> None:
    model = make_net()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = lrs.StepLR(opt, step_size=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ff.FreezeflowWarning)
        uf = ff.GradualUnfreezer(model, three_stage(), opt, scheduler=sched)
    assert len(sched.base_lrs) == len(opt.param_groups) == len(uf.layout.groups)


def test_handed_over_scheduler_extended_to_every_group() -> None:
    model = make_net()
    opt = torch.optim.AdamW(model.parameters(), lr=0.05)
    sched = lrs.LambdaLR(opt, lambda t: 0.5)
    uf = ff.GradualUnfreezer(model, three_stage(), opt, scheduler=sched)
    n = len(opt.param_groups)
    assert len(sched.lr_lambdas) == n
    assert sched.base_lrs == pytest.approx([g["base_lr"] for g in opt.param_groups])
    # the first stage's groups run at base * f(0) = 1e-2 * 0.5
    for g in opt.param_groups[:2]:
        assert g["lr"] == pytest.approx(1e-2 * 0.5)
        assert g["initial_lr"] == pytest.approx(1e-2)
    assert uf.stage == 0


def test_scheduler_bound_to_another_optimizer_changes_nothing() -> None:
    from unfreezer_models import flags, group_view

    model = make_net()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    other = torch.optim.SGD(make_net().parameters(), lr=0.1)
    sched = lrs.StepLR(other, step_size=2)
    before_flags, before_groups = flags(model), group_view(opt)
    with pytest.raises(ff.OptimizerError, match=r"StepLR.*another optimizer") as info:
        ff.GradualUnfreezer(model, three_stage(), opt, scheduler=sched)
    assert isinstance(info.value, ValueError)
    assert f"{id(other):#x}" in str(info.value)
    assert flags(model) == before_flags
    assert group_view(opt) == before_groups
    # attach() on a working unfreezer refuses it too, and changes nothing
    uf = ff.GradualUnfreezer(model, three_stage(), opt)
    groups = group_view(opt)
    with pytest.raises(ff.OptimizerError, match="another optimizer"):
        uf.attach(sched)
    assert group_view(opt) == groups
    assert len(sched.base_lrs) == 1


def test_scheduler_over_several_groups_is_refused_before_changes() -> None:
    from unfreezer_models import flags, group_view

    model = make_net()
    opt = torch.optim.AdamW(
        [{"params": model.head.parameters()}, {"params": model.body.parameters()}], lr=1e-3
    )
    sched = lrs.StepLR(opt, step_size=2)
    before_flags, before_groups = flags(model), group_view(opt)
    with pytest.raises(ff.OptimizerError, match=r"base_lrs has 2 entries"):
        ff.GradualUnfreezer(model, three_stage(), opt, scheduler=sched)
    assert flags(model) == before_flags
    assert group_view(opt) == before_groups
