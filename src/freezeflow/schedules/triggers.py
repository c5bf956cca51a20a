"""Triggers: when a stage starts (an epoch, an optimizer step, a fraction of the run, or
a plateau of a metric)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal

from freezeflow.errors import ScheduleError, check_int

__all__ = [
    "AtEpoch",
    "AtFraction",
    "AtStep",
    "OnPlateau",
    "PlateauTracker",
    "Trigger",
    "at_epoch",
    "at_fraction",
    "at_step",
    "on_plateau",
    "trigger_from_data",
]


class Trigger:
    """When a stage starts. Build with :func:`at_epoch`, :func:`at_step`,
    :func:`at_fraction` or :func:`on_plateau`."""

    __slots__ = ()

    def to_data(self) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> str:  # pragma: no cover - abstract
        """When the trigger fires, in words (``"epoch 5"``, ``"step 100"``...)."""
        raise NotImplementedError


@dataclass(frozen=True)
class AtEpoch(Trigger):
    """Start at the beginning of epoch ``epoch`` (0-based)."""

    epoch: int

    def to_data(self) -> Any:
        return {"epoch": self.epoch}

    def describe(self) -> str:
        return f"epoch {self.epoch}"


@dataclass(frozen=True)
class AtStep(Trigger):
    """Start after ``step`` optimizer steps in all (0-based global step)."""

    step: int

    def to_data(self) -> Any:
        return {"step": self.step}

    def describe(self) -> str:
        return f"step {self.step}"


@dataclass(frozen=True)
class AtFraction(Trigger):
    """Start once ``fraction`` of training (steps, or epochs if steps are unknown) is done."""

    fraction: float

    def to_data(self) -> Any:
        return {"fraction": self.fraction}

    def describe(self) -> str:
        return f"{self.fraction:.0%} of training"


@dataclass(frozen=True)
class OnPlateau(Trigger):
    """Start at the first epoch after the validation metric has not improved by more than
    ``min_delta`` for ``patience`` evaluations in the current stage, or at ``max_epoch``,
    whichever comes first."""

    patience: int = 2
    min_delta: float = 0.0
    mode: Literal["min", "max"] = "min"
    max_epoch: int | None = None
    metric: str = "val_loss"

    def to_data(self) -> Any:
        return {"plateau": {f.name: getattr(self, f.name) for f in fields(self)}}

    def describe(self) -> str:
        cap = "" if self.max_epoch is None else f", at most epoch {self.max_epoch}"
        return f"{self.metric} plateau ({self.patience} evals{cap})"


def at_epoch(epoch: int) -> AtEpoch:
    """Trigger at the start of epoch ``epoch`` (0-based)."""
    check_int("at_epoch", epoch, 0)
    return AtEpoch(epoch)


def at_step(step: int) -> AtStep:
    """Trigger after ``step`` optimizer steps (counted over the whole run)."""
    check_int("at_step", step, 0)
    return AtStep(step)


def at_fraction(fraction: float) -> AtFraction:
    """Trigger once ``fraction`` (in [0, 1)) of training is done; needs the run's length
    (``total_steps`` or ``total_epochs`` on the unfreezer; :func:`freezeflow.fit` passes it)."""
    if (
        isinstance(fraction, bool)
        or not isinstance(fraction, (int, float))
        or not (0.0 <= float(fraction) < 1.0)
    ):
        raise ScheduleError(
            f"at_fraction({fraction!r}): expected a number in [0, 1); hint: at_fraction(0.5) "
            "starts half way through training"
        )
    return AtFraction(float(fraction))


def on_plateau(
    patience: int = 2,
    min_delta: float = 0.0,
    *,
    mode: Literal["min", "max"] = "min",
    max_epoch: int | None = None,
    metric: str = "val_loss",
) -> OnPlateau:
    """Trigger when ``metric`` stops improving (see :class:`OnPlateau`).

    Feed the metric with :meth:`GradualUnfreezer.observe` (``fit()`` does it for you).
    """
    check_int("on_plateau(patience)", patience, 1)
    if not isinstance(min_delta, (int, float)) or not math.isfinite(min_delta) or min_delta < 0:
        raise ScheduleError(f"on_plateau(min_delta={min_delta!r}): expected a finite number >= 0")
    if mode not in ("min", "max"):
        raise ScheduleError(f"on_plateau(mode={mode!r}): expected 'min' (loss) or 'max' (accuracy)")
    if max_epoch is not None:
        check_int("on_plateau(max_epoch)", max_epoch, 0)
    return OnPlateau(patience, float(min_delta), mode, max_epoch, metric)


def trigger_from_data(data: Any, where: str) -> Trigger:
    if isinstance(data, Trigger):
        return data
    if isinstance(data, int) and not isinstance(data, bool):
        return at_epoch(data)
    if isinstance(data, Mapping) and len(data) == 1:
        ((key, value),) = data.items()
        if key == "epoch":
            return at_epoch(value)
        if key == "step":
            return at_step(value)
        if key == "fraction":
            return at_fraction(value)
        if key == "plateau":
            if not isinstance(value, Mapping):
                raise ScheduleError(f"{where}: 'plateau' takes a mapping, got {value!r}")
            known = {f.name for f in fields(OnPlateau)}
            bad = [k for k in value if k not in known]
            if bad:
                raise ScheduleError(
                    f"{where}: unknown plateau option {bad[0]!r}; expected some of {sorted(known)}"
                )
            return on_plateau(**value)
    raise ScheduleError(
        f"{where}: {data!r} is not a trigger; expected an epoch number, or one of "
        "{'epoch': N}, {'step': N}, {'fraction': F}, {'plateau': {...}}"
    )


class PlateauTracker:
    """Counts epochs without improvement of a metric: the rule of :func:`on_plateau` and of
    early stopping, kept in one place.

    A value improves on the best so far when it is lower by more than ``min_delta``
    (``mode="min"``) or higher by more than ``min_delta`` (``mode="max"``). :meth:`update`
    returns True once ``patience`` values in a row have not improved.

    Example:
        >>> t = PlateauTracker(patience=2)
        >>> [t.update(v) for v in (1.0, 0.5, 0.6, 0.5)]
        [False, False, False, True]
    """

    def __init__(
        self, patience: int, min_delta: float = 0.0, mode: Literal["min", "max"] = "min"
    ) -> None:
        self.patience, self.min_delta, self.mode = patience, float(min_delta), mode
        self.best: float | None = None
        self.bad = 0

    def improves(self, value: float) -> bool:
        """Whether ``value`` beats the best so far by more than ``min_delta``."""
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def update(self, value: float) -> bool:
        """Record ``value``; True when the last ``patience`` values did not improve."""
        if self.improves(value):
            self.best, self.bad = value, 0
        else:
            self.bad += 1
        return self.bad >= self.patience

    def reset(self) -> None:
        self.best, self.bad = None, 0
