"""Silent misuse the unfreezer and schedules now catch (issue 14): the optimizer's weight
decay kept, parameters replaced under the unfreezer, an LR scheduler never attached,
ReduceLROnPlateau's eps under lr_decay, tied parameters under lr_decay, and schedule misuse
(epochs going backwards, steps without epochs, stages that cannot start in order, stages
re-selecting part of what is already trainable).

Each error leaves the model and the optimizer as they were; each warning is given once per
unfreezer.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import pytest
import snapshot
import torch
from models import TiedEmbedding, make_net, make_tiny_lm, three_stage, train_step
from snapshot import Snapshot
from torch import nn
from torch.optim import lr_scheduler as lrs

import freezeflow as ff
from freezeflow.errors import ModelChangedError

pytestmark = pytest.mark.usefixtures("single_thread")


@contextmanager
def no_warnings() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def unchanged(uf: ff.GradualUnfreezer) -> AbstractContextManager[Snapshot]:
    """Model, optimizer and the unfreezer's state stay put (tests/snapshot.py)."""
    return snapshot.unchanged(uf.model, uf.optimizer, unfreezer=uf)


def _wd(uf: ff.GradualUnfreezer) -> dict[str, float]:
    return {g["name"]: g["weight_decay"] for g in uf.optimizer.param_groups}


def _plain_two() -> list[ff.Stage]:
    """Two stages that set no weight decay."""
    return [ff.Stage("head", lr=1e-2), ff.Stage("body.1", lr=1e-3, start=1)]


# --------------------------------------------------------------------------- 1. weight decay


def test_the_optimizers_weight_decay_applies_when_no_stage_sets_one() -> None:
    """The README quickstart's AdamW(model.parameters()) has weight decay 0.01: it stays."""
    model = make_net()
    uf = ff.GradualUnfreezer(model, _plain_two(), torch.optim.AdamW(model.parameters()))
    expected = {"stage0/decay": 0.01, "stage0/no_decay": 0.0}
    expected |= {"stage1/decay": 0.01, "stage1/no_decay": 0.0}
    assert _wd(uf) == expected
    uf.on_epoch_start(1)
    assert _wd(uf) == expected
    assert uf.default_weight_decay == 0.01


def test_a_stage_weight_decay_still_wins_and_carries_on() -> None:
    model = make_net()
    opt = torch.optim.AdamW(model.parameters(), weight_decay=0.05)
    sched = [
        ff.Stage("head", lr=1e-2),
        ff.Stage("body.1", lr=1e-3, start=1, weight_decay=0.2),
        ff.Stage("body.0", lr=1e-3, start=2),
    ]
    uf = ff.GradualUnfreezer(model, sched, opt)
    assert _wd(uf)["stage0/decay"] == 0.05
    assert _wd(uf)["stage1/decay"] == 0.2  # its own stage's, set up front
    uf.on_epoch_start(1)
    assert _wd(uf)["stage0/decay"] == 0.2
    uf.on_epoch_start(2)
    assert {v for k, v in _wd(uf).items() if k.endswith("/decay")} == {0.2}
    assert {v for k, v in _wd(uf).items() if k.endswith("/no_decay")} == {0.0}


def _sgd_wd(groups: Any) -> torch.optim.Optimizer:
    return torch.optim.SGD(groups, lr=0.1, weight_decay=1e-4)


class _NoDecay(torch.optim.Optimizer):
    """An optimizer with no weight decay at all."""

    def __init__(self, params: Any, lr: float = 0.1) -> None:
        super().__init__(params, {"lr": lr})

    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        return None


@pytest.mark.parametrize(
    ("optimizer", "expected"),
    [
        (torch.optim.AdamW, 0.01),
        (torch.optim.SGD, 0.0),
        (_sgd_wd, 1e-4),
        (None, 0.01),  # the default optimizer is AdamW
        (_NoDecay, 0.0),
    ],
    ids=["AdamW-class", "SGD-class", "factory", "default", "no-weight-decay"],
)
def test_weight_decay_of_an_optimizer_built_by_the_unfreezer(
    optimizer: Any, expected: float
) -> None:
    uf = ff.GradualUnfreezer(make_net(), _plain_two(), optimizer)
    assert uf.default_weight_decay == expected
    assert {v for k, v in _wd(uf).items() if k.endswith("/decay")} == {expected}


