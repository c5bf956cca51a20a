"""Callbacks: the order fit() calls the hooks in, EarlyStopping, ProgressBar's output, and
callback states through checkpoints."""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from _fit_worker import tiny_data, tiny_model, tiny_schedule
from torch import nn

import freezeflow as ff
from freezeflow.errors import TrainingArgumentError, TrainingError, TrainingTypeError
from freezeflow.training.callbacks import EarlyStopping, ProgressBar
from freezeflow.training.loop import fit
from freezeflow.training.run import Callback, Progress, Run
from freezeflow.training.setup import seed_everything
from freezeflow.unfreezer.gradual import Transition

pytestmark = pytest.mark.usefixtures("single_thread")


# --------------------------------------------------------------------------- the hooks


class Recorder(Callback):
    """Every hook it gets, in order, with the progress it saw."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.seen: list[tuple[str, int, int]] = []

    def _log(self, name: str, run: Run) -> None:
        self.calls.append(name)
        self.seen.append((name, run.progress.epoch, run.progress.batch))

    def on_train_start(self, run: Run) -> None:
        self._log("train_start", run)

    def on_train_end(self, run: Run) -> None:
        self._log("train_end", run)

    def on_teardown(self, run: Run) -> None:
        self._log("teardown", run)

    def on_epoch_start(self, run: Run) -> None:
        self._log("epoch_start", run)

    def on_epoch_end(self, run: Run) -> None:
        self._log("epoch_end", run)

    def on_batch_start(self, run: Run) -> None:
        self._log("batch_start", run)

    def on_batch_end(self, run: Run) -> None:
        self._log("batch_end", run)

    def on_stage_change(self, run: Run, transition: Transition) -> None:
        self._log("stage_change", run)

    def on_evaluate_start(self, run: Run) -> None:
        self._log("evaluate_start", run)

    def on_evaluate(self, run: Run, logs: dict[str, float]) -> None:
        self._log("evaluate", run)

    def batches(self, run: Run, train: bool) -> Iterator[Any] | None:
        self._log("batches:train" if train else "batches:val", run)
        return None

    def train_forward(self, run: Run) -> Callable[[Any], Any] | None:
        self._log("train_forward", run)
        return None

    def reduce(self, run: Run, sums: dict[str, float], count: int) -> tuple[dict[str, float], int]:
        self._log("reduce", run)
        return sums, count


def test_hooks_come_in_the_documented_order() -> None:
    rec = Recorder()
    step_trigger = ff.Schedule(
        [ff.Stage("2", lr=1e-2), ff.Stage("0", lr=1e-2, start=ff.at_step(2))]
    )
    fit(
        tiny_model(),
        tiny_data(),  # 4 batches
        schedule=step_trigger,
        val_data=tiny_data(32),
        epochs=2,
        callbacks=[rec],
        progress=False,
    )
    batch = ["batch_start", "train_forward", "batch_end"]
    changing = ["batch_start", "train_forward", "stage_change", "batch_end"]
    evaluation = ["evaluate_start", "batches:val", "reduce", "evaluate", "epoch_end"]
    epoch0 = ["epoch_start", "batches:train", *batch, *changing, *batch, *batch, *evaluation]
    epoch1 = ["epoch_start", "batches:train", *batch * 4, *evaluation]
    assert rec.calls == ["train_start", *epoch0, *epoch1, "train_end", "teardown"]
    starts = [(e, b) for name, e, b in rec.seen if name == "batch_start"]
    ends = [(e, b) for name, e, b in rec.seen if name == "batch_end"]
    assert starts == [(e, b) for e in range(2) for b in range(4)]  # 0-based: the batch to come
    assert ends == [(e, b) for e in range(2) for b in range(1, 5)]  # batches done
    assert [e for name, e, _ in rec.seen if name == "epoch_end"] == [1, 2]  # epochs done


def test_teardown_but_no_train_end_when_training_fails() -> None:
    rec = Recorder()

    calls = []

    def fails(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        if len(calls) > 1:  # the first: fit()'s check of the first batch, before training
            raise OSError("broken loss")
        return torch.nn.functional.cross_entropy(out, y)

    with pytest.raises(OSError, match="broken loss"):
        fit(tiny_model(), tiny_data(), epochs=1, loss_fn=fails, callbacks=[rec], progress=False)
    assert rec.calls[-2:] == ["train_forward", "teardown"]
    assert "train_end" not in rec.calls


def test_ctrl_c_ends_with_train_end_then_teardown() -> None:
    class Interrupt(Recorder):
        def on_batch_end(self, run: Run) -> None:
            super().on_batch_end(run)
            raise KeyboardInterrupt

    rec = Interrupt()
    history = fit(tiny_model(), tiny_data(), epochs=2, callbacks=[rec], progress=False)
    assert history.interrupted
    assert rec.calls[-3:] == ["batch_end", "train_end", "teardown"]


def test_the_first_loop_hook_answer_wins() -> None:
    """A callback's batches replace the data; the callbacks after it are not asked."""
    data = tiny_data()

    class FirstHalf(Callback):
        def batches(self, run: Run, train: bool) -> Iterator[Any] | None:
            return iter(data[:2]) if train else None

    rec = Recorder()
    history = fit(tiny_model(), data, epochs=1, callbacks=[FirstHalf(), rec], progress=False)
    assert history.epochs[0]["steps"] == 2
    assert "batches:train" not in rec.calls


