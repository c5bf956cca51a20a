"""Policy constructors resolve to exactly the right parameters, in model order, by identity;
policies are values (equality, hashing, repr, pickling)."""

from __future__ import annotations

import copy
import pickle

import pytest
from expected import (
    CNN_CONV_BN,
    CNN_HEAD,
    CNN_STEM,
    assert_selects,
    is_bias,
    is_matrix,
    named_lm_head,
    nested_stage,
)
from models import MLP, NestedLists, SmallCNN, TinyLM, make_tiny_lm
from torch import nn

import freezeflow as ff
from freezeflow.core.index import ModelIndex
from freezeflow.core.policy import FreezePolicy

# (model, policy, exact names selected, in model order)
CASES: list[tuple[str, FreezePolicy, tuple[str, ...]]] = [
    # -- name: exact module / parameter names ---------------------------------------------
    ("cnn", ff.name("stem"), CNN_STEM),
    ("cnn", ff.name("stem.1"), ("stem.1.weight", "stem.1.bias")),
    ("cnn", ff.name("head.bias"), ("head.bias",)),
    ("cnn", ff.name("head", "stem.0"), ("stem.0.weight", "stem.0.bias", *CNN_HEAD)),
    ("mlp", ff.name("fc3", "fc1.weight"), ("fc1.weight", "fc3.weight", "fc3.bias")),
    ("nested", ff.name("stages.1"), nested_stage(1, 0) + nested_stage(1, 1)),
    ("nested", ff.name("stages.0.1"), nested_stage(0, 1)),
    ("nested", ff.name("stages.0.1.1"), ("stages.0.1.1.weight", "stages.0.1.1.bias")),
    # -- name: globs ----------------------------------------------------------------------
    ("nested", ff.name("*.weight"), ("inp.weight", "out.weight")),
    (
        "nested",
        ff.name("stages.*.*.0.weight"),
        tuple(f"stages.{i}.{j}.0.weight" for i in range(2) for j in range(2)),
    ),
    ("nested", ff.name("stages.*.0"), nested_stage(0, 0) + nested_stage(1, 0)),
    (
        "nested",
        ff.name("stages.**.bias"),
        tuple(
            n for i in range(2) for j in range(2) for n in nested_stage(i, j) if n.endswith("bias")
        ),
    ),
    ("mlp", ff.name("**.bias"), ("fc1.bias", "fc2.bias", "fc3.bias")),
    ("mlp", ff.name("fc?.weight"), ("fc1.weight", "fc2.weight", "fc3.weight")),
    ("mlp", ff.name("fc[13]"), ("fc1.weight", "fc1.bias", "fc3.weight", "fc3.bias")),
    ("mlp", ff.name("fc[!2].weight"), ("fc1.weight", "fc3.weight")),
    ("cnn", ff.name("stem.?.weight"), ("stem.0.weight", "stem.1.weight")),
    ("cnn", ff.name("*"), tuple(n for n in CNN_STEM + CNN_CONV_BN + CNN_HEAD)),
    (
        "resnet18",
        ff.name("layer4.*.bn?.bias"),
        ("layer4.0.bn1.bias", "layer4.0.bn2.bias", "layer4.1.bn1.bias", "layer4.1.bn2.bias"),
    ),
    (
        "resnet18",
        ff.name("layer[12].0.conv1.weight"),
        ("layer1.0.conv1.weight", "layer2.0.conv1.weight"),
    ),
    (
        "resnet18",
        ff.name("layer[23].*.downsample.0.weight"),
        ("layer2.0.downsample.0.weight", "layer3.0.downsample.0.weight"),
    ),
    # -- everything / nothing -------------------------------------------------------------
    ("cnn", ff.everything(), CNN_STEM + CNN_CONV_BN + CNN_HEAD),
    ("cnn", ff.nothing(), ()),
    ("cnn", ~ff.everything(), ()),
    ("cnn", ~ff.nothing(), CNN_STEM + CNN_CONV_BN + CNN_HEAD),
    # -- combinations ---------------------------------------------------------------------
    ("cnn", ff.name("head") | ff.name("stem.0"), ("stem.0.weight", "stem.0.bias", *CNN_HEAD)),
    ("cnn", "head" | ff.name("conv"), ("conv.weight", "conv.bias", *CNN_HEAD)),
]


@pytest.mark.parametrize(
    ("model_name", "policy", "expected"),
    CASES,
    ids=[f"{m}-{p!r}" for m, p, _ in CASES],
)
def test_policy_selects_exact_names(
    model_name: str, policy: FreezePolicy, expected: tuple[str, ...]
) -> None:
    assert_selects(model_name, policy, expected)


