"""Presets bound to torchvision ResNets (weights=None) and to a toy model: each selects what
its source recipe selects, at the recipe's LRs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torchvision
from models import (
    ALL_NAMES,
    BLOCKS,
    HEAD,
    RESNET18_BLOCKS,
    block_of,
    classic_keras,
    make_net,
    names_of,
    train_step,
    trainable_names,
)
from torch import nn

import freezeflow as ff
from freezeflow.schedules.triggers import AtEpoch, AtFraction

pytestmark = pytest.mark.usefixtures("single_thread")


def _seed_head(in_features: int) -> nn.Module:
    """The seed tutorial's head (the same kind in its PyTorch and Keras listings)."""
    return nn.Sequential(
        nn.Linear(in_features, 128), nn.ReLU(), nn.Dropout(0.5), nn.Linear(128, 10)
    )


def _resnet18(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model: nn.Module = torchvision.models.resnet18(weights=None)
    model.fc = _seed_head(512)
    return model


def _ids(params: Any) -> set[int]:
    return {id(p) for p in params}


def _trainable_ids(model: nn.Module) -> set[int]:
    return {id(p) for p in model.parameters() if p.requires_grad}


def _prefixed(model: nn.Module, *prefixes: str) -> set[str]:
    return {n for n, _ in model.named_parameters() if n.startswith(prefixes)}


def _drive_to(uf: ff.GradualUnfreezer, k: int) -> None:
    """Enter stage k through its epoch trigger."""
    while uf.stage_index < k:
        start = uf.schedule[uf.stage_index + 1].start
        assert isinstance(start, AtEpoch)
        uf.on_epoch_start(start.epoch)
    assert uf.stage_index == k


# ------------------------------------------------------------ the classic PyTorch recipe


def _seed_loop(
    model: Any, x: torch.Tensor, y: torch.Tensor, head_epochs: int, epochs: int
) -> list[set[int]]:
    """The seed tutorial's own PyTorch loop, as written (one step per epoch here); ``model``
    is torchvision's (untyped) ResNet."""
    for p in model.parameters():
        p.requires_grad = False
    model.fc = _seed_head(512)  # new parameters: trainable
    stages = [_trainable_ids(model)]
    optimizer = torch.optim.Adam(model.fc.parameters(), lr=1e-3)
    for epoch in range(epochs):
        if epoch == head_epochs:
            for p in model.layer4.parameters():
                p.requires_grad = True
            optimizer = torch.optim.Adam(model.parameters(), lr=1e-5)
            stages.append(_trainable_ids(model))
        model.train()
        torch.manual_seed(100 + epoch)  # dropout
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()  # type: ignore[no-untyped-call]
        optimizer.step()
    return stages


def test_classic_pytorch_recipe_matches_the_tutorial_loop_bit_for_bit() -> None:
    """Trainable sets per stage by parameter identity, and with norm="ignore" (the seed
    leaves frozen BatchNorm in train mode) the trained weights and statistics, bit for bit."""
    torch.manual_seed(0)
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 10, (2,))
    head_epochs, epochs = 2, 4

    torch.manual_seed(0)
    seed_model = torchvision.models.resnet18(weights=None)
    torch.manual_seed(1)
    seed_sets = _seed_loop(seed_model, x, y, head_epochs, epochs)

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None)
    torch.manual_seed(1)
    model.fc = _seed_head(512)
    opt = torch.optim.Adam(model.parameters())
    uf = ff.GradualUnfreezer(
        model,
        ff.presets.two_stage("fc", "layer4", head_epochs=head_epochs, lr=1e-5, reset_state=True),
        opt,
        norm="ignore",
    )
    ours = [_trainable_ids(model)]
    # identity: the same parameter objects as the seed's, mapped by name
    by_name = dict(model.named_parameters())
    seed_by_name = dict(seed_model.named_parameters())
    to_ours = {id(p): id(by_name[n]) for n, p in seed_by_name.items()}
    for epoch in range(epochs):
        if uf.on_epoch_start(epoch):
            ours.append(_trainable_ids(model))
        model.train()
        torch.manual_seed(100 + epoch)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()  # type: ignore[no-untyped-call]
        opt.step()
        uf.step()
    assert [{to_ours[i] for i in s} for s in seed_sets] == ours
    named = [{n for n, p in model.named_parameters() if id(p) in ids} for ids in ours]
    assert named == [_prefixed(model, "fc."), _prefixed(model, "fc.", "layer4.")]
    assert uf.history[-1].lrs == dict.fromkeys(uf.group_names, 1e-5)
    for n, b in seed_model.state_dict().items():
        assert torch.equal(model.state_dict()[n], b), n


