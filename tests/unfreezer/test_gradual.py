"""GradualUnfreezer: binding, param groups, optimizers, frozen parameters staying bit-identical,
optimizer state across transitions, triggers, history and listeners, and bad input."""

from __future__ import annotations

import copy
import inspect
import math
import re
from collections.abc import Callable
from typing import Any

import pytest
import torch
from models import (
    ALL_NAMES,
    BODY1,
    HEAD,
    STAGE_SETS,
    batch,
    block_of,
    drive,
    flags,
    group_view,
    make_net,
    names_of,
    norm_state,
    snapshot,
    staged,
    staged_unfreezer,
    three_stage,
    train_step,
    trainable_names,
)
from torch import nn

import freezeflow as ff

pytestmark = pytest.mark.usefixtures("single_thread")


# --------------------------------------------------------------------------- binding


def test_stage_selecting_nothing_names_the_stage_and_changes_nothing() -> None:
    model = make_net()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before_flags, before_groups = flags(model), group_view(opt)
    sched = ff.Schedule(
        [
            ff.Stage("head", lr=1e-3),
            ff.Stage(ff.of_type(nn.LSTM), lr=1e-4, start=2, name="lstm"),
        ]
    )
    with pytest.raises(ff.ScheduleError, match=r"stage 1 \('lstm'\) cannot be bound to Net"):
        ff.GradualUnfreezer(model, sched, opt)
    assert flags(model) == before_flags
    assert group_view(opt) == before_groups
    with pytest.raises(ff.ScheduleError, match=r"stage 0 \('stage0'\).*'encoder'"):
        ff.GradualUnfreezer(model, [ff.Stage("encoder", lr=1e-3)], opt)
    assert flags(model) == before_flags
    assert group_view(opt) == before_groups
    with pytest.raises(ff.ScheduleError, match=r"stage 1 \('stage1'\)"):
        ff.plan(model, [ff.Stage("head", lr=1e-3), ff.Stage(ff.last(9), lr=1e-3, start=1)])


# --------------------------------------------------------------------------- optimizers

OptCase = tuple[type[torch.optim.Optimizer], dict[str, Any]]
VARIANTS: list[tuple[str, OptCase]] = [
    ("SGD-momentum", (torch.optim.SGD, {"lr": 0.1, "momentum": 0.9})),
    (
        "SGD-nesterov-foreach",
        (torch.optim.SGD, {"lr": 0.1, "momentum": 0.9, "nesterov": True, "foreach": True}),
    ),
    ("SGD-momentum-fused", (torch.optim.SGD, {"lr": 0.1, "momentum": 0.9, "fused": True})),
    ("Adam", (torch.optim.Adam, {})),
    ("Adam-foreach", (torch.optim.Adam, {"foreach": True})),
    ("Adam-fused", (torch.optim.Adam, {"fused": True})),
    ("AdamW", (torch.optim.AdamW, {})),
    ("AdamW-amsgrad-foreach", (torch.optim.AdamW, {"foreach": True, "amsgrad": True})),
    ("AdamW-fused", (torch.optim.AdamW, {"fused": True})),
    ("RMSprop-momentum", (torch.optim.RMSprop, {"momentum": 0.9})),
    ("RMSprop-foreach", (torch.optim.RMSprop, {"momentum": 0.9, "foreach": True})),
    ("RMSprop-fused", (torch.optim.RMSprop, {"fused": True})),
]


TORCH = tuple(int(v) for v in re.findall(r"\d+", torch.__version__)[:2])


def runs_here(case: OptCase) -> bool:
    """The rule that decides which variants this torch runs (on CPU, where the tests run):
    every argument must be one the optimizer class takes (``fused`` is not an argument of
    every optimizer, e.g. RMSprop), and ``fused=True`` needs torch >= 2.4, the first release
    with fused CPU kernels. :func:`test_variants_left_out_fail_to_build_here` checks that
    each variant the rule leaves out really fails to build, so the rule hides nothing."""
    cls, kw = case
    if not set(kw) <= set(inspect.signature(cls).parameters):
        return False
    return not kw.get("fused") or TORCH >= (2, 4)


