"""Boolean-algebra laws of policy expressions, checked with hypothesis on random expressions
built from each model's real module names, parameter names, types and depth slices.

Two sides of a law must either select the same names (with ``allow_empty=True``) or raise the
same error type: on the tied model some expressions keep one name of the shared weight and
drop the other, and raise TiedParameterError.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from functools import cache
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from models import FACTORIES
from torch import nn

import freezeflow as ff

LAW_SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
MODELS = sorted(FACTORIES)
UNTIED = [m for m in MODELS if m != "tiny_lm"]


def is_bias(n: str, p: nn.Parameter, m: nn.Module) -> bool:
    return n.endswith("bias")


def is_matrix(n: str, p: nn.Parameter, m: nn.Module) -> bool:
    return p.ndim >= 2


def in_norm(n: str, p: nn.Parameter, m: nn.Module) -> bool:
    return ff.core.is_norm_layer(m)


Outcome = tuple[str, Any]


def outcome(policy: ff.FreezePolicy, model: nn.Module) -> Outcome:
    """('ok', names) or ('error', error type)."""
    try:
        return "ok", policy.select(model, allow_empty=True).names
    except ff.FreezeflowError as exc:
        return "error", type(exc)


@cache
def model(key: str) -> nn.Module:
    """One instance per model: policies never change a model."""
    return FACTORIES[key]()


@cache
def leaves(key: str) -> tuple[ff.FreezePolicy, ...]:
    """Leaf policies for ``key`` that resolve on their own."""
    m = model(key)
    modules = [p for p, mod in m.named_modules() if p and next(mod.parameters(), None) is not None]
    aliases = [n for n, _ in m.named_parameters(remove_duplicate=False)]
    globs: set[str] = set()
    for n in aliases + modules:
        parts = n.split(".")
        if len(parts) >= 2:
            globs.add("*." + ".".join(parts[1:]))
            globs.add(".".join(parts[:-1]) + ".*")
            globs.add("**." + parts[-1])
            globs.add(parts[0] + ".**")
        globs.add(re.sub(r"\d", "?", n))
    n_blocks = len(ff.find_blocks(m))
    n_layers = sum(1 for mod in m.modules() if list(mod.parameters(recurse=False)))
    types = sorted({type(mod) for mod in m.modules()}, key=lambda t: t.__qualname__)
    amongs = [ff.norm_layers(), ff.of_type(nn.Linear), ~ff.name(modules[-1]), ff.where(is_bias)]
    candidates: list[ff.FreezePolicy] = [
        ff.everything(),
        ff.nothing(),
        ff.norm_layers(),
        ff.name("no_such_module", strict=False),
        ff.where(is_bias),
        ff.where(is_matrix),
        ff.where(in_norm),
        ff.regex(r".*weight"),
        ff.regex(r".*\.bias"),
        *(ff.name(n) for n in modules + aliases),
        *(ff.name(g) for g in sorted(globs)),
        *(ff.regex(re.escape(p) + r"\..*") for p in modules[:6]),
        *(ff.of_type(t) for t in types),
        *(ff.first(k) for k in range(1, n_blocks + 1)),
        *(ff.last(k) for k in range(1, n_blocks + 1)),
        *(ff.blocks(i, j) for i in range(n_blocks) for j in range(i + 1, n_blocks + 1)),
        *(ff.blocks(-i) for i in range(1, n_blocks + 1)),
        *(ff.layers(i, i + 2) for i in range(n_layers)),
        *(ff.layers(-i) for i in range(1, n_layers + 1)),
        *(ff.last(k, among=a) for a in amongs for k in (1, 2)),
        *(ff.first(1, among=a) for a in amongs),
    ]
    pool = []
    for policy in candidates:
        try:
            policy.select(m, allow_empty=True)
        except ff.PolicyError:
            continue
        pool.append(policy)
    return tuple(dict.fromkeys(pool))


OPS: dict[str, Callable[..., ff.FreezePolicy]] = {
    "or": operator.or_,
    "and": operator.and_,
    "sub": operator.sub,
}


@cache
def expressions(key: str) -> st.SearchStrategy[ff.FreezePolicy]:
    def extend(children: st.SearchStrategy[ff.FreezePolicy]) -> st.SearchStrategy[ff.FreezePolicy]:
        return st.one_of(
            st.builds(operator.or_, children, children),
            st.builds(operator.and_, children, children),
            st.builds(operator.sub, children, children),
            st.builds(operator.invert, children),
        )

    return st.recursive(leaf_policies(key), extend, max_leaves=5)


def leaf_policies(key: str) -> st.SearchStrategy[ff.FreezePolicy]:
    pool = st.sampled_from(leaves(key))
    if key != "tiny_lm":
        return pool
    # reach the shared weight through one of its names often, so that laws meet
    # TiedParameterError on both sides
    tied = [
        ff.name("embed"),
        ff.name("lm_head"),
        ff.first(1),
        ff.last(1),
        ff.layers(-1),
        ff.of_type(nn.Embedding),
        ff.of_type(nn.Linear),
    ]
    return st.one_of(st.sampled_from(tied), pool)


@cache
def trees(key: str) -> st.SearchStrategy[Any]:
    """Expressions as trees: ('leaf', policy) | (op, left, right) | ('not', inner)."""
    leaf = leaf_policies(key).map(lambda p: ("leaf", p))

    def extend(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        return st.one_of(
            st.tuples(st.sampled_from(sorted(OPS)), children, children),
            st.tuples(st.just("not"), children),
        )

    return st.recursive(leaf, extend, max_leaves=5)


def build(tree: Any) -> ff.FreezePolicy:
    if tree[0] == "leaf":
        return tree[1]
    if tree[0] == "not":
        return ~build(tree[1])
    return OPS[tree[0]](build(tree[1]), build(tree[2]))


def as_set(tree: Any, m: nn.Module, universe: frozenset[str]) -> frozenset[str]:
    """What the expression should select, by plain set algebra on the leaves' selections."""
    if tree[0] == "leaf":
        return frozenset(tree[1].select(m, allow_empty=True).names)
    if tree[0] == "not":
        return universe - as_set(tree[1], m, universe)
    left, right = as_set(tree[1], m, universe), as_set(tree[2], m, universe)
    return {"or": left | right, "and": left & right, "sub": left - right}[tree[0]]


