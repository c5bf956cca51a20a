"""The extension seams, proved from outside the package: a new kind of trigger, a new stage
planner and a new selector, all defined in this test module with no change under src/, run
through schedule data, ``plan()``, ``fit()``, a checkpoint and a resume.

- :class:`AtHalfEpoch` (a trigger): a stage starts half way through an epoch. It is one
  subclass: its data form registers itself, and the schedule, the unfreezer, the order
  checks and the plan ask it their timing questions.
- :class:`OnlyNewest` (a planner) with :class:`NewestOnlySchedule`: each stage trains only
  what it selects (earlier stages' parameters freeze again), and every choice is recorded
  in the unfreezer's state, so a resumed run knows what was decided before it stopped.
- :class:`AtLeast` (a selector): parameters with at least ``n`` values; its data form
  registers itself, so schedules that use it are written to and read from data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from models import StopAfter
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import freezeflow as ff
from freezeflow.core.index import ModelIndex
from freezeflow.core.policy import Cache, FreezePolicy, Result
from freezeflow.errors import PolicyError, StateError
from freezeflow.schedules.triggers import Clock, Trigger
from freezeflow.unfreezer.planner import PlannedStage, StageChoice, StagePlanner, register_planner

pytestmark = pytest.mark.usefixtures("single_thread")

EPOCHS, BATCHES = 4, 6


@dataclass(frozen=True)
class AtHalfEpoch(Trigger):
    """Start half way through epoch ``epoch`` (needs the run's length)."""

    epoch: int

    kind: ClassVar[str] = "half_epoch"
    data_key: ClassVar[str] = "half_epoch"
    needs_run_length: ClassVar[bool] = True

    def to_data(self) -> Any:
        return {"half_epoch": self.epoch}

    def describe(self) -> str:
        return f"half way through epoch {self.epoch}"

    def _step(self, total_steps: int | None, total_epochs: int | None) -> float | None:
        if not (total_steps and total_epochs):
            return None
        return (self.epoch + 0.5) * total_steps / total_epochs

    def due(self, clock: Clock) -> str | None:
        at = self._step(clock.total_steps, clock.total_epochs)
        return self.describe() if at is not None and clock.step >= at else None

    def order_value(self) -> float:
        return float(self.epoch)

    def position(
        self, total_steps: int | None, total_epochs: int | None
    ) -> tuple[float | None, float | None]:
        return self._step(total_steps, total_epochs), self.epoch + 0.5

    def waits_for_epoch(self, total_steps: int | None) -> bool:
        return not total_steps


@dataclass(frozen=True)
class Choice:
    stage_index: int
    text: str


@register_planner("only_newest")
class OnlyNewest(StagePlanner):
    """Each stage trains exactly what it selects; the choices are saved with the state."""

    warns_overlap = False

    def choose(self, k: int, trainable: frozenset[int]) -> StageChoice:
        now = self.layout.selected_ids[k]
        text = f"only {self.schedule.names[k]} ({len(trainable - now)} parameter(s) frozen again)"
        self.decisions.append(Choice(k, text))
        return StageChoice(now, None, text)

    def planned(self, k: int, before: frozenset[int]) -> PlannedStage:
        return PlannedStage(self.layout.selected_ids[k], None, f"only stage {k}'s selection")

    def trained_later(self, trainable: frozenset[int], stage_index: int) -> frozenset[int]:
        later = self.layout.selected_ids[max(stage_index, 0) :]
        return frozenset(trainable).union(*later)

    def state_dict(self) -> Any:
        return [[c.stage_index, c.text] for c in self.decisions]

    def load_state_dict(self, data: Any) -> None:
        if not isinstance(data, list):
            raise StateError(f"OnlyNewest: expected a list of choices, got {data!r}")
        self.decisions = [Choice(int(k), str(t)) for k, t in data]


class NewestOnlySchedule(ff.Schedule):
    planner = "only_newest"


@dataclass(frozen=True, repr=False)
class AtLeast(FreezePolicy):
    """Parameters with at least ``n`` values."""

    n: int

    data_key: ClassVar[str] = "at_least"

    def _eval(self, idx: ModelIndex, cache: Cache) -> Result:
        params = frozenset(i for i, p in enumerate(idx.params) if p.numel() >= self.n)
        aliases = frozenset(a for a in range(len(idx.aliases)) if idx.alias_param[a] in params)
        return params, aliases

    def to_data(self) -> Any:
        return {"at_least": self.n}

    @classmethod
    def from_data(cls, value: Any, where: str) -> FreezePolicy:
        if isinstance(value, bool) or not isinstance(value, int):
            raise PolicyError(f"{where}: expected a count, got {value!r}")
        return cls(value)

    def __repr__(self) -> str:
        return f"at_least({self.n})"


def model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))


def data_loader() -> DataLoader[tuple[torch.Tensor, ...]]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(BATCHES * 8, 4, generator=g)
    y = (x[:, 0] > 0).long()
    return DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True, generator=g)