# --------------------------------------------------------------------------- exact names


def test_exact_module_name_selects_everything_under_it(resnet18: nn.Module) -> None:
    expected = tuple(n for n, _ in resnet18.named_parameters() if n.startswith("layer3."))
    assert len(expected) == 15
    assert ff.name("layer3").select(resnet18).names == expected


def test_name_is_not_a_prefix_match(mlp: MLP) -> None:
    # "fc" is a prefix of every module name but names none of them
    with pytest.raises(ff.PolicyError):
        ff.name("fc").select(mlp)
    assert ff.name("fc", strict=False).select(mlp, allow_empty=True).names == ()
    # "fc1" names the module fc1 only, never fc10-like siblings
    net = nn.Sequential(*(nn.Linear(2, 2) for _ in range(12)))
    assert ff.name("1").select(net).names == ("1.weight", "1.bias")


def test_star_stays_within_one_component_and_double_star_crosses(nested: NestedLists) -> None:
    all_weights = tuple(n for n, _ in nested.named_parameters() if n.endswith(".weight"))
    assert ff.name("**.weight").select(nested).names == all_weights
    assert ff.name("*.weight").select(nested).names == ("inp.weight", "out.weight")
    # '?' is one character and never a dot
    with pytest.raises(ff.PolicyError):
        ff.name("stages?0").select(nested)


def test_character_classes_stay_within_one_component(mlp: MLP) -> None:
    # like '?', a negated class never matches the dot between components
    with pytest.raises(ff.PolicyError):
        ff.name("fc1[!_]weight").select(mlp)
    assert ff.name("fc1[!_]weight", strict=False).select(mlp, allow_empty=True).names == ()
    assert ff.name("fc1[.]weight").select(mlp).names == ("fc1.weight",)
    assert ff.name("fc[!13].bias").select(mlp).names == ("fc2.bias",)


def test_selection_is_in_model_order_whatever_the_policy_order(mlp: MLP) -> None:
    fc1, fc3 = ("fc1.weight", "fc1.bias"), ("fc3.weight", "fc3.bias")
    for policy, expected in (
        (ff.name("fc3", "fc1"), fc1 + fc3),
        (
            ff.name("fc3") | ff.name("fc2") | ff.name("fc1"),
            tuple(n for n, _ in mlp.named_parameters()),
        ),
        (ff.last(1) | ff.first(1), fc1 + fc3),
        (ff.where(is_bias) | ff.name("fc1"), (*fc1, "fc2.bias", "fc3.bias")),
    ):
        assert policy.select(mlp).names == expected, policy


def test_everything_lists_every_unique_parameter_once(toy: nn.Module) -> None:
    sel = ff.everything().select(toy)
    assert sel.names == tuple(n for n, _ in toy.named_parameters())
    assert len(sel) == sel.total == len(list(toy.parameters()))
    assert sel.numel == sum(p.numel() for p in toy.parameters())


def test_nothing_raises_unless_empty_is_allowed(mlp: MLP) -> None:
    with pytest.raises(ff.errors.EmptySelectionError):
        ff.nothing().select(mlp)
    sel = ff.nothing().select(mlp, allow_empty=True)
    assert len(sel) == 0
    assert sel.numel == 0
    assert sel.total == 6


# --------------------------------------------------------------------------- tied parameters


@pytest.mark.parametrize(
    "policy",
    [
        ff.name("embed"),
        ff.name("lm_head"),
        ff.name("embed.weight"),
        ff.name("lm_head.weight"),
        ff.name("embed", "lm_head"),
        ff.of_type(nn.Embedding),
        ff.of_type(nn.Linear) & ~ff.name("blocks"),
        ff.last(1),
        ff.where(named_lm_head),
    ],
    ids=repr,
)
def test_tied_parameter_appears_once_with_both_aliases(policy: FreezePolicy) -> None:
    lm = make_tiny_lm()
    assert lm.lm_head.weight is lm.embed.weight
    sel = policy.select(lm)
    assert sel.names == ("embed.weight",)
    assert sel.params[0] is lm.embed.weight
    assert sel.aliases("embed.weight") == ("embed.weight", "lm_head.weight")
    assert sel.aliases("lm_head.weight") == ("embed.weight", "lm_head.weight")
    assert sel.aliases() == {"embed.weight": ("embed.weight", "lm_head.weight")}
    assert "lm_head.weight" in sel
    assert sel["lm_head.weight"] is lm.embed.weight
    assert lm.lm_head.weight in sel