OPTIMIZERS = [(i, c) for i, c in VARIANTS if runs_here(c)]
LEFT_OUT = [(i, c) for i, c in VARIANTS if not runs_here(c)]


def test_variants_left_out_fail_to_build_here() -> None:
    built = []
    for name, (cls, kw) in LEFT_OUT:
        try:
            cls([nn.Parameter(torch.zeros(1))], **kw)
        except (TypeError, RuntimeError):
            continue
        built.append(name)
    assert not built, f"{built} build on torch {torch.__version__}: let runs_here() run them"
    assert len(OPTIMIZERS) >= 8  # every variant without fused=True runs on any torch


def _build(case: OptCase, how: str, model: nn.Module, schedule: ff.Schedule) -> ff.GradualUnfreezer:
    assert runs_here(case)
    cls, kw = case
    if how == "instance":
        opt = cls(model.parameters(), **kw)
        uf = ff.GradualUnfreezer(model, schedule, opt)
        assert uf.optimizer is opt
        return uf
    return ff.GradualUnfreezer(model, schedule, lambda groups: cls(groups, **kw))


@pytest.mark.parametrize("how", ["instance", "factory"])
@pytest.mark.parametrize("case", [c for _, c in OPTIMIZERS], ids=[i for i, _ in OPTIMIZERS])
def test_frozen_parameters_bit_identical_through_every_stage(case: OptCase, how: str) -> None:
    """3 stages, 2 epochs each: whatever is not trainable yet never changes, not even through
    momentum, Adam moments or (decoupled) weight decay; what is trainable moves."""
    model = make_net()
    uf = _build(case, how, model, three_stage(weight_decay=0.1))
    opt = uf.optimizer
    assert type(opt) is case[0]
    for key in ("momentum", "foreach", "fused", "nesterov", "amsgrad"):
        if key in case[1]:
            assert all(g[key] == case[1][key] for g in opt.param_groups), key
    start = snapshot(model)
    bn_start = {n: b.clone() for n, b in model.named_buffers()}
    step = 0
    for stage in range(3):
        uf.on_epoch_start(2 * stage)
        assert uf.stage_index == stage
        assert trainable_names(model) == STAGE_SETS[stage]
        entered = snapshot(model)
        for epoch in (2 * stage, 2 * stage + 1):
            uf.on_epoch_start(epoch)
            model.train()
            for _ in range(2):
                train_step(model, opt, step)
                uf.step()
                step += 1
                now = snapshot(model)
                for n in ALL_NAMES - STAGE_SETS[stage]:
                    assert torch.equal(now[n], start[n]), (stage, n)
            # frozen BatchNorm layers kept their statistics (norm mode "eval")
            for n, b in model.named_buffers():
                if block_of(n) not in {block_of(p) for p in STAGE_SETS[stage]}:
                    assert torch.equal(b, bn_start[n]), (stage, n)
        moved = {n for n in STAGE_SETS[stage] if not torch.equal(snapshot(model)[n], entered[n])}
        assert moved == STAGE_SETS[stage], STAGE_SETS[stage] - moved


