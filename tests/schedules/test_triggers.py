"""Triggers (freezeflow.schedules.triggers): the builders check their arguments, each
trigger is written as data and read back."""

from __future__ import annotations

import math
from typing import Any

import pytest

import freezeflow as ff
from freezeflow.schedules.triggers import (
    AtEpoch,
    AtFraction,
    AtStep,
    OnPlateau,
    Trigger,
    trigger_from_data,
)

# --------------------------------------------------------------------------- builders


def test_trigger_builders() -> None:
    assert ff.at_epoch(3) == AtEpoch(3)
    assert ff.at_step(0) == AtStep(0)
    assert ff.at_fraction(0.25) == AtFraction(0.25)
    assert ff.at_fraction(0) == AtFraction(0.0)
    assert isinstance(ff.at_fraction(0).fraction, float)
    p = ff.on_plateau(3, 0.01, mode="max", max_epoch=9, metric="acc")
    assert p == OnPlateau(patience=3, min_delta=0.01, mode="max", max_epoch=9, metric="acc")
    assert ff.on_plateau() == OnPlateau(2, 0.0, "min", None, "val_loss")
    with pytest.raises(ff.errors.ScheduleTypeError, match=r"at_step: .* >= 0, got 1\.5 of type"):
        ff.at_step(1.5)  # type: ignore[arg-type]
    with pytest.raises(ff.ScheduleError, match=r"max_epoch.*got -2"):
        ff.on_plateau(max_epoch=-2)


def test_triggers_are_immutable_values() -> None:
    t = ff.at_epoch(2)
    assert t == ff.at_epoch(2) and hash(t) == hash(ff.at_epoch(2))
    kinds: list[Trigger] = [ff.at_epoch(2), ff.at_step(2), ff.at_fraction(0.5), ff.on_plateau()]
    assert len(set(kinds)) == 4
    assert ff.on_plateau(2) != ff.on_plateau(3)
    with pytest.raises(AttributeError):
        t.epoch = 3  # type: ignore[misc]
    assert all(isinstance(x, Trigger) for x in (t, ff.at_step(1), ff.at_fraction(0.5)))


# (id, builder, regex the ScheduleError message must match: it names the offending value)
BAD: list[tuple[str, Any, str]] = [
    ("epoch-negative", lambda: ff.at_epoch(-1), r"at_epoch: expected an integer >= 0, got -1"),
    ("epoch-bool", lambda: ff.at_epoch(True), r"at_epoch: expected an integer >= 0, got True"),
    (
        "epoch-float",
        lambda: ff.at_epoch(2.0),  # type: ignore[arg-type]
        r"at_epoch: expected an integer >= 0, got 2\.0",
    ),
    ("step-negative", lambda: ff.at_step(-3), r"at_step: expected an integer >= 0, got -3"),
    ("fraction-one", lambda: ff.at_fraction(1.0), r"at_fraction\(1\.0\)"),
    ("fraction-negative", lambda: ff.at_fraction(-0.1), r"at_fraction\(-0\.1\): expected a nu"),
    ("fraction-nan", lambda: ff.at_fraction(math.nan), r"at_fraction\(nan\)"),
    ("fraction-bool", lambda: ff.at_fraction(False), r"at_fraction\(False\)"),
    (
        "fraction-string",
        lambda: ff.at_fraction("0.5"),  # type: ignore[arg-type]
        r"at_fraction\('0\.5'\)",
    ),
    ("plateau-patience-zero", lambda: ff.on_plateau(0), r"patience.*got 0"),
    ("plateau-patience-bool", lambda: ff.on_plateau(True), r"patience.*got True"),
    (
        "plateau-mode",
        lambda: ff.on_plateau(mode="up"),  # type: ignore[arg-type]
        r"mode='up'",
    ),
    ("plateau-min-delta", lambda: ff.on_plateau(min_delta=-1.0), r"min_delta=-1\.0"),
    ("plateau-min-delta-inf", lambda: ff.on_plateau(min_delta=math.inf), r"min_delta=inf"),
    (
        "plateau-min-delta-str",
        lambda: ff.on_plateau(min_delta="0"),  # type: ignore[arg-type]
        r"min_delta='0'",
    ),
]


WRONG_TYPE = {"epoch-bool", "epoch-float", "plateau-patience-bool", "plateau-min-delta-str"}
"""The BAD cases of a value of the wrong type: a ScheduleTypeError."""


@pytest.mark.parametrize(("name", "build", "match"), BAD, ids=[b[0] for b in BAD])
def test_bad_trigger_arguments_are_refused(name: str, build: Any, match: str) -> None:
    wrong_type = name in WRONG_TYPE
    with pytest.raises(ff.errors.FreezeflowError, match=match) as info:
        build()
    assert isinstance(info.value, ff.errors.ScheduleTypeError if wrong_type else ff.ScheduleError)
    assert isinstance(info.value, TypeError if wrong_type else ValueError)


# --------------------------------------------------------------------------- as data


TRIGGERS: list[tuple[Trigger, Any]] = [
    (ff.at_epoch(4), {"epoch": 4}),
    (ff.at_step(100), {"step": 100}),
    (ff.at_fraction(0.8), {"fraction": 0.8}),
    (
        ff.on_plateau(3, 0.01, mode="max", max_epoch=7, metric="acc"),
        {
            "plateau": {
                "patience": 3,
                "min_delta": 0.01,
                "mode": "max",
                "max_epoch": 7,
                "metric": "acc",
            }
        },
    ),
]


@pytest.mark.parametrize(("trigger", "data"), TRIGGERS, ids=repr)
def test_triggers_round_trip_as_data(trigger: Trigger, data: Any) -> None:
    assert trigger.to_data() == data
    assert trigger_from_data(data, "start") == trigger
    assert trigger_from_data(trigger, "start") is trigger


def test_hand_written_trigger_forms() -> None:
    assert trigger_from_data(5, "start") == AtEpoch(5)
    assert trigger_from_data({"plateau": {}}, "start") == ff.on_plateau()
    assert trigger_from_data({"plateau": {"patience": 4}}, "start") == ff.on_plateau(4)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (True, r"^stage 1\.start: True is not a trigger; expected an epoch number"),
        (1.5, r"^stage 1\.start: 1\.5 is not a trigger"),
        ({"epochs": 3}, r"^stage 1\.start: \{'epochs': 3\} is not a trigger"),
        ({"epoch": 1, "step": 2}, r"is not a trigger"),
        ({"epoch": -1}, r"at_epoch: expected an integer >= 0, got -1"),
        ({"fraction": 2}, r"at_fraction\(2\)"),
        ({"plateau": 3}, r"^stage 1\.start: 'plateau' takes a mapping, got 3"),
        ({"plateau": {"patiense": 2}}, r"^stage 1\.start: unknown plateau option 'patiense'"),
    ],
    ids=[
        "bool",
        "float",
        "unknown-key",
        "two-keys",
        "bad-epoch",
        "bad-fraction",
        "plateau-3",
        "plateau-typo",
    ],
)
def test_bad_trigger_data_is_refused(data: Any, match: str) -> None:
    with pytest.raises(ff.ScheduleError, match=match):
        trigger_from_data(data, "stage 1.start")
