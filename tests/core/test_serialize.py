"""Policies as plain data (freezeflow.core.serialize): the written form of every kind of
policy, the round trip (directly, through JSON, and as a stage of a YAML schedule), and bad
data refused with a PolicyError that names where it is."""

from __future__ import annotations

import json
from typing import Any

import pytest
from torch import nn

import freezeflow as ff
from freezeflow.core.policy import FreezePolicy
from freezeflow.core.serialize import policy_from_data, policy_to_data

# (id, policy, its data)
FORMS: list[tuple[str, FreezePolicy, Any]] = [
    ("name", ff.name("fc"), "fc"),
    ("names", ff.name("layer4", "fc"), ["layer4", "fc"]),
    ("name-glob-lenient", ff.name("layer*", strict=False), {"name": "layer*", "strict": False}),
    ("name-keyword", ff.name("everything"), {"name": "everything"}),
    ("name-norm-keyword", ff.name("norm_layers"), {"name": "norm_layers"}),
    ("regex", ff.regex(r"layer[34]\..*"), {"regex": r"layer[34]\..*"}),
    ("regex-lenient", ff.regex(r"x.*", strict=False), {"regex": "x.*", "strict": False}),
    ("of_type", ff.of_type(nn.Linear), {"type": "torch.nn.modules.linear.Linear"}),
    (
        "of_type-several",
        ff.of_type(nn.Linear, nn.Conv2d),
        {"type": ["torch.nn.modules.linear.Linear", "torch.nn.modules.conv.Conv2d"]},
    ),
    ("norm_layers", ff.norm_layers(), "norm_layers"),
    ("everything", ff.everything(), "everything"),
    ("nothing", ff.nothing(), "nothing"),
    ("blocks", ff.blocks(1, 3), {"blocks": [1, 3]}),
    (
        "blocks-among",
        ff.blocks(-3, -1, among=~ff.name("fc")),
        {"blocks": [-3, -1], "among": {"not": "fc"}},
    ),
    ("first", ff.first(2), {"blocks": [None, 2]}),
    (
        "last-among",
        ff.last(2, among=~ff.name("fc")),
        {"blocks": [-2, None], "among": {"not": "fc"}},
    ),
    ("layers", ff.layers(2, 5), {"layers": [2, 5]}),
    (
        "layers-among",
        ff.layers(-10, among=~ff.name("fc")),
        {"layers": [-10, None], "among": {"not": "fc"}},
    ),
    ("or", ff.name("a") | ff.regex("b.*"), {"or": ["a", {"regex": "b.*"}]}),
    (
        "or-three",
        ff.name("a") | ff.name("b") | ff.of_type(nn.Linear),
        {"or": ["a", "b", {"type": "torch.nn.modules.linear.Linear"}]},
    ),
    ("and", ff.name("layer4") & ff.norm_layers(), {"and": ["layer4", "norm_layers"]}),
    ("minus", ff.last(2) - ff.norm_layers(), {"minus": [{"blocks": [-2, None]}, "norm_layers"]}),
    ("not", ~ff.name("fc"), {"not": "fc"}),
    (
        "nested",
        (ff.last(2) - ff.norm_layers()) | (ff.of_type(nn.Linear) & ~ff.name("fc")),
        {
            "or": [
                {"minus": [{"blocks": [-2, None]}, "norm_layers"]},
                {"and": [{"type": "torch.nn.modules.linear.Linear"}, {"not": "fc"}]},
            ]
        },
    ),
]


def _plain(x: Any) -> bool:
    """Only dicts with string keys, lists, str, int, float, bool and None."""
    if isinstance(x, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in x.items())
    if isinstance(x, list):
        return all(_plain(v) for v in x)
    return x is None or isinstance(x, (str, int, float, bool))


@pytest.mark.parametrize(("policy", "data"), [f[1:] for f in FORMS], ids=[f[0] for f in FORMS])
def test_every_kind_of_policy_is_written_as_plain_data(policy: FreezePolicy, data: Any) -> None:
    assert policy_to_data(policy) == data
    assert _plain(data)


@pytest.mark.parametrize("policy", [f[1] for f in FORMS], ids=[f[0] for f in FORMS])
def test_every_kind_of_policy_round_trips(policy: FreezePolicy) -> None:
    data = policy_to_data(policy)
    assert policy_from_data(data) == policy
    assert policy_from_data(json.loads(json.dumps(data))) == policy
    # and inside a schedule, through YAML text
    sched = ff.Schedule(
        [
            ff.Stage("fc", lr=1e-3, weight_decay=0.05, name="head"),
            ff.Stage(policy, lr=2.5e-5, start=ff.on_plateau(3, 0.01, mode="max", max_epoch=7)),
            ff.Stage(policy, lr=1e-6, start=ff.at_fraction(0.8), exclusive=True),
        ]
    )
    assert ff.Schedule.from_dict(sched.to_dict()) == sched
    back = ff.Schedule.from_yaml(sched.to_yaml())
    assert back == sched
    assert back[1].trainable == back[2].trainable == policy