# --------------------------------------------------------------------------- EarlyStopping


def test_early_stopping() -> None:
    stop = EarlyStopping("train_loss", patience=2, mode="max")  # loss falls: never "improves"
    seed_everything(0)
    history = fit(tiny_model(), tiny_data(), epochs=10, callbacks=[stop], progress=False)
    assert len(history) == 3
    assert history.stop_reason is not None and "early stopping: train_loss" in history.stop_reason
    assert stop.state_dict() == {"best": history.epochs[0]["train_loss"], "bad": 2}


def test_early_stopping_names_missing_metric() -> None:
    with pytest.raises(TrainingError, match=r"'val_loss', which is not logged.*val_data"):
        fit(tiny_model(), tiny_data(), epochs=2, callbacks=[EarlyStopping()], progress=False)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"patience": 0}, TrainingArgumentError, r"EarlyStopping\(patience=\).*got 0"),
        ({"patience": True}, TrainingTypeError, r"EarlyStopping\(patience=\).*got True"),
        ({"min_delta": -1.0}, TrainingArgumentError, r"min_delta=-1.0"),
        ({"min_delta": math.nan}, TrainingArgumentError, r"min_delta=nan"),
        ({"mode": "up"}, TrainingArgumentError, r"mode='up'.*'min' for a loss"),
    ],
)
def test_early_stopping_refuses_bad_arguments(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        EarlyStopping("val_loss", **kwargs)


class FakeRun:
    """What EarlyStopping reads: the progress (logs) and where it writes (stop)."""

    def __init__(self) -> None:
        self.progress = Progress()


def feed(stop: EarlyStopping, values: list[float]) -> list[str | None]:
    run = FakeRun()
    out = []
    for v in values:
        run.progress.logs = {"val_loss": v}
        stop.on_epoch_end(run)  # type: ignore[arg-type]
        out.append(run.progress.stop)
    return out


def test_early_stopping_state_round_trip_goes_on_where_it_left() -> None:
    values = [1.0, 0.8, 0.9, 0.85, 0.95, 0.7]
    whole = feed(EarlyStopping(patience=3), values)
    first = EarlyStopping(patience=3)
    feed(first, values[:3])
    second = EarlyStopping(patience=3)
    second.load_state_dict(first.state_dict())
    assert feed(second, values[3:]) == whole[3:]
    assert whole[-2] is not None and whole[:-2] == [None] * 4  # stopped at the 3rd bad epoch


# --------------------------------------------------------------------------- ProgressBar


def test_plain_progress_lines_without_tqdm(capsys: pytest.CaptureFixture[str]) -> None:
    bar = ProgressBar(tqdm=False, every=2)
    fit(
        tiny_model(),
        tiny_data(),
        schedule=tiny_schedule(),
        val_data=tiny_data(32),
        epochs=2,
        callbacks=[bar],
    )
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("fit: Sequential (58 parameters) on cpu, 2 epochs")
    assert "  epoch 0 batch 2/4 [stage0] loss " in out[1]
    assert "img/s" in out[1]
    summary = [line for line in out if line.startswith("epoch ")]
    assert len(summary) == 2
    assert summary[0].startswith("epoch 0 (1/2) [stage0] train_loss ")
    assert (
        "val_loss" in summary[0] and "val_accuracy" in summary[0] and "trainable 18" in summary[0]
    )
    change = [line for line in out if line.startswith("stage ")]
    assert len(change) == 1 and change[0].startswith("stage 'stage1' begins at epoch 1, step 4")
    assert out.index(change[0]) < out.index(summary[1])


def test_a_progress_bar_in_callbacks_replaces_the_default(
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = io.StringIO()
    fit(tiny_model(), tiny_data(), epochs=1, callbacks=[ProgressBar(tqdm=False, file=out)])
    assert capsys.readouterr().out == ""
    assert out.getvalue().count("fit: Sequential") == 1


def test_progress_bar_prints_notes_interruptions_and_stops() -> None:
    class Note(Callback):
        def on_epoch_start(self, run: Run) -> None:
            run.note(f"hello from epoch {run.progress.epoch}")

        def on_batch_end(self, run: Run) -> None:
            if run.progress.epoch == 1 and run.progress.batch == 3:
                raise KeyboardInterrupt

    out = io.StringIO()
    history = fit(
        tiny_model(),
        tiny_data(),
        epochs=3,
        callbacks=[Note(), ProgressBar(tqdm=False, every=100, file=out)],
    )
    lines = out.getvalue().splitlines()
    assert "hello from epoch 0" in lines and "hello from epoch 1" in lines
    assert lines[-1] == "interrupted in epoch 1 after 3 batches"
    notes = [r["message"] for r in history.records if r["kind"] == "note"]
    assert notes == ["hello from epoch 0", "hello from epoch 1"]

    out = io.StringIO()
    stop = EarlyStopping("train_loss", patience=1, mode="max")
    history = fit(tiny_model(), tiny_data(), epochs=5, callbacks=[stop, ProgressBar(file=out)])
    assert out.getvalue().splitlines()[-1] == history.stop_reason


def test_progress_bar_refuses_a_bad_every() -> None:
    with pytest.raises(TrainingArgumentError, match=r"ProgressBar\(every=\).*got 0"):
        ProgressBar(every=0)


# --------------------------------------------------------------------------- states


class Counter(Callback):
    """Counts epochs across resumes through its state."""

    def __init__(self) -> None:
        self.epochs = 0

    def on_epoch_end(self, run: Run) -> None:
        self.epochs += 1

    def state_dict(self) -> dict[str, Any]:
        return {"epochs": self.epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epochs = int(state["epochs"])


def test_callback_states_go_through_checkpoints(tmp_path: Path) -> None:
    def run(epochs: int, resume: bool) -> tuple[Counter, Counter]:
        model: nn.Module = tiny_model()
        a, b = Counter(), Counter()
        fit(
            model,
            tiny_data(),
            epochs=epochs,
            callbacks=[a, ff.Checkpoint(tmp_path, resume=resume), b],
            progress=False,
        )
        return a, b

    a, b = run(2, resume=False)
    a.epochs += 10  # after the last save: not in the checkpoint
    a, b = run(3, resume=True)  # new objects, restored by class and position
    assert (a.epochs, b.epochs) == (3, 3)
