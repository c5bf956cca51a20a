"""``ff.auto``: the decision rule on toy models (a planted block is chosen first, a plateau
moves the stage on, a converged window freezes again), decisions that leave the model, the
optimizer and the random generators as they were, resuming to the same decisions, and bad
input refused before anything changes. (The knobs themselves: tests/schedules/test_auto.py.)"""

from __future__ import annotations

import copy
import itertools
import math
import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from models import StopAfter, flags, snapshot
from snapshot import unchanged as harness
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import freezeflow as ff
from freezeflow.errors import ScheduleError
from freezeflow.schedules.auto import STAGE_LR_FACTORS
from freezeflow.training.probe import probe_for
from freezeflow.training.run import Callback, Run
from freezeflow.unfreezer.auto import Decision
from freezeflow.unfreezer.measure import BACKOFF, RAISED

PLANTED = 1
"""The block whose weights the toy student has shrunk to 2%: only training it recovers the
signal, and its relative gradient norm is by far the largest."""


def chain(width: int = 16, depth: int = 6) -> nn.Sequential:
    """``depth`` blocks of Linear+Tanh that start as the identity, then a linear head."""
    torch.manual_seed(0)
    linears = [nn.Linear(width, width) for _ in range(depth)]
    with torch.no_grad():
        for lin in linears:
            lin.weight.copy_(torch.eye(width))
            lin.bias.zero_()
    blocks = [nn.Sequential(lin, nn.Tanh()) for lin in linears]
    return nn.Sequential(*blocks, nn.Linear(width, 4))


def linear(net: nn.Module, block: int) -> nn.Linear:
    """The Linear layer of block ``block`` of a :func:`chain`."""
    layer = net.get_submodule(f"{block}.0")
    assert isinstance(layer, nn.Linear)
    return layer


def planted() -> nn.Sequential:
    net = chain()
    with torch.no_grad():
        linear(net, PLANTED).weight.mul_(0.02)
    return net


