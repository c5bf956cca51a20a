"""What the framework integrations share: what to do when a plateau metric is not logged."""

from __future__ import annotations

import warnings

from freezeflow.errors import FreezeflowWarning, TrainingError

__all__ = ["MissingMetric", "StrictMetric"]


class MissingMetric:
    """What a callback does when the metric the next stage's plateau trigger waits for
    (:attr:`GradualUnfreezer.waiting_for <freezeflow.GradualUnfreezer.waiting_for>`) is not
    among the logged metrics: raise with ``strict``, else warn once and keep waiting (the
    stage then starts at its ``max_epoch`` cap, if it has one).

    Example:
        >>> import warnings
        >>> missing = MissingMetric(strict=False)
        >>> with warnings.catch_warnings(record=True) as seen:
        ...     warnings.simplefilter("always")
        ...     missing.report("no val_loss")
        ...     missing.report("no val_loss")
        >>> len(seen)
        1
    """

    def __init__(self, strict: bool) -> None:
        self.strict = strict
        self.warned = False

    def report(self, message: str) -> None:
        """Raise :class:`~freezeflow.errors.TrainingError` with ``message`` when strict, else
        warn (:class:`~freezeflow.errors.FreezeflowWarning`) the first time only."""
        if self.strict:
            raise TrainingError(message)
        if not self.warned:
            warnings.warn(message, FreezeflowWarning, stacklevel=3)
            self.warned = True


class StrictMetric:
    """The ``strict`` switch of an integration callback, stored in its ``missing_metric``."""

    missing_metric: MissingMetric

    @property
    def strict(self) -> bool:
        """Raise when a plateau metric is missing (else warn once); see ``strict=``."""
        return self.missing_metric.strict

    @strict.setter
    def strict(self, value: bool) -> None:
        self.missing_metric.strict = value