def stages() -> list[ff.Stage]:
    return [
        ff.Stage("4", lr=1e-2, name="head"),
        ff.Stage("2", lr=1e-2, start=AtHalfEpoch(1), name="middle"),
        ff.Stage("0", lr=1e-2, start=ff.at_epoch(3), name="first"),
    ]


def run(net: nn.Module, folder: Path, *, stop: int | None = None, resume: bool = False) -> Any:
    callbacks: list[ff.callbacks.Callback] = [ff.Checkpoint(folder, resume=resume)]
    if stop is not None:
        callbacks.append(StopAfter(stop))
    ff.training.seed_everything(0)
    return ff.fit(
        net,
        data_loader(),
        epochs=EPOCHS,
        schedule=NewestOnlySchedule(stages()),
        callbacks=callbacks,
        progress=False,
    )


def test_a_new_trigger_is_data_orders_and_fires_mid_epoch() -> None:
    sched = ff.Schedule(stages())
    assert ff.Schedule.from_dict(sched.to_dict()) == sched  # read back through its data key
    assert sched.needs_run_length
    order = r"starts at half_epoch 1, not after stage 1 \(half_epoch 1\)"
    with pytest.raises(ff.ScheduleError, match=order):
        ff.Schedule([*stages()[:2], ff.Stage("0", lr=1, start=AtHalfEpoch(1), name="again")])
    with pytest.raises(ff.ScheduleError, match=r"run's length is unknown"):
        ff.GradualUnfreezer(model(), sched)
    uf = ff.GradualUnfreezer(model(), sched, total_steps=EPOCHS * BATCHES, total_epochs=EPOCHS)
    uf.on_epoch_start(0)
    steps = []
    for epoch in range(EPOCHS):
        uf.on_epoch_start(epoch)
        for _ in range(BATCHES):
            steps += [(t.name, t.step) for t in uf.step()]
    assert steps == [("middle", int(1.5 * BATCHES))]
    p = ff.plan(model(), sched)
    assert [s.start for s in p.stages][1] == "half way through epoch 1"
    assert p.starts(EPOCHS, BATCHES) == [0.0, 1.5, 3.0]


def test_a_new_planner_decides_every_stage_in_plan_and_fit(tmp_path: Path) -> None:
    sched = NewestOnlySchedule(stages())
    planned = ff.plan(model(), sched)
    assert [s.policy for s in planned.stages] == [f"only stage {k}'s selection" for k in range(3)]
    net = model()
    history = run(net, tmp_path / "whole")
    reasons = [t["reason"] for t in history.transitions]
    assert reasons[1].startswith("half way through epoch 1; only middle")
    assert reasons[2].endswith("only first (2 parameter(s) frozen again)")
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable == {"0.weight", "0.bias"}  # only the newest stage trains


def test_checkpoint_and_resume_carry_the_new_planner_and_trigger(tmp_path: Path) -> None:
    whole = model()
    reference = run(whole, tmp_path / "whole")
    part = model()
    stopped = run(part, tmp_path / "part", stop=2)  # after the mid-epoch transition
    assert [t["name"] for t in stopped.transitions] == ["head", "middle"]
    resumed = model()
    history = run(resumed, tmp_path / "part", resume=True)
    assert [t["name"] for t in history.transitions] == ["head", "middle", "first"]
    assert [t["reason"] for t in history.transitions] == [
        t["reason"] for t in reference.transitions
    ]
    for (name, p), q in zip(whole.named_parameters(), resumed.parameters()):
        assert torch.equal(p, q), name
    assert not any(math.isnan(float(p.detach().sum())) for p in resumed.parameters())


def test_a_new_selector_is_data_combines_and_trains() -> None:
    net = model()
    big = {n for n, p in net.named_parameters() if p.numel() >= 16}
    assert set(AtLeast(16).select(net).names) == big
    assert set((AtLeast(16) - "0").select(net).names) == big - {"0.weight"}
    sched = ff.Schedule(
        [ff.Stage("4", lr=1e-2), ff.Stage(AtLeast(16) | "4", lr=1e-3, start=1, name="big")]
    )
    data = sched.to_dict()
    assert data["stages"][1]["trainable"] == {"or": [{"at_least": 16}, "4"]}
    assert ff.Schedule.from_dict(data) == sched
    with pytest.raises(PolicyError, match=r"stage 1\.trainable\.or\[0\]\.at_least: expected"):
        ff.Schedule.from_dict(
            {
                "stages": [
                    data["stages"][0],
                    {**data["stages"][1], "trainable": {"or": [{"at_least": "x"}, "4"]}},
                ]
            }
        )
    with pytest.raises(PolicyError, match=r"nearest: 'at_least'"):
        ff.Schedule.from_dict(
            {"stages": [data["stages"][0], {**data["stages"][1], "trainable": {"at_lest": 3}}]}
        )
    ff.training.seed_everything(0)
    ff.fit(net, data_loader(), epochs=2, schedule=sched, progress=False)
    assert {n for n, p in net.named_parameters() if p.requires_grad} == big | {"4.weight", "4.bias"}
