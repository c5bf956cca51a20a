"""The run: its fixed part is frozen, its progress round-trips through a checkpoint, and it
records notes and stage changes."""

from __future__ import annotations

import dataclasses
import io
from typing import Any

import pytest
import torch
from _fit_worker import tiny_data, tiny_model, tiny_schedule

from freezeflow.errors import TrainingError
from freezeflow.training.loop import fit
from freezeflow.training.run import Callback, Progress, Run

pytestmark = pytest.mark.usefixtures("single_thread")


def through_disk(state: dict[str, Any]) -> dict[str, Any]:
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    loaded: dict[str, Any] = torch.load(buf, weights_only=True)
    return loaded


class Keep(Callback):
    """Keeps the run and a copy of the progress's state at each epoch's end and mid-epoch."""

    def __init__(self) -> None:
        self.run: Run | None = None
        self.states: list[dict[str, Any]] = []

    def on_train_start(self, run: Run) -> None:
        self.run = run

    def on_batch_end(self, run: Run) -> None:
        if run.progress.batch == 2:
            self.states.append(through_disk(run.progress.state_dict()))

    def on_epoch_end(self, run: Run) -> None:
        self.states.append(through_disk(run.progress.state_dict()))


def kept_run() -> Keep:
    keep = Keep()
    fit(
        tiny_model(),
        tiny_data(),
        schedule=tiny_schedule(),
        val_data=tiny_data(32),
        epochs=2,
        callbacks=[keep],
        progress=False,
    )
    return keep


def test_the_fixed_part_is_frozen() -> None:
    run = kept_run().run
    assert run is not None
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.epochs = 5  # type: ignore[misc]
    assert run.stage_name == "stage1"
    assert run.callbacks[0].__class__ is Keep


def test_progress_round_trips_mid_epoch_and_at_epoch_ends() -> None:
    states = kept_run().states
    mid, end = states[0], states[1]
    assert mid["position"] == {"epoch": 0, "batch": 2, "step": 2}
    assert mid["epoch_rng"] is not None and mid["logs"] == {}  # what a resumed epoch needs
    assert end["position"] == {"epoch": 1, "batch": 0, "step": 4}
    assert end["epoch_rng"] is None and set(end["logs"]) >= {"train_loss", "val_loss"}
    for state in states:
        p = Progress()
        p.load_state_dict(state)
        assert p.resumed and p.resume_rng is None  # no "rng": not from a checkpoint
        assert p.state_dict().keys() == state.keys()
        for key in ("position", "progress", "history", "logs"):
            assert p.state_dict()[key] == state[key], key


def test_next_epoch_clears_the_sums() -> None:
    p = Progress(epoch=1, batch=4, step=9, loss_sum=3.0, samples=64, seconds=1.5)
    p.next_epoch()
    assert (p.epoch, p.batch, p.step, p.loss_sum, p.samples, p.seconds) == (2, 0, 9, 0.0, 0, 0.0)


def test_a_missing_metric_names_who_wants_it_and_what_is_logged() -> None:
    p = Progress(logs={"train_loss": 1.0})
    assert p.metric("train_loss", "me") == 1.0
    with pytest.raises(TrainingError, match=r"me watches 'val_acc'.*\['train_loss'\].*val_data"):
        p.metric("val_acc", "me")


def test_notes_are_recorded_and_announced() -> None:
    heard: list[tuple[int, str]] = []

    class Ear(Callback):
        def on_note(self, run: Run, message: str) -> None:
            heard.append((run.progress.epoch, message))

        def on_epoch_start(self, run: Run) -> None:
            run.note(f"epoch {run.progress.epoch}")

    history = fit(tiny_model(), tiny_data(), epochs=2, callbacks=[Ear()], progress=False)
    notes = [(r["epoch"], r["message"]) for r in history.records if r["kind"] == "note"]
    assert notes == heard == [(0, "epoch 0"), (1, "epoch 1")]
