"""freezeflow.unfreezer.layout: one param group per (first stage, block, decay), named, with
its scale, base LR and weight decay; every trained parameter in exactly one group through every
stage; overlapping stages; the standalone param_groups()."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from models import (
    ALL_NAMES,
    BODY1,
    HEAD,
    TiedEmbedding,
    make_net,
    names_of,
    three_stage,
    train_step,
)
from torch import nn

import freezeflow as ff
from freezeflow.core import index as index_module
from freezeflow.core.index import ModelIndex
from freezeflow.unfreezer.layout import layout

pytestmark = pytest.mark.usefixtures("single_thread")


def test_overlaps_name_what_a_stage_selects_again() -> None:
    # stage 2 (everything) re-selects what stages 0 and 1 already made trainable
    (entry,) = layout(make_net(), three_stage()).overlaps
    assert entry[0] == 2
    assert set(entry[1]) == HEAD | BODY1
    # exclusive stages re-select on purpose: no overlap reported
    exclusive = ff.Schedule(
        [ff.Stage("head", lr=1), ff.Stage(["head", "body.1"], lr=1, start=1, exclusive=True)]
    )
    assert layout(make_net(), exclusive).overlaps == ()
    # chain-thaw: only its last, non-exclusive stage ("all") re-selects
    chain = layout(make_net(), ff.presets.chain_thaw("head", ["stem", "body"]))
    assert [k for k, _ in chain.overlaps] == [3]
    assert set(chain.overlaps[0][1]) == {n for n in ALL_NAMES if n.startswith("body.")}
    clean = ff.Schedule([ff.Stage("head", lr=1), ff.Stage("body", lr=1, start=1)])
    assert layout(make_net(), clean).overlaps == ()


def test_trainable_and_selected_ids_per_stage() -> None:
    model = make_net()
    lay = layout(model, three_stage())
    name = dict(enumerate(lay.names))
    assert [{name[i] for i in ids} for ids in lay.selected_ids] == [HEAD, BODY1, set(ALL_NAMES)]
    assert [{name[i] for i in ids} for ids in lay.trainable_ids] == [
        HEAD,
        HEAD | BODY1,
        set(ALL_NAMES),
    ]
    assert [g.stage_index for g in lay.groups] == [0, 0, 1, 1, 2, 2, 2, 2]
    chain = layout(model, ff.presets.chain_thaw("head", ["stem", "body"]))
    assert {name[i] for i in chain.trainable_ids[1]} == {
        n for n in ALL_NAMES if n.startswith("stem.")
    }


def test_groups_named_with_scale_base_lr_and_weight_decay() -> None:
    model = make_net()
    opt = torch.optim.AdamW(model.parameters())
    ff.GradualUnfreezer(model, three_stage(), opt)
    expect = {
        # name: (base LR at stage 0, members, weight decay)
        "stage0/head/no_decay": (1e-2, {"head.bias"}, 0.0),
        "stage0/head/decay": (1e-2, {"head.weight"}, 0.1),
        "stage1/body.1/no_decay": (
            3e-3,
            {"body.1.bn.weight", "body.1.bn.bias"},
            0.0,
        ),
        "stage1/body.1/decay": (3e-3, {"body.1.conv.weight"}, 0.1),
        "stage2/stem/no_decay": (
            1e-3 * 0.125,
            {"stem.1.weight", "stem.1.bias"},
            0.0,
        ),
        "stage2/stem/decay": (1e-3 * 0.125, {"stem.0.weight"}, 0.1),
        "stage2/body.0/no_decay": (
            1e-3 * 0.25,
            {"body.0.bn.weight", "body.0.bn.bias"},
            0.0,
        ),
        "stage2/body.0/decay": (1e-3 * 0.25, {"body.0.conv.weight"}, 0.1),
    }
    assert [g["name"] for g in opt.param_groups] == list(expect)
    for g in opt.param_groups:
        lr, members, wd = expect[g["name"]]
        assert names_of(model, g["params"]) == members, g["name"]
        assert g["lr"] == pytest.approx(lr)
        assert g["base_lr"] == g["lr"]
        assert g["weight_decay"] == wd
        assert g["lr_scale"] == pytest.approx(lr / (1e-2, 3e-3, 1e-3)[int(g["name"][5])])


def test_no_decay_override() -> None:
    model = make_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = ff.Schedule(
        [ff.Stage("head", lr=1e-2, weight_decay=0.3), ff.Stage("body", lr=1e-3, start=1)]
    )
    ff.GradualUnfreezer(model, sched, opt, no_decay=ff.name("head.weight"))
    by_name = {g["name"]: g for g in opt.param_groups}
    assert names_of(model, by_name["stage0/no_decay"]["params"]) == {"head.weight"}
    assert names_of(model, by_name["stage0/decay"]["params"]) == {"head.bias"}
    assert by_name["stage0/decay"]["weight_decay"] == 0.3
    assert by_name["stage0/no_decay"]["weight_decay"] == 0.0
    # with the override, biases and BatchNorm parameters of the body get weight decay too
    assert names_of(model, by_name["stage1/decay"]["params"]) == {
        n for n in ALL_NAMES if n.startswith("body.")
    }


def _assert_partition(model: nn.Module, opt: torch.optim.Optimizer, expected: set[str]) -> None:
    ids = [id(p) for g in opt.param_groups for p in g["params"]]
    assert len(ids) == len(set(ids)), "a parameter is in two groups"
    assert names_of(model, [p for g in opt.param_groups for p in g["params"]]) == expected


PARTITION_CASES: list[tuple[str, Callable[[], ff.Schedule], set[str]]] = [
    ("three-stage", three_stage, set(ALL_NAMES)),
    (
        "head-then-body1",
        lambda: ff.Schedule([ff.Stage("head", lr=1), ff.Stage("body.1", lr=1, start=1)]),
        set(HEAD | BODY1),
    ),
    (
        "overlapping-with-decay",
        lambda: ff.Schedule(
            [
                ff.Stage(ff.last(2), lr=1, lr_decay=0.5),
                ff.Stage(ff.last(3), lr=1, start=1, lr_decay=0.9),
            ]
        ),
        {n for n in ALL_NAMES if not n.startswith("stem.")},
    ),
    ("chain-thaw", lambda: ff.presets.chain_thaw("head", ["stem", "body.0"]), set(ALL_NAMES)),
    (
        "norm-layers-only",
        lambda: ff.Schedule([ff.Stage(ff.norm_layers(), lr=1)]),
        {n for n in ALL_NAMES if ".bn." in n or n.startswith("stem.1.")},
    ),
]


@pytest.mark.parametrize(
    ("build", "expected"),
    [(b, e) for _, b, e in PARTITION_CASES],
    ids=[i for i, _, _ in PARTITION_CASES],
)
def test_every_trained_parameter_in_exactly_one_group(
    build: Callable[[], ff.Schedule], expected: set[str]
) -> None:
    model = make_net()
    opt = torch.optim.AdamW(model.parameters())
    uf = ff.GradualUnfreezer(model, build(), opt)
    _assert_partition(model, opt, expected)
    for k in range(1, len(uf.schedule)):
        uf.on_epoch_start(k)
        _assert_partition(model, opt, expected)  # groups are never added or removed
    # parameters no stage trains stay frozen and get no optimizer state
    for step in range(2):
        train_step(model, opt, step)
    assert names_of(model, opt.state.keys()) <= expected
    assert not any(p.requires_grad for n, p in model.named_parameters() if n not in expected)


def test_tied_parameter_gets_one_group() -> None:
    model = TiedEmbedding()
    opt = torch.optim.AdamW(model.parameters())
    ff.GradualUnfreezer(model, [ff.Stage(ff.everything(), lr=1e-3, lr_decay=0.5)], opt)
    params = [p for g in opt.param_groups for p in g["params"]]
    assert len(params) == len({id(p) for p in params}) == 3
    assert sum(p is model.embed.weight for p in params) == 1


def test_param_groups_without_a_schedule() -> None:
    model = make_net()
    groups = ff.param_groups(model, lr=1e-2, weight_decay=0.05, lr_decay=0.5)
    assert [g["name"] for g in groups] == [
        "stem/no_decay",
        "stem/decay",
        "body.0/no_decay",
        "body.0/decay",
        "body.1/no_decay",
        "body.1/decay",
        "head/no_decay",
        "head/decay",
    ]
    assert all(set(g) == {"params", "name", "lr", "lr_scale", "weight_decay"} for g in groups)
    by_name = {g["name"]: g for g in groups}
    assert by_name["stem/decay"]["lr"] == pytest.approx(1e-2 / 8)
    assert by_name["stem/decay"]["lr_scale"] == pytest.approx(1 / 8)
    assert by_name["head/decay"]["lr"] == 1e-2
    assert by_name["head/no_decay"]["weight_decay"] == 0.0
    assert by_name["head/decay"]["weight_decay"] == 0.05
    assert names_of(model, [p for g in groups for p in g["params"]]) == set(ALL_NAMES)
    opt = torch.optim.AdamW(groups)  # a torch optimizer takes them as they are
    assert len(opt.param_groups) == 8
    only_head = ff.param_groups(model, "head", lr=1e-3)
    assert [(g["name"], g["lr"]) for g in only_head] == [("no_decay", 1e-3), ("decay", 1e-3)]


def test_param_groups_of_a_policy_selecting_nothing_raise() -> None:
    with pytest.raises(ff.ScheduleError, match=r"'decoder'"):
        ff.param_groups(make_net(), "decoder", lr=1e-3)


# --------------------------------------------------------------------------- one index


def test_layout_indexes_the_model_once(monkeypatch: pytest.MonkeyPatch) -> None:
    builds: list[nn.Module] = []
    discoveries: list[nn.Module] = []
    real_init, real_find = ModelIndex.__init__, index_module.find_blocks  # type: ignore[attr-defined]

    def counting_init(self: ModelIndex, model: nn.Module) -> None:
        builds.append(model)
        real_init(self, model)

    def counting_find(model: nn.Module) -> list[ff.core.Block]:
        discoveries.append(model)
        return real_find(model)

    monkeypatch.setattr(ModelIndex, "__init__", counting_init)
    monkeypatch.setattr(index_module, "find_blocks", counting_find)
    model = make_net()
    # several depth stages with lr_decay, a custom no-decay policy using depth too
    schedule = ff.Schedule(
        [
            ff.Stage(ff.last(1), lr=1e-2),
            ff.Stage(ff.last(2) - ff.norm_layers(), lr=1e-3, lr_decay=0.5, start=1),
            ff.Stage(ff.first(2) | ff.last(3), lr=1e-4, lr_decay=0.7, start=2),
        ]
    )
    lay = layout(model, schedule, no_decay=ff.first(1) & ff.norm_layers())
    assert builds == [model]
    assert discoveries == [model]
    assert len(lay.groups) > len(schedule.stages)  # the groups were split by block


@pytest.mark.parametrize("make", [make_net, TiedEmbedding])
def test_layout_carries_the_blocks_and_each_parameters_block(
    make: Callable[[], nn.Module],
) -> None:
    model = make()
    lay = layout(model, ff.Schedule([ff.Stage(ff.everything(), lr=1.0, lr_decay=0.5)]))
    blocks = ff.find_blocks(model)
    assert lay.block_names == tuple(b.name for b in blocks)
    assert len(lay.param_block) == len(lay.params)
    aliases = dict(model.named_parameters(remove_duplicate=False))
    for j, p in enumerate(lay.params):
        # the deepest block holding any name of the parameter (a tied one: the output side)
        deepest = max(b for b, block in enumerate(blocks) for n, q in aliases.items()
                      if q is p and block.covers(n))  # fmt: skip
        assert lay.param_block[j] == deepest
    for g in lay.groups:  # the groups place every parameter as param_block says
        assert g.block is not None
        assert {lay.param_block[j] for j in g.params} == {g.block}
