"""When things train, as data: triggers, :class:`~freezeflow.Stage` and
:class:`~freezeflow.Schedule` (with their dict and YAML forms), :func:`~freezeflow.auto` (a
schedule decided while training), and the presets (also reachable as
:mod:`freezeflow.presets`).

Builds on :mod:`freezeflow.core` only; never imports the unfreezer or the training loop.
"""

from freezeflow.schedules.auto import AutoSchedule, auto, stage_caps
from freezeflow.schedules.schedule import Schedule, Stage
from freezeflow.schedules.triggers import (
    AtEpoch,
    AtFraction,
    AtStep,
    OnPlateau,
    Trigger,
    at_epoch,
    at_fraction,
    at_step,
    on_plateau,
)

__all__ = [
    "AtEpoch",
    "AtFraction",
    "AtStep",
    "AutoSchedule",
    "OnPlateau",
    "Schedule",
    "Stage",
    "Trigger",
    "at_epoch",
    "at_fraction",
    "at_step",
    "auto",
    "on_plateau",
    "stage_caps",
]
