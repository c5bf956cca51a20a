"""Schedules as data (freezeflow.schedules.schedule): Stage and Schedule validation on
construction, and the dict / JSON / YAML round trip of every preset. Triggers are in
test_triggers.py, policies as data in test_serialize.py."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import pytest
import yaml

import freezeflow as ff
from freezeflow.schedules.triggers import AtEpoch, AtFraction, AtStep, OnPlateau

# --------------------------------------------------------------------------- validation


def _stage(**kw: Any) -> ff.Stage:
    return ff.Stage("fc", **{"lr": 1e-3, **kw})


# (id, builder, regex the message must match: it names the offending value)
BAD_SCHEDULES: list[tuple[str, Any, str]] = [
    (
        "epoch-starts-equal",
        lambda: ff.Schedule([_stage(), _stage(start=2), _stage(start=2)]),
        r"stage 2 starts at epoch 2, not after stage 1 \(epoch 2\)",
    ),
    (
        "epoch-starts-decrease",
        lambda: ff.Schedule([_stage(), _stage(start=5), _stage(start=3)]),
        r"stage 2 starts at epoch 3, not after stage 1 \(epoch 5\)",
    ),
    (
        "step-starts-decrease",
        lambda: ff.Schedule([_stage(), _stage(start=ff.at_step(50)), _stage(start=ff.at_step(10))]),
        r"stage 2 starts at step 10, not after stage 1 \(step 50\)",
    ),
    (
        "fraction-starts-equal",
        lambda: ff.Schedule(
            [_stage(), _stage(start=ff.at_fraction(0.5)), _stage(start=ff.at_fraction(0.5))]
        ),
        r"stage 2 starts at fraction 0\.5, not after stage 1",
    ),
    ("lr-nan", lambda: _stage(lr=math.nan), r"Stage\(lr\)=nan"),
    ("lr-inf", lambda: _stage(lr=math.inf), r"Stage\(lr\)=inf"),
    ("lr-negative", lambda: _stage(lr=-0.001), r"Stage\(lr\)=-0\.001"),
    ("lr-zero", lambda: _stage(lr=0), r"Stage\(lr\)=0 "),
    ("lr-string", lambda: _stage(lr="1e-3"), r"Stage\(lr\)='1e-3'"),
    ("lr-bool", lambda: _stage(lr=True), r"Stage\(lr\)=True"),
    ("weight-decay-negative", lambda: _stage(weight_decay=-0.1), r"Stage\(weight_decay\)=-0\.1"),
    ("lr-decay-above-one", lambda: _stage(lr_decay=2.6), r"Stage\(lr_decay=2\.6\)"),
    ("lr-decay-zero", lambda: _stage(lr_decay=0.0), r"Stage\(lr_decay\)=0\.0"),
    (
        "first-stage-late",
        lambda: ff.Schedule([_stage(start=3), _stage(start=5)]),
        r"first stage .* starts at AtEpoch\(epoch=3\)",
    ),
    (
        "first-stage-late-step",
        lambda: ff.Schedule([_stage(start=ff.at_step(7))]),
        r"AtStep\(step=7\)",
    ),
    (
        "first-stage-plateau",
        lambda: ff.Schedule([_stage(start=ff.on_plateau())]),
        r"first stage .*OnPlateau",
    ),
    (
        "duplicate-names",
        lambda: ff.Schedule([_stage(name="head"), _stage(start=1, name="head")]),
        r"'head' is used twice",
    ),
    (
        "explicit-name-equals-default",
        lambda: ff.Schedule([_stage(), _stage(start=1, name="stage0")]),
        r"'stage0' is used twice",
    ),
    ("name-with-slash", lambda: _stage(name="a/b"), r"Stage\(name='a/b'\)"),
    ("reset-state-not-bool", lambda: _stage(reset_state=1), r"Stage\(reset_state=1\)"),
    ("empty", lambda: ff.Schedule([]), r"at least one Stage, got an empty list"),
    (
        "not-a-stage",
        lambda: ff.Schedule([{"lr": 1}]),  # type: ignore[list-item]
        r"stage 0 is \{'lr': 1\} of type dict",
    ),
    ("start-negative", lambda: _stage(start=-1), r"at_epoch: expected an integer >= 0, got -1"),
    ("start-float-epoch", lambda: _stage(start=1.5), r"1\.5 is not a trigger"),
]


@pytest.mark.parametrize(
    ("build", "match"), [(b, m) for _, b, m in BAD_SCHEDULES], ids=[i for i, _, _ in BAD_SCHEDULES]
)
def test_invalid_schedules_are_refused(build: Any, match: str) -> None:
    with pytest.raises(ff.FreezeflowError, match=match) as info:
        build()
    # a wrong type is a TypeError (of the schedule family), a wrong value a ScheduleError
    error: Exception = info.value
    if isinstance(error, TypeError):
        assert isinstance(error, ff.errors.ScheduleTypeError)
    else:
        assert isinstance(error, ff.ScheduleError) and isinstance(error, ValueError)


BAD_DICTS: list[tuple[str, Any, str]] = [
    (
        "unknown-key-lr",
        {"stages": [{"trainable": "fc", "lrr": 1e-3}]},
        r"stage 0: unknown key 'lrr'.*nearest: 'lr'",
    ),
    (
        "unknown-key-weight-decay",
        {
            "stages": [
                {"trainable": "fc", "lr": 1e-3},
                {"trainable": "x", "lr": 1, "wieght_decay": 0},
            ]
        },
        r"stage 1: unknown key 'wieght_decay'.*nearest: 'weight_decay'",
    ),
    (
        "unknown-key-start",
        {"stages": [{"trainable": "fc", "lr": 1e-3, "strat": 0}]},
        r"unknown key 'strat'.*nearest: 'start'",
    ),
    ("missing-lr", {"stages": [{"trainable": "fc"}]}, r"stage 0: missing required key 'lr'"),
    ("top-level-key", {"stages": [], "extra": 1}, r"got keys \['stages', 'extra'\]"),
    ("stages-not-list", {"stages": "fc"}, r"'stages' must be a list, got 'fc'"),
    ("stage-not-mapping", {"stages": ["fc"]}, r"stage 0: expected a mapping .* got 'fc'"),
    (
        "bad-trigger",
        {"stages": [{"trainable": "fc", "lr": 1, "start": {"epochs": 3}}]},
        r"\{'epochs': 3\} is not a trigger",
    ),
    (
        "bad-plateau-option",
        {
            "stages": [
                {"trainable": "fc", "lr": 1},
                {"trainable": "x", "lr": 1, "start": {"plateau": {"patiense": 2}}},
            ]
        },
        r"unknown plateau option 'patiense'",
    ),
    (
        "nan-lr",
        {"stages": [{"trainable": "fc", "lr": float("nan")}]},
        r"Stage\(lr\)=nan",
    ),
    (
        "non-increasing",
        {
            "stages": [
                {"trainable": "a", "lr": 1},
                {"trainable": "b", "lr": 1, "start": 4},
                {"trainable": "c", "lr": 1, "start": 4},
            ]
        },
        r"stage 2 starts at epoch 4",
    ),
]


@pytest.mark.parametrize(
    ("data", "match"), [(d, m) for _, d, m in BAD_DICTS], ids=[i for i, _, _ in BAD_DICTS]
)
def test_invalid_dicts_are_refused(data: Any, match: str) -> None:
    with pytest.raises(ff.ScheduleError, match=match):
        ff.Schedule.from_dict(data)


def test_bad_policy_in_dict_is_a_policy_error_naming_the_path() -> None:
    data = {"stages": [{"trainable": {"type": "torch.nn.NotAModule"}, "lr": 1e-3}]}
    with pytest.raises(ff.PolicyError, match=r"stage 0\.trainable\.type.*torch\.nn\.NotAModule"):
        ff.Schedule.from_dict(data)


def test_valid_schedule_fields_and_defaults() -> None:
    s = ff.Schedule(
        [
            ff.Stage("fc", lr=1e-3),
            ff.Stage(["layer4", "fc"], lr=1e-4, start=ff.at_step(100), weight_decay=0.0),
            ff.Stage(ff.everything(), lr=1e-5, start=5, lr_decay=0.5, name="all"),
        ]
    )
    assert len(s) == 3
    assert s.names == ["stage0", "stage1", "all"]
    assert s[0].start == AtEpoch(0)
    assert s[0].weight_decay is None
    assert s[1].trainable == ff.name("layer4", "fc")
    assert s[1].start == AtStep(100)
    assert s[1].weight_decay == 0.0
    assert s[2].start == AtEpoch(5)
    assert ff.Schedule(s) == s
    # different kinds of trigger need not be ordered against each other
    mixed = ff.Schedule([_stage(), _stage(start=ff.at_step(5)), _stage(start=1)])
    assert [type(st.start) for st in mixed.stages] == [AtEpoch, AtStep, AtEpoch]


def test_first_stage_may_start_at_step_zero_or_fraction_zero() -> None:
    assert ff.Schedule([_stage(start=ff.at_step(0))])[0].start == AtStep(0)
    assert ff.Schedule([_stage(start=ff.at_fraction(0))])[0].start == AtFraction(0.0)


# --------------------------------------------------------------------------- round trip

PRESETS: list[tuple[str, Any]] = [
    (
        "classic_pytorch",
        lambda: ff.presets.two_stage("fc", "layer4", head_epochs=5, lr=1e-5, reset_state=True),
    ),
    ("two_stage-custom", lambda: ff.presets.two_stage("head", ["layer3", "layer4"], head_epochs=2)),
    (
        "classic_keras",
        lambda: ff.presets.two_stage(
            "fc", ff.layers(-6, among=~ff.name("fc")), head_epochs=5, lr=1e-5, reset_state=True
        ),
    ),
    (
        "two_stage-layers",
        lambda: ff.presets.two_stage(ff.name("fc"), ff.layers(-10, among=~ff.name("fc"))),
    ),
    ("two_stage", lambda: ff.presets.two_stage()),
    (
        "two_stage-decay",
        lambda: ff.presets.two_stage("fc", ff.last(3), lr_decay=0.7, weight_decay=0.05),
    ),
    ("ulmfit", lambda: ff.presets.ulmfit(4)),
    ("ulmfit-wd", lambda: ff.presets.ulmfit(2, lr=3e-4, weight_decay=0.01, epochs_per_stage=3)),
    ("chain_thaw", lambda: ff.presets.chain_thaw("fc", ["layer1", ff.regex(r"layer[23]\..*")])),
    ("layerwise_decay", lambda: ff.presets.layerwise_decay()),
    ("layerwise_decay-no-wd", lambda: ff.presets.layerwise_decay(1e-4, 0.65, weight_decay=None)),
]


def _policy_schedule(policy: ff.FreezePolicy) -> ff.Schedule:
    return ff.Schedule(
        [
            ff.Stage("fc", lr=1e-3, weight_decay=0.05, name="head"),
            ff.Stage(policy, lr=2.5e-5, start=ff.on_plateau(3, 0.01, mode="max", max_epoch=7)),
            ff.Stage(ff.everything(), lr=1 / 2.6, start=ff.at_step(1000), lr_decay=1 / 2.6),
            ff.Stage(policy, lr=1e-6, start=ff.at_fraction(0.8), exclusive=True, reset_state=True),
        ]
    )


# every kind of policy round-trips in test_serialize.py; here one schedule with each kind of
# trigger and every Stage option
ROUND_TRIP = [*PRESETS, ("every-option", lambda: _policy_schedule(ff.last(2) - ff.norm_layers()))]


@pytest.mark.parametrize("build", [f for _, f in ROUND_TRIP], ids=[i for i, _ in ROUND_TRIP])
def test_round_trip_dict_json_yaml(build: Any, tmp_path: Any) -> None:
    sched = build()
    data = sched.to_dict()
    assert ff.Schedule.from_dict(data) == sched
    assert ff.Schedule.from_dict(json.loads(json.dumps(data))) == sched
    text = sched.to_yaml()
    assert yaml.safe_load(text) == data
    assert ff.Schedule.from_yaml(text) == sched
    path = tmp_path / "schedule.yaml"
    path.write_text(text, encoding="utf-8")
    assert ff.Schedule.from_yaml(path) == sched
    assert ff.Schedule.from_yaml(str(path)) == sched
    # the data is plain: only dicts, lists, str, int, float, bool, None
    assert _plain(data)


def _plain(x: Any) -> bool:
    if isinstance(x, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in x.items())
    if isinstance(x, list):
        return all(_plain(v) for v in x)
    return x is None or isinstance(x, (str, int, float, bool))


def test_round_trip_preserves_every_field() -> None:
    sched = _policy_schedule(ff.last(2))
    back = ff.Schedule.from_yaml(sched.to_yaml())
    for a, b in zip(sched.stages, back.stages):
        for field in dataclasses.fields(ff.Stage):
            assert getattr(a, field.name) == getattr(b, field.name), field.name
    assert back[2].lr == 1 / 2.6  # exact, not approximately
    assert back[1].start == OnPlateau(3, 0.01, "max", 7, "val_loss")


def test_to_dict_format() -> None:
    sched = ff.Schedule(
        [
            ff.Stage("fc", lr=1e-3),
            ff.Stage(ff.last(2), lr=1e-4, start=ff.at_step(10), lr_decay=0.5, reset_state=True),
        ]
    )
    assert sched.to_dict() == {
        "stages": [
            {"trainable": "fc", "lr": 1e-3, "start": {"epoch": 0}},
            {
                "trainable": {"blocks": [-2, None]},
                "lr": 1e-4,
                "start": {"step": 10},
                "lr_decay": 0.5,
                "reset_state": True,
            },
        ]
    }


def test_hand_written_yaml() -> None:
    text = """
