"""``ff.auto``: a schedule whose stages are decided while training runs.

Its shape is fixed up front from the budget, so it is a :class:`~freezeflow.Schedule` like any
other (the unfreezer, ``fit()``, the Lightning and transformers callbacks, checkpoints and
:func:`~freezeflow.plan` accept it): a ``head`` stage, then one or two stages that each start
when the validation loss stops improving (or at a cap derived from the budget). *What* each of
those stages unfreezes and at *which LR per block* is left open; the unfreezer decides it when
the stage begins (:mod:`freezeflow.unfreezer.auto`), records the decision and its reason, and
saves it for resuming. This module is the data half: the knobs, their checks, the stage shape.

Example:
    >>> import freezeflow as ff
    >>> sched = ff.auto(epochs=7)
    >>> sched.names, [s.start.describe() for s in sched.stages[1:]]
    (['head', 'auto1', 'auto2'], ['val_loss plateau (1 evals, at most epoch 2)', \
'val_loss plateau (1 evals, at most epoch 3)'])
    >>> ff.Schedule.from_dict(sched.to_dict()) == sched
    True
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal

from freezeflow.core.depth import last
from freezeflow.core.policy import everything
from freezeflow.core.selectors import norm_layers
from freezeflow.errors import ScheduleError, ScheduleTypeError, check_int, nearest
from freezeflow.schedules.schedule import DATA_READERS, Schedule, Stage
from freezeflow.schedules.triggers import on_plateau

__all__ = ["SEPARATION", "AutoSchedule", "AutoSettings", "auto", "stage_caps"]

STAGE_LR_FACTORS = (1.0, 0.5, 0.3)
"""Base LR of the head stage, then of each later stage, as factors of ``lr``."""


@dataclass(frozen=True)
class AutoSettings:
    """The knobs of :func:`auto` (see there); plain values, saved with the schedule."""

    epochs: int
    lr: float = 1e-3
    windows: int = 2
    trial_steps: int = 8
    probe_batches: int = 4
    refreeze: bool = False
    anneal: bool = True
    train_norms: bool = False
    metric: str = "val_loss"
    mode: Literal["min", "max"] = "min"
    seed: int = 0
    decide: Literal["trials", "signals"] = "trials"
    minutes: float | None = None

    def to_data(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        if self.minutes is None:  # the data form of a schedule without a time budget
            del data["minutes"]
        return data


SEPARATION = 1.5
"""With ``auto(decide="signals")``: the factor by which the window with the largest mean
relative gradient norm must lead the next for it to be taken without a trial."""


def stage_caps(epochs: int) -> list[int]:
    """The epoch at which each stage after the head starts at the latest, for a budget of
    ``epochs``: the head gets about 2/7 of the budget, the first unfrozen stage 1/7 and the
    last stage the rest (the proportions of the hand-tuned demo schedule). Budgets of 2 or 3
    epochs get one stage after the head.

    Example:
        >>> [stage_caps(e) for e in (2, 3, 7, 14)]
        [[1], [1], [2, 3], [4, 6]]
    """
    head = max(1, round(2 * epochs / 7))
    if epochs < 4:
        return [head]
    return [head, min(epochs - 1, head + max(1, round(epochs / 7)))]


class AutoSchedule(Schedule):
    """A :class:`~freezeflow.Schedule` made by :func:`auto`: its later stages select every
    block they *may* train; the unfreezer narrows each to what it decides when the stage
    begins (:attr:`settings` holds the knobs)."""

    settings: AutoSettings

    def __init__(self, settings: AutoSettings) -> None:
        s = settings
        candidates = everything() - last(1)
        if not s.train_norms:
            candidates = candidates - norm_layers()
        stages = [Stage(last(1), lr=s.lr * STAGE_LR_FACTORS[0], name="head")]
        for k, cap in enumerate(stage_caps(s.epochs), 1):
            stages.append(
                Stage(
                    candidates,
                    lr=s.lr * STAGE_LR_FACTORS[k],
                    lr_decay=1.0,  # one param group per block: the decided LRs are per block
                    start=on_plateau(
                        1,
                        mode=s.mode,
                        max_epoch=cap,
                        metric=s.metric,
                        max_minutes=None if s.minutes is None else s.minutes * cap / s.epochs,
                    ),
                    name=f"auto{k}",
                )
            )
        super().__init__(stages)
        object.__setattr__(self, "settings", settings)

    planner = "auto"  # decided by freezeflow.unfreezer.auto.AutoPlanner

    @property
    def uses_run_length(self) -> bool:
        """True: the budget is checked against the run's length, and the in-stage cosine
        spans each stage's expected steps."""
        return True

    def to_dict(self) -> dict[str, Any]:
        """``{"auto": {...}}``: the knobs; :meth:`Schedule.from_dict` reads it back."""
        return {"auto": self.settings.to_data()}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AutoSchedule) and other.settings == self.settings

    def __hash__(self) -> int:
        return hash(self.settings)

    def __repr__(self) -> str:
        s = self.settings
        defaults = {f.name: f.default for f in fields(s)}
        defaults["windows"] = len(stage_caps(s.epochs))  # what auto(windows=None) picks
        knobs = ", ".join(
            f"{f.name}={getattr(s, f.name)!r}"
            for f in fields(s)
            if f.name == "epochs" or getattr(s, f.name) != defaults[f.name]
        )
        return f"ff.auto({knobs})"