@pytest.mark.parametrize(
    "case",
    [c for i, c in OPTIMIZERS if i in ("SGD-momentum", "Adam", "AdamW-fused")],
    ids=[i for i, _ in OPTIMIZERS if i in ("SGD-momentum", "Adam", "AdamW-fused")],
)
@pytest.mark.parametrize("set_to_none", [True, False], ids=["grads-to-none", "grads-zeroed"])
def test_frozen_again_parameters_stay_put_in_exclusive_stages(
    case: OptCase, set_to_none: bool
) -> None:
    """chain-thaw freezes what earlier stages trained; momentum, moments and weight decay
    must not move it, even when the loop zeroes gradients instead of dropping them."""
    model = make_net()
    sched = ff.Schedule(
        [
            ff.Stage("head", lr=1e-2, weight_decay=0.1, exclusive=True),
            ff.Stage("body.1", lr=1e-2, start=1, exclusive=True),
            ff.Stage("stem", lr=1e-2, start=2, exclusive=True),
        ]
    )
    uf = _build(case, "instance", model, sched)
    parts = [HEAD, BODY1, {n for n in ALL_NAMES if n.startswith("stem.")}]
    step = 0
    for epoch in range(3):
        uf.on_epoch_start(epoch)
        assert trainable_names(model) == parts[epoch]
        entered = snapshot(model)
        for _ in range(3):
            train_step(model, opt := uf.optimizer, step, set_to_none=set_to_none)
            uf.step()
            step += 1
        now = snapshot(model)
        for n in ALL_NAMES:
            assert torch.equal(now[n], entered[n]) == (n not in parts[epoch]), n
        assert all(p.grad is None for n, p in model.named_parameters() if n not in parts[epoch])
    assert opt is uf.optimizer


def test_trained_later_is_what_stays_or_becomes_trainable() -> None:
    model = make_net()
    two = ff.Schedule([ff.Stage("head", lr=1e-2), ff.Stage("body.1", lr=1e-3, start=2)])
    uf = ff.GradualUnfreezer(model, two, torch.optim.SGD)
    name_of = {id(p): n for n, p in model.named_parameters()}
    assert {name_of[id(p)] for p in uf.trained_later()} == HEAD | BODY1
    uf.on_epoch_start(2)
    assert {name_of[id(p)] for p in uf.trained_later()} == HEAD | BODY1
    chain = ff.Schedule(  # exclusive stages: what is frozen again is no longer "later"
        [
            ff.Stage("head", lr=1e-2, exclusive=True),
            ff.Stage("body.1", lr=1e-2, start=1, exclusive=True),
        ]
    )
    uf = ff.GradualUnfreezer(make_net(), chain, torch.optim.SGD)
    uf.on_epoch_start(1)
    name_of = {id(p): n for n, p in uf.model.named_parameters()}
    assert {name_of[id(p)] for p in uf.trained_later()} == BODY1


# --------------------------------------------------------------------------- optimizer state

STATE_CASES: list[tuple[str, OptCase, tuple[str, ...]]] = [
    ("SGD-momentum", (torch.optim.SGD, {"lr": 0.1, "momentum": 0.9}), ("momentum_buffer",)),
    ("Adam", (torch.optim.Adam, {}), ("step", "exp_avg", "exp_avg_sq")),
    ("AdamW-wd", (torch.optim.AdamW, {"weight_decay": 0.05}), ("step", "exp_avg", "exp_avg_sq")),
    ("AdamW-fused", (torch.optim.AdamW, {"fused": True}), ("step", "exp_avg", "exp_avg_sq")),
    (
        "RMSprop-momentum",
        (torch.optim.RMSprop, {"momentum": 0.9}),
        ("step", "square_avg", "momentum_buffer"),
    ),
]
STATE_CASES = [(i, c, k) for i, c, k in STATE_CASES if runs_here(c)]


def _state_copy(opt: torch.optim.Optimizer) -> dict[int, dict[str, Any]]:
    return {id(p): copy.deepcopy(s) for p, s in opt.state.items()}


@pytest.mark.parametrize(
    ("case", "keys"), [(c, k) for _, c, k in STATE_CASES], ids=[i for i, _, _ in STATE_CASES]
)
def test_optimizer_state_continues_through_transitions(
    case: OptCase, keys: tuple[str, ...]
) -> None:
    model = make_net()
    uf = _build(case, "instance", model, three_stage())
    opt = uf.optimizer
    step = 0
    uf.on_epoch_start(0)
    for stage in range(3):
        if stage:
            before = _state_copy(opt)
            assert before, "no state to carry over"
            uf.on_epoch_start(2 * stage)
            after = _state_copy(opt)
            assert after.keys() == before.keys()
            for pid, s in before.items():
                assert set(keys) <= s.keys()
                for key in keys:
                    assert torch.equal(torch.as_tensor(after[pid][key]), torch.as_tensor(s[key]))
        for _ in range(2):
            train_step(model, opt, step)
            uf.step()
            step += 1
        # state exists for exactly the parameters trained so far
        assert names_of(model, opt.state.keys()) == STAGE_SETS[stage]
    if "step" in keys:
        head_state = opt.state[model.head.weight]
        assert float(head_state["step"]) == 6.0  # never restarted