stages:
  - trainable: fc
    lr: 1e-3          # YAML 1.1 would read this as a string
    weight_decay: 0.05
  - trainable: {last: 2, among: {not: fc}}
    lr: 2E-5
    start: 3
    lr_decay: 0.5
  - trainable: everything
    lr: 1.0e-6
    start: {plateau: {patience: 2, mode: max}}
"""
    sched = ff.Schedule.from_yaml(text)
    assert sched[0].lr == 1e-3
    assert sched[1].lr == 2e-5
    assert sched[1].trainable == ff.last(2, among=~ff.name("fc"))
    assert sched[1].start == AtEpoch(3)
    assert sched[2].start == ff.on_plateau(2, mode="max")
    assert sched[2].lr == 1e-6


def test_epoch_number_shorthand() -> None:
    sched = ff.Schedule.from_dict(
        {"stages": [{"trainable": "fc", "lr": 1}, {"trainable": "x", "lr": 1, "start": 4}]}
    )
    assert sched[1].start == AtEpoch(4)


def test_yaml_errors() -> None:
    with pytest.raises(ff.ScheduleError, match="not valid YAML"):
        ff.Schedule.from_yaml("stages: [\n  - {trainable: fc")
    with pytest.raises(ff.ScheduleError, match=r"'missing\.yaml' does not exist"):
        ff.Schedule.from_yaml("missing.yaml")
    with pytest.raises(ff.ScheduleError, match=r"unknown key 'lrate'.*nearest: 'lr'"):
        ff.Schedule.from_yaml("stages:\n  - {trainable: fc, lrate: 1.0e-3}\n")
