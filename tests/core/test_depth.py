"""Depth policies (freezeflow.core.depth): blocks, first, last and layers slice the model's
blocks or its leaf layers, counted on the whole model or ``among`` another policy."""

from __future__ import annotations

import pytest
import torchvision
from expected import (
    CNN_CONV_BN,
    CNN_HEAD,
    CNN_STEM,
    assert_selects,
    lm_block,
    nested_stage,
)
from models import RESNET18_BLOCKS
from torch import nn

import freezeflow as ff
from freezeflow.core.policy import FreezePolicy

# (model, policy, exact names selected, in model order)
CASES: list[tuple[str, FreezePolicy, tuple[str, ...]]] = [
    # -- blocks / first / last ------------------------------------------------------------
    ("cnn", ff.first(1), CNN_STEM),
    ("cnn", ff.last(1), CNN_HEAD),
    ("cnn", ff.blocks(1, 2), CNN_CONV_BN),
    ("cnn", ff.blocks(-2), CNN_CONV_BN + CNN_HEAD),
    ("cnn", ff.blocks(), CNN_STEM + CNN_CONV_BN + CNN_HEAD),
    ("cnn", ff.blocks(None, -1), CNN_STEM + CNN_CONV_BN),
    ("cnn", ff.last(1, among=ff.norm_layers()), ("bn.weight", "bn.bias")),
    ("cnn", ff.first(1, among=~ff.name("stem")), CNN_CONV_BN),
    ("cnn", ff.last(2, among=ff.name("**.bias")), ("conv.bias", "bn.bias", "head.bias")),
    (
        "mlp",
        ff.last(2, among=~ff.name("fc3")),
        ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"),
    ),
    ("nested", ff.blocks(1, 3), nested_stage(0, 0) + nested_stage(0, 1)),
    ("nested", ff.last(2, among="stages"), nested_stage(1, 0) + nested_stage(1, 1)),
    ("tiny_lm", ff.first(1), ("pos", "embed.weight")),
    ("tiny_lm", ff.last(1), ("embed.weight",)),
    ("tiny_lm", ff.blocks(1, 2), lm_block(0)),
    (
        "resnet18",
        ff.last(2, among=~ff.name("fc")),
        tuple(
            n
            for n, _ in torchvision.models.resnet18().named_parameters()
            if n.startswith("layer4.")
        ),
    ),
    # -- layers (leaf modules that own parameters) ----------------------------------------
    ("mlp", ff.layers(0, 2), ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias")),
    ("cnn", ff.layers(-2), ("bn.weight", "bn.bias", *CNN_HEAD)),
    ("cnn", ff.layers(1, 2), ("stem.1.weight", "stem.1.bias")),
    ("cnn", ff.layers(-1, among=ff.of_type(nn.Conv2d)), ("conv.weight", "conv.bias")),
    ("tiny_lm", ff.layers(0, 1), ("pos",)),
    ("tiny_lm", ff.layers(-1), ("embed.weight",)),
    (
        "nested",
        ff.layers(1, 3),
        ("stages.0.0.0.weight", "stages.0.0.0.bias", "stages.0.0.1.weight", "stages.0.0.1.bias"),
    ),
    # -- combined -------------------------------------------------------------------------
    ("cnn", ~ff.first(2), CNN_HEAD),
]


@pytest.mark.parametrize(
    ("model_name", "policy", "expected"),
    CASES,
    ids=[f"{m}-{p!r}" for m, p, _ in CASES],
)
def test_depth_policy_selects_exact_names(
    model_name: str, policy: FreezePolicy, expected: tuple[str, ...]
) -> None:
    assert_selects(model_name, policy, expected)


def test_keras_layers_idiom_on_resnet18(resnet18: nn.Module) -> None:
    leaf = [p for p, m in resnet18.named_modules() if list(m.parameters(recurse=False))]
    last10 = leaf[-10:]
    expected = tuple(
        n for n, _ in resnet18.named_parameters() if n.rpartition(".")[0] in set(last10)
    )
    assert last10[0] == "layer4.0.bn1"
    assert last10[-1] == "fc"
    assert ff.layers(-10).select(resnet18).names == expected


def test_first_and_last_cover_the_model_on_resnet18(resnet18: nn.Module) -> None:
    names = tuple(n for n, _ in resnet18.named_parameters())
    for k in range(1, 10):
        head = ff.first(k).select(resnet18).names
        tail = ff.last(10 - k).select(resnet18).names
        assert head + tail == names
        assert set(head).isdisjoint(tail)
    assert ff.last(2).select(resnet18).names[-2:] == ("fc.weight", "fc.bias")
    assert ff.last(1).select(resnet18).names == ("fc.weight", "fc.bias")


def test_resnet18_depth_policies_follow_the_blocks(resnet18: nn.Module) -> None:
    for i, block in enumerate(RESNET18_BLOCKS):
        names = ff.blocks(i, i + 1).select(resnet18).names
        prefixes = tuple(p + "." for p in block.split("+"))
        expected = tuple(n for n, _ in resnet18.named_parameters() if n.startswith(prefixes))
        assert names == expected, block
