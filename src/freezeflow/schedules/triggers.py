"""Triggers: when a stage starts (an epoch, an optimizer step, a fraction of the run, or
a plateau of a metric).

A trigger answers every timing question about itself, so that nothing else inspects trigger
classes: whether it fires at the very beginning (:meth:`Trigger.at_start`), when it is due in
a running schedule (:meth:`Trigger.due`, given a :class:`Clock`), where it falls in a run of
known length (:meth:`Trigger.position`, :meth:`Trigger.expected_epoch`), what it needs to
know of the run (:attr:`Trigger.needs_run_length`, :meth:`Trigger.waits_for_epoch`) and
which metric it watches (:meth:`Trigger.watches`, :meth:`Trigger.track`). A new kind of
trigger is one subclass here (or in your own module): it registers its data form by its
``data_key`` and is read back by :func:`trigger_from_data`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Literal

from freezeflow.errors import ScheduleError, ScheduleTypeError, check_int, nearest
from freezeflow.schedules.plateau import PlateauTracker

__all__ = [
    "TRIGGER_READERS",
    "AtEpoch",
    "AtFraction",
    "AtStep",
    "Clock",
    "OnPlateau",
    "Trigger",
    "at_epoch",
    "at_fraction",
    "at_step",
    "on_plateau",
    "trigger_from_data",
]


TRIGGER_READERS: dict[str, Callable[[Any, str], Trigger]] = {}
"""How each kind of trigger is read from data, by the key of its data form (``"epoch"``,
``"step"``...); a :class:`Trigger` subclass with a ``data_key`` registers itself."""


@dataclass(frozen=True)
class Clock:
    """Where a running schedule is, for :meth:`Trigger.due`: the epoch running (0-based),
    the optimizer steps done, the run's length where known, whether the metric a plateau
    trigger watches has plateaued, and whether this is the start of an epoch (else the end of
    an optimizer step), and the seconds training has run."""

    epoch: int
    step: int
    total_steps: int | None = None
    total_epochs: int | None = None
    plateaued: bool = False
    at_epoch_start: bool = False
    seconds: float | None = None
    """Wall-clock seconds since training began (its first epoch start, earlier runs of a
    resumed one included); None where unknown."""


class Trigger:
    """When a stage starts. Build with :func:`at_epoch`, :func:`at_step`,
    :func:`at_fraction` or :func:`on_plateau`; or subclass it (a frozen dataclass) for a new
    kind, overriding :meth:`due` and :meth:`describe`, and whatever else differs from the
    defaults below."""

    __slots__ = ()

    kind: ClassVar[str] = ""
    """The kind of trigger (``"epoch"``, ``"step"``...): starts of one kind must strictly
    increase from stage to stage (by :meth:`order_value`)."""
    data_key: ClassVar[str] = ""
    """The key of the data form, ``{data_key: ...}``; set, the subclass is registered in
    :data:`TRIGGER_READERS` and read back by :func:`trigger_from_data`."""
    unit: ClassVar[str] = ""
    """The unit the trigger counts in (``"epoch"`` or ``"step"``), "" for neither."""
    needs_run_length: ClassVar[bool] = False
    """Whether knowing when it fires needs the run's length (``total_steps`` or
    ``total_epochs``)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.data_key and "data_key" in cls.__dict__:
            TRIGGER_READERS[cls.data_key] = cls.from_data

    @classmethod
    def from_data(cls, value: Any, where: str) -> Trigger:
        """The trigger of ``{data_key: value}``; by default ``cls(**value)`` for a mapping,
        else ``cls(value)``."""
        if isinstance(value, Mapping):
            known = [f.name for f in fields(cls)]  # type: ignore[arg-type]
            bad = [k for k in value if k not in known]
            if bad:
                raise ScheduleError(
                    f"{where}: unknown {cls.data_key} option {bad[0]!r}; expected some of "
                    f"{known}; nearest: {nearest(str(bad[0]), known, n=1)[0]!r}"
                )
            return cls(**value)
        return cls(value)  # type: ignore[call-arg]

    def to_data(self) -> Any:
        """The data form: ``{data_key: value}`` (JSON/YAML-ready)."""
        raise NotImplementedError  # pragma: no cover - abstract

    def describe(self) -> str:
        """When the trigger fires, in words (``"epoch 5"``, ``"step 100"``...)."""
        raise NotImplementedError  # pragma: no cover - abstract

    def due(self, clock: Clock) -> str | None:
        """Why the stage starts now (a few words for the transition's reason), or None while
        it does not."""
        raise NotImplementedError  # pragma: no cover - abstract

    def at_start(self) -> bool:
        """Whether it fires at the very start of training (only the first stage may)."""
        return False

    def order_value(self) -> float | None:
        """The value starts of the same :attr:`kind` are ordered by (None: not ordered)."""
        return None

    def position(
        self, total_steps: int | None, total_epochs: int | None
    ) -> tuple[float | None, float | None]:
        """``(step, epoch)`` at which it fires in a run of the given length, each None where
        that length does not tell (both None for a trigger that may fire at any time)."""
        return None, None

    def expected_epoch(self, total_epochs: int, steps_per_epoch: int) -> float | None:
        """Roughly when it fires, in epochs, for a plan's plot (None: not known before)."""
        return self.position(total_epochs * steps_per_epoch, total_epochs)[1]

    def waits_for_epoch(self, total_steps: int | None) -> bool:
        """Whether it can only fire at the start of an epoch (so steps counted without any
        epoch would never reach it)."""
        return True

    def watches(self) -> str | None:
        """The validation metric it watches (None: none)."""
        return None

    def track(self, tracker: PlateauTracker, value: float) -> bool:
        """Feed ``value`` of the metric it :meth:`watches` to ``tracker`` by this trigger's
        rule; True once the stage may start."""
        return False