def data(n: int = 512, seed: int = 1) -> DataLoader[Any]:
    """Four classes, linear in the inputs: the identity chain carries all the signal."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 16, generator=g) * 0.5
    y = (x @ torch.randn(16, 4, generator=g)).argmax(1)
    gen = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True, generator=gen)


def fit_auto(
    net: nn.Module, epochs: int = 7, **kwargs: Any
) -> tuple[ff.History, ff.GradualUnfreezer]:
    callbacks = list(kwargs.pop("callbacks", []))
    if "checkpoint" in kwargs:
        callbacks.append(
            ff.Checkpoint(kwargs.pop("checkpoint"), resume=kwargs.pop("resume", False))
        )
    loader = data()
    uf = ff.GradualUnfreezer(
        net, ff.auto(epochs, lr=0.02, **kwargs), total_epochs=epochs, total_steps=epochs * 16
    )
    ff.training.seed_everything(0)
    history = ff.fit(
        net,
        loader,
        epochs=epochs,
        unfreezer=uf,
        val_data=loader,
        callbacks=callbacks,
        progress=False,
    )
    return history, uf


def window_of(uf: ff.GradualUnfreezer, block: int) -> int:
    planner = uf.planner
    assert isinstance(planner, ff.unfreezer.AutoPlanner)
    return next(w for w, blocks in enumerate(planner.windows) if block in blocks)


def test_the_planted_block_is_chosen_first() -> None:
    net = planted()
    history, uf = fit_auto(net)
    first = uf.decisions[0]
    assert first.window == window_of(uf, PLANTED)
    assert PLANTED in first.blocks
    # its relative gradient norm was the largest of all candidate blocks
    assert max(first.rgn, key=first.rgn.__getitem__) == str(PLANTED)
    # every stage after the head is decided once, with its reason in the history
    assert [d.stage_index for d in uf.decisions] == [1, 2]
    reasons = [t["reason"] for t in history.transitions[1:]]
    assert all(d.text in r for d, r in zip(uf.decisions, reasons))
    assert "trial took the probe loss from" in reasons[0]
    assert linear(net, PLANTED).weight.requires_grad
    assert history.epochs[-1]["metrics"]["val_accuracy"] > 0.8


def test_without_a_probe_the_window_nearest_the_output_is_taken() -> None:
    net = planted()
    uf = ff.GradualUnfreezer(net, ff.auto(7))
    (t,) = uf.on_epoch_start(2)
    assert uf.planner is not None
    planner = uf.planner
    assert isinstance(planner, ff.unfreezer.AutoPlanner)
    assert uf.decisions[0].window == len(planner.windows) - 1
    assert "no probe batches" in t.reason
    assert linear(net, 5).weight.requires_grad and not linear(net, 0).weight.requires_grad


def test_a_plateau_moves_the_stage_on_before_its_cap() -> None:
    net = planted()
    uf = ff.GradualUnfreezer(net, ff.auto(14))  # caps at epochs 4 and 6
    uf.set_probe(probe_for(data(), nn.functional.cross_entropy, torch.device("cpu")))
    assert uf.on_epoch_start(0) == [] and uf.waiting_for == "val_loss"
    uf.observe(1.0)
    assert uf.on_epoch_start(1) == []
    uf.observe(1.0)  # no better: a plateau after one evaluation
    (t,) = uf.on_epoch_start(2)
    assert (t.stage_index, t.epoch) == (1, 2)
    assert t.reason.startswith("plateau of val_loss")
    uf.observe(0.5)  # stage 2 waits for its own plateau or its cap
    assert uf.on_epoch_start(3) == [] and uf.on_epoch_start(5) == []
    (t,) = uf.on_epoch_start(6)
    assert t.reason.startswith("epoch 6 (plateau cap)")


def test_deciding_keeps_the_winning_trial_and_leaves_everything_else_as_it_was() -> None:
    """The trial that wins keeps its steps: the head and the chosen window end exactly where
    the same Adam steps on the same probe batches take a copy of the model; every other
    weight, the optimizer's state, the gradients and the random generator are as they were."""
    net = planted()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    uf = ff.GradualUnfreezer(net, ff.auto(7), opt)
    loader = data()
    probe = probe_for(loader, nn.functional.cross_entropy, torch.device("cpu"))
    uf.set_probe(probe)
    uf.on_epoch_start(0)
    x, y = next(iter(loader))
    nn.functional.cross_entropy(net(x), y).backward()  # type: ignore[no-untyped-call]
    opt.step()
    uf.step()
    twin = copy.deepcopy(net)
    before, state = snapshot(net, buffers=True), {k: dict(v) for k, v in opt.state.items()}
    grads = {n: p.grad for n, p in net.named_parameters()}
    rng = torch.get_rng_state()
    uf.on_epoch_start(2)
    (d,) = uf.decisions
    assert "trial took the probe loss" in d.text and "its steps kept" in d.text
    assert torch.equal(rng, torch.get_rng_state())
    assert {n: p.grad for n, p in net.named_parameters()} == grads
    for p, saved in state.items():
        tensors = [k for k in saved if torch.is_tensor(saved[k])]
        assert all(torch.equal(saved[k], opt.state[p][k]) for k in tensors)

    planner = uf.planner
    assert isinstance(planner, ff.unfreezer.AutoPlanner)
    s = planner.settings
    trained = {f"{b}.0.{w}" for b in d.blocks for w in ("weight", "bias")}
    trained |= {"6.weight", "6.bias"}  # the head
    params = [p for n, p in twin.named_parameters() if n in trained]
    for p in twin.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    replay = torch.optim.Adam(params, lr=s.lr * STAGE_LR_FACTORS[1])
    for i, batch in enumerate(probe.batches(s.trial_steps, s.seed * 1000 + 1)):
        replay.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(twin(batch[0]), batch[1]).backward()  # type: ignore[no-untyped-call]
        if i == 0:  # the LR scales' norms come from this backward, not a pass of their own
            for b in d.blocks:
                layer = linear(twin, b)
                g2 = w2 = 0.0
                for p in layer.parameters():
                    assert p.grad is not None
                    g2 += float(p.grad.double().pow(2).sum())
                    w2 += float(p.detach().double().pow(2).sum())
                assert d.rgn[str(b)] == pytest.approx(math.sqrt(g2 / w2), rel=1e-9)
        replay.step()
    assert set(d.rgn) == {str(b) for b in range(6)}  # every block of both windows' trials
    after, replayed = snapshot(net, buffers=True), snapshot(twin, buffers=True)
    moved = {n for n in before if not torch.equal(before[n], after[n])}
    assert moved == trained
    assert all(torch.equal(after[n], replayed[n]) for n in after)


def test_the_same_seed_gives_the_same_decisions_and_weights() -> None:
    a, b = planted(), planted()
    _, ua = fit_auto(a)
    _, ub = fit_auto(b)
    assert [d.text for d in ua.decisions] == [d.text for d in ub.decisions]
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize(
    ("decide", "refreeze"), [("trials", False), ("signals", False), ("trials", True)]
)
@pytest.mark.parametrize(("stop", "decided"), [(2, 0), (3, 1), (5, 2)])
def test_a_resumed_run_makes_the_same_decisions(
    tmp_path: Path, stop: int, decided: int, decide: str, refreeze: bool
) -> None:
    knobs: dict[str, Any] = {"decide": decide, "refreeze": refreeze}
    whole = planted()
    _, u_whole = fit_auto(whole, checkpoint=tmp_path / "whole", **knobs)
    part = planted()
    _, u_part = fit_auto(part, checkpoint=tmp_path / "part", callbacks=[StopAfter(stop)], **knobs)
    assert len(u_part.decisions) == decided  # stages begin at epochs 2 and 3, refreeze later
    resumed = planted()
    _, u_resumed = fit_auto(resumed, checkpoint=tmp_path / "part", resume=True, **knobs)
    assert [d.text for d in u_resumed.decisions] == [d.text for d in u_whole.decisions]
    assert all(torch.equal(p, q) for p, q in zip(whole.parameters(), resumed.parameters()))
    assert flags(whole) == flags(resumed)