def test_two_stage_with_a_block_on_a_toy_model() -> None:
    model = make_net()
    uf = ff.GradualUnfreezer(
        model, ff.presets.two_stage("head", "body.1", head_epochs=5, lr=1e-5, reset_state=True)
    )
    assert trainable_names(model) == {"head.weight", "head.bias"}
    assert set(uf.history[-1].lrs.values()) == {1e-3}
    _drive_to(uf, 1)
    assert uf.epoch == 5
    assert trainable_names(model) == _prefixed(model, "head.", "body.1.")
    assert set(uf.history[-1].lrs.values()) == {1e-5}


# ------------------------------------------------------------ the classic Keras recipe

KERAS_LAST_6 = ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3")


@pytest.mark.parametrize("head", ["fc", ff.name("fc")], ids=["str", "policy"])
def test_classic_keras_recipe_on_resnet50(head: Any) -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None)
    model.fc = _seed_head(2048)
    sched = classic_keras(head)
    assert sched[1].reset_state
    opt = torch.optim.Adam(model.parameters())
    uf = ff.GradualUnfreezer(model, sched, opt)
    head_names = _prefixed(model, "fc.")
    assert trainable_names(model) == head_names
    assert set(uf.history[-1].lrs.values()) == {1e-3}
    _drive_to(uf, 1)
    layer = {f"layer4.2.{m}.{k}" for m in KERAS_LAST_6 for k in ("weight", "bias")} & set(
        dict(model.named_parameters())
    )
    assert len(layer) == 9  # 3 conv weights (no bias), 3 BatchNorm weights and biases
    assert trainable_names(model) == head_names | layer
    assert set(uf.history[-1].lrs.values()) == {1e-5}
    # BatchNorm of the unfrozen layers trains; the rest of the backbone's stays in eval
    model.train()
    assert model.layer4[2].bn3.training
    assert model.layer4[2].bn1.training
    assert not model.layer4[1].bn3.training
    assert not model.bn1.training


def test_classic_keras_recipe_resets_optimizer_state_on_a_toy_model() -> None:
    model = make_net()
    opt = torch.optim.Adam(model.parameters())
    uf = ff.GradualUnfreezer(model, classic_keras("head", n_layers=2, head_epochs=1), opt)
    train_step(model, opt, 0)
    assert names_of(model, opt.state) == {"head.weight", "head.bias"}
    uf.on_epoch_start(1)
    assert len(opt.state) == 0
    # the last two layers of the backbone: body.1's conv and BatchNorm
    assert trainable_names(model) == _prefixed(model, "head.", "body.1.")
    train_step(model, opt, 1)
    assert float(opt.state[model.head.weight]["step"]) == 1.0


# --------------------------------------------------------------------------- ulmfit


def _check_ulmfit(
    model: nn.Module, blocks: tuple[str, ...], block_of_name: Callable[[str], str], n: int
) -> None:
    lr = 1e-3
    uf = ff.GradualUnfreezer(
        model, ff.presets.ulmfit(n, lr=lr), torch.optim.AdamW(model.parameters())
    )
    names = {id(p): name for name, p in model.named_parameters()}
    for k in range(n):
        if k:
            (t,) = uf.on_epoch_start(k)
            assert t.name == f"last{k + 1}"
        unfrozen = blocks[-(k + 1) :]
        assert trainable_names(model) == {
            name for name in dict(model.named_parameters()) if block_of_name(name) in unfrozen
        }
        for g in uf.optimizer.param_groups:
            members = {block_of_name(names[id(p)]) for p in g["params"]}
            (block,) = members
            if block not in unfrozen:
                continue
            depth = len(blocks) - 1 - blocks.index(block)  # blocks from the output
            assert g["lr"] == pytest.approx(lr / 2.6**depth, rel=1e-12), (k, g["name"])
            assert f"/{block}/" in g["name"]


def _resnet18_block(name: str) -> str:
    if name.startswith(("conv1.", "bn1.")):
        return "conv1+bn1"
    if name.startswith("fc."):
        return "fc"
    return ".".join(name.split(".")[:2])


@pytest.mark.parametrize("n", [1, 3, 4])
def test_ulmfit_on_resnet18(n: int) -> None:
    _check_ulmfit(_resnet18(), RESNET18_BLOCKS, _resnet18_block, n)


def test_ulmfit_on_a_toy_model() -> None:
    _check_ulmfit(make_net(), BLOCKS, block_of, 4)


def test_ulmfit_checks_its_argument() -> None:
    with pytest.raises(ff.ScheduleError, match=r"ulmfit\(n_stages\).*got 0"):
        ff.presets.ulmfit(0)


