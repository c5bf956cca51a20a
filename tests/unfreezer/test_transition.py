"""freezeflow.unfreezer.transition: a stage change as a record, read back exactly as
Transition.to_dict() wrote it (one set of keys: nothing was released under other names)."""

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


def test_a_record_missing_a_field_is_refused() -> None:
    record = T.to_dict()
    del record["reason"]
    with pytest.raises(ff.errors.StateError, match=r"lacks \['reason'\].*to_dict\(\)"):
        Transition.from_dict(record)


def test_a_record_with_other_keys_is_refused() -> None:
    # the keys before stage_index and n_trainable were named so are not read back
    record = T.to_dict()
    record["stage"] = record.pop("stage_index")
    record["trainable"] = record.pop("n_trainable")
    with pytest.raises(ff.errors.StateError) as info:
        Transition.from_dict(record)
    message = str(info.value)
    assert "lacks ['stage_index', 'n_trainable']" in message
    assert "unknown keys ['stage', 'trainable']" in message


def test_only_the_current_attribute_names() -> None:
    assert not hasattr(T, "stage") and not hasattr(T, "trainable")
    assert {"stage_index", "n_trainable"} <= set(T.to_dict())


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