def refreeze_of(uf: ff.GradualUnfreezer) -> Any:
    (d,) = [d for d in uf.decisions if d.window == -1]
    return d


def test_refreeze_freezes_the_converged_prefix_again_at_the_first_settled_epoch() -> None:
    net = planted()
    frozen_at: dict[str, torch.Tensor] = {}

    class Watch(Callback):
        def on_stage_change(self, run: Run, transition: Any) -> None:
            if "froze again" in transition.reason:
                frozen_at.update(snapshot(net))

    # short trials: the planted window then settles within the run (its kept trial steps
    # move where it starts)
    history, uf = fit_auto(net, refreeze=True, trial_steps=4, callbacks=[Watch()])
    w = window_of(uf, PLANTED)
    planner = uf.planner
    assert isinstance(planner, ff.unfreezer.AutoPlanner)
    assert min(planner.windows[w]) == 0  # the planted window is the prefix
    d = refreeze_of(uf)
    assert d.refrozen == (w,) and d.stage_index == 2  # within the last stage, not at its start
    (t,) = [t for t in history.transitions if "froze again" in t["reason"]]
    assert t["name"] == "auto2" and t["reason"] == d.text
    # the rule, not a coincidence: it froze at the first epoch start after an epoch whose
    # mean moved by less than SETTLED, and not before
    means = planner.signals.means[w]
    moved = [abs(b - a) / a for a, b in itertools.pairwise(means)]
    first = next(i for i, m in enumerate(moved) if m < ff.unfreezer.signals.SETTLED)
    unfrozen_at = history.transitions[1]["epoch"]
    assert t["epoch"] == unfrozen_at + first + 2
    assert not linear(net, PLANTED).weight.requires_grad
    # frozen again means bit-identical from then on
    assert torch.equal(frozen_at[f"{PLANTED}.0.weight"], linear(net, PLANTED).weight)
    # the stage went on: no new stage, its LR curve not restarted
    assert uf.stage_index == 2 and history.epochs[-1]["stage"] == "auto2"
    before = history.epochs[t["epoch"] - 1]["lrs"]
    start = history.transitions[2]["lrs"]
    assert t["lrs"] and all(lr == before[n] for n, lr in t["lrs"].items())
    assert all(lr < start[n] for n, lr in t["lrs"].items())
    assert f"then {d.text}" in str(uf.plan())


@pytest.mark.parametrize(
    ("unfrozen", "within", "at_start"),
    [
        ((0,), (), (0,)),  # the newest window keeps training within its stage
        ((0, 1), (0,), (0,)),  # the earliest, a prefix: freezes again
        ((1, 0), (), (0,)),  # the earliest is the newest
        ((1, 2), (), ()),  # window 0 may still unfreeze before it: not a prefix
    ],
)
def test_refreeze_takes_a_converged_prefix_but_never_the_newest_window(
    unfrozen: tuple[int, ...], within: tuple[int, ...], at_start: tuple[int, ...]
) -> None:
    """Every window's step signals say it has converged; which freezes again depends only
    on the windows unfrozen, in order (three windows, two stages after the head), and on
    whether a stage is running (``within``) or starting (``at_start``: a new window joins
    as it freezes, so the newest may go)."""
    uf = ff.GradualUnfreezer(chain(), ff.auto(7, windows=3, refreeze=True))
    planner = uf.planner
    assert isinstance(planner, ff.unfreezer.AutoPlanner)
    planner.decisions = [
        Decision(k, w, planner.windows[w], {}, {}, (), "") for k, w in enumerate(unfrozen, 1)
    ]
    planner.signals.means = {w: [1.0, 1.0] for w in range(3)}
    assert all(planner.signals.converged(w)[0] for w in range(3))
    assert planner._converged(starting=True)[0] == at_start
    choice = planner.between(len(unfrozen), frozenset())
    assert (choice is not None) == bool(within)
    assert tuple(d.refrozen for d in planner.decisions[len(unfrozen) :]) == (
        (within,) if within else ()
    )


def test_without_refreeze_nothing_samples_the_steps() -> None:
    uf = ff.GradualUnfreezer(planted(), ff.auto(7))
    assert not uf.planner.watches_steps
    assert not uf.optimizer._optimizer_step_pre_hooks
    on = ff.GradualUnfreezer(planted(), ff.auto(7, refreeze=True))
    assert on.planner.watches_steps and on.optimizer._optimizer_step_pre_hooks


def test_a_planner_that_unfreezes_between_stages_is_refused() -> None:
    net = planted()
    uf = ff.GradualUnfreezer(net, ff.auto(14, refreeze=True))  # stages at epochs 4 and 6
    uf.on_epoch_start(4)
    more = uf.trainable_ids() | {0}
    uf.planner.between = lambda k, trainable: ff.unfreezer.planner.StageChoice(more)  # type: ignore[method-assign]
    before, history = flags(net), list(uf.history)
    with pytest.raises(ScheduleError, match="unfreeze parameters between stages"):
        uf.on_epoch_start(5)
    assert flags(net) == before and uf.history == history