# --------------------------------------------------------------------------- the pool


@pytest.mark.parametrize("key", MODELS)
def test_leaf_pool_is_rich(key: str) -> None:
    pool = leaves(key)
    kinds = {type(p).__name__ for p in pool}
    assert {"Name", "Regex", "OfType", "NormLayers", "Blocks", "Layers", "Where"} <= kinds
    assert len(pool) > 30


# --------------------------------------------------------------------------- laws


def same(a: ff.FreezePolicy, b: ff.FreezePolicy, key: str) -> None:
    m = model(key)
    assert outcome(a, m) == outcome(b, m), (a, b)


@pytest.mark.parametrize("key", MODELS)
@LAW_SETTINGS
@given(data=st.data())
def test_de_morgan(key: str, data: st.DataObject) -> None:
    a, b = data.draw(expressions(key)), data.draw(expressions(key))
    same(~(a | b), ~a & ~b, key)
    same(~(a & b), ~a | ~b, key)


@pytest.mark.parametrize("key", MODELS)
@LAW_SETTINGS
@given(data=st.data())
def test_complement_partitions_the_model(key: str, data: st.DataObject) -> None:
    a = data.draw(expressions(key))
    m = model(key)
    everything = ff.everything().select(m).names
    assert outcome(a | ~a, m) == ("ok", everything)
    assert outcome(a & ~a, m) == ("ok", ())
    assert outcome(a - a, m) == ("ok", ())
    got, negated = outcome(a, m), outcome(~a, m)
    if got[0] == negated[0] == "ok":
        assert set(got[1]).isdisjoint(negated[1])
        assert set(got[1]) | set(negated[1]) == set(everything)


@pytest.mark.parametrize("key", MODELS)
@LAW_SETTINGS
@given(data=st.data())
def test_idempotence_and_double_negation(key: str, data: st.DataObject) -> None:
    a = data.draw(expressions(key))
    same(a | a, a, key)
    same(a & a, a, key)
    same(~~a, a, key)
    same(a | ff.nothing(), a, key)
    same(a & ff.everything(), a, key)


@pytest.mark.parametrize("key", MODELS)
@LAW_SETTINGS
@given(data=st.data())
def test_difference_is_intersection_with_complement(key: str, data: st.DataObject) -> None:
    a, b = data.draw(expressions(key)), data.draw(expressions(key))
    same(a - b, a & ~b, key)


@pytest.mark.parametrize("key", MODELS)
@LAW_SETTINGS
@given(data=st.data())
def test_commutativity_and_associativity(key: str, data: st.DataObject) -> None:
    a, b, c = (data.draw(expressions(key)) for _ in range(3))
    same(a | b, b | a, key)
    same(a & b, b & a, key)
    same((a | b) | c, a | (b | c), key)
    same((a & b) & c, a & (b & c), key)


