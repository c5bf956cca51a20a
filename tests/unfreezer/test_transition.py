"""freezeflow.unfreezer.transition: a stage change as a record, read back with the keys used
before the renames too, and the deprecated attribute names."""

from __future__ import annotations

import pytest
from torch import nn

import freezeflow as ff
from freezeflow.unfreezer.transition import Transition

T = Transition(
    stage_index=1,
    name="body",
    epoch=2,
    step=14,
    n_trainable=120,
    lrs={"stage1/decay": 1e-3},
    reason="epoch 2",
)


def test_record_and_back() -> None:
    record = T.to_dict()
    assert {k: record[k] for k in ("stage_index", "name", "epoch", "step", "n_trainable")} == {
        "stage_index": 1,
        "name": "body",
        "epoch": 2,
        "step": 14,
        "n_trainable": 120,
    }
    assert record["lrs"] == T.lrs and record["lrs"] is not T.lrs
    assert Transition.from_dict(record) == T


def test_records_with_the_old_keys_are_read() -> None:
    old = {
        "stage": 1,
        "name": "body",
        "epoch": 2,
        "step": 14,
        "trainable": 120,
        "lrs": {"stage1/decay": 1e-3},
        "reason": "epoch 2",
    }
    assert Transition.from_dict(old) == T


def test_a_record_missing_a_field_is_refused() -> None:
    record = T.to_dict()
    del record["reason"]
    with pytest.raises(ff.errors.StateError, match=r"lacks \['reason'\]"):
        Transition.from_dict(record)


def test_old_attribute_names_are_deprecated_aliases() -> None:
    with pytest.warns(DeprecationWarning, match=r"Transition\.stage_index"):
        assert T.stage == 1
    with pytest.warns(DeprecationWarning, match=r"Transition\.n_trainable"):
        assert T.trainable == 120


def test_the_unfreezer_records_what_it_applied() -> None:
    net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    uf = ff.GradualUnfreezer(net, [ff.Stage("1", lr=1e-3), ff.Stage("0", lr=1e-4, start=1)])
    start, later = uf.history[0], uf.on_epoch_start(1)[0]
    assert (start.stage_index, start.n_trainable, start.reason) == (0, 3, "start")
    assert (later.stage_index, later.name, later.n_trainable) == (1, "stage1", 9)
    assert later.lrs == {
        "stage0/no_decay": 1e-4,
        "stage0/decay": 1e-4,
        "stage1/no_decay": 1e-4,
        "stage1/decay": 1e-4,
    }