def test_the_lr_follows_a_cosine_within_each_stage_as_an_ordinary_scheduler() -> None:
    net = chain()
    uf = ff.GradualUnfreezer(net, ff.auto(7), total_epochs=7, total_steps=70)
    cosine = uf.lr_scheduler()
    assert isinstance(cosine, torch.optim.lr_scheduler.LRScheduler)
    uf.on_epoch_start(0)
    factors = []
    for _ in range(20):  # the head stage: epochs 0-1, 20 steps
        uf.optimizer.step()
        cosine.step()
        uf.step()
        g = uf.optimizer.param_groups[0]
        factors.append(g["lr"] / g["base_lr"])
    assert factors == sorted(factors, reverse=True)
    assert math.isclose(factors[9], 0.1 + 0.45 * (1 + math.cos(math.pi * 0.5)))
    assert math.isclose(factors[-1], 0.1)
    # the next stage restarts the curve at its own base LRs: lr = base LR x factor, always
    uf.on_epoch_start(2)
    assert uf.stage_index == 1
    for g in uf.optimizer.param_groups:
        assert math.isclose(g["lr"], g["base_lr"])
    # it is the one LR path: nothing writes a group's LR at a step without it
    uf2 = ff.GradualUnfreezer(chain(), ff.auto(7), total_epochs=7, total_steps=70)
    uf2.on_epoch_start(0)
    uf2.step()
    assert uf2.optimizer.param_groups[0]["lr"] == uf2.optimizer.param_groups[0]["base_lr"]


def test_schedules_without_a_curve_of_their_own_bring_no_scheduler() -> None:
    fixed = ff.GradualUnfreezer(chain(), [ff.Stage(ff.last(1), lr=1e-3)])
    assert fixed.lr_scheduler() is None
    flat = ff.GradualUnfreezer(chain(), ff.auto(7, anneal=False), total_epochs=7)
    assert flat.lr_scheduler() is None


def test_plan_lists_the_windows_then_the_decisions() -> None:
    net = planted()
    uf = ff.GradualUnfreezer(net, ff.auto(7))
    text = str(uf.plan())
    assert "decided when the stage begins, one window of: 0 .. 2, 3 .. 5" in text
    uf.on_epoch_start(2)
    assert f"decided: {uf.decisions[0].text}" in str(uf.plan())
    assert "note: some stages select" not in str(uf.plan())


def test_the_schedule_round_trips_and_its_state_loads_only_on_the_same_knobs() -> None:
    sched = ff.auto(9, refreeze=True, seed=3)
    assert ff.Schedule.from_dict(sched.to_dict()) == sched
    assert ff.Schedule.from_yaml(sched.to_yaml()) == sched
    net = planted()
    uf = ff.GradualUnfreezer(net, sched)
    uf.on_epoch_start(3)
    state = uf.state_dict()
    other = ff.GradualUnfreezer(planted(), ff.auto(9, seed=3))
    with pytest.raises(ff.errors.StateError, match="another schedule"):
        other.load_state_dict(state)
    again = ff.GradualUnfreezer(planted(), ff.auto(9, refreeze=True, seed=3))
    again.load_state_dict(state)
    assert again.decisions == uf.decisions
    # a run of 0.1.0's default (three windows) resumes only with windows=3 spelled out: its
    # window indices would name other blocks under today's two
    three = ff.GradualUnfreezer(planted(), ff.auto(9, windows=3))
    three.on_epoch_start(3)
    with pytest.raises(ff.errors.StateError, match="another schedule"):
        ff.GradualUnfreezer(planted(), ff.auto(9)).load_state_dict(three.state_dict())


def test_fit_refuses_a_budget_other_than_its_epochs_and_changes_nothing() -> None:
    net = planted()
    before, before_flags = snapshot(net), flags(net)
    with pytest.raises(ScheduleError, match=r"run lasts 5 epochs.*budget of 7.*auto\(epochs=5\)"):
        ff.fit(net, data(), epochs=5, schedule=ff.auto(7), progress=False)
    assert flags(net) == before_flags
    assert all(torch.equal(before[n], p) for n, p in net.named_parameters())


def test_a_model_with_fewer_blocks_than_stages_is_refused() -> None:
    net = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))  # one block below the head
    with pytest.raises(ScheduleError, match=r"1 block\(s\) below the head.*2 stages"):
        ff.GradualUnfreezer(net, ff.auto(7))
    assert all(p.requires_grad for p in net.parameters())


def test_set_probe_takes_a_probe() -> None:
    uf = ff.GradualUnfreezer(planted(), ff.auto(7))
    assert uf.needs_probe
    with pytest.raises(ff.errors.OptimizerTypeError, match=r"set_probe.*of type function"):
        uf.set_probe(lambda n, s: [])  # type: ignore[arg-type]


def test_the_history_plot_names_the_window_each_stage_unfroze() -> None:
    pytest.importorskip("matplotlib")
    history, uf = fit_auto(planted())
    planner = uf.planner
    assert isinstance(planner, ff.unfreezer.AutoPlanner)
    texts = {t.get_text() for ax in history.plot().axes for t in ax.texts}
    for d in uf.decisions:
        assert f" auto{d.stage_index}: +{planner.window_name(d.window)}" in texts


