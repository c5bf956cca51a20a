"""Boolean-algebra laws of policy expressions, checked with hypothesis on random expressions
built from each model's real module names, parameter names, types and depth slices.

A law is checked on what each side *resolves to* on a real model: both sides must select the
same parameters (names, in model order, with ``allow_empty=True``) or raise the same error
type (on the tied model some expressions keep one name of the shared weight and drop the
other, and raise TiedParameterError).

The operators normalise what they build (``a | a`` is ``a``, ``~~a`` is ``a``, unions and
intersections are flattened), so a law written with them could hold by construction. The
laws are therefore written with the raw combinators below (:func:`union`, :func:`inter`,
:func:`minus`, :func:`neg`), which build the expression exactly as written, and it is the
resolution of that expression that is checked. That the operators normalise is tested on
its own (:func:`test_operators_normalise`).
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from functools import cache
from typing import Any

import pytest
from expected import in_norm, is_bias, is_matrix
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from models import FACTORIES, make_tiny_lm
from torch import nn

import freezeflow as ff
from freezeflow.core.policy import (
    Complement,
    Difference,
    FreezePolicy,
    Intersection,
    Union,
)

LAW_SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
MODELS = sorted(FACTORIES)
UNTIED = [m for m in MODELS if m != "tiny_lm"]


# --------------------------------------------------------------------------- raw combinators


def union(*parts: FreezePolicy) -> FreezePolicy:
    """``a | b | ...`` exactly as written (no flattening, no deduplication)."""
    return Union(parts)


def inter(*parts: FreezePolicy) -> FreezePolicy:
    """``a & b & ...`` exactly as written."""
    return Intersection(parts)


def minus(a: FreezePolicy, b: FreezePolicy) -> FreezePolicy:
    """``a - b``."""
    return Difference(a, b)


def neg(a: FreezePolicy) -> FreezePolicy:
    """``~a`` exactly as written (``neg(neg(a))`` stays a double complement)."""
    return Complement(a)


Outcome = tuple[str, Any]


def outcome(policy: FreezePolicy, model: nn.Module) -> Outcome:
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
def leaves(key: str) -> tuple[FreezePolicy, ...]:
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
    candidates: list[FreezePolicy] = [
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


# the operators, and the raw combinators: expressions are built with both
OPS: dict[str, Callable[..., FreezePolicy]] = {
    "or": operator.or_,
    "and": operator.and_,
    "sub": operator.sub,
    "not": operator.invert,
}
RAW: dict[str, Callable[..., FreezePolicy]] = {"or": union, "and": inter, "sub": minus, "not": neg}


@cache
def expressions(key: str, *, raw: bool = True) -> st.SearchStrategy[FreezePolicy]:
    """Random expressions over :func:`leaves`, built with the operators and (if ``raw``)
    with the raw combinators too."""
    kinds = [OPS, RAW] if raw else [OPS]

    def extend(children: st.SearchStrategy[FreezePolicy]) -> st.SearchStrategy[FreezePolicy]:
        return st.one_of(
            *(
                st.builds(ops[op], children, children)
                for ops in kinds
                for op in ("or", "and", "sub")
            ),
            *(st.builds(ops["not"], children) for ops in kinds),
        )

    return st.recursive(leaf_policies(key), extend, max_leaves=5)


def leaf_policies(key: str) -> st.SearchStrategy[FreezePolicy]:
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
            st.tuples(st.sampled_from(["and", "or", "sub"]), children, children),
            st.tuples(st.just("not"), children),
        )

    return st.recursive(leaf, extend, max_leaves=5)


def build(tree: Any, ops: dict[str, Callable[..., FreezePolicy]]) -> FreezePolicy:
    """The policy of ``tree``, combined with ``ops`` (:data:`OPS` or :data:`RAW`)."""
    if tree[0] == "leaf":
        policy: FreezePolicy = tree[1]
        return policy
    return ops[tree[0]](*(build(t, ops) for t in tree[1:]))


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


def same(a: FreezePolicy, b: FreezePolicy, key: str) -> None:
    """Both sides resolve to the same selection on the real model (or, on the tied model
    only, raise the same error)."""
    m = model(key)
    left, right = outcome(a, m), outcome(b, m)
    assert left == right, (a, b)
    if key in UNTIED:  # every expression over resolvable leaves resolves on an untied model
        assert left[0] == "ok", (a, left)


@pytest.mark.parametrize("key", MODELS)
@LAW_SETTINGS
@given(data=st.data())
def test_operators_normalise(key: str, data: st.DataObject) -> None:
    # a property of the operators, not a law: the laws below do not rely on it
    a, b, c = (data.draw(expressions(key, raw=False)) for _ in range(3))
    assert a | a == a
    assert a & a == a
    assert ~~a == a
    assert (a | b) | c == a | (b | c)
    assert (a & b) & c == a & (b & c)


@pytest.mark.parametrize("key", MODELS)
@LAW_SETTINGS
@given(data=st.data())
def test_de_morgan(key: str, data: st.DataObject) -> None:
    a, b = data.draw(expressions(key)), data.draw(expressions(key))
    same(neg(union(a, b)), inter(neg(a), neg(b)), key)
    same(neg(inter(a, b)), union(neg(a), neg(b)), key)


@pytest.mark.parametrize("key", MODELS)
@LAW_SETTINGS
@given(data=st.data())
def test_complement_partitions_the_model(key: str, data: st.DataObject) -> None:
    a = data.draw(expressions(key))
    m = model(key)
    everything = ff.everything().select(m).names
    assert outcome(union(a, neg(a)), m) == ("ok", everything)
    assert outcome(inter(a, neg(a)), m) == ("ok", ())
    assert outcome(minus(a, a), m) == ("ok", ())
    got, negated = outcome(a, m), outcome(neg(a), m)
    if key in UNTIED:
        assert got[0] == negated[0] == "ok"
    if got[0] == negated[0] == "ok":
        assert set(got[1]).isdisjoint(negated[1])
        assert set(got[1]) | set(negated[1]) == set(everything)


@pytest.mark.parametrize("key", MODELS)
@LAW_SETTINGS
@given(data=st.data())
def test_idempotence_and_double_negation(key: str, data: st.DataObject) -> None:
    a = data.draw(expressions(key))
    same(union(a, a), a, key)
    same(inter(a, a), a, key)
    same(neg(neg(a)), a, key)
    same(union(a, ff.nothing()), a, key)
    same(inter(a, ff.everything()), a, key)
    same(union(a, ff.everything()), ff.everything(), key)
    same(inter(a, ff.nothing()), ff.nothing(), key)


@pytest.mark.parametrize("key", MODELS)
@LAW_SETTINGS
@given(data=st.data())
def test_difference_is_intersection_with_complement(key: str, data: st.DataObject) -> None:
    a, b = data.draw(expressions(key)), data.draw(expressions(key))
    same(minus(a, b), inter(a, neg(b)), key)


@pytest.mark.parametrize("key", MODELS)
@LAW_SETTINGS
@given(data=st.data())
def test_commutativity_and_associativity(key: str, data: st.DataObject) -> None:
    a, b, c = (data.draw(expressions(key)) for _ in range(3))
    same(union(a, b), union(b, a), key)
    same(inter(a, b), inter(b, a), key)
    same(union(union(a, b), c), union(a, union(b, c)), key)
    same(inter(inter(a, b), c), inter(a, inter(b, c)), key)
    same(union(a, b, c), union(union(a, b), c), key)
    same(inter(a, b, c), inter(inter(a, b), c), key)


@pytest.mark.parametrize("key", MODELS)
@LAW_SETTINGS
@given(data=st.data())
def test_distributivity(key: str, data: st.DataObject) -> None:
    a, b, c = (data.draw(expressions(key)) for _ in range(3))
    same(inter(a, union(b, c)), union(inter(a, b), inter(a, c)), key)
    same(union(a, inter(b, c)), inter(union(a, b), union(a, c)), key)


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
    # the oracle: set algebra on the names each leaf selects, computed here
    tree = data.draw(trees(key))
    m = model(key)
    order = tuple(n for n, _ in m.named_parameters())
    expected = ("ok", tuple(n for n in order if n in as_set(tree, m, frozenset(order))))
    assert outcome(build(tree, OPS), m) == expected
    assert outcome(build(tree, RAW), m) == expected


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
        order = tuple(n for n, _ in m.named_parameters())
        either = ("ok", tuple(n for n in order if n in ra[1] or n in rb[1]))
        both = ("ok", tuple(n for n in order if n in ra[1] and n in rb[1]))
        assert outcome(union(a, b), m) == outcome(a | b, m) == either
        assert outcome(inter(a, b), m) == outcome(a & b, m) == both


# --------------------------------------------------------------------------- tied cases


EMBED, HEAD = ff.name("embed"), ff.name("lm_head")
BLOCKS = ff.name("blocks")
TIED = ff.errors.TiedParameterError

# (label, left, right, what both sides give: the error type, or the names)
TIED_CASES: list[tuple[str, FreezePolicy, FreezePolicy, Any]] = [
    ("de_morgan_or", neg(union(EMBED, BLOCKS)), inter(neg(EMBED), neg(BLOCKS)), TIED),
    ("de_morgan_and", neg(inter(EMBED, ff.everything())), union(neg(EMBED), ff.nothing()), TIED),
    ("difference", minus(EMBED, HEAD), inter(EMBED, neg(HEAD)), TIED),
    ("difference_depth", minus(ff.first(1), ff.last(1)), inter(ff.first(1), neg(ff.last(1))), TIED),
    ("double_negation", neg(neg(minus(ff.everything(), HEAD))), minus(ff.everything(), HEAD), TIED),
    ("commutative", union(neg(HEAD), BLOCKS), union(BLOCKS, neg(HEAD)), TIED),
    (
        "associative",
        inter(inter(neg(HEAD), BLOCKS), EMBED),
        inter(neg(HEAD), inter(BLOCKS, EMBED)),
        (),
    ),
    (
        "associative_union",
        union(union(neg(HEAD), BLOCKS), EMBED),
        union(neg(HEAD), union(BLOCKS, EMBED)),
        "everything",
    ),
    ("de_morgan_all_names_kept", neg(inter(EMBED, HEAD)), union(neg(EMBED), neg(HEAD)), TIED),
    ("both_names", union(EMBED, HEAD), union(HEAD, EMBED), ("embed.weight",)),
    ("idempotent", inter(HEAD, HEAD), HEAD, ("embed.weight",)),
]


@pytest.mark.parametrize(
    ("label", "left", "right", "result"), TIED_CASES, ids=[c[0] for c in TIED_CASES]
)
def test_laws_on_tied_parameters_agree_on_errors(
    label: str, left: FreezePolicy, right: FreezePolicy, result: Any
) -> None:
    m = model("tiny_lm")
    if result == "everything":
        result = tuple(n for n, _ in m.named_parameters())
    expected = ("error", result) if result is TIED else ("ok", result)
    assert outcome(left, m) == outcome(right, m) == expected


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
def test_inconsistent_tied_selection_raises(policy: FreezePolicy) -> None:
    assert outcome(policy, model("tiny_lm")) == ("error", ff.errors.TiedParameterError)
    # the same expression on an untied copy of the model is fine
    untied = make_tiny_lm()
    untied.lm_head.weight = nn.Parameter(untied.embed.weight.detach().clone())
    assert outcome(policy, untied)[0] == "ok"
