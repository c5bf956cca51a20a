"""The wall clock of a run, for schedules with a time budget (``ff.auto(minutes=...)``).

:class:`RunClock` counts the seconds training has run: from the first epoch's start in this
process, plus the seconds of the runs before a resume (saved in the unfreezer's state). It
marks where each epoch and stage began, so a time-capped trigger can fire
(:class:`~freezeflow.schedules.triggers.Clock`'s ``seconds``), an in-stage LR curve can
follow the time left, and the loop can stop after the last epoch that fits the budget.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from freezeflow.errors import StateError

__all__ = ["RunClock"]

Agree = Callable[[float], float]
"""Makes a number of seconds the same on every rank (the identity on one process)."""


def _same(seconds: float) -> float:
    return seconds


class RunClock:
    """Seconds of training so far, where the epoch and the stage running began."""

    def __init__(self) -> None:
        self._origin: float | None = None  # perf_counter() when this process's part began
        self._started_once = False  # an epoch start was marked (this run or before a resume)
        self._before = 0.0  # seconds of the runs before a resume
        self.epoch_started = 0.0
        """Seconds of training when the epoch running began."""
        self.last_epoch: float | None = None
        """How long the epoch before the running one took, or None when there was none."""

    @property
    def started(self) -> bool:
        """Whether an epoch start was marked (in this run or before a resume)."""
        return self._started_once

    @property
    def epoch_seconds(self) -> float | None:
        """:attr:`epoch_started`, or None before any epoch start was marked."""
        return self.epoch_started if self._started_once else None

    def seconds(self) -> float:
        """Seconds of training so far (0 before the first epoch start)."""
        if self._origin is None:
            return self._before
        return self._before + time.perf_counter() - self._origin

    def start_epoch(self, again: bool = False, agree: Agree = _same) -> None:
        """At each epoch start: start counting (the first time), mark the epoch's start and
        how long the epoch before took; ``again``: a resumed run re-entering the epoch it
        was saved in, whose start is already marked. ``agree`` makes the seconds the same on
        every rank (the largest, under torch.distributed)."""
        if self._origin is None:
            self._origin = time.perf_counter()
        if again:
            return
        now = agree(self.seconds())
        if self._started_once:
            self.last_epoch = now - self.epoch_started
        self.epoch_started, self._started_once = now, True

    def out_of_time(self, budget: float, agree: Agree = _same) -> str | None:
        """At an epoch's end: why to stop now, when one more epoch as long as the one that
        just ran would end past ``budget`` seconds (None: there is time for it)."""
        if self._origin is None:
            return None
        now = agree(self.seconds())
        last = now - self.epoch_started
        if now + last <= budget:
            return None
        return (
            f"time budget: {now / 60:.3g} of {budget / 60:.3g} min used, and another epoch "
            f"would take about {last / 60:.2g} min more"
        )

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, float | None]:
        """The clock as plain values, for the unfreezer's state."""
        return {
            "seconds": self.seconds(),
            "epoch_started": self.epoch_started,
            "last_epoch": self.last_epoch,
        }

    def load_state_dict(self, data: object) -> None:
        """Restore what ``state_dict()`` returned (None: a state without a clock, which
        starts at 0).
        The clock then waits for the next epoch start to run again."""
        if data is None:
            data = {"seconds": 0.0, "epoch_started": 0.0}
        if not isinstance(data, Mapping):
            raise StateError(f"the state's run clock is malformed: {data!r}")
        try:
            values = [float(data[k]) for k in ("seconds", "epoch_started")]
            last = data.get("last_epoch")
            last = None if last is None else float(last)
        except (KeyError, TypeError, ValueError) as exc:
            raise StateError(f"the state's run clock is malformed: {data!r}") from exc
        self._origin = None
        self._before, self.epoch_started = values
        self.last_epoch, self._started_once = last, values[0] > 0

    def __repr__(self) -> str:
        state: dict[str, Any] = self.state_dict()
        return f"RunClock({state['seconds']:.1f} s)"