# --------------------------------------------------------------------------- everyday cases


def unchanged(net: nn.Module, before: tuple[dict[str, torch.Tensor], dict[str, bool]]) -> bool:
    weights, trainable = before
    now = snapshot(net)
    return flags(net) == trainable and all(torch.equal(now[k], v) for k, v in weights.items())


def uf_with_probe(net: nn.Module, loss: Any, **knobs: Any) -> ff.GradualUnfreezer:
    knobs = {"lr": 0.02, **knobs}
    uf = ff.GradualUnfreezer(net, ff.auto(7, **knobs), total_epochs=7, total_steps=112)
    base = probe_for(data(), nn.functional.cross_entropy, torch.device("cpu"))
    uf.set_probe(ff.unfreezer.Probe(batches=base.batches, loss=loss))
    return uf


def test_a_trial_that_diverges_never_wins_and_all_diverging_is_refused() -> None:
    net = planted()
    nan_window_block = linear(net, 5)  # the window nearest the output: chosen on ties

    def loss(model: nn.Module, batch: Any) -> torch.Tensor:
        x, y = batch
        out = nn.functional.cross_entropy(model(x), y)
        return out * math.nan if nan_window_block.weight.requires_grad else out

    uf = uf_with_probe(net, loss)
    uf.on_epoch_start(0)
    (t,) = uf.on_epoch_start(2)
    assert "nan" in t.reason  # shown, but not chosen
    assert not nan_window_block.weight.requires_grad
    assert linear(net, PLANTED).weight.requires_grad

    net = planted()
    uf = uf_with_probe(net, lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1]) * math.nan)
    uf.on_epoch_start(0)
    with (
        harness(net, uf.optimizer, unfreezer=uf),  # its epoch, clock and signals too
        pytest.raises(ff.TrainingError, match=r"every trial of stage 1 .*non-finite.*lower"),
    ):
        uf.on_epoch_start(2)
    assert uf.stage_index == 0