# --------------------------------------------------------------------------- chain_thaw


@pytest.mark.parametrize(
    ("make", "head", "parts"),
    [
        (make_net, "head", ["stem", "body.0", "body.1"]),
        (_resnet18, "fc", ["layer1", "layer2", "layer3", "layer4"]),
    ],
    ids=["toy", "resnet18"],
)
def test_chain_thaw_stages_are_exclusive(
    make: Callable[[], nn.Module], head: str, parts: list[str]
) -> None:
    model = make()
    uf = ff.GradualUnfreezer(
        model, ff.presets.chain_thaw(head, parts), torch.optim.SGD(model.parameters())
    )
    everything = set(dict(model.named_parameters()))
    expected = [_prefixed(model, head + ".")] + [_prefixed(model, p + ".") for p in parts]
    for k, names in enumerate(expected):
        if k:
            uf.on_epoch_start(k)
        assert trainable_names(model) == names, k
        assert set(uf.history[-1].lrs.values()) == {1e-3 if k == 0 else 1e-4}
    uf.on_epoch_start(len(parts) + 1)
    assert uf.stage_name == "all"
    assert trainable_names(model) == everything


# --------------------------------------------------------------------------- layerwise_decay


@pytest.mark.parametrize(
    ("make", "blocks", "which"),
    [(make_net, BLOCKS, block_of), (_resnet18, RESNET18_BLOCKS, _resnet18_block)],
    ids=["toy", "resnet18"],
)
def test_layerwise_decay_scales(
    make: Callable[[], nn.Module], blocks: tuple[str, ...], which: Callable[[str], str]
) -> None:
    model = make()
    opt = torch.optim.AdamW(model.parameters())
    ff.GradualUnfreezer(
        model, ff.presets.layerwise_decay(lr=1e-3, lr_decay=0.75, weight_decay=0.05), opt
    )
    assert trainable_names(model) == set(dict(model.named_parameters()))
    names = {id(p): n for n, p in model.named_parameters()}
    assert len(opt.param_groups) == 2 * len(blocks)
    for g in opt.param_groups:
        (block,) = {which(names[id(p)]) for p in g["params"]}
        depth = len(blocks) - 1 - blocks.index(block)
        assert g["lr_scale"] == pytest.approx(0.75**depth, rel=1e-12)
        assert g["lr"] == pytest.approx(1e-3 * 0.75**depth, rel=1e-12)
        decays = {names[id(p)]: p.ndim > 1 for p in g["params"]}
        assert set(decays.values()) == {g["name"].endswith("/decay")}
        assert g["weight_decay"] == (0.05 if g["name"].endswith("/decay") else 0.0)


# --------------------------------------------------------------------------- two_stage


def test_two_stage_linear_probe_then_everything() -> None:
    model = _resnet18()
    uf = ff.GradualUnfreezer(
        model, ff.presets.two_stage("fc", head_epochs=1, lr=1e-4, lr_decay=0.5), torch.optim.AdamW
    )
    assert trainable_names(model) == _prefixed(model, "fc.")
    assert set(uf.history[-1].lrs.values()) == {1e-3}
    uf.on_epoch_start(1)
    assert trainable_names(model) == set(dict(model.named_parameters()))
    lrs = uf.history[-1].lrs
    assert lrs["head/fc/decay"] == pytest.approx(1e-4)
    assert lrs["finetune/layer4.1/decay"] == pytest.approx(1e-4 / 2)
    assert lrs["finetune/conv1+bn1/decay"] == pytest.approx(1e-4 / 2**9)


def test_presets_bind_to_the_toy_model() -> None:
    presets = {
        "classic_pytorch": ff.presets.two_stage(
            "head", "body", head_epochs=5, lr=1e-5, reset_state=True
        ),
        "classic_keras": classic_keras("head"),
        "two_stage": ff.presets.two_stage("head"),
        "ulmfit": ff.presets.ulmfit(4),
        "chain_thaw": ff.presets.chain_thaw("head", ["stem", "body"]),
        "layerwise_decay": ff.presets.layerwise_decay(),
    }
    last = {}
    for key, sched in presets.items():
        p = ff.plan(make_net(), sched)
        last[key] = p.stages[-1].n_trainable
    total = sum(q.numel() for q in make_net().parameters())
    assert last["two_stage"] == last["ulmfit"] == last["chain_thaw"] == total
    # the toy backbone has exactly six layers with parameters, so Keras' last-6 is all of it
    assert last["layerwise_decay"] == last["classic_keras"] == total
    assert last["classic_pytorch"] == total - sum(q.numel() for q in make_net().stem.parameters())


