"""The one plateau rule: epochs without improvement of a metric, for
:func:`~freezeflow.on_plateau` triggers and for early stopping."""

from __future__ import annotations

from typing import Literal

__all__ = ["PlateauTracker"]


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
