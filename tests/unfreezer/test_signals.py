"""The step signals of ``ff.auto(refreeze=True)`` (freezeflow.unfreezer.signals): what a
sample measures, which steps are sampled, when an epoch closes, the settled rule, and a
state that resumes to the same numbers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from freezeflow.errors import StateError
from freezeflow.unfreezer.signals import EVERY, SETTLED, StepSignals


def params_with_grads(seed: int) -> list[nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for shape in ((3, 4), (4,)):
        p = nn.Parameter(torch.randn(shape, generator=g))
        p.grad = torch.randn(shape, generator=g)
        out.append(p)
    return out


def rgn(params: list[nn.Parameter]) -> float:
    g2 = sum(float(p.grad.double().pow(2).sum()) for p in params if p.grad is not None)
    w2 = sum(float(p.detach().double().pow(2).sum()) for p in params)
    return math.sqrt(g2 / w2)


def test_a_sample_is_the_relative_gradient_norm_of_the_window_on_every_nth_step() -> None:
    a, b = params_with_grads(0), params_with_grads(1)
    s = StepSignals()
    s.start_epoch(0)
    for _ in range(2 * EVERY):  # steps 0 and EVERY are sampled
        s.sample({0: a, 1: b})
    assert s.steps == 2 * EVERY
    s.start_epoch(1)
    assert s.means[0] == [pytest.approx(rgn(a), rel=1e-6)]
    assert s.means[1] == [pytest.approx(rgn(b), rel=1e-6)]


def test_tensors_without_a_gradient_are_left_out_and_a_window_without_any_is_not_sampled() -> None:
    a = params_with_grads(0)
    a[1].grad = None
    s = StepSignals()
    s.start_epoch(0)
    s.sample({0: a, 1: [nn.Parameter(torch.ones(2))]})
    s.start_epoch(1)
    assert s.means == {0: [pytest.approx(rgn(a[:1]), rel=1e-6)]}


def test_the_same_epoch_again_closes_nothing() -> None:
    a = params_with_grads(0)
    s = StepSignals()
    s.start_epoch(3)
    s.sample({0: a})
    s.start_epoch(3)  # a resumed run re-entering epoch 3
    assert s.means == {}
    s.start_epoch(4)
    assert len(s.means[0]) == 1


def feed(s: StepSignals, epoch: int, scale: float) -> None:
    p = nn.Parameter(torch.ones(4))
    p.grad = torch.full((4,), scale)
    s.start_epoch(epoch)
    s.sample({0: [p]})


@pytest.mark.parametrize(
    ("last", "settled"),
    [(1.0, True), (1.0 + SETTLED / 2, True), (1.0 + 2 * SETTLED, False), (0.5, False)],
)
def test_a_window_has_converged_when_its_last_epoch_moved_less_than_settled(
    last: float, settled: bool
) -> None:
    s = StepSignals()
    for epoch, scale in enumerate([3.0, 1.0, last]):
        feed(s, epoch, scale)
        s.steps = 0  # sample the next call too
    s.start_epoch(3)
    done, why = s.converged(0)
    assert done is settled
    assert "relative gradient norm per epoch 3 -> 1 -> " in why


def test_one_epoch_of_signals_is_not_enough() -> None:
    s = StepSignals()
    feed(s, 0, 1.0)
    s.start_epoch(1)
    assert s.converged(0) == (False, "1 epoch(s) of signals")
    assert s.converged(5) == (False, "0 epoch(s) of signals")


def test_the_state_round_trips_mid_epoch_to_the_same_numbers() -> None:
    a, b = params_with_grads(0), params_with_grads(1)
    s = StepSignals()
    s.start_epoch(0)
    for _ in range(EVERY + 1):
        s.sample({0: a, 1: b})
    s.start_epoch(1)
    s.sample({0: a})  # the open epoch holds one sample
    again = StepSignals()
    again.load_state_dict(s.state_dict())
    for t in (s, again):
        for _ in range(EVERY):
            t.sample({0: b})
        t.start_epoch(2)
    assert again.means == s.means
    assert again.steps == s.steps


@pytest.mark.parametrize("bad", [None, [], {"steps": 1}, {"steps": "x", "epoch": 0}])
def test_a_malformed_state_is_refused_and_changes_nothing(bad: object) -> None:
    s = StepSignals()
    feed(s, 0, 1.0)
    before = s.state_dict()
    with pytest.raises(StateError, match="step signals are malformed"):
        s.load_state_dict(bad)
    assert s.state_dict() == before