# --------------------------------------------------------------------------- progressive_freezing


@pytest.mark.parametrize(
    ("cubic", "fractions"),
    [(True, [0.5, 0.55, 0.9]), (False, [0.5, 0.7, 0.9])],
    ids=["cubic", "even"],
)
def test_progressive_freezing_stages(cubic: bool, fractions: list[float]) -> None:
    sched = ff.presets.progressive_freezing(3, lr=2e-3, start=0.5, end=0.9, cubic=cubic)
    assert sched.names == ["all", "freeze0", "freeze1", "freeze2"]
    assert sched[0].trainable == ff.everything()
    assert sched[0].start == AtEpoch(0)
    for i, stage in enumerate(sched.stages[1:]):
        assert stage.trainable == ff.blocks(i + 1, None)
        assert isinstance(stage.start, AtFraction)
        assert stage.start.fraction == pytest.approx(fractions[i], abs=1e-12)
        assert stage.exclusive
        assert stage.lr == 2e-3
    assert ff.presets.progressive_freezing(1, start=0.3).stages[1].start == AtFraction(0.3)


def test_progressive_freezing_freezes_the_first_blocks_in_turn() -> None:
    model = make_net()
    uf = ff.GradualUnfreezer(
        model, ff.presets.progressive_freezing(3, start=0.5, end=0.9, cubic=False), total_steps=100
    )
    assert trainable_names(model) == ALL_NAMES
    seen = {0: trainable_names(model)}
    for step in range(1, 101):
        if uf.step():
            seen[step] = trainable_names(model)
    frozen_first = [
        {n for n in ALL_NAMES if block_of(n) in BLOCKS[:k]} for k in (1, 2, 3)
    ]  # stem; stem and body.0; stem, body.0 and body.1
    assert list(seen) == [0, 50, 70, 90]
    assert list(seen.values())[1:] == [ALL_NAMES - f for f in frozen_first]
    assert trainable_names(model) == HEAD


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: ff.presets.progressive_freezing(0), r"progressive_freezing\(n_blocks\).*got 0"),
        (
            lambda: ff.presets.progressive_freezing(3, start=0.9, end=0.5),
            r"progressive_freezing\(start=0\.9, end=0\.5\): expected 0 < start < end < 1",
        ),
        (lambda: ff.presets.progressive_freezing(2, end=1.0), r"end=1\.0"),
        (lambda: ff.presets.progressive_freezing(2, start=0.0), r"start=0\.0"),
        (
            lambda: ff.presets.progressive_freezing(2, start="0.5"),  # type: ignore[arg-type]
            r"progressive_freezing\(start='0\.5', end=0\.9\): expected 0 < start < end < 1",
        ),
        (lambda: ff.presets.ulmfit(2, epochs_per_stage=0), r"ulmfit\(epochs_per_stage\).*got 0"),
        (lambda: ff.presets.two_stage(head_epochs=0), r"two_stage\(head_epochs\).*got 0"),
        (lambda: ff.presets.chain_thaw("fc", ["a"], head_epochs=0), r"chain_thaw\(head_epochs\)"),
        (lambda: ff.presets.layerwise_decay(lr_decay=1.5), r"lr_decay"),
        (lambda: ff.presets.two_stage(lr=-1.0), r"Stage\(lr\)=-1\.0"),
    ],
    ids=[
        "pf-no-blocks",
        "pf-start-after-end",
        "pf-end-one",
        "pf-start-zero",
        "pf-start-str",
        "ulmfit-epochs",
        "two-stage-epochs",
        "chain-head-epochs",
        "llrd-decay",
        "two-stage-lr",
    ],
)
def test_presets_check_their_arguments(build: Callable[[], ff.Schedule], match: str) -> None:
    with pytest.raises(ff.ScheduleError, match=match) as info:
        build()
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (
            lambda: ff.presets.chain_thaw("fc", ["a"], epochs_per_stage=True),
            r"chain_thaw\(epochs_per_stage\).*got True of type bool",
        ),
        (
            lambda: ff.presets.chain_thaw("fc", "layer4"),
            r"chain_thaw\(parts='layer4'\): expected a list of policies.*\['layer4'\]",
        ),
    ],
    ids=["chain-epochs-bool", "chain-parts-str"],
)
def test_presets_check_the_types_of_their_arguments(
    build: Callable[[], ff.Schedule], match: str
) -> None:
    with pytest.raises(ff.errors.ScheduleTypeError, match=match) as info:
        build()
    assert isinstance(info.value, TypeError) and not isinstance(info.value, ValueError)