@dataclass(frozen=True)
class AtEpoch(Trigger):
    """Start at the beginning of epoch ``epoch`` (0-based)."""

    epoch: int

    kind: ClassVar[str] = "epoch"
    data_key: ClassVar[str] = "epoch"
    unit: ClassVar[str] = "epoch"

    @classmethod
    def from_data(cls, value: Any, where: str) -> Trigger:
        return at_epoch(value)

    def to_data(self) -> Any:
        return {"epoch": self.epoch}

    def describe(self) -> str:
        return f"epoch {self.epoch}"

    def due(self, clock: Clock) -> str | None:
        reached = clock.epoch > self.epoch or (clock.epoch == self.epoch and clock.at_epoch_start)
        return f"epoch {self.epoch}" if reached else None

    def at_start(self) -> bool:
        return self.epoch == 0

    def order_value(self) -> float:
        return float(self.epoch)

    def position(
        self, total_steps: int | None, total_epochs: int | None
    ) -> tuple[float | None, float | None]:
        per_epoch = total_steps / total_epochs if total_steps and total_epochs else None
        return (None if per_epoch is None else self.epoch * per_epoch), float(self.epoch)


@dataclass(frozen=True)
class AtStep(Trigger):
    """Start after ``step`` optimizer steps in all (0-based global step)."""

    step: int

    kind: ClassVar[str] = "step"
    data_key: ClassVar[str] = "step"
    unit: ClassVar[str] = "step"

    @classmethod
    def from_data(cls, value: Any, where: str) -> Trigger:
        return at_step(value)

    def to_data(self) -> Any:
        return {"step": self.step}

    def describe(self) -> str:
        return f"step {self.step}"

    def due(self, clock: Clock) -> str | None:
        return f"step {self.step}" if clock.step >= self.step else None

    def at_start(self) -> bool:
        return self.step == 0

    def order_value(self) -> float:
        return float(self.step)

    def position(
        self, total_steps: int | None, total_epochs: int | None
    ) -> tuple[float | None, float | None]:
        per_epoch = total_steps / total_epochs if total_steps and total_epochs else None
        return float(self.step), (None if per_epoch is None else self.step / per_epoch)

    def waits_for_epoch(self, total_steps: int | None) -> bool:
        return False


