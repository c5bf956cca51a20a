"""Resuming mid-schedule: model, optimizer, LR scheduler and unfreezer state dicts saved with
torch.save and loaded with torch.load(weights_only=True) give a run bit-identical to the
uninterrupted one, in this process and in a fresh one. Loading a state from another model,
schedule or group layout raises StateError and changes nothing."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path
from typing import Any

import paths
import pytest
import torch
from _resume_worker import TOTAL, build, checkpoint, restore, result, train
from models import flags, group_view, make_net, norm_state, one_thread, three_stage

import freezeflow as ff

HERE = paths.TESTS


@pytest.fixture(autouse=True, scope="module")
def _single_thread() -> Any:
    with one_thread():
        yield


@pytest.fixture(scope="module")
def uninterrupted() -> dict[str, Any]:
    with one_thread():
        run = build()
        train(run, 0, TOTAL)
        return result(run)


def _assert_same(a: Any, b: Any, path: str = "") -> None:
    """Bit-exact structural equality (tensors with torch.equal, floats with ==)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), path
        assert a.dtype == b.dtype and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), (path, a.keys(), b.keys())
        for k in a:
            _assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{path}[{i}]")
    else:
        assert a == b, (path, a, b)


def _through_disk(state: dict[str, Any]) -> dict[str, Any]:
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    loaded: dict[str, Any] = torch.load(buf, weights_only=True)
    return loaded


# interruption points: mid-epoch in stage 0; at the stage-0/1 boundary (the transition
# happens after the resume); right after it; in the last stage
@pytest.mark.parametrize("stop", [4, 6, 7, 13], ids=lambda n: f"after-step-{n}")
def test_resume_in_process_is_bit_identical(stop: int, uninterrupted: dict[str, Any]) -> None:
    first = build()
    train(first, 0, stop)
    state = _through_disk(checkpoint(first))
    del first
    resumed = restore(state)
    assert resumed[2].global_step == stop
    train(resumed, stop, TOTAL)
    _assert_same(result(resumed), uninterrupted)


def test_the_comparison_can_fail(uninterrupted: dict[str, Any]) -> None:
    """Resuming without the unfreezer's state (stage, flags, norm modes) is not the same run."""
    first = build()
    train(first, 0, 7)
    state = _through_disk(checkpoint(first))
    model, opt, _, sched = run = build(seed=123)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    # the fresh unfreezer never saw an epoch start: it warns that its stages wait for one
    with pytest.warns(ff.errors.FreezeflowWarning, match="before any on_epoch_start"):
        train(run, 7, TOTAL)
    with pytest.raises(AssertionError):
        _assert_same(result(run), uninterrupted)


def test_restored_unfreezer_state() -> None:
    first = build()
    train(first, 0, 7)
    model0, _, uf0, _ = first
    model0.train()
    state = _through_disk(checkpoint(first))
    model, _, uf, _ = restore(state)
    model.train()
    assert (uf.stage_index, uf.epoch, uf.global_step) == (1, 2, 7)
    assert flags(model) == flags(model0)
    assert norm_state(model) == norm_state(model0)
    assert norm_state(model)["body.0.bn"] == ("eval", False)
    assert norm_state(model)["body.1.bn"] == (None, True)
    assert uf.history == uf0.history
    assert uf.lrs() == uf0.lrs()


@pytest.mark.slow
def test_resume_in_a_fresh_process_is_bit_identical(
    tmp_path: Path, uninterrupted: dict[str, Any]
) -> None:
    first = build()
    train(first, 0, 7)
    ckpt, out = tmp_path / "ckpt.pt", tmp_path / "result.pt"
    torch.save(checkpoint(first), ckpt)
    proc = subprocess.run(
        [sys.executable, str(HERE / "_resume_worker.py"), str(ckpt), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_same(torch.load(out, weights_only=True), uninterrupted)


# --------------------------------------------------------------------------- mismatches


def _other_schedule() -> ff.Schedule:
    s = three_stage()
    return ff.Schedule([s[0], s[1], ff.Stage(ff.everything(), lr=5e-4, start=4, lr_decay=0.5)])


MISMATCHES: list[tuple[str, Any, str]] = [
    (
        "other-head-size",
        lambda: ff.GradualUnfreezer(
            m := make_net(classes=5), three_stage(), torch.optim.AdamW(m.parameters())
        ),
        r"saved for another model",
    ),
    (
        "other-schedule",
        lambda: ff.GradualUnfreezer(
            m := make_net(), _other_schedule(), torch.optim.AdamW(m.parameters())
        ),
        r"saved for another schedule",
    ),
    (
        "other-groups",
        lambda: ff.GradualUnfreezer(
            m := make_net(),
            three_stage(),
            torch.optim.AdamW(m.parameters()),
            no_decay=ff.norm_layers(),
        ),
        r"saved for another groups",
    ),
]


@pytest.mark.parametrize(
    ("build_other", "match"), [(b, m) for _, b, m in MISMATCHES], ids=[i for i, _, _ in MISMATCHES]
)
def test_state_from_elsewhere_raises_and_changes_nothing(build_other: Any, match: str) -> None:
    source = build()
    train(source, 0, 10)  # stage 2: everything trainable, LRs moved by OneCycle
    state = _through_disk(source[2].state_dict())
    uf = build_other()
    model, opt = uf.model, uf.optimizer
    model.train()
    before = (flags(model), group_view(opt), norm_state(model), uf.stage_index, uf.lrs())
    with pytest.raises(ff.errors.StateError, match=match) as info:
        uf.load_state_dict(state)
    assert isinstance(info.value, ValueError)
    assert "fingerprint" in str(info.value)
    model.train()
    assert (flags(model), group_view(opt), norm_state(model), uf.stage_index, uf.lrs()) == before
    assert len(uf.history) == 1


@pytest.mark.parametrize(
    ("state", "match"),
    [
        ({"format": "something/else"}, r"found 'something/else'"),
        ([1, 2], r"found 'list'"),
        ({}, r"found None"),
    ],
    ids=["wrong-format", "not-a-dict", "empty"],
)
def test_not_a_state(state: Any, match: str) -> None:
    uf = build()[2]
    before = (flags(uf.model), group_view(uf.optimizer))
    with pytest.raises(ff.errors.StateError, match=match):
        uf.load_state_dict(state)
    assert (flags(uf.model), group_view(uf.optimizer)) == before
