"""freezeflow.unfreezer.lr_schedulers: LR schedulers through a 3-stage schedule, and the torch
scheduler internals the module relies on.

Every active group's LR follows

    lr(g, t) = stage.lr * lr_scale(g) * f(t)

at every step, where f(t) comes from a reference: the same scheduler class over one dummy
parameter with lr=1, stepped identically. Stage LRs differ (1e-2, 3e-3, 1e-3) and the last
stage uses lr_decay=0.5 (scales 1, 1/2, 1/4, 1/8 from the head back). eta_min / min_lr are 0.

The internals tests (one per attribute) fail with a message naming the attribute and the torch
version when torch changes one of them.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
from models import (
    DECAY_SCALE,
    block_of,
    make_net,
    three_stage,
    train_step,
)
from torch import nn
from torch.optim import lr_scheduler as lrs

import freezeflow as ff
from freezeflow.unfreezer import lr_schedulers as ffl

EPOCHS = 6
STEPS = 3  # per epoch
TOTAL = EPOCHS * STEPS
# ReduceLROnPlateau: metric per epoch; with patience=0 each non-improving epoch halves the LR
PLATEAU_METRICS = [1.0, 1.0, 0.5, 0.5, 0.5, 0.2]

pytestmark = pytest.mark.usefixtures("single_thread")


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
        stage = schedule[uf.stage_index]
        f = ref_opt.param_groups[0]["lr"]
        active = uf.layout.trainable_ids[uf.stage_index]
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
    assert uf.stage_index == 2
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


@pytest.mark.parametrize(
    "make",
    [
        lambda opt: lrs.CosineAnnealingLR(opt, T_max=10),
        lambda opt: lrs.LambdaLR(opt, lambda t: 0.9**t),
        lambda opt: lrs.OneCycleLR(opt, max_lr=0.1, total_steps=20),
        lambda opt: lrs.SequentialLR(
            opt, [lrs.LinearLR(opt), lrs.ExponentialLR(opt, 0.9)], milestones=[3]
        ),
    ],
    ids=["cosine", "lambda", "onecycle", "sequential"],
)
def test_scheduler_built_before_and_not_handed_over_is_driven(make: Any) -> None:
    """The classic hand loop: optimizer, scheduler, then the unfreezer without scheduler=.
    Its step() once failed in zip() (lists of one entry against the new groups); now it is
    found and driven exactly as if it had been handed over."""
    runs = []
    for hand_over in (True, False):
        model = make_net()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        sched = make(opt)
        with warnings.catch_warnings():
            warnings.simplefilter("error", ff.FreezeflowWarning)
            uf = ff.GradualUnfreezer(
                model, three_stage(), opt, scheduler=sched if hand_over else None
            )
        lrs_seen = []
        for epoch in range(5):
            uf.on_epoch_start(epoch)
            for step in range(3):
                train_step(model, opt, 3 * epoch + step)
                uf.step()
                sched.step()
                lrs_seen.append([g["lr"] for g in opt.param_groups])
        runs.append(lrs_seen)
    assert runs[0] == runs[1]


def test_scheduler_built_after_and_not_attached_is_found_at_the_stage_change() -> None:
    """One built after the unfreezer knows every group; at the next stage change it is found
    and rescaled with the groups, as an attached one is."""
    runs = []
    for attach in (True, False):
        model = make_net()
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        uf = ff.GradualUnfreezer(model, three_stage(), opt)
        sched = lrs.CosineAnnealingWarmRestarts(opt, T_0=4)
        if attach:
            uf.attach(sched)
        seen = []
        for epoch in range(5):
            uf.on_epoch_start(epoch)
            sched.step()
            seen.append([g["lr"] for g in opt.param_groups])
        runs.append(seen)
    assert runs[0] == runs[1]


def test_scheduler_that_cannot_be_mapped_is_refused_before_any_change() -> None:
    from snapshot import unchanged

    model = make_net()
    opt = torch.optim.SGD(
        [{"params": model.head.parameters()}, {"params": model.body.parameters()}], lr=0.1
    )
    sched = lrs.StepLR(opt, 2)
    with (
        unchanged(model, opt, scheduler=sched),
        pytest.raises(ff.OptimizerError, match=r"StepLR\.base_lrs has 2 entries.*hint"),
    ):
        ff.GradualUnfreezer(model, three_stage(), opt)


def test_dead_scheduler_is_no_concern() -> None:
    """A scheduler built and dropped leaves its mark on the optimizer's step, but drives
    nothing: no warning, nothing attached."""
    model = make_net()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    lrs.StepLR(opt, step_size=2)  # garbage at once
    with warnings.catch_warnings():
        warnings.simplefilter("error", ff.FreezeflowWarning)
        uf = ff.GradualUnfreezer(model, three_stage(), opt)
        uf.on_epoch_start(2)
    assert uf._schedulers.attached == []


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
    assert uf.stage_index == 0


def test_scheduler_bound_to_another_optimizer_changes_nothing() -> None:
    from models import flags, group_view

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
    from models import flags, group_view

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


def test_cyclic_lr_with_momentum_handed_over_steps_every_group() -> None:
    """CyclicLR's per-group momentum bounds are extended too: torch zips them strictly with
    the param groups, so a handed-over CyclicLR over one group would raise at its first step."""
    model = make_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = lrs.CyclicLR(opt, base_lr=0.01, max_lr=0.1, step_size_up=2)
    uf = ff.GradualUnfreezer(model, three_stage(), opt, scheduler=sched)
    uf.on_epoch_start(0)
    for t in range(3):
        train_step(model, opt, t)
        sched.step()
        uf.step()
    momentums = {g["momentum"] for g in opt.param_groups}
    assert len(momentums) == 1 and 0.8 <= momentums.pop() < 0.9  # cycled, the same everywhere
    assert len(sched.base_momentums) == len(sched.max_momentums) == len(opt.param_groups)


# --------------------------------------------------------------------------- torch internals


def _changed(attr: str, what: str) -> str:
    return (
        f"torch {torch.__version__} changed {attr!r}: {what}. "
        "freezeflow.unfreezer.lr_schedulers relies on it (see its comment there)"
    )


def _optimizer(n_groups: int = 3, **kw: Any) -> torch.optim.Optimizer:
    params = [nn.Parameter(torch.zeros(1)) for _ in range(n_groups)]
    kw = {"lr": 0.1, "momentum": 0.9, **kw}
    return torch.optim.SGD([{"params": [p]} for p in params], **kw)


BUILDERS: dict[str, Callable[[torch.optim.Optimizer], Any]] = {
    "LambdaLR": lambda o: lrs.LambdaLR(o, lambda t: 1.0),
    "MultiplicativeLR": lambda o: lrs.MultiplicativeLR(o, lambda t: 0.9),
    "StepLR": lambda o: lrs.StepLR(o, 2),
    "MultiStepLR": lambda o: lrs.MultiStepLR(o, [2, 4]),
    "ConstantLR": lambda o: lrs.ConstantLR(o),
    "LinearLR": lambda o: lrs.LinearLR(o),
    "ExponentialLR": lambda o: lrs.ExponentialLR(o, 0.9),
    "PolynomialLR": lambda o: lrs.PolynomialLR(o),
    "CosineAnnealingLR": lambda o: lrs.CosineAnnealingLR(o, 10),
    "CosineAnnealingWarmRestarts": lambda o: lrs.CosineAnnealingWarmRestarts(o, 4),
    "CyclicLR": lambda o: lrs.CyclicLR(o, 0.01, 0.1),
    "OneCycleLR": lambda o: lrs.OneCycleLR(o, 0.1, total_steps=10),
    "ReduceLROnPlateau": lambda o: lrs.ReduceLROnPlateau(o),
    "SequentialLR": lambda o: lrs.SequentialLR(
        o, [lrs.ConstantLR(o), lrs.ExponentialLR(o, 0.9)], [2]
    ),
    "ChainedScheduler": lambda o: lrs.ChainedScheduler(
        [lrs.ConstantLR(o), lrs.ExponentialLR(o, 0.9)]
    ),
}


def test_every_torch_scheduler_has_a_builder_here() -> None:
    """A scheduler class torch adds must be checked for per-group lists (next test)."""
    classes = {
        name
        for name, obj in vars(lrs).items()
        if isinstance(obj, type)
        and issubclass(obj, (lrs.LRScheduler, lrs.ReduceLROnPlateau))
        and not name.startswith("_")
        and name != "LRScheduler"
    }
    new = sorted(classes - BUILDERS.keys())
    assert not new, (
        f"torch {torch.__version__} has LR schedulers {new} unknown to this test; add a builder "
        "to BUILDERS and check that EXTENDED_LISTS names their per-group lists"
    )


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_every_per_group_list_is_extended(name: str) -> None:
    """EXTENDED_LISTS names every list attribute with one entry per param group, so a
    scheduler built before the unfreezer is extended to every group."""
    opt = _optimizer(3)
    sched = BUILDERS[name](opt)
    per_group = {
        f"{type(s).__name__}.{key}"
        for s in ffl.schedulers_in(sched)
        for key, value in vars(s).items()
        if isinstance(value, list) and len(value) == 3
    }
    unknown = sorted(k for k in per_group if k.rpartition(".")[2] not in ffl.EXTENDED_LISTS)
    assert not unknown, _changed(
        ", ".join(unknown), "a new per-group list that EXTENDED_LISTS does not name"
    )


@pytest.mark.parametrize("name", ["SequentialLR", "ChainedScheduler"])
def test_children_attribute(name: str) -> None:
    """CHILDREN (``_schedulers``): the schedulers a SequentialLR / ChainedScheduler drives."""
    opt = _optimizer()
    sched = BUILDERS[name](opt)
    children = getattr(sched, ffl.CHILDREN, None)
    assert isinstance(children, list), _changed(ffl.CHILDREN, f"{name} has no such list")
    assert [type(c).__name__ for c in children] == ["ConstantLR", "ExponentialLR"], _changed(
        ffl.CHILDREN, f"{name}.{ffl.CHILDREN} is not the list of schedulers it was given"
    )
    assert ffl.schedulers_in(sched) == [sched, *children]


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_last_lr_attribute(name: str) -> None:
    """LAST_LR (``_last_lr``): one entry per group, and what get_last_lr() returns."""
    opt = _optimizer(3)
    sched = BUILDERS[name](opt)
    last = getattr(sched, ffl.LAST_LR, None)
    assert isinstance(last, list) and len(last) == 3, _changed(
        ffl.LAST_LR, f"{name} has no per-group list {ffl.LAST_LR}"
    )
    assert sched.get_last_lr() == last, _changed(
        ffl.LAST_LR, f"{name}.get_last_lr() does not return it"
    )
    last[0] = 123.0  # what rescaling does: get_last_lr() must report it
    assert sched.get_last_lr()[0] == 123.0, _changed(
        ffl.LAST_LR, f"{name}.get_last_lr() returns a copy"
    )


def test_step_wrapped_attribute() -> None:
    """STEP_WRAPPED (``optimizer.step._wrapped_by_lr_sched``): set when a scheduler is built
    over the optimizer, and only then."""
    opt = _optimizer()
    assert not ffl.has_scheduler(opt)
    assert getattr(opt.step, ffl.STEP_WRAPPED, False) is False
    lrs.StepLR(opt, 2)
    assert getattr(opt.step, ffl.STEP_WRAPPED, False) is True, _changed(
        ffl.STEP_WRAPPED, "building an LR scheduler no longer marks optimizer.step"
    )
    assert ffl.has_scheduler(opt)


@pytest.mark.parametrize(
    ("name", "keys"),
    [("LambdaLR", ("base_lrs",)), ("CyclicLR", ("base_lrs", "max_lrs"))],
    ids=["base_lrs", "max_lrs"],
)
def test_scaled_lists_drive_the_lr(name: str, keys: tuple[str, ...]) -> None:
    """SCALED_LISTS (``base_lrs``, ``max_lrs``): scaling a group's entries scales the LRs the
    scheduler computes for that group from then on (what rescaling at a stage change needs;
    chainable schedulers such as StepLR follow the group's own ``lr``, rescaled too)."""
    a, b = _optimizer(2), _optimizer(2)
    sa, sb = BUILDERS[name](a), BUILDERS[name](b)
    for key in keys:
        values = getattr(sb, key, None)
        assert isinstance(values, list) and len(values) == 2, _changed(key, f"{name} lacks it")
        values[0] *= 2.0
    for _ in range(3):
        a.step(), b.step()
        sa.step(), sb.step()
    assert b.param_groups[0]["lr"] == pytest.approx(2 * a.param_groups[0]["lr"]), _changed(
        keys[-1], f"{name} no longer computes each group's LR from it"
    )
    assert b.param_groups[1]["lr"] == pytest.approx(a.param_groups[1]["lr"])


def test_min_lrs_attribute() -> None:
    """``min_lrs``: ReduceLROnPlateau's per-group floors, an absolute LR (never rescaled)."""
    opt = _optimizer(2)
    sched = lrs.ReduceLROnPlateau(opt, factor=0.1, patience=0, min_lr=0.05)
    assert getattr(sched, "min_lrs", None) == [0.05, 0.05], _changed("min_lrs", "not a list")
    sched.min_lrs[1] = 0.02
    for metric in (1.0, 2.0, 3.0):
        sched.step(metric)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.05, 0.02]), _changed(
        "min_lrs", "ReduceLROnPlateau no longer floors each group's LR at its entry"
    )


