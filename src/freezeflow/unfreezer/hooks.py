"""The hooks a training loop calls on a :class:`~freezeflow.GradualUnfreezer` (at each epoch
start, after each optimizer step, after each evaluation) and the stage changes they make:
each stage after the running one starts when its trigger says it is due
(:meth:`~freezeflow.schedules.triggers.Trigger.due`), in order.

:class:`LoopHooks` is the part of the unfreezer that counts epochs and steps; the unfreezer
(:mod:`freezeflow.unfreezer.gradual`) supplies the stage change itself (``_enter``), a
change within the running stage its planner may make at an epoch start where no stage
begins (``_between``) and the model check.
"""

from __future__ import annotations

import copy
import math

from freezeflow.errors import ScheduleError, check_int
from freezeflow.schedules.plateau import PlateauTracker
from freezeflow.schedules.schedule import Schedule
from freezeflow.schedules.triggers import Clock
from freezeflow.unfreezer import agreement, checks
from freezeflow.unfreezer.clock import RunClock, _same
from freezeflow.unfreezer.planner import StagePlanner
from freezeflow.unfreezer.transition import Transition

__all__ = ["LoopHooks"]


class LoopHooks:
    """Epoch and step counting, trigger checks and plateau tracking of an unfreezer."""

    schedule: Schedule
    stage_index: int
    epoch: int
    global_step: int
    total_steps: int | None
    total_epochs: int | None
    _plateau: PlateauTracker
    _plateau_ready: bool
    _epoch_seen: bool
    _step_checked: bool
    _resumed: bool
    _once: checks.Once
    _planner: StagePlanner
    clock: RunClock
    """The run's wall clock (a time budget's triggers and stop read it)."""

    def _enter(self, k: int, reason: str) -> Transition:  # pragma: no cover - abstract
        raise NotImplementedError

    def _between(self) -> list[Transition]:  # pragma: no cover - abstract
        raise NotImplementedError

    def check_model(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _check_ranks(self) -> None:
        """Under torch.distributed, check that every rank trains the same (a collective at
        every epoch start); nothing by default."""

    def _due(self, k: int, at_epoch_start: bool) -> str | None:
        return self.schedule.stages[k].start.due(
            Clock(
                epoch=self.epoch,
                step=self.global_step,
                total_steps=self.total_steps,
                total_epochs=self.total_epochs,
                plateaued=self._plateau_ready,
                at_epoch_start=at_epoch_start,
                seconds=self.clock.epoch_seconds,
            )
        )

    def _advance(self, at_epoch_start: bool, checked: bool = False) -> list[Transition]:
        out: list[Transition] = []
        while self.stage_index + 1 < len(self.schedule):
            reason = self._due(self.stage_index + 1, at_epoch_start)
            if reason is None:
                break
            if not out and not checked:
                self.check_model()
            out.append(self._enter(self.stage_index + 1, reason))
        entered = [t.stage_index for t in out]
        if len(out) > 1 and (warning := checks.run_for_no_step(self.schedule, entered)):
            self._once.warn("order", warning)
        return out

    # ------------------------------------------------------------------ hooks
    def on_epoch_start(self, epoch: int) -> list[Transition]:
        """Tell the unfreezer epoch ``epoch`` (0-based) begins; returns the transitions it
        made (empty when none).

        Raises:
            ScheduleError: ``epoch`` is before the last epoch started (the first epoch after
                :meth:`load_state_dict` may be any); nothing has changed then.
            ModelChangedError: see :meth:`check_model`.
            DistributedError: under torch.distributed, the ranks disagree on the stage or on
                what trains (:mod:`freezeflow.unfreezer.agreement`); on every rank.

        A stage change refused here (e.g. an ``ff.auto`` decision whose losses are all
        non-finite) leaves the unfreezer as it was before the call: the epoch is not
        counted, so the call can be made again.
        """
        check_int("on_epoch_start(epoch)", epoch, 0)
        if not self._resumed:
            checks.check_epoch(epoch, self.epoch)
        self.check_model()
        again = self._resumed and epoch == self.epoch  # re-entering the epoch saved in
        # a stage change refused below (an ff.auto decision that raises) leaves the epoch
        # as it was found: counters, clock and the planner's signals put back
        counters, clock = (self.epoch, self._epoch_seen, self._resumed), copy.copy(self.clock)
        planner_mark = self._planner.epoch_mark()
        try:
            self.epoch, self._epoch_seen, self._resumed = epoch, True, False
            timed = self._planner.time_budget is not None  # the ranks agree on the seconds
            self.clock.start_epoch(again, agreement.agreed_seconds if timed else _same)
            self._planner.on_epoch_start(epoch)
            out = self._advance(at_epoch_start=True, checked=True) or self._between()
        except BaseException:
            (self.epoch, self._epoch_seen, self._resumed), self.clock = counters, clock
            self._planner.undo_epoch_start(planner_mark)
            raise
        self._check_ranks()
        return out

    def step(self) -> list[Transition]:
        """Call after each optimizer step; returns the transitions it made (step and
        fraction triggers start here, mid-epoch).

        Warns (once) when steps come before any :meth:`on_epoch_start` while a stage waits
        for an epoch, which would then never start.

        Raises:
            ModelChangedError: see :meth:`check_model`; the step is not counted then, nor
                when a stage due at this step is refused (by its planner's decision).
        """
        if not self._step_checked:
            self.check_model()
            self._step_checked = True
        if not self._epoch_seen and (
            warning := checks.steps_without_epochs(
                self.schedule, self.stage_index, self.total_steps
            )
        ):
            self._once.warn("epochs", warning)
        self.global_step += 1
        try:
            out = self._advance(at_epoch_start=False)
        except BaseException:  # a refused stage change: the step is not counted
            self.global_step -= 1
            raise
        return out

    def catch_up(self, step: int) -> list[Transition]:
        """Count optimizer steps up to ``step``, a training framework's own count of them
        (Lightning's ``trainer.global_step``, the Trainer's ``state.global_step``): one
        :meth:`step` per step not counted yet. Returns the transitions made.

        Example:
            >>> import torch.nn as nn, freezeflow as ff
            >>> net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
            >>> two = [ff.Stage("1", lr=1), ff.Stage("0", lr=1, start=ff.at_step(3))]
            >>> uf = ff.GradualUnfreezer(net, two)
            >>> [t.step for t in uf.catch_up(5)], uf.global_step, uf.catch_up(5)
            ([3], 5, [])
        """
        check_int("catch_up(step)", step, 0)
        out: list[Transition] = []
        while self.global_step < step:
            out += self.step()
        return out

    def observe(self, value: float) -> bool:
        """Report a validation metric (for a next stage that starts on a plateau).

        Returns:
            True when the plateau is reached; the stage then starts at the next
            :meth:`on_epoch_start`.
        """
        if self.stage_index + 1 >= len(self.schedule):
            return False
        trig = self.schedule.stages[self.stage_index + 1].start
        if trig.watches() is None:
            return False
        value = float(value)
        if not math.isfinite(value):
            raise ScheduleError(
                f"observe({value!r}): the metric must be finite; hint: a NaN or infinite "
                "validation metric usually means training diverged (lower the LR)"
            )
        if trig.track(self._plateau, value):
            self._plateau_ready = True
        return self._plateau_ready

    def out_of_time(self) -> str | None:
        """At an epoch's end: why the run should stop now, when the schedule has a time
        budget (``ff.auto(minutes=...)``) and one more epoch as long as the one that just ran
        would end past it; None to go on (always without a budget, and after the run's last
        epoch where its length is known). The training loops ask it: ``fit()``, the
        Lightning and transformers callbacks. Under torch.distributed every rank must call
        it (the ranks agree on the time)."""
        budget = self._planner.time_budget
        last = self.total_epochs is not None and self.epoch + 1 >= self.total_epochs
        if budget is None or last:
            return None
        return self.clock.out_of_time(budget, agreement.agreed_seconds)

    @property
    def waiting_for(self) -> str | None:
        """The metric the next stage's plateau trigger waits for (feed it to
        :meth:`observe` after each evaluation), or None when the next stage starts on an
        epoch, a step or a fraction, or there is no next stage."""
        if self.stage_index + 1 >= len(self.schedule):
            return None
        return self.schedule.stages[self.stage_index + 1].start.watches()
