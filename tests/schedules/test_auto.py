"""freezeflow.schedules.auto, the data half of ``ff.auto``: the knobs and their checks, the
stage caps derived from the budget, the shape of the schedule and its data form. (What the
unfreezer decides when a stage begins is tests/unfreezer/test_auto.py.)"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import freezeflow as ff
from freezeflow.errors import ScheduleError
from freezeflow.schedules.auto import STAGE_LR_FACTORS, AutoSchedule, AutoSettings, stage_caps


@given(st.integers(2, 400))
def test_stage_caps_fall_inside_the_budget_and_increase(epochs: int) -> None:
    caps = stage_caps(epochs)
    assert len(caps) == (1 if epochs < 4 else 2)
    assert all(1 <= c <= epochs - 1 for c in caps)
    assert caps == sorted(set(caps))  # strictly increasing: each stage gets an epoch
    # the head trains about 2/7 of the budget
    assert abs(caps[0] - 2 * epochs / 7) <= 1


@given(st.integers(2, 60), st.floats(1e-6, 0.5), st.booleans(), st.text(min_size=1, max_size=8))
def test_the_shape_follows_the_knobs(epochs: int, lr: float, norms: bool, metric: str) -> None:
    sched = ff.auto(epochs, lr=lr, train_norms=norms, metric=metric)
    assert isinstance(sched, AutoSchedule) and sched.planner == "auto"
    caps = stage_caps(epochs)
    assert sched.names == ["head", *(f"auto{k}" for k in range(1, len(caps) + 1))]
    assert [s.lr for s in sched.stages] == pytest.approx(
        [lr * f for f in STAGE_LR_FACTORS[: len(caps) + 1]]
    )
    assert sched.stages[0].trainable == ff.last(1)
    for stage, cap in zip(sched.stages[1:], caps, strict=True):
        start = stage.start
        assert isinstance(start, ff.schedules.OnPlateau)
        assert (start.patience, start.max_epoch, start.metric) == (1, cap, metric)
        assert stage.lr_decay == 1.0  # one group per block: the decided LRs are per block
        expected = ff.everything() - ff.last(1)
        assert stage.trainable == (expected if norms else expected - ff.norm_layers())


@given(
    st.integers(2, 30),
    st.floats(1e-5, 0.9),
    st.integers(3, 6),
    st.integers(1, 20),
    st.integers(1, 8),
    st.booleans(),
    st.booleans(),
    st.integers(0, 99),
    st.sampled_from(["trials", "signals"]),
    st.one_of(st.none(), st.floats(0.01, 1e4)),
)
def test_the_data_form_holds_every_knob_and_reads_back(
    epochs: int,
    lr: float,
    windows: int,
    trial_steps: int,
    probe_batches: int,
    refreeze: bool,
    anneal: bool,
    seed: int,
    decide: Any,
    minutes: float | None,
) -> None:
    sched = ff.auto(
        epochs,
        lr=lr,
        windows=windows,
        trial_steps=trial_steps,
        probe_batches=probe_batches,
        refreeze=refreeze,
        anneal=anneal,
        seed=seed,
        decide=decide,
        minutes=minutes,
    )
    data = sched.to_dict()
    assert list(data) == ["auto"]
    unset = {"minutes"} if minutes is None else set()  # left out: older states keep loading
    assert set(data["auto"]) == {f.name for f in fields(AutoSettings)} - unset
    back = ff.Schedule.from_dict(data)
    assert isinstance(back, AutoSchedule)
    assert back == sched and hash(back) == hash(sched)
    assert back.settings == sched.settings
    assert ff.Schedule.from_yaml(sched.to_yaml()) == sched


def test_schedules_with_other_knobs_differ() -> None:
    assert ff.auto(7) != ff.auto(7, seed=1)
    assert ff.auto(7) != ff.auto(8)
    assert ff.auto(7) != ff.Schedule(list(ff.auto(7).stages))  # same stages, not an auto


def test_repr_names_the_budget_and_the_knobs_that_differ_from_their_defaults() -> None:
    assert repr(ff.auto(7)) == "ff.auto(epochs=7)"
    assert repr(ff.auto(9, refreeze=True, seed=3)) == "ff.auto(epochs=9, refreeze=True, seed=3)"


def test_windows_default_to_one_per_stage_after_the_head() -> None:
    """So that every block below the head trains by the last stage; the repr leaves the
    default out, and a saved schedule keeps the windows it was made with."""
    for epochs in (2, 3, 4, 7, 14, 30):
        sched = ff.auto(epochs)
        assert sched.settings.windows == len(stage_caps(epochs)) == len(sched.stages) - 1
        assert "windows" not in repr(sched)
    assert repr(ff.auto(7, windows=3)) == "ff.auto(epochs=7, windows=3)"
    assert repr(ff.auto(3, windows=2)) == "ff.auto(epochs=3, windows=2)"
    assert ff.Schedule.from_dict({"auto": {"epochs": 7, "windows": 3}}) == ff.auto(7, windows=3)
    assert ff.Schedule.from_dict(ff.auto(7, windows=3).to_dict()) != ff.auto(7)
    short = ff.Schedule.from_dict({"auto": {"epochs": 3}})
    assert isinstance(short, AutoSchedule) and short.settings.windows == 1


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: ff.auto(1), r"auto\(epochs\): expected an integer >= 2, got 1"),
        (lambda: ff.auto(7, windows=1), r"windows=1.*2 stages after the head"),
        (lambda: ff.auto(7, lr=0), r"auto\(lr=0\): expected a finite number in \(0, 1\)"),
        (
            lambda: ff.auto(7, refreeze="yes"),  # type: ignore[arg-type]
            r"auto\(refreeze='yes'\): expected True or False",
        ),
        (lambda: ff.auto(7, metric=""), r"auto\(metric=''\)"),
        (
            lambda: ff.auto(7, decide="guess"),  # type: ignore[arg-type]
            r"auto\(decide='guess'\): expected 'trials' or 'signals'; hint",
        ),
        (lambda: ff.Schedule.from_dict({"auto": {"epoch": 7}}), r"nearest: 'epochs'"),
        (lambda: ff.Schedule.from_dict({"auto": {}}), r"missing required key 'epochs'"),
    ],
)
def test_bad_knobs_are_refused(call: Any, match: str) -> None:
    with pytest.raises((ScheduleError, ff.errors.ScheduleTypeError), match=match) as info:
        call()
    wrong_type = "expected True or False" in match
    assert isinstance(info.value, TypeError if wrong_type else ValueError)


@pytest.mark.parametrize("data", [7, [7], "auto", None])
def test_the_auto_key_takes_a_mapping(data: Any) -> None:
    with pytest.raises(ff.errors.FreezeflowError, match=r"'auto' must be a mapping"):
        ff.Schedule.from_dict({"auto": data})