def test_tied_model_counts_the_shared_weight_once(tiny_lm: TinyLM) -> None:
    sel = ff.everything().select(tiny_lm)
    unique = {id(p) for p in tiny_lm.parameters()}
    assert len(sel) == sel.total == len(unique) == 28
    assert "lm_head.weight" not in sel.names
    assert sel.numel == sum(p.numel() for p in tiny_lm.parameters())
    # selected through lm_head, listed at the position of its primary name
    assert ff.of_type(nn.Linear).select(tiny_lm).names[0] == "embed.weight"


def test_excluding_both_aliases_is_consistent(tiny_lm: TinyLM) -> None:
    sel = (ff.everything() - ff.name("embed", "lm_head")).select(tiny_lm)
    assert tiny_lm.embed.weight not in sel
    assert "lm_head.weight" not in sel
    assert len(sel) == 27


# --------------------------------------------------------------------------- as_policy


def test_strings_and_lists_become_name_policies(cnn: SmallCNN) -> None:
    assert ff.core.as_policy("head") == ff.name("head")
    assert ff.core.as_policy(["head", "conv"]) == ff.name("head", "conv")
    assert ff.core.as_policy(("head",)) == ff.name("head")
    policy = ff.last(1)
    assert ff.core.as_policy(policy) is policy
    assert ("stem" | ff.last(1)).select(cnn).names == CNN_STEM + CNN_HEAD
    assert (ff.everything() - ["stem", "conv"]).select(cnn).names == (
        "bn.weight",
        "bn.bias",
        *CNN_HEAD,
    )


@pytest.mark.parametrize("value", [3, None, 2.5, [], ["a", 1], {"a"}, nn.Linear(2, 2)], ids=repr)
def test_as_policy_rejects_non_policies(value: object) -> None:
    with pytest.raises(ff.errors.PolicyTypeError) as info:
        ff.core.as_policy(value)
    assert isinstance(info.value, TypeError)
    assert isinstance(info.value, ff.FreezeflowError)


# --------------------------------------------------------------------------- values


EQUAL_PAIRS = [
    (ff.name("a"), ff.name("a")),
    (ff.name("a", "b"), ff.name("a", "b")),
    (ff.regex(r"a\..*"), ff.regex(r"a\..*")),
    (ff.of_type(nn.Linear), ff.of_type(nn.Linear)),
    (ff.norm_layers(), ff.norm_layers()),
    (ff.last(2), ff.blocks(-2)),
    (ff.first(3), ff.blocks(None, 3)),
    (ff.layers(-10), ff.layers(-10, None)),
    (ff.last(2, among="fc"), ff.last(2, among=ff.name("fc"))),
    (ff.where(is_bias), ff.where(is_bias)),
    (ff.everything(), ff.everything()),
    (ff.nothing(), ff.nothing()),
    (ff.name("a") | ff.last(2), ff.name("a") | ff.last(2)),
    (ff.name("a") & ff.last(2), ff.name("a") & ff.last(2)),
    (ff.name("a") - ff.last(2), ff.name("a") - ff.last(2)),
    (~ff.name("a"), ~ff.name("a")),
    (~~ff.name("a"), ff.name("a")),
    ((ff.name("a") | ff.name("b")) | ff.name("c"), ff.name("a") | (ff.name("b") | ff.name("c"))),
]


@pytest.mark.parametrize(("a", "b"), EQUAL_PAIRS, ids=[repr(a) for a, _ in EQUAL_PAIRS])
def test_equal_policies_compare_and_hash_equal(a: FreezePolicy, b: FreezePolicy) -> None:
    assert a == b
    assert hash(a) == hash(b)
    assert len({a, b}) == 1


UNEQUAL_PAIRS = [
    (ff.name("a"), ff.name("b")),
    (ff.name("a"), ff.name("a", strict=False)),
    (ff.name("a"), ff.regex("a")),
    (ff.of_type(nn.Linear), ff.of_type(nn.Conv2d)),
    (ff.first(2), ff.last(2)),
    (ff.blocks(-2), ff.layers(-2)),
    (ff.last(2), ff.last(2, among="fc")),
    (ff.everything(), ff.nothing()),
    (ff.name("a") | ff.name("b"), ff.name("a") & ff.name("b")),
    (ff.name("a") - ff.name("b"), ff.name("b") - ff.name("a")),
    (ff.name("a"), ~ff.name("a")),
    (ff.where(is_bias), ff.where(is_matrix)),
]