# hand-written forms that policy_to_data never writes but that read as expected
READ_ONLY: list[tuple[str, Any, FreezePolicy]] = [
    ("first", {"first": 2}, ff.first(2)),
    ("last-among", {"last": 1, "among": "norm_layers"}, ff.last(1, among=ff.norm_layers())),
    ("name-list-mapping", {"name": ["a", "b"]}, ff.name("a", "b")),
    ("strict-true", {"regex": "a.*", "strict": True}, ff.regex("a.*")),
    ("type-by-public-path", {"type": "torch.nn.Linear"}, ff.of_type(nn.Linear)),
    ("or-of-one", {"or": ["a"]}, ff.name("a")),
    ("and-of-three", {"and": ["a", "b", "c"]}, ff.name("a") & ff.name("b") & ff.name("c")),
    # in YAML a mapping's keys come in any order: the kind of policy need not be first
    ("among-first", {"among": {"not": "fc"}, "last": 2}, ff.last(2, among=~ff.name("fc"))),
    ("strict-first", {"strict": False, "name": "x"}, ff.name("x", strict=False)),
]


@pytest.mark.parametrize(
    ("data", "policy"), [r[1:] for r in READ_ONLY], ids=[r[0] for r in READ_ONLY]
)
def test_hand_written_forms_read_back(data: Any, policy: FreezePolicy) -> None:
    assert policy_from_data(data) == policy


WHERE = ff.where(lambda n, p, m: p.ndim > 1, label="matrices")


@pytest.mark.parametrize(
    "policy",
    [WHERE, WHERE | ff.name("fc"), ~WHERE, ff.last(2, among=WHERE)],
    ids=["where", "where-or", "not-where", "among-where"],
)
def test_where_refuses_to_serialise(policy: FreezePolicy) -> None:
    with pytest.raises(ff.PolicyError, match=r"matrices.*cannot be written as data.*where\(\)"):
        policy_to_data(policy)
    sched = ff.Schedule([ff.Stage("fc", lr=1e-3), ff.Stage(policy, lr=1e-4, start=1)])
    with pytest.raises(ff.PolicyError, match=r"matrices.*cannot be written as data.*where\(\)"):
        sched.to_dict()
    with pytest.raises(ff.PolicyError, match="cannot be written as data"):
        sched.to_yaml()


# (id, data, regex the PolicyError message must match: where, and what was wrong)
BAD_DATA: list[tuple[str, Any, str]] = [
    ("number", 3, r"^policy: 3 is not a policy; expected a name"),
    ("empty-list", [], r"^policy: \[\] is not a policy"),
    ("mixed-list", ["a", 1], r"^policy: \['a', 1\] is not a policy"),
    ("empty-mapping", {}, r"^policy: \{\} is not a policy"),
    ("unknown-key", {"names": "fc"}, r"^policy: \{'names': 'fc'\} is not a policy"),
    ("unknown-option", {"name": "fc", "among": "x"}, r"^policy: unknown option 'among' for 'name'"),
    ("regex-option", {"regex": "a", "mode": 1}, r"unknown option 'mode' for 'regex'"),
    ("type-option", {"type": "torch.nn.Linear", "strict": True}, r"unknown option 'strict'"),
    ("type-missing", {"type": "torch.nn.NotAModule"}, r"^policy\.type: cannot import .*NotAModule"),
    ("type-not-module", {"type": "torch.Tensor"}, r"^policy\.type: 'torch\.Tensor' is not an nn"),
    ("type-no-dot", {"type": "Linear"}, r"cannot import module type 'Linear'"),
    ("blocks-one-number", {"blocks": 2}, r"^policy\.blocks: expected \[start, stop\], got 2"),
    ("layers-three", {"layers": [1, 2, 3]}, r"^policy\.layers: expected \[start, stop\]"),
    ("or-not-list", {"or": "a"}, r"^policy\.or: expected a non-empty list of policies, got 'a'"),
    ("and-empty", {"and": []}, r"^policy\.and: expected a non-empty list"),
    ("minus-three", {"minus": ["a", "b", "c"]}, r"^policy\.minus: expected \[policy, policy_to_"),
    ("nested-path", {"or": ["a", {"not": 5}]}, r"^policy\.or\[1\]\.not: 5 is not a policy"),
    ("among-path", {"last": 1, "among": {"x": 1}}, r"^policy\.among: \{'x': 1\} is not a policy"),
    ("or-option", {"or": ["a"], "strict": False}, r"unknown option 'strict' for 'or'"),
    ("strict-not-bool", {"name": "fc", "strict": "no"}, r"^policy\.strict: expected true or fa"),
    ("strict-number", {"regex": "fc", "strict": 0}, r"^policy\.strict: expected true or false"),
    ("two-kinds", {"name": "fc", "regex": "fc"}, r"^policy: unknown option 'regex' for 'name'"),
]


@pytest.mark.parametrize(("data", "match"), [b[1:] for b in BAD_DATA], ids=[b[0] for b in BAD_DATA])
def test_bad_data_is_a_policy_error_naming_where(data: Any, match: str) -> None:
    with pytest.raises(ff.PolicyError, match=match) as info:
        policy_from_data(data)
    assert isinstance(info.value, ValueError)


def test_where_prefix_is_the_callers() -> None:
    with pytest.raises(ff.PolicyError, match=r"^stage 2\.trainable\.not: 5 is not a policy"):
        policy_from_data({"not": 5}, "stage 2.trainable")