def _number(
    what: str,
    value: object,
    low: float,
    high: float = math.inf,
    hint: str = "lr is the head's LR, 1e-3 suits Adam and AdamW",
) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        ok = False
    else:
        ok = math.isfinite(float(value)) and low < float(value) < high
    if not ok:
        raise ScheduleError(
            f"auto({what}={value!r}): expected a finite number in ({low:g}, {high:g}); hint: {hint}"
        )
    return float(value)  # type: ignore[arg-type]


def auto(
    epochs: int,
    *,
    lr: float = 1e-3,
    windows: int | None = None,
    trial_steps: int = 8,
    probe_batches: int = 4,
    refreeze: bool = False,
    anneal: bool = True,
    train_norms: bool = False,
    metric: str = "val_loss",
    mode: Literal["min", "max"] | None = None,
    seed: int = 0,
    decide: Literal["trials", "signals"] = "trials",
    minutes: float | None = None,
) -> AutoSchedule:
    """A schedule that decides at run time what to unfreeze, when, and at which LR per block.

    The rule (docs/schedules.md, "ff.auto"):

    1. **head**: only the last block (the head) trains, at ``lr``.
    2. **when**: each later stage starts when ``metric`` stops improving for one evaluation,
       and at the latest at the caps of :func:`stage_caps` (2/7 and 3/7 of the budget).
    3. **what**: the blocks below the head are cut into ``windows`` contiguous windows of
       blocks, by default one per stage after the head (two for budgets of 4 epochs or
       more), so every block trains by the last stage and the decision is the order. When a
       stage begins with more than one window left, each gets a short trial: from the
       current weights, ``trial_steps`` Adam steps on training batches, training that
       window with everything already trainable; the window whose trial lowers the loss on
       ``probe_batches`` other training batches the most is unfrozen. The weights, the
       optimizer and every random generator are restored after the trials. A stage with
       one window left unfreezes it without a trial.
    4. **how fast**: the stage's LR is ``lr`` x 0.5, then x 0.3; each block of the new window
       trains at that LR times its relative gradient norm ``||g|| / ||w||`` over the largest
       of the window (at least 0.1), as in Auto-RGN (Lee et al., 2023).
    5. Within each stage the LR follows a cosine from 1x to 0.1x over the stage's expected
       length (``anneal``; off when you attach an LR scheduler of your own).

    With ``minutes``, a deadline beside the epochs: the stages start at the same fractions
    of the minutes at the latest (2/7 and 3/7), the in-stage cosine reaches its floor by the
    stage's time cap (or the deadline), and ``fit()`` (and the Lightning and transformers
    callbacks) end the run after the last epoch that fits: one more epoch as long as the
    last one would end past the deadline. ``epochs`` stays the most the run trains. Time
    runs from the first epoch's start, over evaluations and decisions too, and carries
    over a resume; when stages start then depends on the machine's speed, so two runs of
    the same seed may differ (the decisions made are still saved and resumed).

    Each decision is one line in the stage change's reason (the history, the progress bar,
    ``plan()`` of the running unfreezer) and is saved in the unfreezer's state, so a resumed
    run makes the same decisions.

    Args:
        epochs: the budget: the number of epochs the run will train (at least 2).
        lr: the head's LR; later stages run at 0.5x and 0.3x of it.
        windows: how many contiguous windows the blocks below the head are cut into; None
            (default): one per stage after the head. More windows than stages leave the
            windows that lose every trial frozen for the whole run (with 3 windows on a
            7-epoch budget, measured worse on every task of docs/results.md).
        trial_steps: optimizer steps of each window's trial.
        probe_batches: training batches the trials are scored on (not trained on).
        refreeze: speed mode: freeze again, at an epoch start, the earliest window that
            trains (so the frozen part stays a prefix) once it has converged: its relative
            gradient norm, sampled from every 4th training step at no extra pass, moved by
            less than 10% between its last two epochs (AutoFreeze's rule). Later epochs get
            faster: the backward stops earlier and a feature cache covers the prefix.
        anneal: the LR cosine within each stage.
        train_norms: let norm layers train too (default: frozen, with their pretrained
            statistics, which suits small datasets).
        metric: the validation metric whose plateau starts the next stage.
        mode: ``"min"`` when lower ``metric`` is better, ``"max"`` when higher is (an
            accuracy); None: ``"min"`` for a name ending in ``loss``, else ``"max"``.
        seed: seeds the choice of trial and probe batches and the trials themselves.
        decide: how a stage picks its window. ``"trials"`` (default): a trial per window, as
            in step 3. ``"signals"``: from the relative gradient norms of one backward over
            the probe batches (every candidate made to require gradients, step 4's
            measurement): when the window with the largest mean is ahead of the next by
            ``ff.schedules.auto.SEPARATION`` (1.5x) or more, it is taken without any trial;
            otherwise the windows within that factor of it are tried by successive halving
            (half the trial steps each, the better half on with the full steps), and the
            winner keeps the steps of its last trial as training. Not yet the default: its
            accuracy and cost against the trials are measured by ``nox -s bench -- auto``
            (docs/results.md) before it can be.
        minutes: a wall-clock budget in minutes (None: epochs only); see above.

    Raises:
        ScheduleError: a knob is out of range (the message says which and what is expected).
    """
    check_int("auto(epochs)", epochs, 2)
    if windows is None:  # one window per stage after the head: every block trains by the end
        windows = len(stage_caps(epochs))
    check_int("auto(windows)", windows, 1)
    check_int("auto(trial_steps)", trial_steps, 1)
    check_int("auto(probe_batches)", probe_batches, 1)
    check_int("auto(seed)", seed, 0)
    if windows < len(stage_caps(epochs)):
        raise ScheduleError(
            f"auto(windows={windows}): a budget of {epochs} epochs has "
            f"{len(stage_caps(epochs))} stages after the head, each unfreezing one window; "
            f"expected windows >= {len(stage_caps(epochs))}"
        )
    for flag, value in (("refreeze", refreeze), ("anneal", anneal), ("train_norms", train_norms)):
        if not isinstance(value, bool):
            raise ScheduleTypeError(
                f"auto({flag}={value!r}): expected True or False, got a {type(value).__name__}; "
                f"hint: auto(epochs, {flag}=True)"
            )
    if not isinstance(metric, str) or not metric:
        raise ScheduleError(
            f"auto(metric={metric!r}): expected a metric name such as 'val_loss'; hint: a "
            "metric fit() logs: val_loss, or val_<name> of fit(metrics=...)"
        )
    if mode is None:
        mode = "min" if metric.endswith("loss") else "max"
    if decide not in ("trials", "signals"):
        raise ScheduleError(
            f"auto(decide={decide!r}): expected 'trials' or 'signals'; hint: 'signals' tries "
            "windows only when their relative gradient norms cannot tell them apart"
        )
    if mode not in ("min", "max"):
        raise ScheduleError(
            f"auto(mode={mode!r}): expected 'min' (lower {metric} is better), 'max' (higher "
            "is better) or None; hint: None picks 'min' for a loss and 'max' otherwise"
        )
    if minutes is not None:
        minutes = _number("minutes", minutes, 0.0, hint="minutes is a deadline for the run")
    settings = AutoSettings(
        epochs=epochs,
        lr=_number("lr", lr, 0.0, 1.0),
        windows=windows,
        trial_steps=trial_steps,
        probe_batches=probe_batches,
        refreeze=refreeze,
        anneal=anneal,
        train_norms=train_norms,
        metric=metric,
        mode=mode,
        seed=seed,
        decide=decide,
        minutes=minutes,
    )
    return AutoSchedule(settings)


def auto_from_data(data: object) -> AutoSchedule:
    """The schedule of ``{"auto": {...}}`` (what :meth:`AutoSchedule.to_dict` writes)."""
    if not isinstance(data, Mapping):
        raise ScheduleError(f"'auto' must be a mapping of auto() arguments, got {data!r}")
    known = [f.name for f in fields(AutoSettings)]
    for key in data:
        if key not in known:
            raise ScheduleError(
                f"auto: unknown key {key!r}; expected some of {known}; nearest: "
                f"{nearest(str(key), known, n=1)[0]!r}"
            )
    if "epochs" not in data:
        raise ScheduleError("auto: missing required key 'epochs' (the budget)")
    return auto(**dict(data))


DATA_READERS["auto"] = auto_from_data
