"""freezeflow.schedules.plateau: PlateauTracker applies the one plateau rule (patience,
min_delta, mode) that on_plateau triggers and early stopping share."""

from __future__ import annotations

from typing import Any

import pytest

from freezeflow.schedules.plateau import PlateauTracker


def test_tracker_counts_values_without_improvement_in_min_mode() -> None:
    t = PlateauTracker(patience=2)
    assert [t.update(v) for v in (1.0, 0.5, 0.6, 0.5)] == [False, False, False, True]
    assert (t.best, t.bad) == (0.5, 2)
    # an improvement starts the count again
    assert t.update(0.4) is False
    assert (t.best, t.bad) == (0.4, 0)


def test_tracker_in_max_mode_waits_for_higher_values() -> None:
    t = PlateauTracker(patience=1, mode="max")
    assert t.update(0.5) is False
    assert t.update(0.7) is False
    assert t.update(0.6) is True
    assert t.best == 0.7


@pytest.mark.parametrize(
    ("mode", "first", "value", "improves"),
    [
        ("min", 1.0, 0.9, False),  # better by exactly min_delta: not enough
        ("min", 1.0, 0.89, True),
        ("max", 1.0, 1.1, False),
        ("max", 1.0, 1.11, True),
    ],
)
def test_tracker_needs_more_than_min_delta(
    mode: Any, first: float, value: float, improves: bool
) -> None:
    t = PlateauTracker(patience=1, min_delta=0.1, mode=mode)
    t.update(first)
    assert t.improves(value) is improves
    assert t.update(value) is (not improves)


def test_tracker_first_value_always_improves_and_reset_forgets() -> None:
    t = PlateauTracker(patience=1)
    assert t.improves(1e9) is True
    assert t.update(3.0) is False
    assert t.update(3.0) is True
    t.reset()
    assert (t.best, t.bad) == (None, 0)
    assert t.update(100.0) is False
