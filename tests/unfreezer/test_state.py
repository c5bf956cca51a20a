"""freezeflow.unfreezer.state: what GradualUnfreezer.state_dict() holds, that it loads, and
that a state that does not fit (another format included) is refused before anything changes.
(Resuming bit-identically is tests/test_resume.py.)"""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from models import (
    BODY1,
    HEAD,
    flags,
    make_net,
    norm_state,
    three_stage,
    train_step,
)
from snapshot import unchanged

import freezeflow as ff
from freezeflow.unfreezer.state import STATE_FORMAT, fingerprint

pytestmark = pytest.mark.usefixtures("single_thread")


def _at_stage_1() -> ff.GradualUnfreezer:
    model = make_net()
    uf = ff.GradualUnfreezer(model, three_stage(), torch.optim.AdamW(model.parameters()))
    for t in range(7):
        if t % 3 == 0:
            uf.on_epoch_start(t // 3)
        train_step(model, uf.optimizer, t)
        uf.step()
    assert uf.stage_index == 1
    return uf


def _fresh() -> ff.GradualUnfreezer:
    model = make_net(seed=5)
    return ff.GradualUnfreezer(model, three_stage(), torch.optim.AdamW(model.parameters()))


def _view(uf: ff.GradualUnfreezer) -> tuple[Any, ...]:
    uf.model.train()
    return (
        flags(uf.model),
        norm_state(uf.model),
        [{k: v for k, v in g.items() if k != "params"} for g in uf.optimizer.param_groups],
        uf.stage_index,
        uf.epoch,
        uf.global_step,
        uf.history,
    )


def test_what_the_state_holds() -> None:
    uf = _at_stage_1()
    state = uf.state_dict()
    assert state["format"] == STATE_FORMAT
    assert (state["stage_index"], state["epoch"], state["global_step"]) == (1, 2, 7)
    assert set(state["trainable_names"]) == HEAD | BODY1
    assert state["norm_modes"] == {"stem.1": "eval", "body.0.bn": "eval"}
    assert [g["name"] for g in state["groups"]] == uf.group_names
    assert [t["stage_index"] for t in state["history"]] == [0, 1]
    assert "trainable" not in state["history"][1] and "stage" not in state
    assert state["fingerprint"] == fingerprint(uf.layout, uf.schedule)
    json.dumps(state)  # plain values only


def test_state_loads_into_a_fresh_unfreezer() -> None:
    uf = _at_stage_1()
    other = _fresh()
    other.load_state_dict(json.loads(json.dumps(uf.state_dict())))
    assert _view(other) == _view(uf)


@pytest.mark.parametrize(
    "state",
    [{"format": "freezeflow.GradualUnfreezer/1"}, {"stage_index": 1}, [1, 2], None],
    ids=["another-format", "no-format", "list", "none"],
)
def test_what_is_not_a_state_of_this_format_is_refused(state: Any) -> None:
    uf = _fresh()
    before = _view(uf)
    match = rf"not a GradualUnfreezer state.*{STATE_FORMAT}"
    with pytest.raises(ff.errors.StateError, match=match):
        uf.load_state_dict(state)
    assert _view(uf) == before


@pytest.mark.parametrize(
    ("spoil", "match"),
    [
        (lambda s: s["norm_modes"].update({"body.1.bn": "sleepy"}), r"norm modes .*'sleepy'"),
        (lambda s: s["norm_modes"].update({"body.9": "eval"}), r"'body\.9'"),
        (lambda s: s["trainable_names"].append("neck.weight"), r"'neck\.weight'"),
        (lambda s: s["groups"].pop(), r"groups this model does not have"),
        (lambda s: s["history"][0].pop("reason"), r"lacks \['reason'\]"),
    ],
    ids=[
        "unknown-norm-mode",
        "unknown-module",
        "unknown-parameter",
        "missing-group",
        "bad-history",
    ],
)
def test_a_spoilt_state_changes_nothing(spoil: Any, match: str) -> None:
    state = _at_stage_1().state_dict()
    spoil(state)
    uf = _fresh()
    with (
        unchanged(uf.model, uf.optimizer, unfreezer=uf),
        pytest.raises(ff.errors.StateError, match=match),
    ):
        uf.load_state_dict(state)


def test_fingerprint_of_a_schedule_that_is_not_data() -> None:
    """A policy written as code (where(fn)) cannot go to a dict; the fingerprint still
    tells schedules apart."""
    model = make_net()
    a = ff.Schedule([ff.Stage(ff.where(lambda n, p, m: n.startswith("head")), lr=1e-3)])
    b = ff.Schedule([ff.Stage(ff.where(lambda n, p, m: n.startswith("head")), lr=2e-3)])
    fa = fingerprint(ff.GradualUnfreezer(model, a).layout, a)
    fb = fingerprint(ff.GradualUnfreezer(make_net(), b).layout, b)
    assert fa["model"] == fb["model"] and fa["groups"] == fb["groups"]
    assert fa["schedule"] != fb["schedule"]