@pytest.mark.parametrize(
    "case",
    [c for i, c, _ in STATE_CASES if i in ("SGD-momentum", "Adam", "AdamW-fused")],
    ids=[i for i, _, _ in STATE_CASES if i in ("SGD-momentum", "Adam", "AdamW-fused")],
)
def test_reset_state_clears_optimizer_state(case: OptCase) -> None:
    model = make_net()
    uf = _build(case, "instance", model, three_stage(reset_state=True))
    opt = uf.optimizer
    uf.on_epoch_start(0)
    for step in range(2):
        train_step(model, opt, step)
        uf.step()
    assert len(opt.state) == 2
    uf.on_epoch_start(2)
    assert len(opt.state) == 0
    train_step(model, opt, 2)
    assert names_of(model, opt.state.keys()) == HEAD | BODY1
    if case[0] is not torch.optim.SGD:
        assert float(opt.state[model.head.weight]["step"]) == 1.0


# --------------------------------------------------------------------------- norm modes


def test_norm_layers_follow_the_stages() -> None:
    model = make_net()
    uf = ff.GradualUnfreezer(model, three_stage(), torch.optim.SGD(model.parameters(), lr=0.1))
    model.train()
    assert norm_state(model) == {
        "stem.1": ("eval", False),
        "body.0.bn": ("eval", False),
        "body.1.bn": ("eval", False),
    }
    uf.on_epoch_start(2)
    model.train()
    assert norm_state(model)["body.1.bn"] == (None, True)
    assert norm_state(model)["body.0.bn"] == ("eval", False)
    uf.on_epoch_start(4)
    model.train()
    assert {m for m, _ in norm_state(model).values()} == {None}
    model.eval()
    assert not any(t for _, t in norm_state(model).values())


@pytest.mark.parametrize(
    ("norm", "locked"), [("eval", "eval"), ("frozen", "frozen"), ("train", None)]
)
def test_norm_mode_argument(norm: Any, locked: str | None) -> None:
    model = make_net()
    ff.GradualUnfreezer(
        model, three_stage(), torch.optim.SGD(model.parameters(), lr=0.1), norm=norm
    )
    assert norm_state(model)["body.0.bn"][0] == locked


def test_history_records_each_transition() -> None:
    model = make_net()
    opt = torch.optim.AdamW(model.parameters())
    uf = ff.GradualUnfreezer(model, three_stage(), opt)
    numel = {n: p.numel() for n, p in model.named_parameters()}
    drive(uf, epochs=6, steps=2)
    assert [(t.stage_index, t.name, t.epoch, t.step, t.reason) for t in uf.history] == [
        (0, "stage0", 0, 0, "start"),
        (1, "stage1", 2, 4, "epoch 2"),
        (2, "stage2", 4, 8, "epoch 4"),
    ]
    assert [t.n_trainable for t in uf.history] == [sum(numel[n] for n in s) for s in STAGE_SETS]
    assert uf.history[0].lrs == {"stage0/head/no_decay": 1e-2, "stage0/head/decay": 1e-2}
    assert uf.history[1].lrs == pytest.approx(
        {
            "stage0/head/no_decay": 3e-3,
            "stage0/head/decay": 3e-3,
            "stage1/body.1/no_decay": 3e-3,
            "stage1/body.1/decay": 3e-3,
        }
    )
    assert uf.history[2].lrs == pytest.approx(
        {g["name"]: 1e-3 * g["lr_scale"] for g in opt.param_groups}
    )
    assert uf.history[2].lrs["stage2/stem/decay"] == pytest.approx(1e-3 / 8)
    assert uf.history[2].to_dict()["lrs"] == uf.history[2].lrs
    assert uf.lrs() == uf.history[2].lrs
    assert uf.stage_name == "stage2"
    assert uf.n_trainable == uf.history[2].n_trainable
    assert "stage 2 'stage2' of 3" in repr(uf)