def test_weight_decay_of_the_users_single_group() -> None:
    model = make_net()
    opt = torch.optim.AdamW([{"params": list(model.parameters()), "weight_decay": 0.3}])
    uf = ff.GradualUnfreezer(model, _plain_two(), opt)
    assert uf.default_weight_decay == 0.3


def test_plan_shows_the_weight_decay_that_applies() -> None:
    model = make_net()
    uf = ff.GradualUnfreezer(model, _plain_two(), torch.optim.AdamW(model.parameters()))
    for p in (uf.plan(), ff.plan(model, _plain_two())):
        wds = {g[0]: g[2] for s in p.stages for g in s.groups}
        assert wds["stage0/decay"] == wds["stage1/decay"] == 0.01
        assert wds["stage0/no_decay"] == 0.0
    sgd = ff.plan(model, _plain_two(), optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    assert {g[2] for s in sgd.stages for g in s.groups} == {0.0}
    assert {g[2] for s in ff.plan(model, _plain_two(), optimizer=_NoDecay).stages
            for g in s.groups} == {0.0}  # fmt: skip


def test_param_groups_leave_weight_decay_to_the_optimizer() -> None:
    groups = ff.param_groups(make_net(), lr=1e-3)
    assert all("weight_decay" not in g for g in groups if g["name"] == "decay")
    assert all(g["weight_decay"] == 0.0 for g in groups if g["name"] == "no_decay")
    opt = torch.optim.AdamW(groups)
    assert {g["name"]: g["weight_decay"] for g in opt.param_groups} == {
        "no_decay": 0.0,
        "decay": 0.01,
    }


# --------------------------------------------------------------------------- 2. model changed


def test_head_replaced_after_the_unfreezer_is_refused() -> None:
    model = make_net()
    uf = ff.GradualUnfreezer(model, three_stage(), torch.optim.AdamW(model.parameters()))
    model.head = nn.Linear(4, 3)
    with unchanged(uf), pytest.raises(ModelChangedError) as info:
        uf.on_epoch_start(0)
    message = str(info.value)
    assert "'head.weight', 'head.bias'" in message
    assert "2 parameter(s)" in message
    assert "hint:" in message
    assert isinstance(info.value, RuntimeError)
    with unchanged(uf), pytest.raises(ModelChangedError):
        uf.step()


def test_parameters_recreated_by_a_conversion_are_refused_at_the_transition() -> None:
    model = make_net()
    uf = ff.GradualUnfreezer(model, three_stage(), torch.optim.AdamW(model.parameters()))
    uf.on_epoch_start(0)
    before = torch.__future__.get_overwrite_module_params_on_conversion()
    torch.__future__.set_overwrite_module_params_on_conversion(True)
    try:
        model.double()
    finally:
        torch.__future__.set_overwrite_module_params_on_conversion(before)
    with unchanged(uf), pytest.raises(ModelChangedError, match=r"11 parameter\(s\).*'stem\.0"):
        uf.on_epoch_start(2)


def test_to_empty_from_meta_and_assigned_state_dicts_are_refused() -> None:
    with torch.device("meta"):
        meta = make_net()
    uf = ff.GradualUnfreezer(meta, three_stage(), torch.optim.AdamW(meta.parameters()))
    meta.to_empty(device="cpu")
    with unchanged(uf), pytest.raises(ModelChangedError, match=r"to_empty\(\)"):
        uf.on_epoch_start(0)
    model = make_net()
    uf = ff.GradualUnfreezer(model, three_stage(), torch.optim.AdamW(model.parameters()))
    model.load_state_dict(make_net(seed=1).state_dict(), assign=True)
    with unchanged(uf), pytest.raises(ModelChangedError, match=r"assign=True"):
        uf.step()


def test_a_module_removed_from_the_model_is_refused() -> None:
    model = make_net()
    uf = ff.GradualUnfreezer(model, three_stage(), torch.optim.AdamW(model.parameters()))
    model.head = nn.Identity()  # type: ignore[assignment]
    with unchanged(uf), pytest.raises(ModelChangedError, match=r"'head\.weight'"):
        uf.on_epoch_start(0)


def test_in_place_conversions_and_moves_are_fine() -> None:
    model = make_net()
    uf = ff.GradualUnfreezer(model, three_stage(), torch.optim.AdamW(model.parameters()))
    model.double()
    model.float()
    model.to("cpu")
    model.head.reset_parameters()
    model.load_state_dict(make_net(seed=2).state_dict())  # copied in place
    with no_warnings():
        for t in range(12):
            if t % 2 == 0:
                uf.on_epoch_start(t // 2)
            train_step(model, uf.optimizer, t)
            uf.step()
    assert uf.stage_index == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_moving_to_the_gpu_is_fine() -> None:
    model = make_net()
    uf = ff.GradualUnfreezer(model, three_stage(), torch.optim.AdamW(model.parameters()))
    model.cuda()
    for epoch in range(5):
        uf.on_epoch_start(epoch)
        uf.step()
    assert uf.stage_index == 2


# --------------------------------------------------------------------------- 3. LR schedulers


def test_an_attached_scheduler_does_not_warn() -> None:
    model = make_net()
    opt = torch.optim.AdamW(model.parameters())
    uf = ff.GradualUnfreezer(model, three_stage(), opt)
    uf.attach(lrs.CosineAnnealingWarmRestarts(opt, T_0=4))
    with no_warnings():
        for epoch in range(5):
            uf.on_epoch_start(epoch)


# --------------------------------------------------------------------------- 4. ReduceLROnPlateau


def test_plateau_reductions_follow_the_formula_in_deep_blocks() -> None:
    """lr_decay=0.1 over 12 blocks puts the deepest groups far below torch's eps (1e-8):
    every group still follows base_lr * lr_decay**depth * factor**n."""
    torch.manual_seed(0)
    model = nn.Sequential(*(nn.Linear(2, 2) for _ in range(12)))
    sched = [ff.Stage(ff.everything(), lr=1e-3, lr_decay=0.1)]
    uf = ff.GradualUnfreezer(model, sched, torch.optim.SGD(model.parameters(), lr=0.1))
    plateau = lrs.ReduceLROnPlateau(uf.optimizer, factor=0.5, patience=0)
    uf.attach(plateau)
    for n in range(6):
        plateau.step(1.0)  # no improvement after the first: one reduction per later step
        for g in uf.optimizer.param_groups:
            expected = g["base_lr"] * 0.5 ** max(n, 0)
            assert g["lr"] == pytest.approx(expected, rel=1e-12, abs=0.0), (n, g["name"])
    assert min(g["base_lr"] for g in uf.optimizer.param_groups) < 1e-12
    assert plateau.get_last_lr() == [g["lr"] for g in uf.optimizer.param_groups]


def test_plateau_keeps_its_floor_and_its_eps_on_the_largest_lr() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(*(nn.Linear(2, 2) for _ in range(6)))
    sched = [ff.Stage(ff.everything(), lr=1e-3, lr_decay=0.1)]
    uf = ff.GradualUnfreezer(model, sched, torch.optim.SGD(model.parameters(), lr=0.1))
    plateau = lrs.ReduceLROnPlateau(uf.optimizer, factor=0.5, patience=0, min_lr=1e-6)
    uf.attach(plateau)
    for _ in range(4):
        plateau.step(1.0)
    for g in uf.optimizer.param_groups:
        base = g["base_lr"]  # a group starting below the floor stays where it is
        expected = base if base <= 1e-6 else max(base * 0.5**3, 1e-6)
        assert g["lr"] == pytest.approx(expected, rel=1e-12, abs=0.0), g["name"]
    assert {g["lr"] for g in uf.optimizer.param_groups} >= {1e-6, 1e-3 * 0.5**3}
    # an eps larger than every drop stops all groups, as torch stops its one group
    plateau.eps = 1.0
    before = [g["lr"] for g in uf.optimizer.param_groups]
    plateau.step(1.0)
    assert [g["lr"] for g in uf.optimizer.param_groups] == before


# --------------------------------------------------------------------------- 5. tied parameters


def test_a_tied_parameter_takes_the_scale_of_its_output_side_block() -> None:
    model = TiedEmbedding()
    opt = torch.optim.AdamW(model.parameters())
    uf = ff.GradualUnfreezer(model, [ff.Stage(ff.everything(), lr=1e-3, lr_decay=0.5)], opt)
    (tied,) = [g for g in opt.param_groups if any(p is model.embed.weight for p in g["params"])]
    assert tied["lr_scale"] == 1.0
    assert tied["name"] == "stage0/out/decay"
    assert next(s for s in uf.plan().stages[0].groups if s[0] == tied["name"])[1] == 1e-3


def test_the_tied_embedding_of_a_language_model_trains_at_the_head_lr() -> None:
    model = make_tiny_lm()
    groups = ff.param_groups(model, lr=1e-3, lr_decay=0.5)
    (tied,) = [g for g in groups if any(p is model.lm_head.weight for p in g["params"])]
    assert tied["lr_scale"] == 1.0


# --------------------------------------------------------------------------- 6. schedule misuse


def test_epochs_going_backwards_are_refused() -> None:
    model = make_net()
    uf = ff.GradualUnfreezer(model, three_stage(), torch.optim.AdamW(model.parameters()))
    uf.on_epoch_start(3)
    with unchanged(uf), pytest.raises(ff.ScheduleError) as info:
        uf.on_epoch_start(1)
    message = str(info.value)
    assert "on_epoch_start(1)" in message and "epoch 3" in message and "hint:" in message
    uf.on_epoch_start(3)  # the same epoch again is fine (a resumed epoch)
    uf.on_epoch_start(4)


def test_epochs_may_start_anew_after_loading_a_state() -> None:
    model = make_net()
    uf = ff.GradualUnfreezer(model, three_stage(), torch.optim.AdamW(model.parameters()))
    uf.on_epoch_start(2)
    state = uf.state_dict()
    uf.on_epoch_start(5)
    uf.load_state_dict(state)
    uf.on_epoch_start(2)  # the resumed epoch
    assert uf.stage_index == 1


def test_steps_without_epochs_warn_once() -> None:
    model = make_net()
    uf = ff.GradualUnfreezer(model, three_stage(), torch.optim.AdamW(model.parameters()))
    with pytest.warns(ff.FreezeflowWarning, match=r"on_epoch_start\(epoch\)") as info:
        uf.step()
    assert "stage 1 ('stage1') starts at epoch 2" in str(info[0].message)
    assert info[0].filename == __file__  # attributed to the caller, not to freezeflow
    with no_warnings():
        uf.step()


def test_steps_with_epochs_or_step_triggers_do_not_warn() -> None:
    model = make_net()
    uf = ff.GradualUnfreezer(model, three_stage(), torch.optim.AdamW(model.parameters()))
    with no_warnings():
        uf.on_epoch_start(0)
        uf.step()
    steps = [ff.Stage("head", lr=1e-3), ff.Stage("body.1", lr=1e-3, start=ff.at_step(2))]
    uf = ff.GradualUnfreezer(make_net(), steps)
    with no_warnings():
        uf.catch_up(3)
    assert uf.stage_index == 1


def test_a_later_stage_starting_at_the_beginning_is_refused() -> None:
    for start in (ff.at_step(0), ff.at_fraction(0.0), ff.at_epoch(0)):
        with pytest.raises(ff.ScheduleError, match=r"stage 1 .*beginning of training"):
            ff.Schedule([ff.Stage("head", lr=1e-3), ff.Stage("body", lr=1e-3, start=start)])


@pytest.mark.parametrize(
    ("stages", "lengths", "match"),
    [
        (
            [ff.at_step(30), ff.at_epoch(1)],
            (60, 6),
            r"stage 2 \('stage2'\) starts at epoch 1 \(step 10\).*stage 1 \('stage1'\) at step 30",
        ),
        (
            [ff.at_epoch(3), ff.at_step(20)],
            (60, 6),
            r"stage 2 \('stage2'\) starts at step 20.*stage 1 \('stage1'\) at epoch 3 \(step 30\)",
        ),
        (
            [ff.at_fraction(0.5), ff.at_epoch(3)],
            (None, 10),
            r"stage 2 \('stage2'\) starts at epoch 3.*stage 1 \('stage1'\) at 50% of training "
            r"\(epoch 5\)",
        ),
        (
            [ff.at_fraction(0.5), ff.at_step(10)],
            (40, None),
            r"stage 2 \('stage2'\) starts at step 10.*at 50% of training \(step 20\)",
        ),
    ],
    ids=["step-then-epoch", "epoch-then-step", "fraction-then-epoch", "fraction-then-step"],
)
def test_stages_that_cannot_start_in_order_are_refused(
    stages: list[Any], lengths: tuple[int | None, int | None], match: str
) -> None:
    model = make_net()
    opt = torch.optim.AdamW(model.parameters())
    sched = [
        ff.Stage("head", lr=1e-3),
        ff.Stage("body.1", lr=1e-3, start=stages[0]),
        ff.Stage("body.0", lr=1e-3, start=stages[1]),
    ]
    with snapshot.unchanged(model, opt), pytest.raises(ff.ScheduleError, match=match):
        ff.GradualUnfreezer(model, sched, opt, total_steps=lengths[0], total_epochs=lengths[1])


def test_a_stage_run_for_no_step_warns_where_it_happens() -> None:
    """Without the run's length the order cannot be checked up front: stage 2 (epoch 1) is
    due long before stage 1 (step 30) and starts right after it, in the same step()."""
    sched = [
        ff.Stage("head", lr=1e-3),
        ff.Stage("body.1", lr=1e-3, start=ff.at_step(30)),
        ff.Stage("body.0", lr=1e-3, start=1),
    ]
    uf = ff.GradualUnfreezer(make_net(), sched)
    with no_warnings():
        for epoch in range(3):
            uf.on_epoch_start(epoch)
            for _ in range(9 if epoch == 2 else 10):
                uf.step()
    with pytest.warns(ff.FreezeflowWarning) as info:
        entered = uf.step()
    assert [t.stage_index for t in entered] == [1, 2]
    message = str(info[0].message)
    assert "stage 2 ('stage2', epoch 1) started right after stage 1 ('stage1', step 30)" in message
    assert "ran for no step" in message and "hint:" in message
    assert info[0].filename == __file__


def test_epochs_skipped_on_purpose_do_not_warn() -> None:
    uf = ff.GradualUnfreezer(make_net(), three_stage())
    with no_warnings():
        assert len(uf.on_epoch_start(5)) == 2


def test_mixed_triggers_in_order_are_fine() -> None:
    sched = [
        ff.Stage("head", lr=1e-3),
        ff.Stage("body.1", lr=1e-3, start=ff.at_step(5)),
        ff.Stage("body.0", lr=1e-3, start=1),
    ]
    with no_warnings():
        ff.GradualUnfreezer(make_net(), sched, total_steps=60, total_epochs=6)
        ff.GradualUnfreezer(make_net(), sched)  # no length: nothing to compare


def test_a_stage_reselecting_part_of_what_trains_warns_once() -> None:
    sched = [
        ff.Stage(["head", "body.1"], lr=1e-3),
        ff.Stage(["body.1", "body.0"], lr=1e-4, start=1, name="deeper"),
    ]
    with pytest.warns(ff.FreezeflowWarning) as info:
        uf = ff.GradualUnfreezer(make_net(), sched)
    (w,) = [w for w in info if issubclass(w.category, ff.FreezeflowWarning)]
    message = str(w.message)
    assert "stage 1 ('deeper')" in message and "stage 0 ('stage0')" in message
    assert "'body.1.conv.weight'" in message and "'head.weight'" in message
    assert "exclusive=True" in message
    with no_warnings():
        uf.on_epoch_start(1)


def test_cumulative_selections_and_presets_do_not_warn() -> None:
    import torchvision

    with no_warnings():
        ff.GradualUnfreezer(make_net(), three_stage())  # everything() last: a superset
        resnet = torchvision.models.resnet18()
        for sched in (
            ff.presets.ulmfit(3),
            ff.presets.two_stage("fc"),
            ff.presets.two_stage("fc", "layer4"),
            ff.presets.chain_thaw("fc", ["layer3", "layer4"]),
            ff.presets.layerwise_decay(),
        ):
            ff.GradualUnfreezer(resnet, sched)
        ff.GradualUnfreezer(resnet, ff.presets.progressive_freezing(3), total_epochs=10)
