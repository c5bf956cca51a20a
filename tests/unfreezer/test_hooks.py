"""freezeflow.unfreezer.hooks: the hooks a training loop calls (on_epoch_start, step,
catch_up, observe) start each stage when its trigger is due, in order: epochs, steps,
fractions of the run and plateaus, skipped epochs, and the metric a plateau waits for."""

from __future__ import annotations

import math
import warnings
from typing import Any

import pytest
from models import (
    ALL_NAMES,
    drive,
    flags,
    make_net,
    staged,
    staged_unfreezer,
    trainable_names,
)

import freezeflow as ff

pytestmark = pytest.mark.usefixtures("single_thread")


# --------------------------------------------------------------------------- triggers


TRIGGER_CASES: list[tuple[str, ff.Schedule, dict[str, Any], list[tuple[int, int, int]]]] = [
    ("at_epoch", staged(2, 3), {}, [(1, 2, 6), (2, 3, 9)]),
    ("at_epoch-same-call", staged(ff.at_epoch(1), ff.at_step(2)), {}, [(1, 1, 3), (2, 1, 3)]),
    # steps are global: 3 per epoch, so step 5 is mid-epoch 1, step 8 mid-epoch 2
    ("at_step-mid-epoch", staged(ff.at_step(5), ff.at_step(8)), {}, [(1, 1, 5), (2, 2, 8)]),
    (
        "at_fraction-steps",
        staged(ff.at_fraction(0.25), ff.at_fraction(0.5)),
        {"total_steps": 12},
        [(1, 0, 3), (2, 1, 6)],  # in step(), right after the 3rd and 6th steps
    ),
    (
        "at_fraction-steps-rounds-up",
        staged(ff.at_fraction(0.3)),
        {"total_steps": 12},
        [(1, 1, 4)],  # 4/12 is the first step at or past 30%
    ),
    (
        "at_fraction-epochs",
        staged(ff.at_fraction(0.5), ff.at_fraction(0.75)),
        {"total_epochs": 4},
        [(1, 2, 6), (2, 3, 9)],
    ),
    ("plateau-cap", staged(ff.on_plateau(5, max_epoch=2)), {}, [(1, 2, 6)]),
    (
        "mixed",
        staged(ff.at_step(4), 3, ff.at_fraction(0.9)),
        {"total_steps": 12},
        [(1, 1, 4), (2, 3, 9), (3, 3, 11)],
    ),
]


@pytest.mark.parametrize(
    ("case", "schedule", "kw", "expected"),
    TRIGGER_CASES,
    ids=[i for i, _, _, _ in TRIGGER_CASES],
)
def test_triggers(
    case: str, schedule: ff.Schedule, kw: dict[str, Any], expected: list[tuple[int, int, int]]
) -> None:
    uf = staged_unfreezer(schedule, **kw)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert drive(uf, epochs=4, steps=3) == expected
    assert [(t.stage_index, t.epoch, t.step) for t in uf.history[1:]] == expected
    # only the stage entered in the same call as the one before it ran for no step: warned
    ran_for_no_step = [w for w in caught if "ran for no step" in str(w.message)]
    assert len(ran_for_no_step) == (case == "at_epoch-same-call")


def test_skipped_epochs_run_every_stage_in_order() -> None:
    uf = staged_unfreezer(staged(1, 2, 3))
    out = uf.on_epoch_start(7)
    assert [t.stage_index for t in out] == [1, 2, 3]
    assert [t.reason for t in out] == ["epoch 1", "epoch 2", "epoch 3"]
    assert trainable_names(uf.model) == ALL_NAMES


def test_fraction_needs_the_run_length() -> None:
    model = make_net()
    before = flags(model)
    with pytest.raises(ff.ScheduleError, match=r"total_steps= or total_epochs="):
        ff.GradualUnfreezer(model, staged(ff.at_fraction(0.5)))
    assert flags(model) == before
    with pytest.raises(
        ff.ScheduleError, match=r"GradualUnfreezer\(total_steps\): expected an integer >= 1, got 0"
    ):
        ff.GradualUnfreezer(model, staged(ff.at_fraction(0.5)), total_steps=0)


def test_plateau_patience_min_delta_mode_min() -> None:
    uf = staged_unfreezer(staged(ff.on_plateau(patience=2, min_delta=0.25)))
    assert uf.on_epoch_start(0) == []
    # 0.75 is not better than 1.0 by more than 0.25; 0.7 is
    for value, ready in [(1.0, False), (0.75, False), (0.7, False), (0.5, False), (0.46, True)]:
        assert uf.observe(value) is ready
        assert uf.stage_index == 0  # the stage only starts at the next epoch
    (t,) = uf.on_epoch_start(1)
    assert (t.stage_index, t.epoch, t.reason) == (1, 1, "plateau of val_loss")
    assert uf.observe(0.1) is False  # no next stage


def test_plateau_mode_max_and_per_stage_counting() -> None:
    uf = staged_unfreezer(
        staged(ff.on_plateau(1, mode="max"), ff.on_plateau(2, mode="max", metric="acc"))
    )
    uf.on_epoch_start(0)
    assert uf.observe(0.5) is False
    assert uf.observe(0.6) is False
    assert uf.observe(0.6) is True
    uf.on_epoch_start(1)
    assert uf.stage_index == 1
    # counting starts again in the new stage: the old best (0.6) is forgotten
    assert uf.observe(0.1) is False
    assert uf.observe(0.05) is False
    assert uf.on_epoch_start(2) == []
    assert uf.observe(0.05) is True
    assert uf.on_epoch_start(3)[0].reason == "plateau of acc"
    assert uf.stage_index == 2


def test_plateau_not_fed_waits_and_non_plateau_observe_is_ignored() -> None:
    uf = staged_unfreezer(staged(ff.on_plateau(1)))
    for e in range(5):
        assert uf.on_epoch_start(e) == []
    uf2 = staged_unfreezer(staged(3))
    assert uf2.observe(1.0) is False
    assert uf2.observe(2.0) is False
    assert uf2.stage_index == 0
    with pytest.raises(ff.ScheduleError, match=r"observe\(nan\)"):
        uf.observe(math.nan)


def test_waiting_for_names_the_metric_of_the_next_plateau() -> None:
    uf = staged_unfreezer(staged(ff.on_plateau(1), 2, ff.on_plateau(1, mode="max", metric="acc")))
    seen = [(uf.stage_index, uf.waiting_for)]
    uf.observe(1.0)
    uf.observe(1.0)
    for epoch, value in ((1, None), (2, 0.5), (3, None)):
        uf.on_epoch_start(epoch)
        seen.append((uf.stage_index, uf.waiting_for))
        if value is not None:
            uf.observe(value)
            uf.observe(value)
    # stage 2 starts at an epoch; there is no stage after stage 3
    assert seen == [(0, "val_loss"), (1, None), (2, "acc"), (3, None)]


def test_catch_up_counts_the_steps_a_framework_counted() -> None:
    uf = staged_unfreezer(staged(ff.at_step(2), ff.at_step(4)))
    assert uf.catch_up(0) == []
    assert [(t.stage_index, t.step) for t in uf.catch_up(5)] == [(1, 2), (2, 4)]
    assert uf.global_step == 5
    assert uf.catch_up(3) == [] and uf.global_step == 5  # never counts backwards
    with pytest.raises(ff.ScheduleError, match=r"catch_up\(step\): .* got -1"):
        uf.catch_up(-1)