def test_listeners_fire_once_per_transition() -> None:
    uf = staged_unfreezer(staged(1, ff.at_step(5), 3))
    calls: list[tuple[int, bool, frozenset[str]]] = []

    def listener(t: ff.unfreezer.Transition) -> None:
        # called after the model and optimizer are updated
        calls.append((t.stage_index, t is uf.history[-1], trainable_names(uf.model)))

    other: list[int] = []
    uf.add_listener(listener)
    uf.add_listener(lambda t: other.append(t.stage_index))
    drive(uf, epochs=5, steps=2)
    assert [c[0] for c in calls] == [1, 2, 3] == other
    assert all(c[1] for c in calls)
    assert calls[0][2] == HEAD | BODY1
    assert calls[2][2] == ALL_NAMES
    with pytest.raises(ff.errors.OptimizerTypeError, match="takes a callable, got 3 of type int"):
        uf.add_listener(3)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- bad input

BadBuild = Callable[[nn.Module, torch.optim.Optimizer], Any]
BAD_INPUT: list[tuple[str, BadBuild, type[Exception], str]] = [
    (
        "non-increasing-starts",
        lambda m, o: ff.GradualUnfreezer(
            m,
            [
                ff.Stage("head", lr=1),
                ff.Stage("body", lr=1, start=3),
                ff.Stage("stem", lr=1, start=3),
            ],
            o,
        ),
        ff.ScheduleError,
        r"stage 2 starts at epoch 3, not after stage 1 \(epoch 3\)",
    ),
    (
        "stage-selects-nothing",
        lambda m, o: ff.GradualUnfreezer(
            m, [ff.Stage("head", lr=1), ff.Stage("decoder", lr=1, start=1)], o
        ),
        ff.ScheduleError,
        r"stage 1 \('stage1'\).*'decoder'",
    ),
    (
        "negative-lr",
        lambda m, o: ff.GradualUnfreezer(m, [ff.Stage("head", lr=-1e-3)], o),
        ff.ScheduleError,
        r"Stage\(lr\)=-0\.001",
    ),
    (
        "nan-lr",
        lambda m, o: ff.GradualUnfreezer(m, [ff.Stage("head", lr=math.nan)], o),
        ff.ScheduleError,
        r"Stage\(lr\)=nan",
    ),
    (
        "unknown-dict-key",
        lambda m, o: ff.GradualUnfreezer(
            m,
            ff.Schedule.from_dict({"stages": [{"trainable": "head", "lr": 1, "exclusiv": True}]}),
            o,
        ),
        ff.ScheduleError,
        r"unknown key 'exclusiv'.*nearest: 'exclusive'",
    ),
    (
        "foreign-parameters",
        lambda m, o: ff.GradualUnfreezer(
            m,
            three_stage(),
            torch.optim.SGD([*m.parameters(), nn.Parameter(torch.zeros(7, 5))], lr=0.1),
        ),
        ff.OptimizerError,
        r"1 parameter\(s\) that are not in Net \(shapes \[\(7, 5\)\]\)",
    ),
    (
        "optimizer-of-another-model",
        lambda m, o: ff.GradualUnfreezer(
            m, three_stage(), torch.optim.SGD(make_net(5).parameters(), lr=0.1)
        ),
        ff.OptimizerError,
        r"not in Net \(shapes \[\(4, 3, 3, 3\)",
    ),
    (
        "scheduler-of-another-optimizer",
        lambda m, o: ff.GradualUnfreezer(
            m,
            three_stage(),
            o,
            scheduler=torch.optim.lr_scheduler.StepLR(torch.optim.SGD(make_net().parameters()), 2),
        ),
        ff.OptimizerError,
        r"StepLR is bound to another optimizer \(SGD at 0x",
    ),
    (
        "not-an-optimizer",
        lambda m, o: ff.GradualUnfreezer(m, three_stage(), 42),  # type: ignore[arg-type]
        ff.errors.OptimizerTypeError,
        r"got 42 of type int",
    ),
    (
        "factory-returns-junk",
        lambda m, o: ff.GradualUnfreezer(
            m,
            three_stage(),
            lambda groups: "sgd",  # type: ignore[arg-type,return-value]
        ),
        ff.errors.OptimizerTypeError,
        r"returned 'sgd' of type str, not a torch\.optim\.Optimizer",
    ),
    (
        "bad-norm-mode",
        lambda m, o: ff.GradualUnfreezer(m, three_stage(), o, norm="bn"),  # type: ignore[arg-type]
        ff.PolicyError,
        r"norm='bn'",
    ),
    (
        "not-a-module",
        lambda m, o: ff.GradualUnfreezer("resnet18", three_stage(), o),  # type: ignore[arg-type]
        ff.errors.PolicyTypeError,
        r"needs an nn\.Module, got 'resnet18' of type str",
    ),
    (
        "total-epochs-bool",
        lambda m, o: ff.GradualUnfreezer(m, three_stage(), o, total_epochs=True),
        ff.errors.ScheduleTypeError,
        r"GradualUnfreezer\(total_epochs\): expected an integer >= 1, got True of type bool",
    ),
]