@pytest.mark.parametrize("name", ["LambdaLR", "MultiplicativeLR"])
def test_lr_lambdas_attribute(name: str) -> None:
    """``lr_lambdas``: one factor function per group."""
    opt = _optimizer(2)
    sched = BUILDERS[name](opt)
    lambdas = getattr(sched, "lr_lambdas", None)
    assert isinstance(lambdas, list) and len(lambdas) == 2, _changed(
        "lr_lambdas", f"{name} lacks a per-group list of them"
    )
    assert all(callable(f) for f in lambdas)


@pytest.mark.parametrize(
    ("name", "key"), [("CyclicLR", "base_momentums"), ("CyclicLR", "max_momentums")]
)
def test_momentum_lists(name: str, key: str) -> None:
    """``base_momentums``/``max_momentums``: CyclicLR's per-group momentum bounds."""
    sched = BUILDERS[name](_optimizer(2))
    values = getattr(sched, key, None)
    assert isinstance(values, list) and len(values) == 2, _changed(key, f"{name} lacks it")


@pytest.mark.parametrize(
    ("name", "keys"),
    [
        ("StepLR", {"initial_lr"}),
        ("OneCycleLR", {"initial_lr", "max_lr", "min_lr", "max_momentum", "base_momentum"}),
        ("CyclicLR", {"initial_lr", "max_momentum", "base_momentum"}),
    ],
)
def test_group_keys_schedulers_write(name: str, keys: set[str]) -> None:
    """LR_KEYS and MOMENTUM_KEYS: what schedulers write into each param group."""
    opt = _optimizer(2)
    before = set(opt.param_groups[0])
    BUILDERS[name](opt)
    added = set(opt.param_groups[0]) - before
    assert added == keys, _changed(
        ", ".join(sorted(added ^ keys)), f"{name} writes {sorted(added)} into each param group"
    )
    assert added <= {*ffl.LR_KEYS, *ffl.MOMENTUM_KEYS}


