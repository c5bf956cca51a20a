"""The run's wall clock (freezeflow.unfreezer.clock) and ``ff.auto(minutes=...)``: stages
start at their time caps, the in-stage cosine reaches its floor by the deadline, ``fit()``
stops after the last epoch that fits, and the time carries over a resume. Time is a fake
clock that moves only when a batch runs, so the tests do not depend on the machine."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import freezeflow as ff
from freezeflow.errors import ScheduleError, StateError
from freezeflow.training.run import Callback, Run
from freezeflow.unfreezer import clock as clock_module
from freezeflow.unfreezer.clock import RunClock


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0

    def perf_counter(self) -> float:
        return self.now


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeTime:
    t = FakeTime()
    monkeypatch.setattr(clock_module, "time", t)
    return t


class Tick(Callback):
    """Each training batch takes ``seconds`` of the fake clock."""

    def __init__(self, fake: FakeTime, seconds: float) -> None:
        self.fake, self.seconds = fake, seconds

    def on_batch_end(self, run: Run) -> None:
        self.fake.now += self.seconds


def chain() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(*[nn.Sequential(nn.Linear(8, 8), nn.Tanh()) for _ in range(6)],
                         nn.Linear(8, 3))  # fmt: skip


def data() -> DataLoader[Any]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 8, generator=g)
    y = (x @ torch.randn(8, 3, generator=g)).argmax(1)
    return DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True, generator=g)  # 16 steps


# ---------------------------------------------------------------------------- the clock


def test_the_clock_counts_from_the_first_epoch_start_and_marks_epochs(fake: FakeTime) -> None:
    c = RunClock()
    fake.now += 50  # before training: not counted
    assert c.seconds() == 0.0 and not c.started
    c.start_epoch()
    fake.now += 10
    assert c.seconds() == 10.0 and c.state_dict()["last_epoch"] is None
    c.start_epoch()
    assert c.epoch_started == 10.0 and c.state_dict()["last_epoch"] == 10.0
    fake.now += 4
    c.start_epoch(again=True)  # a resumed run re-entering its epoch: nothing re-marked
    assert c.epoch_started == 10.0 and c.state_dict()["last_epoch"] == 10.0


def test_out_of_time_when_one_more_epoch_like_the_last_would_pass_the_budget(
    fake: FakeTime,
) -> None:
    c = RunClock()
    assert c.out_of_time(1.0) is None  # not started
    c.start_epoch()
    fake.now += 30
    assert c.out_of_time(60.0) is None  # 30 + 30 fits exactly
    why = c.out_of_time(59.0)
    assert (
        why is not None
        and "time budget: 0.5 of 0.983 min used, and another epoch would take about 0.5" in why
    )


def test_the_time_carries_over_a_saved_state(fake: FakeTime) -> None:
    c = RunClock()
    c.start_epoch()
    fake.now += 7
    c.start_epoch()
    fake.now += 3
    again = RunClock()
    again.load_state_dict(c.state_dict())
    assert again.seconds() == 10.0 and again.last_epoch == 7.0 and again.started
    fake.now += 100  # between the runs: not counted
    again.start_epoch(again=True)
    fake.now += 2
    assert again.seconds() == 12.0 and again.epoch_started == 7.0


@pytest.mark.parametrize("bad", [[], {"seconds": 1.0}, {"seconds": "x", "epoch_started": 0}])
def test_a_malformed_clock_state_is_refused(bad: object) -> None:
    with pytest.raises(StateError, match="run clock is malformed"):
        RunClock().load_state_dict(bad)


# ---------------------------------------------------------------------------- the knob


def test_minutes_put_a_time_cap_on_each_stage_and_stay_out_of_the_data_form_when_unset() -> None:
    sched = ff.auto(14, minutes=1.5)
    caps = [getattr(s.start, "max_minutes", None) for s in sched.stages[1:]]
    assert caps == [pytest.approx(1.5 * 4 / 14), pytest.approx(1.5 * 6 / 14)]
    assert "at most 0.429 min" in sched.stages[1].start.describe()
    assert ff.Schedule.from_dict(sched.to_dict()) == sched
    assert ff.Schedule.from_yaml(sched.to_yaml()) == sched
    plain = ff.auto(14)
    assert "minutes" not in plain.to_dict()["auto"]  # states saved before keep loading
    assert "max_minutes" not in plain.stages[1].start.to_data()["plateau"]


@pytest.mark.parametrize("bad", [0, -1, math.nan, math.inf, True, "5"])
def test_a_bad_deadline_is_refused(bad: object) -> None:
    with pytest.raises(ScheduleError, match=r"auto\(minutes=.*expected a finite number"):
        ff.auto(7, minutes=bad)  # type: ignore[arg-type]
    with pytest.raises(ScheduleError, match=r"on_plateau\(max_minutes="):
        ff.on_plateau(max_minutes=bad)  # type: ignore[arg-type]


def test_a_plateau_trigger_fires_at_its_time_cap_only_at_an_epoch_start() -> None:
    trig = ff.on_plateau(max_minutes=2)
    clock = ff.schedules.triggers.Clock
    assert trig.due(clock(epoch=1, step=9, seconds=119.0, at_epoch_start=True)) is None
    assert trig.due(clock(epoch=1, step=9, seconds=None, at_epoch_start=True)) is None
    assert trig.due(clock(epoch=1, step=9, seconds=120.0)) is None  # mid-epoch
    why = trig.due(clock(epoch=1, step=9, seconds=120.0, at_epoch_start=True))
    assert why == "2 min of training (time cap 2 min)"


# ---------------------------------------------------------------------------- in a run


def test_fit_starts_the_stages_at_their_time_caps_and_stops_at_the_deadline(
    fake: FakeTime,
) -> None:
    # 16 s per epoch; 90 s budget: stages at 25.7 s and 38.6 s (epoch starts 32 and 48),
    # and after epoch 4 (ends at 80 s) another epoch would end at 96 s, past 90 s
    history = ff.fit(chain(), data(), epochs=14, schedule=ff.auto(14, minutes=1.5, lr=0.01),
                     callbacks=[Tick(fake, 1.0)], progress=False)  # fmt: skip
    starts = [(t["name"], t["epoch"]) for t in history.transitions]
    assert starts == [("head", 0), ("auto1", 2), ("auto2", 3)]
    assert "time cap" in history.transitions[1]["reason"]
    assert len(history.epochs) == 5
    assert history.stop_reason is not None and "time budget: 1.33 of 1.5 min" in history.stop_reason
    # the last stage's cosine was fitted to the two epochs left (32 steps, not the 176 to
    # epoch 14): half way down after one, at its floor after the second
    first, last = (
        {n: lr / history.transitions[-1]["lrs"][n] for n, lr in history.epochs[e]["lrs"].items()
         if n in history.transitions[-1]["lrs"]}
        for e in (3, 4)
    )  # fmt: skip
    assert first and all(f == pytest.approx(0.1 + 0.45) for f in first.values())
    assert last and all(f == pytest.approx(0.1) for f in last.values())


def test_without_minutes_nothing_stops_early(fake: FakeTime) -> None:
    history = ff.fit(chain(), data(), epochs=4, schedule=ff.auto(4),
                     callbacks=[Tick(fake, 1000.0)], progress=False)  # fmt: skip
    assert len(history.epochs) == 4 and history.stop_reason is None


def test_a_resumed_run_keeps_the_time_already_spent(fake: FakeTime, tmp_path: Path) -> None:
    class StopAfter(Callback):
        def on_epoch_end(self, run: Run) -> None:
            if run.progress.epoch >= 2:
                run.progress.stop = "stopped by the test"

    sched = ff.auto(14, minutes=1.5, lr=0.01)
    ff.fit(chain(), data(), epochs=14, schedule=sched, progress=False,
           callbacks=[Tick(fake, 1.0), StopAfter(), ff.Checkpoint(tmp_path)])  # fmt: skip
    fake.now += 10_000  # the machine was off
    history = ff.fit(chain(), data(), epochs=14, schedule=sched, progress=False,
                     callbacks=[Tick(fake, 1.0), ff.Checkpoint(tmp_path, resume=True)])  # fmt: skip
    assert [r["epoch"] for r in history.epochs] == [0, 1, 2, 3, 4]  # as the unbroken run
    assert history.stop_reason is not None and "time budget" in history.stop_reason