@pytest.mark.parametrize(("a", "b"), UNEQUAL_PAIRS, ids=[f"{a!r}~{b!r}" for a, b in UNEQUAL_PAIRS])
def test_different_policies_are_not_equal(a: FreezePolicy, b: FreezePolicy) -> None:
    assert a != b


REPRS = [
    (ff.name("a") | ff.last(2), "name('a') | last(2)"),
    (ff.name("layer4", "fc"), "name('layer4', 'fc')"),
    (ff.name("x", strict=False), "name('x', strict=False)"),
    (ff.regex(r"fc\d"), "regex('fc\\\\d')"),
    (ff.of_type(nn.Linear, nn.Conv2d), "of_type(Linear, Conv2d)"),
    (ff.norm_layers(), "norm_layers()"),
    (ff.first(3), "first(3)"),
    (ff.last(2, among=~ff.name("fc")), "last(2, among=~name('fc'))"),
    (ff.blocks(1, 3), "blocks(1, 3)"),
    (ff.layers(-10), "layers(-10)"),
    (ff.everything(), "everything()"),
    (ff.nothing(), "nothing()"),
    (ff.where(is_bias, label="biases"), "where(biases)"),
    (ff.where(is_bias), "where(is_bias)"),
    (~ff.name("a"), "~name('a')"),
    (~(ff.name("a") | ff.name("b")), "~(name('a') | name('b'))"),
    (ff.name("a") - ff.name("b") - ff.name("c"), "name('a') - name('b') - name('c')"),
    (ff.name("a") - (ff.name("b") - ff.name("c")), "name('a') - (name('b') - name('c'))"),
    ((ff.name("a") | ff.name("b")) & ff.last(1), "(name('a') | name('b')) & last(1)"),
    (ff.name("a") | ff.name("b") & ff.last(1), "name('a') | (name('b') & last(1))"),
]


@pytest.mark.parametrize(("policy", "text"), REPRS, ids=[t for _, t in REPRS])
def test_repr_is_readable(policy: FreezePolicy, text: str) -> None:
    assert repr(policy) == text


PICKLABLE = [
    ff.name("fc1", "fc3.bias"),
    ff.name("*.weight"),
    ff.regex(r"fc\d\.bias"),
    ff.of_type(nn.Linear),
    ff.norm_layers(),
    ff.first(1),
    ff.last(2, among=~ff.name("fc3")),
    ff.layers(0, 2),
    ff.where(is_bias, label="biases"),
    ff.everything(),
    ff.nothing(),
    (ff.name("fc1") | ff.last(1)) - ff.where(is_bias),
    ~(ff.name("fc2") & ff.regex(".*weight")),
]


@pytest.mark.parametrize("policy", PICKLABLE, ids=repr)
def test_pickle_round_trips(policy: FreezePolicy, mlp: nn.Module) -> None:
    back = pickle.loads(pickle.dumps(policy))
    assert back == policy
    assert hash(back) == hash(policy)
    assert repr(back) == repr(policy)
    assert copy.deepcopy(policy) == policy
    assert back.select(mlp, allow_empty=True).names == policy.select(mlp, allow_empty=True).names


def test_policies_are_immutable() -> None:
    policy = ff.name("a")
    with pytest.raises(AttributeError):
        policy.patterns = ("b",)  # type: ignore[attr-defined]
    assert policy == ff.name("a")


# --------------------------------------------------------------------------- a given index


@pytest.mark.parametrize(
    "policy", [ff.last(2), ff.name("blocks") | ff.first(1), ~ff.norm_layers()], ids=repr
)
def test_select_on_a_given_index_equals_select_on_a_new_one(policy: FreezePolicy) -> None:
    lm = make_tiny_lm()
    idx = ModelIndex.build(lm)
    given = policy.select(lm, index=idx)
    assert given.names == policy.select(lm).names
    assert all(a is b for a, b in zip(given.params, policy.select(lm).params, strict=True))


def test_select_refuses_an_index_of_another_model(mlp: MLP) -> None:
    other = ModelIndex.build(make_tiny_lm())
    with pytest.raises(ff.errors.PolicyError, match=r"index was built for TinyLM.*not for.*hint"):
        ff.everything().select(mlp, index=other)
    with pytest.raises(ff.errors.PolicyTypeError, match=r"index must be.*got 'fc1'.*hint"):
        ff.everything().select(mlp, index="fc1")  # type: ignore[arg-type]