@pytest.mark.parametrize(
    ("knobs", "make"),
    [({"decide": "trials"}, planted), ({"decide": "signals", "windows": 3}, chain)],
)
@pytest.mark.parametrize("factor", [1.2, 3.0])
def test_a_winning_trial_that_raised_the_loss_too_far_keeps_nothing_and_warns(
    knobs: dict[str, Any], make: Any, factor: float
) -> None:
    """A trial's score is its probe loss after training; here every trained window scores
    ``factor`` times its true loss. Up to ``RAISED`` (1.5x) the winner keeps its steps, as a
    useful first trial can raise the loss a little; above it the model is left bit for bit
    as it was, the window still unfreezes, and a warning names the rise and the LR. Both
    the trial per window and successive halving (``decide="signals"`` on the identity chain,
    where the signals cannot separate) follow the rule."""
    net = make()
    blocks = [linear(net, b) for b in range(6)]

    def loss(model: nn.Module, batch: Any) -> torch.Tensor:
        out = nn.functional.cross_entropy(model(batch[0]), batch[1])
        scoring = not torch.is_grad_enabled()  # a trial's score, not its training steps
        trained = any(lin.weight.requires_grad for lin in blocks)
        return out * factor if scoring and trained else out

    uf = uf_with_probe(net, loss, **knobs)
    uf.on_epoch_start(0)
    before = snapshot(net, buffers=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        (t,) = uf.on_epoch_start(2)
    (d,) = uf.decisions
    moved = {n for n, v in snapshot(net, buffers=True).items() if not torch.equal(v, before[n])}
    raised = [w for w in caught if issubclass(w.category, ff.FreezeflowWarning)]
    assert linear(net, d.blocks[0]).weight.requires_grad  # the window unfreezes either way
    if factor < RAISED:
        assert moved and not raised
        assert "kept" in d.text and "not kept" not in d.text
        return
    assert moved == set()  # the trial's steps rolled back, bit for bit
    assert "its steps not kept: the loss rose" in d.text and d.text in t.reason
    (w,) = raised
    message = str(w.message)
    planner = uf.planner
    assert isinstance(planner, ff.unfreezer.AutoPlanner)
    assert f"best trial of stage 1 ({planner.window_name(d.window)})" in message
    assert "expected at most 1.5x" in message and "lower auto(lr=...)" in message
    assert "no trial's steps were kept" in message  # the lowered LRs' trials rose too
    assert w.filename == __file__  # attributed to the caller, not to freezeflow


@pytest.mark.parametrize(
    ("knobs", "make", "steps"),
    [
        ({"decide": "trials"}, planted, 8),  # a trial per window, of trial_steps
        ({"decide": "signals", "windows": 3}, chain, 4),  # halving: 3 windows, half of them
    ],
)
def test_a_raised_loss_is_tried_again_at_a_lower_window_lr_that_then_trains_it(
    knobs: dict[str, Any], make: Any, steps: int
) -> None:
    """Here a trial's score triples whenever it moved a candidate block's weights more than
    ``far`` from where the stage began (as when an LR too high wrecks pretrained blocks):
    the winner's ``steps`` Adam steps at the stage's LR move them about ``steps`` x LR, at
    a third of it about a third as far. The winner is tried again with its window's LR
    divided by ``BACKOFF``; that trial passes, keeps its steps (the head moved as far as
    at the stage's LR, the window less than ``far``), and the window trains at that LR
    from then on."""
    net = make()
    blocks = [linear(net, b) for b in range(6)]
    start = {id(lin): lin.weight.detach().clone() for lin in blocks}
    lr = 0.02 * STAGE_LR_FACTORS[1]
    far = 0.6 * steps * lr  # within what the steps reach at lr, past what they do at lr/3

    def moved(lin: nn.Linear) -> float:
        return float((lin.weight.detach() - start[id(lin)]).abs().max())

    def loss(model: nn.Module, batch: Any) -> torch.Tensor:
        out = nn.functional.cross_entropy(model(batch[0]), batch[1])
        scoring = not torch.is_grad_enabled()
        return out * 3 if scoring and any(moved(lin) > far for lin in blocks) else out

    uf = uf_with_probe(net, loss, **knobs)
    uf.on_epoch_start(0)
    head = net[-1].weight.detach().clone()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        (t,) = uf.on_epoch_start(2)
    (d,) = uf.decisions
    window = [linear(net, b) for b in d.blocks]
    assert all(lin.weight.requires_grad for lin in window)
    assert f"the window trains at 1/{BACKOFF:.0f} of the stage's LR" in d.text
    assert "that trial's steps kept" in d.text and d.text in t.reason
    # the lowered trial's steps, kept: the window moved, but not as far as at the stage's LR
    assert 0 < max(moved(lin) for lin in window) <= far
    assert not torch.equal(net[-1].weight, head)  # the head trained at the stage's LR
    # from now on the window trains at the lowered LR; its blocks' scales carry the factor
    assert max(d.scales.values()) == pytest.approx(1 / BACKOFF)
    for group in uf.optimizer.param_groups:
        if any(p is lin.weight for lin in window for p in group["params"]):
            assert group["lr_scale"] <= 1 / BACKOFF + 1e-12
    (w,) = [w for w in caught if issubclass(w.category, ff.FreezeflowWarning)]
    assert "keeps that trial's steps" in str(w.message) and w.filename == __file__


def test_a_last_window_with_non_finite_gradients_is_refused_before_any_change() -> None:
    """The last window is taken without a trial, so no trial's NaN can refuse it: its
    relative gradient norms (measured for its LR scales) do, before anything changes."""
    net = planted()
    poisoned = [False]

    def loss(model: nn.Module, batch: Any) -> torch.Tensor:
        out = nn.functional.cross_entropy(model(batch[0]), batch[1])
        return out * math.nan if poisoned[0] else out

    uf = uf_with_probe(net, loss)
    uf.on_epoch_start(0)
    uf.on_epoch_start(2)  # the first decision, from finite losses
    poisoned[0] = True
    with (
        harness(net, uf.optimizer, unfreezer=uf),  # model, optimizer, random states, unfreezer
        pytest.raises(ff.TrainingError, match=r"stage 2 .*non-finite.* last window"),
    ):
        uf.on_epoch_start(3)
    assert uf.stage_index == 1 and len(uf.decisions) == 1
    poisoned[0] = False  # the run goes on from where it was refused
    (t,) = uf.on_epoch_start(3)
    assert t.stage_index == 2 and uf.epoch == 3 and len(uf.decisions) == 2


def test_without_val_data_the_caps_start_the_stages_and_say_so() -> None:
    net = planted()
    ff.training.seed_everything(0)
    history = ff.fit(net, data(), epochs=7, schedule=ff.auto(7, lr=0.02), progress=False)
    assert [(t["name"], t["epoch"]) for t in history.transitions] == [
        ("head", 0),
        ("auto1", 2),
        ("auto2", 3),
    ]
    notes = [r["message"] for r in history.records if r["kind"] == "note"]
    assert any("no val_data: stage 1 ('auto1') starts at its cap" in n for n in notes)


def test_a_plateau_without_cap_and_without_val_data_is_refused_before_anything(
    tmp_path: Path,
) -> None:
    net = chain()
    sched = ff.Schedule([ff.Stage("6", lr=1e-2), ff.Stage("5", lr=1e-3, start=ff.on_plateau())])
    before = snapshot(net), flags(net)
    with pytest.raises(ff.errors.TrainingArgumentError, match=r"stage 1 .*no val_data.*max_epoch"):
        ff.fit(net, data(), epochs=3, schedule=sched, callbacks=[ff.Checkpoint(tmp_path / "c")])
    assert unchanged(net, before)
    assert not (tmp_path / "c").exists()


def test_a_hand_built_unfreezer_is_held_to_its_budget_and_gets_its_cosine() -> None:
    net = planted()
    uf = ff.GradualUnfreezer(net, ff.auto(7, lr=0.02))
    before = snapshot(net), flags(net)
    with pytest.raises(ScheduleError, match=r"run lasts 3 epochs.*budget of 7"):
        ff.fit(net, data(), epochs=3, unfreezer=uf, progress=False)
    assert unchanged(net, before)

    lrs: list[float] = []

    class Lr(Callback):
        def on_batch_end(self, run: Run) -> None:
            lrs.append(run.optimizer.param_groups[0]["lr"])

    uf = ff.GradualUnfreezer(planted(), ff.auto(7, lr=0.02))
    ff.fit(uf.model, data(), epochs=7, unfreezer=uf, callbacks=[Lr()], progress=False)
    assert uf.total_epochs == 7 and uf.total_steps == 7 * 16  # told by fit
    head = lrs[:32]  # the head stage: epochs 0-1, a cosine from 1x down
    assert head == sorted(head, reverse=True) and head[-1] < 0.2 * head[0]


def test_a_metric_that_should_rise_moves_stages_when_it_stops_rising() -> None:
    sched = ff.auto(7, metric="val_accuracy")
    start = sched.stages[1].start
    assert sched.settings.mode == "max" and isinstance(start, ff.schedules.OnPlateau)
    assert start.mode == "max"
    assert ff.Schedule.from_dict(sched.to_dict()) == sched
    uf = ff.GradualUnfreezer(chain(), sched)
    uf.on_epoch_start(0)
    assert uf.waiting_for == "val_accuracy"
    assert [uf.observe(v) for v in (0.5, 0.6, 0.55)] == [False, False, True]
    assert ff.auto(7, metric="val_loss").settings.mode == "min"
    assert ff.auto(7, metric="val_accuracy", mode="min").settings.mode == "min"
    with pytest.raises(ScheduleError, match=r"auto\(mode='up'\).*'min'.*'max'"):
        ff.auto(7, mode="up")  # type: ignore[arg-type]


def test_probe_batches_that_repeat_trial_samples_are_warned_about() -> None:
    small = data(n=64)  # 12 batches of 32 needed, 64 samples there
    probe = probe_for(small, nn.functional.cross_entropy, torch.device("cpu"))
    with pytest.warns(ff.FreezeflowWarning, match=r"needs 12 batches of 32.*has 64.*repeat"):
        probe.batches(12, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        probe_for(data(), nn.functional.cross_entropy, torch.device("cpu")).batches(12, 0)


def test_a_probe_that_yields_nothing_falls_back_and_says_why() -> None:
    class Once:
        def __init__(self) -> None:
            self.used = False

        def __iter__(self) -> Any:
            if self.used:
                return iter(())
            self.used = True
            return iter(list(data()))

    net = planted()
    uf = ff.GradualUnfreezer(net, ff.auto(7, lr=0.02))
    once = Once()
    list(once)  # the epoch used it up
    uf.set_probe(probe_for(once, nn.functional.cross_entropy, torch.device("cpu")))
    uf.on_epoch_start(0)
    (t,) = uf.on_epoch_start(2)
    assert "the probe gave 0 batch(es), fewer than a trial needs (12)" in t.reason
    assert uf.decisions[0].window == 1  # of two: the window nearest the output
    (t,) = uf.on_epoch_start(3)  # the last window needs one batch, for its LR scales
    assert "the only window left; the probe gave no batch to scale its LRs by" in t.reason
    assert uf.decisions[1].window == 0 and set(uf.decisions[1].scales.values()) == {1.0}


def test_more_windows_than_blocks_is_refused() -> None:
    net = chain(depth=3)
    with pytest.raises(ScheduleError, match=r"auto\(windows=10\).*has 3 block\(s\).*windows <= 3"):
        ff.GradualUnfreezer(net, ff.auto(7, windows=10))
    assert all(p.requires_grad for p in net.parameters())


def test_a_decision_leaves_numpy_and_python_random_streams_as_found() -> None:
    class Noisy(TensorDataset):
        def __getitem__(self, i: int) -> Any:
            np.random.rand()  # augmentation drawn from NumPy's global generator
            random.random()
            return tuple(t[i] for t in self.tensors)

    base = data()
    noisy = DataLoader(Noisy(*base.dataset.tensors), batch_size=32)  # type: ignore[attr-defined]
    uf = ff.GradualUnfreezer(planted(), ff.auto(7, lr=0.02))
    uf.set_probe(probe_for(noisy, nn.functional.cross_entropy, torch.device("cpu")))
    uf.on_epoch_start(0)
    np.random.seed(3)
    random.seed(3)
    numpy_before, python_before = np.random.get_state(), random.getstate()
    uf.on_epoch_start(2)
    numpy_after = np.random.get_state()
    assert all(np.array_equal(a, b) for a, b in zip(numpy_before, numpy_after))
    assert random.getstate() == python_before


# --------------------------------------------------------------------------- decide="signals"


class Trials:
    """Counts the trials a decision runs and the steps each trains."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.steps: list[int] = []
        real = ff.unfreezer.AutoPlanner._trial

        def counted(planner: Any, model: Any, probe: Any, train: Any, lr: Any, batches: Any,
                    *rest: Any) -> float:  # fmt: skip
            self.steps.append(len(batches))
            return real(planner, model, probe, train, lr, batches, *rest)

        monkeypatch.setattr(ff.unfreezer.AutoPlanner, "_trial", counted)


def test_by_default_every_block_trains_by_the_last_stage_and_the_last_window_has_no_trial(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``ff.auto(7)`` cuts the blocks below the head into one window per stage after it (two):
    the first stage change tries both, the second unfreezes the other one without a trial
    (there is nothing to choose), still scaling its blocks' LRs by their measured relative
    gradient norms; at the end every candidate block trains. With three windows the one
    that loses both decisions never trains."""
    trials = Trials(monkeypatch)
    net = planted()
    history, uf = fit_auto(net)
    planner = uf.planner
    assert isinstance(planner, ff.unfreezer.AutoPlanner)
    assert len(planner.windows) == 2
    first, second = uf.decisions
    assert trials.steps == [8, 8]  # the first decision's trial per window, none after
    assert "trial took the probe loss" in first.text
    assert "the only window left, so no trial" in second.text
    assert {first.window, second.window} == {0, 1}
    assert set(second.rgn) >= {str(b) for b in second.blocks}  # measured for its LR scales
    assert all(linear(net, b).weight.requires_grad for b in range(6))
    reasons = [t["reason"] for t in history.transitions[1:]]
    assert all(d.text in r for d, r in zip(uf.decisions, reasons, strict=True))

    trials.steps.clear()
    three = planted()
    _, uf3 = fit_auto(three, windows=3)
    assert trials.steps == [8] * 5  # three windows, then the two left
    never = set(range(3)) - {d.window for d in uf3.decisions}
    assert len(never) == 1
    planner3 = uf3.planner
    assert isinstance(planner3, ff.unfreezer.AutoPlanner)
    assert not any(
        linear(three, b).weight.requires_grad for w in never for b in planner3.windows[w]
    )


def test_signals_that_separate_decide_without_a_trial(monkeypatch: pytest.MonkeyPatch) -> None:
    """The planted block's relative gradient norm is far ahead: its window is taken from the
    one backward of the measurement, with no trial, and the model is left as it was."""
    trials = Trials(monkeypatch)
    net = planted()
    uf = uf_with_probe(
        net, lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1]), decide="signals"
    )
    uf.on_epoch_start(0)
    before = snapshot(net, buffers=True)
    uf.on_epoch_start(2)
    (d,) = uf.decisions
    assert d.window == window_of(uf, PLANTED)
    assert "no trial" in d.text and "ahead by" in d.text
    assert trials.steps == []
    after = snapshot(net, buffers=True)
    assert all(torch.equal(before[n], after[n]) for n in before)