@dataclass(frozen=True)
class AtFraction(Trigger):
    """Start once ``fraction`` of training (steps, or epochs if steps are unknown) is done."""

    fraction: float

    kind: ClassVar[str] = "fraction"
    data_key: ClassVar[str] = "fraction"
    needs_run_length: ClassVar[bool] = True

    @classmethod
    def from_data(cls, value: Any, where: str) -> Trigger:
        return at_fraction(value)

    def to_data(self) -> Any:
        return {"fraction": self.fraction}

    def describe(self) -> str:
        return f"{self.fraction:.0%} of training"

    def due(self, clock: Clock) -> str | None:
        if clock.total_steps:
            done = clock.step / clock.total_steps
        elif clock.total_epochs and clock.at_epoch_start:
            done = clock.epoch / clock.total_epochs
        else:
            return None
        return f"{self.fraction:.0%} of training" if done >= self.fraction else None

    def at_start(self) -> bool:
        return self.fraction == 0

    def order_value(self) -> float:
        return self.fraction

    def position(
        self, total_steps: int | None, total_epochs: int | None
    ) -> tuple[float | None, float | None]:
        return (
            None if not total_steps else self.fraction * total_steps,
            None if not total_epochs else self.fraction * total_epochs,
        )

    def expected_epoch(self, total_epochs: int, steps_per_epoch: int) -> float:
        return self.fraction * total_epochs

    def waits_for_epoch(self, total_steps: int | None) -> bool:
        return not total_steps


