"""freezeflow.integrations._common, what the Lightning and transformers callbacks share: a
plateau metric that is not logged raises with ``strict``, else warns once, pointing at the
code that called the callback; ``strict`` reads and writes the callback's setting. (Each
integration's use of it: tests/integrations/test_lightning.py, test_transformers.py.)"""

from __future__ import annotations

import warnings

import pytest

from freezeflow.errors import FreezeflowWarning, TrainingError
from freezeflow.integrations._common import MissingMetric, StrictMetric


class Hook(StrictMetric):
    """A callback as the integrations write one: its missing_metric, reported from a hook."""

    def __init__(self, strict: bool) -> None:
        self.missing_metric = MissingMetric(strict)

    def on_validation_end(self) -> None:
        self.missing_metric.report("no 'val_loss' among the logged metrics")


def framework_calls(hook: Hook) -> None:
    hook.on_validation_end()  # the line a warning points at


def test_strict_raises_every_time() -> None:
    hook = Hook(strict=True)
    for _ in range(2):
        with pytest.raises(TrainingError, match=r"^no 'val_loss' among the logged metrics$"):
            framework_calls(hook)
    assert not hook.missing_metric.warned


def test_lenient_warns_once_at_the_caller_of_the_hook() -> None:
    hook = Hook(strict=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            framework_calls(hook)
    assert [(w.category, str(w.message)) for w in caught] == [
        (FreezeflowWarning, "no 'val_loss' among the logged metrics")
    ]
    assert caught[0].filename == __file__
    assert caught[0].lineno == framework_calls.__code__.co_firstlineno + 1
    assert hook.missing_metric.warned


def test_strict_reads_and_writes_the_setting() -> None:
    hook = Hook(strict=False)
    assert hook.strict is False
    hook.strict = True
    assert hook.missing_metric.strict is True
    with pytest.raises(TrainingError):
        framework_calls(hook)
    hook.strict = False
    with pytest.warns(FreezeflowWarning):
        framework_calls(hook)