def test_signals_that_cannot_separate_run_successive_halving_and_keep_its_steps(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every block of the identity chain has the same relative gradient norm: the windows are
    tried by successive halving (half the trial steps each, fewer steps in all than a trial
    per window), and the winner keeps its trial's steps: its weights have moved, the other
    windows' have not."""
    trials = Trials(monkeypatch)
    net = chain()
    uf = uf_with_probe(
        net, lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1]), decide="signals", windows=3
    )
    uf.on_epoch_start(0)
    before = snapshot(net)
    uf.on_epoch_start(2)
    (d,) = uf.decisions
    assert "successive halving over 3 window(s)" in d.text and "trial step(s) kept" in d.text
    assert trials.steps == [4, 4, 4]  # 3 windows x half of the 8 trial steps, one left
    assert sum(trials.steps) < 3 * 8  # what a trial per window costs
    after = snapshot(net)
    moved = {n.split(".")[0] for n in before if not torch.equal(before[n], after[n])}
    planner = uf.planner
    assert isinstance(planner, ff.unfreezer.AutoPlanner)
    assert moved == {str(b) for b in planner.windows[d.window]} | {"6"}  # and the head


def test_signals_choose_what_the_trials_choose_on_the_toy_tasks() -> None:
    for make in (planted, chain):
        _, by_trials = fit_auto(make())
        _, by_signals = fit_auto(make(), decide="signals")
        assert [d.window for d in by_signals.decisions] == [d.window for d in by_trials.decisions]


def test_refreeze_lets_the_feature_cache_cover_the_prefix_frozen_again() -> None:
    """Speed mode: once the planted window has converged and freezes again, the frozen
    prefix reaches from the input up to the window the last stage unfroze, and the feature
    cache covers all of it for the rest of the run."""
    net = planted()
    history, uf = fit_auto(
        net, refreeze=True, trial_steps=4, callbacks=[ff.callbacks.FeatureCaching()]
    )
    planner = uf.planner
    assert isinstance(planner, ff.unfreezer.AutoPlanner)
    assert refreeze_of(uf).refrozen == (window_of(uf, PLANTED),)
    last = planner.windows[uf.decisions[1].window]
    notes = [r["message"] for r in history.records if r["kind"] == "note"]
    cached = [n for n in notes if "caching the frozen prefix" in n]
    assert cached and f"blocks 0-{last[0] - 1}" in cached[-1], notes