@pytest.mark.parametrize(
    ("build", "error", "match"),
    [(b, e, m) for _, b, e, m in BAD_INPUT],
    ids=[i for i, _, _, _ in BAD_INPUT],
)
def test_bad_input_changes_nothing(build: BadBuild, error: type[Exception], match: str) -> None:
    model = make_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    train_step(model, opt, 0)  # some optimizer state and gradients to keep
    model.train()
    before = (flags(model), group_view(opt), norm_state(model), snapshot(model))
    state = _state_copy(opt)
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert grads.keys() == ALL_NAMES
    with pytest.raises(error, match=match) as info:
        build(model, opt)
    assert isinstance(info.value, ff.FreezeflowError)
    after = (flags(model), group_view(opt), norm_state(model), snapshot(model))
    assert after[:3] == before[:3]
    assert all(torch.equal(after[3][n], before[3][n]) for n in ALL_NAMES)
    assert _state_copy(opt).keys() == state.keys()
    after_grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert after_grads.keys() == grads.keys()
    assert all(torch.equal(after_grads[n], grads[n]) for n in grads)


def test_hook_arguments_are_checked() -> None:
    uf = staged_unfreezer(staged(1))
    with pytest.raises(ff.ScheduleError, match=r"on_epoch_start\(epoch\): .* >= 0, got -1"):
        uf.on_epoch_start(-1)
    with pytest.raises(ff.errors.ScheduleTypeError, match=r"on_epoch_start\(epoch\): .* got '1'"):
        uf.on_epoch_start("1")  # type: ignore[arg-type]
    assert uf.stage_index == 0


def test_training_end_to_end_reduces_loss() -> None:
    """A sanity run: the unfreezer with a real loop learns a fixed batch."""
    model = make_net()
    opt = torch.optim.AdamW(model.parameters())
    uf = ff.GradualUnfreezer(
        model,
        [ff.Stage("head", lr=3e-2), ff.Stage(ff.everything(), lr=1e-2, start=5, lr_decay=0.5)],
        opt,
    )
    x, y = batch(0, n=16)
    losses = []
    for epoch in range(10):
        uf.on_epoch_start(epoch)
        model.train()
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        uf.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert uf.stage_index == 1