@dataclass(frozen=True)
class OnPlateau(Trigger):
    """Start at the first epoch after the validation metric has not improved by more than
    ``min_delta`` for ``patience`` evaluations in the current stage, or at ``max_epoch``,
    or at the first epoch start once training has run ``max_minutes``, whichever comes
    first."""

    patience: int = 2
    min_delta: float = 0.0
    mode: Literal["min", "max"] = "min"
    max_epoch: int | None = None
    metric: str = "val_loss"
    max_minutes: float | None = None

    kind: ClassVar[str] = "plateau"
    data_key: ClassVar[str] = "plateau"

    @classmethod
    def from_data(cls, value: Any, where: str) -> Trigger:
        if not isinstance(value, Mapping):
            raise ScheduleError(
                f"{where}: 'plateau' takes a mapping, got {value!r}; expected on_plateau() "
                "arguments by name; hint: {'plateau': {'patience': 2}}"
            )
        known = [f.name for f in fields(cls)]
        bad = [k for k in value if k not in known]
        if bad:
            raise ScheduleError(
                f"{where}: unknown plateau option {bad[0]!r}; expected some of {sorted(known)}; "
                f"nearest: {nearest(str(bad[0]), known, n=1)[0]!r}"
            )
        return on_plateau(**value)

    def to_data(self) -> Any:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        if self.max_minutes is None:  # the data form of schedules without a time cap
            del data["max_minutes"]
        return {"plateau": data}

    def describe(self) -> str:
        cap = "" if self.max_epoch is None else f", at most epoch {self.max_epoch}"
        if self.max_minutes is not None:
            cap += f", at most {self.max_minutes:.3g} min"
        return f"{self.metric} plateau ({self.patience} evals{cap})"

    def due(self, clock: Clock) -> str | None:
        if not clock.at_epoch_start:
            return None
        if clock.plateaued:
            return f"plateau of {self.metric}"
        if self.max_epoch is not None and clock.epoch >= self.max_epoch:
            return f"epoch {self.max_epoch} (plateau cap)"
        if (
            self.max_minutes is not None
            and clock.seconds is not None
            and clock.seconds >= 60 * self.max_minutes
        ):
            return f"{clock.seconds / 60:.3g} min of training (time cap {self.max_minutes:.3g} min)"
        return None

    def expected_epoch(self, total_epochs: int, steps_per_epoch: int) -> float | None:
        return None if self.max_epoch is None else float(self.max_epoch)

    def watches(self) -> str:
        return self.metric

    def track(self, tracker: PlateauTracker, value: float) -> bool:
        tracker.patience, tracker.min_delta, tracker.mode = (
            self.patience,
            self.min_delta,
            self.mode,
        )
        return tracker.update(value)


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
    max_minutes: float | None = None,
) -> OnPlateau:
    """Trigger when ``metric`` stops improving (see :class:`OnPlateau`); at the latest at
    epoch ``max_epoch``, or at the first epoch start after ``max_minutes`` of training
    (wall-clock, from the first epoch's start).

    Feed the metric with :meth:`GradualUnfreezer.observe` (``fit()`` does it for you).
    """
    check_int("on_plateau(patience)", patience, 1)
    if isinstance(min_delta, bool) or not isinstance(min_delta, (int, float)):
        raise ScheduleTypeError(
            f"on_plateau(min_delta={min_delta!r}): expected a finite number >= 0, got a "
            f"{type(min_delta).__name__}; hint: min_delta=0.0 counts any improvement"
        )
    if not math.isfinite(min_delta) or min_delta < 0:
        raise ScheduleError(
            f"on_plateau(min_delta={min_delta!r}): expected a finite number >= 0; hint: "
            "min_delta=0.0 counts any improvement"
        )
    if mode not in ("min", "max"):
        raise ScheduleError(
            f"on_plateau(mode={mode!r}): expected 'min' (loss) or 'max' (accuracy); hint: "
            "mode='max' for a metric that should rise"
        )
    if max_epoch is not None:
        check_int("on_plateau(max_epoch)", max_epoch, 0)
    if not isinstance(metric, str) or not metric:
        raise ScheduleError(
            f"on_plateau(metric={metric!r}): expected the name of a logged metric; hint: "
            "metric='val_loss', or 'val_<name>' of fit(metrics=...)"
        )
    if max_minutes is not None and (
        isinstance(max_minutes, bool)
        or not isinstance(max_minutes, (int, float))
        or not math.isfinite(max_minutes)
        or max_minutes <= 0
    ):
        raise ScheduleError(
            f"on_plateau(max_minutes={max_minutes!r}): expected a finite number of minutes > "
            "0, or None; hint: max_minutes=30 starts the stage after half an hour at the latest"
        )
    minutes = None if max_minutes is None else float(max_minutes)
    return OnPlateau(patience, float(min_delta), mode, max_epoch, metric, minutes)


def trigger_from_data(data: Any, where: str) -> Trigger:
    """The trigger written as ``data``: a trigger, an epoch number, or ``{key: value}`` with
    a key of :data:`TRIGGER_READERS` (``epoch``, ``step``, ``fraction``, ``plateau``...).

    Example:
        >>> trigger_from_data({"step": 100}, "stage 1")
        AtStep(step=100)
    """
    if isinstance(data, Trigger):
        return data
    if isinstance(data, int) and not isinstance(data, bool):
        return at_epoch(data)
    if isinstance(data, Mapping) and len(data) == 1:
        ((key, value),) = data.items()
        if (reader := TRIGGER_READERS.get(key)) is not None:
            return reader(value, where)
    keys = ", ".join(f"{{{k!r}: ...}}" for k in TRIGGER_READERS)
    hint = ""
    if isinstance(data, Mapping) and len(data) == 1:
        hint = f"; nearest: {nearest(str(next(iter(data))), list(TRIGGER_READERS), n=1)[0]!r}"
    raise ScheduleError(
        f"{where}: {data!r} is not a trigger; expected an epoch number, or one of {keys}{hint}"
    )