def test_check_group_lists_names_the_list() -> None:
    opt = _optimizer(2)
    sched = lrs.LambdaLR(opt, [lambda t: 1.0, lambda t: 0.5])
    ffl.check_group_lists(sched, 2, extendable=False)
    ffl.check_group_lists(lrs.StepLR(_optimizer(1), 2), 5, extendable=True)
    with pytest.raises(ff.OptimizerError, match=r"LambdaLR\.lr_lambdas has 2 entries .* 3 param"):
        ffl.check_group_lists(sched, 3, extendable=True)
    with pytest.raises(ff.OptimizerError, match=r"StepLR\.base_lrs has 1 entries"):
        ffl.check_group_lists(lrs.StepLR(_optimizer(1), 2), 5, extendable=False)


def test_check_scheduler_refuses_what_is_not_a_scheduler() -> None:
    with pytest.raises(ff.errors.OptimizerTypeError, match=r"got 'cosine' of type str"):
        ffl.check_scheduler("cosine", _optimizer())


def test_reduce_lr_method() -> None:
    """``_reduce_lr(epoch)``: what ReduceLROnPlateau.step calls to lower each group's LR by
    ``factor``, skipping drops not larger than ``eps``; PlateauByLargestDrop overrides it."""
    method = getattr(lrs.ReduceLROnPlateau, ffl.REDUCE_LR, None)
    assert callable(method), _changed(ffl.REDUCE_LR, "ReduceLROnPlateau has no such method")
    assert list(inspect.signature(method).parameters) == ["self", "epoch"], _changed(
        ffl.REDUCE_LR, f"its signature is {inspect.signature(method)}"
    )
    # torch's own: per group, skipping the drop below eps (what freezeflow works around)
    opt = _optimizer(2)
    opt.param_groups[1]["lr"] = 1e-9
    sched = lrs.ReduceLROnPlateau(opt, factor=0.5, patience=0)
    for metric in (1.0, 1.0):
        sched.step(metric)
    assert [g["lr"] for g in opt.param_groups] == [0.05, 1e-9], _changed(
        ffl.REDUCE_LR, "ReduceLROnPlateau.step no longer reduces through it per group with eps"
    )
    # the subclass freezeflow gives an attached one: every group goes down
    sched.__class__ = ffl.PlateauByLargestDrop
    sched.step(1.0)
    assert [g["lr"] for g in opt.param_groups] == [0.025, 5e-10], _changed(
        ffl.REDUCE_LR, "ReduceLROnPlateau.step no longer calls it"
    )
    assert isinstance(sched, lrs.ReduceLROnPlateau)
    assert set(sched.state_dict()) == set(lrs.ReduceLROnPlateau(_optimizer(2)).state_dict())


def test_attach_adapts_reduce_lr_on_plateau_and_its_subclasses_only_when_safe() -> None:
    class Mine(lrs.ReduceLROnPlateau):
        pass

    class OwnReductions(lrs.ReduceLROnPlateau):
        def _reduce_lr(self, epoch: Any) -> None:
            pass

    for cls, adapted in ((lrs.ReduceLROnPlateau, True), (Mine, True), (OwnReductions, False)):
        model = make_net()
        uf = ff.GradualUnfreezer(model, three_stage(), torch.optim.SGD(model.parameters(), 0.1))
        sched = cls(uf.optimizer)
        uf.attach(sched)
        uf.attach(sched)  # twice is harmless
        assert isinstance(sched, cls)
        assert isinstance(sched, ffl.PlateauByLargestDrop) == adapted, cls