@pytest.mark.parametrize("key", MODELS)
@LAW_SETTINGS
@given(data=st.data())
def test_distributivity(key: str, data: st.DataObject) -> None:
    a, b, c = (data.draw(expressions(key)) for _ in range(3))
    same(a & (b | c), (a & b) | (a & c), key)
    same(a | (b & c), (a | b) & (a | c), key)


@pytest.mark.parametrize("key", MODELS)
@LAW_SETTINGS
@given(data=st.data())
def test_determinism(key: str, data: st.DataObject) -> None:
    a = data.draw(expressions(key))
    first = outcome(a, model(key))
    assert outcome(a, model(key)) == first
    assert outcome(a, FACTORIES[key]()) == first  # a fresh, identical model
    assert outcome(a, model(key)) == first  # resolving elsewhere changed nothing


@pytest.mark.parametrize("key", UNTIED)
@LAW_SETTINGS
@given(data=st.data())
def test_untied_models_follow_plain_set_algebra(key: str, data: st.DataObject) -> None:
    tree = data.draw(trees(key))
    m = model(key)
    order = ff.everything().select(m).names
    expected = as_set(tree, m, frozenset(order))
    assert outcome(build(tree), m) == ("ok", tuple(n for n in order if n in expected))


@LAW_SETTINGS
@given(data=st.data())
def test_union_and_intersection_of_consistent_policies_never_contradict(
    data: st.DataObject,
) -> None:
    # on the tied model, | and & of two policies that resolve are themselves resolvable and
    # select the union / intersection of names
    m = model("tiny_lm")
    a, b = data.draw(expressions("tiny_lm")), data.draw(expressions("tiny_lm"))
    ra, rb = outcome(a, m), outcome(b, m)
    if ra[0] == rb[0] == "ok":
        order = ff.everything().select(m).names
        union = outcome(a | b, m)
        inter = outcome(a & b, m)
        assert union == ("ok", tuple(n for n in order if n in ra[1] or n in rb[1]))
        assert inter == ("ok", tuple(n for n in order if n in ra[1] and n in rb[1]))


# --------------------------------------------------------------------------- tied cases


EMBED, HEAD = ff.name("embed"), ff.name("lm_head")
BLOCKS = ff.name("blocks")

TIED_CASES = [
    ("de_morgan_or", ~(EMBED | BLOCKS), ~EMBED & ~BLOCKS),
    ("de_morgan_and", ~(EMBED & ff.everything()), ~EMBED | ff.nothing()),
    ("difference", EMBED - HEAD, EMBED & ~HEAD),
    ("difference_depth", ff.first(1) - ff.last(1), ff.first(1) & ~ff.last(1)),
    ("double_negation", ~~(ff.everything() - HEAD), ff.everything() - HEAD),
    ("commutative", ~HEAD | BLOCKS, BLOCKS | ~HEAD),
    ("associative", (~HEAD & BLOCKS) & EMBED, ~HEAD & (BLOCKS & EMBED)),
    ("de_morgan_all_names_kept", ~(EMBED & HEAD), ~EMBED | ~HEAD),
]


@pytest.mark.parametrize(("label", "left", "right"), TIED_CASES, ids=[c[0] for c in TIED_CASES])
def test_laws_on_tied_parameters_agree_on_errors(
    label: str, left: ff.FreezePolicy, right: ff.FreezePolicy
) -> None:
    m = model("tiny_lm")
    assert outcome(left, m) == outcome(right, m)


@pytest.mark.parametrize(
    "policy",
    [
        ~HEAD,
        ~EMBED,
        EMBED - HEAD,
        HEAD - EMBED,
        ff.everything() - HEAD,
        ff.first(1) - ff.last(1),
        # each side holds the weight through a different name, so the intersection holds the
        # weight but neither name, and its complement keeps both names but not the weight
        ~(ff.first(1) & ff.layers(-1)),
        ~(EMBED & HEAD),
    ],
    ids=repr,
)
def test_inconsistent_tied_selection_raises(policy: ff.FreezePolicy) -> None:
    assert outcome(policy, model("tiny_lm")) == ("error", ff.errors.TiedParameterError)
    # the same expression on an untied copy of the model is fine
    untied = FACTORIES["tiny_lm"]()
    untied.lm_head.weight = nn.Parameter(untied.embed.weight.detach().clone())
    assert outcome(policy, untied)[0] == "ok"
