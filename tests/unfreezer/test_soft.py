"""Soft freezing (``GradualUnfreezer(freezing="soft")``): frozen parameters keep requiring
gradients and stay in the optimizer, yet their weights and optimizer state stay exactly as
with hard freezing, with every optimizer torch ships."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from models import (
    ALL_NAMES,
    BODY1,
    HEAD,
    STAGE_SETS,
    batch,
    make_net,
    norm_state,
    snapshot,
    three_stage,
    train_step,
)
from snapshot import unchanged
from torch import nn

import freezeflow as ff
from freezeflow.errors import OptimizerError, ScheduleError

OPTIMIZERS: dict[str, Callable[[Any], torch.optim.Optimizer]] = {
    "SGD": lambda p: torch.optim.SGD(p, lr=0.1, weight_decay=0.1),
    "SGD-nesterov": lambda p: torch.optim.SGD(
        p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1
    ),
    "Adam": lambda p: torch.optim.Adam(p, lr=0.1, weight_decay=0.1),
    "AdamW": lambda p: torch.optim.AdamW(p, lr=0.1, weight_decay=0.1),
    "Adamax": lambda p: torch.optim.Adamax(p, lr=0.1, weight_decay=0.1),
    "NAdam": lambda p: torch.optim.NAdam(p, lr=0.1, weight_decay=0.1),
    "RAdam": lambda p: torch.optim.RAdam(p, lr=0.1, weight_decay=0.1),
    "Adagrad": lambda p: torch.optim.Adagrad(p, lr=0.1, weight_decay=0.1),
    "Adadelta": lambda p: torch.optim.Adadelta(p, lr=1.0, weight_decay=0.1),
    "RMSprop": lambda p: torch.optim.RMSprop(p, lr=0.1, momentum=0.9, weight_decay=0.1),
    "Rprop": lambda p: torch.optim.Rprop(p, lr=0.1),
    "ASGD": lambda p: torch.optim.ASGD(p, lr=0.1, weight_decay=0.1),
}
"""Twelve optimizers, with weight decay wherever they take it: a frozen parameter must not
move even by decay."""


def _state_names(model: nn.Module, opt: torch.optim.Optimizer) -> set[str]:
    ids = {id(p) for p, s in opt.state.items() if s}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def _run(freezing: str, make_opt: Callable[[Any], torch.optim.Optimizer]) -> dict[str, Any]:
    """Train Net through the three stages of three_stage() (2 epochs of 3 steps each) and
    check, after every step, that what is frozen has not moved and holds no optimizer state."""
    torch.manual_seed(0)
    model = make_net()
    opt = make_opt(model.parameters())
    uf = ff.GradualUnfreezer(model, three_stage(), opt, freezing=freezing)  # type: ignore[arg-type]
    moved: dict[int, set[str]] = {}
    step = 0
    for epoch in range(6):
        uf.on_epoch_start(epoch)
        k = uf.stage_index
        frozen = ALL_NAMES - STAGE_SETS[k]
        if freezing == "soft":  # everything some stage trains requires gradients, always
            assert all(p.requires_grad for p in model.parameters())
        else:
            assert {n for n, p in model.named_parameters() if p.requires_grad} == STAGE_SETS[k]
        for _ in range(3):
            before = snapshot(model)
            train_step(model, opt, step)
            step += 1
            uf.step()
            after = snapshot(model)
            for n in frozen:
                assert torch.equal(before[n], after[n]), f"{n} moved while frozen"
            assert not (_state_names(model, opt) & frozen)
            moved.setdefault(k, set()).update(
                n for n in STAGE_SETS[k] if not torch.equal(before[n], after[n])
            )
    return {"moved": moved, "weights": snapshot(model, buffers=True), "norms": norm_state(model)}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_soft_freezing_keeps_frozen_weights_and_state_like_hard(name: str) -> None:
    hard = _run("hard", OPTIMIZERS[name])
    soft = _run("soft", OPTIMIZERS[name])
    for run in (hard, soft):  # every stage trains what it selects
        assert run["moved"][0] == HEAD
        assert run["moved"][1] >= BODY1
    # the same training: frozen parts kept still, norm layers in the same modes
    assert soft["norms"] == hard["norms"]
    for n, t in hard["weights"].items():
        torch.testing.assert_close(soft["weights"][n], t, rtol=1e-5, atol=1e-6, msg=n)


def test_soft_frozen_gradients_are_zero_after_backward_and_gone_at_the_step() -> None:
    """The gradient of a frozen parameter is zero right after backward (clipping and the
    gradient norm see what hard freezing gives them) and dropped before the step."""
    model = make_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    uf = ff.GradualUnfreezer(model, three_stage(), opt, freezing="soft")
    uf.on_epoch_start(0)
    x, y = batch(0)
    nn.functional.cross_entropy(model(x), y).backward()  # type: ignore[no-untyped-call]
    nonzero = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.any()}
    assert nonzero == HEAD
    norm = float(nn.utils.clip_grad_norm_(model.parameters(), 1e9))
    head = torch.cat([p.grad.flatten() for p in model.head.parameters()])  # type: ignore[union-attr]
    assert norm == pytest.approx(float(head.norm()))
    opt.step()
    assert {n for n, p in model.named_parameters() if p.grad is not None} == HEAD


def test_soft_frozen_group_has_lr_zero_only_during_the_step() -> None:
    """An engine that owns the gradients (ZeRO's flat partitions) still sees LR 0 and weight
    decay 0 for a frozen group during the step; the LR scheduler reads the real LR."""
    model = make_net()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    uf = ff.GradualUnfreezer(model, three_stage(), opt, freezing="soft")
    assert uf.freezing == "soft"
    seen: list[tuple[str, float, float]] = []

    def look(o: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        seen.extend((g["name"], float(g["lr"]), float(g["weight_decay"])) for g in o.param_groups)

    opt.register_step_pre_hook(look)  # after the unfreezer's own pre-hook
    before = [(g["lr"], g["weight_decay"]) for g in opt.param_groups]
    train_step(model, opt, 0)
    assert [(g["lr"], g["weight_decay"]) for g in opt.param_groups] == before
    frozen = [s for s in seen if not s[0].startswith("stage0/")]
    assert frozen and all(lr == 0.0 and wd == 0.0 for _, lr, wd in frozen)
    assert all(lr > 0 for name, lr, _ in seen if name.startswith("stage0/"))


def test_soft_state_resumes() -> None:
    model = make_net()
    uf = ff.GradualUnfreezer(model, three_stage(), torch.optim.SGD, freezing="soft")
    uf.on_epoch_start(2)
    saved = uf.state_dict()
    assert set(saved["trainable_names"]) == HEAD | BODY1
    other = make_net()
    uf2 = ff.GradualUnfreezer(other, three_stage(), torch.optim.SGD, freezing="soft")
    uf2.load_state_dict(saved)
    assert uf2.trainable_ids() == uf.trainable_ids()
    assert all(p.requires_grad for p in other.parameters())
    x, y = batch(0)
    nn.functional.cross_entropy(other(x), y).backward()  # type: ignore[no-untyped-call]
    nonzero = {n for n, p in other.named_parameters() if p.grad is not None and p.grad.any()}
    assert nonzero == HEAD | BODY1


def test_soft_leaves_parameters_no_stage_trains_frozen_for_real() -> None:
    model = make_net()
    uf = ff.GradualUnfreezer(model, [ff.Stage("head", lr=1e-2)], freezing="soft")
    assert {n for n, p in model.named_parameters() if p.requires_grad} == HEAD
    assert uf.n_trainable == sum(p.numel() for p in model.head.parameters())


def test_bad_freezing_mode_is_refused_before_any_change() -> None:
    model = make_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with (
        unchanged(model, opt),
        pytest.raises(OptimizerError, match=r"freezing='gentle'.*expected 'hard' or 'soft'; hint"),
    ):
        ff.GradualUnfreezer(model, three_stage(), opt, freezing="gentle")  # type: ignore[arg-type]
    with (
        unchanged(model, opt),
        pytest.raises(ScheduleError, match=r"freezing='soft'.*fixed stages; hint"),
    ):
        ff.GradualUnfreezer(model, ff.auto(4), opt, freezing="soft")
