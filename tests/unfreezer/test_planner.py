"""freezeflow.unfreezer.planner: the planner a schedule names is chosen once, the fixed
planner applies stages as written (what the layout says), and registration and state refuse
what does not fit."""

from __future__ import annotations

import pytest
from models import make_net, three_stage

import freezeflow as ff
from freezeflow.errors import ScheduleError, StateError
from freezeflow.unfreezer.auto import AutoPlanner
from freezeflow.unfreezer.layout import layout
from freezeflow.unfreezer.planner import (
    PLANNERS,
    FixedPlanner,
    StagePlanner,
    planner_for,
    register_planner,
)


def test_the_schedule_names_its_planner() -> None:
    net = make_net()
    fixed = three_stage()
    assert type(planner_for(net, fixed, layout(net, fixed))) is FixedPlanner
    auto = ff.auto(7)
    assert type(planner_for(net, auto, layout(net, auto))) is AutoPlanner
    assert type(ff.GradualUnfreezer(net, auto).planner) is AutoPlanner


def test_the_fixed_planner_is_the_layout_as_written() -> None:
    net = make_net()
    sched = three_stage()
    lay = layout(net, sched)
    planner = FixedPlanner(net, sched, lay)
    for k in range(len(sched)):
        choice = planner.choose(k, frozenset())
        assert choice.trainable == lay.trainable_ids[k]
        assert choice.scales is None and choice.note == ""
        assert planner.planned(k, frozenset()).trainable == lay.trainable_ids[k]
    assert planner.trained_later(frozenset(), 1) == lay.trainable_ids[1] | lay.trainable_ids[2]
    assert planner.trained_later(frozenset({0}), 2) == {0} | lay.trainable_ids[2]
    assert not planner.needs_probe and planner.decisions == []
    uf = ff.GradualUnfreezer(make_net(), sched)
    assert planner.lr_scheduler(uf.optimizer, uf.time) is None


def test_an_unknown_planner_name_is_refused_with_the_nearest() -> None:
    class Typo(ff.Schedule):
        planner = "fixd"

    net = make_net()
    sched = Typo(three_stage())
    with pytest.raises(ScheduleError, match=r"'fixd'.*nearest: 'fixed'.*register_planner"):
        ff.GradualUnfreezer(net, sched)
    assert all(p.requires_grad for p in net.parameters())  # refused before any change


def test_register_planner_takes_only_planner_classes() -> None:
    with pytest.raises(ff.errors.ScheduleTypeError, match="not a StagePlanner subclass"):
        register_planner("junk")(int)  # type: ignore[type-var]
    assert "junk" not in PLANNERS

    @register_planner("test_planner_copy")
    class Copy(StagePlanner):
        pass

    try:
        assert PLANNERS["test_planner_copy"] is Copy and Copy.name == "test_planner_copy"
    finally:
        del PLANNERS["test_planner_copy"]


def test_a_fixed_planner_refuses_decisions_it_never_makes() -> None:
    net = make_net()
    sched = three_stage()
    planner = FixedPlanner(net, sched, layout(net, sched))
    planner.load_state_dict(None)
    with pytest.raises(StateError, match=r"makes none.*same schedule"):
        planner.load_state_dict([{"stage_index": 1}])
