"""What the framework integrations share: feeding a logged metric to a plateau trigger."""

from __future__ import annotations

import warnings
from typing import Protocol

from freezeflow.errors import FreezeflowWarning, TrainingError
from freezeflow.schedules.triggers import OnPlateau
from freezeflow.unfreezer.gradual import GradualUnfreezer


class _Reporter(Protocol):
    strict: bool
    _warned_missing: bool


def next_plateau(uf: GradualUnfreezer) -> OnPlateau | None:
    """The plateau trigger the next stage waits for, if it waits for one."""
    if uf.stage + 1 >= len(uf.schedule):
        return None
    trigger = uf.schedule.stages[uf.stage + 1].start
    return trigger if isinstance(trigger, OnPlateau) else None


def missing_metric(owner: _Reporter, message: str) -> None:
    """A plateau metric is not logged: raise with ``owner.strict``, else warn once."""
    if owner.strict:
        raise TrainingError(message)
    if not owner._warned_missing:
        warnings.warn(message, FreezeflowWarning, stacklevel=3)
        owner._warned_missing = True
