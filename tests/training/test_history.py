"""History: the records fit() writes, their JSON round trip, the DataFrame and the plot."""

from __future__ import annotations

import sys

import pytest
from _fit_worker import tiny_data, tiny_model, tiny_schedule

from freezeflow.errors import MissingDependencyError, TrainingArgumentError
from freezeflow.training.history import History
from freezeflow.training.loop import fit
from freezeflow.training.setup import seed_everything

pytestmark = pytest.mark.usefixtures("single_thread")


def staged_history() -> History:
    seed_everything(0)
    return fit(
        tiny_model(),
        tiny_data(),
        schedule=tiny_schedule(),
        val_data=tiny_data(32),
        epochs=3,
        progress=False,
    )


def test_history_round_trip_dataframe_and_plot() -> None:
    history = staged_history()
    assert History.from_json(history.to_json()) == history
    kinds = [r["kind"] for r in history.to_dicts()]
    assert kinds == ["transition", "epoch", "transition", "epoch", "epoch"]
    df = history.to_dataframe()
    assert list(df["epoch"]) == [0, 1, 2]
    assert {
        "train_loss",
        "val_loss",
        "val_accuracy",
        "lr/stage0/decay",
        "n_trainable",
        "images_per_s",
    } <= set(df.columns)
    assert list(df["n_trainable"]) == [r["n_trainable"] for r in history.epochs]
    fig = history.plot()
    loss_ax, metric_ax = fig.axes
    assert [t.get_text().strip() for t in loss_ax.texts] == ["stage1"]
    assert {line.get_label() for line in loss_ax.lines} >= {"train_loss", "val_loss"}
    assert metric_ax.lines[0].get_label() == "val_accuracy"


def test_records_are_filtered_by_kind_and_counted_by_epoch() -> None:
    h = History()
    h.add_note(0, "first")
    h.add_epoch(epoch=0, stage=None, train_loss=1.0)
    h.add_note(1, "second")
    h.add_epoch(epoch=1, stage=None, train_loss=0.5)
    assert len(h) == 2
    assert [r["epoch"] for r in h.epochs] == [0, 1]
    assert h.transitions == []
    assert [r["message"] for r in h.records if r["kind"] == "note"] == ["first", "second"]
    copy = h.to_dicts()
    copy[0]["message"] = "changed"
    assert h.records[0]["message"] == "first"  # a deep copy


def test_interruption_and_stop_reason_survive_json() -> None:
    h = History([{"kind": "note", "epoch": 0, "message": "x"}], True, "early stopping: why")
    back = History.from_json(h.to_json(indent=2))
    assert (back.interrupted, back.stop_reason, back.records) == (True, h.stop_reason, h.records)


@pytest.mark.parametrize("text", ['{"format": "other/1"}', "[1, 2]"])
def test_from_json_refuses_what_is_not_a_history(text: str) -> None:
    with pytest.raises(TrainingArgumentError, match=r"not a freezeflow History.*to_json"):
        History.from_json(text)


def test_history_to_dataframe_without_pandas(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(MissingDependencyError, match="needs pandas"):
        History().to_dataframe()


def test_plot_without_matplotlib(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(MissingDependencyError, match="needs matplotlib"):
        History().plot()
