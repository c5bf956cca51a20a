"""Selection (freezeflow.core.selection): an ordered, immutable mapping from primary names to
the model's own parameters; membership of a tensor is by identity, of a name by any alias."""

from __future__ import annotations

import copy
import pickle
from collections.abc import Mapping

import pytest
import torch
from models import MLP, SmallCNN, TinyLM, make_mlp
from torch import nn

import freezeflow as ff
from freezeflow.core.selection import Selection

# --------------------------------------------------------------------------- identity


def test_membership_is_by_identity_not_value(mlp: MLP) -> None:
    sel = ff.name("fc1").select(mlp)
    assert mlp.fc1.weight in sel
    assert mlp.fc1.bias in sel
    assert mlp.fc2.weight not in sel
    # equal values, different tensors: not members
    assert nn.Parameter(mlp.fc1.weight.detach().clone()) not in sel
    twin = make_mlp()
    assert torch.equal(twin.fc1.weight, mlp.fc1.weight)
    assert twin.fc1.weight not in sel
    # a plain tensor that aliases the storage is not the parameter either
    assert mlp.fc1.weight.data not in sel
    # string membership is by name
    assert "fc1.weight" in sel
    assert "fc2.weight" not in sel
    assert 3 not in sel  # type: ignore[comparison-overlap]


def test_selection_params_are_the_model_parameters(cnn: SmallCNN) -> None:
    sel = ff.name("conv", "head").select(cnn)
    assert sel.params == (cnn.conv.weight, cnn.conv.bias, cnn.head.weight, cnn.head.bias)
    assert all(a is b for a, b in zip(sel.params, [cnn.conv.weight, cnn.conv.bias]))
    assert sel["head.bias"] is cnn.head.bias
    assert dict(sel.items())["conv.weight"] is cnn.conv.weight
    with pytest.raises(KeyError):
        sel["stem.0.weight"]


# --------------------------------------------------------------------------- mapping


def test_len_iter_and_getitem_follow_model_order(cnn: SmallCNN) -> None:
    # asked for head first, listed as the model lists them
    sel = ff.name("head", "stem.0").select(cnn)
    model_order = [n for n, _ in cnn.named_parameters()]
    expected = ["stem.0.weight", "stem.0.bias", "head.weight", "head.bias"]
    assert [n for n in model_order if n in expected] == expected
    assert len(sel) == 4
    assert list(sel) == expected
    assert list(sel.keys()) == expected
    assert sel.names == tuple(expected)
    params = dict(cnn.named_parameters())
    assert [sel[n] for n in sel] == [params[n] for n in expected]
    assert all(a is b for a, b in zip(sel.values(), (params[n] for n in expected)))
    assert all(p is params[n] for n, p in sel.items())
    assert sel.get("conv.weight") is None
    assert sel.get("head.bias") is cnn.head.bias
    assert isinstance(sel, Mapping)


@pytest.mark.parametrize("key", ["stem.0", "head", "", "head.bias.x", 3, None])
def test_getitem_of_anything_but_a_selected_name_is_a_key_error(cnn: SmallCNN, key: object) -> None:
    sel = ff.name("head").select(cnn)
    with pytest.raises(KeyError):
        sel[key]  # type: ignore[index]


def test_an_empty_selection_is_empty(mlp: MLP) -> None:
    sel = ff.nothing().select(mlp, allow_empty=True)
    assert len(sel) == 0
    assert list(sel) == []
    assert sel.names == ()
    assert sel.params == ()
    assert sel.aliases() == {}
    assert sel.total == 6
    assert not sel
    assert mlp.fc1.weight not in sel


def test_numel_and_total_count_unique_parameters(cnn: SmallCNN) -> None:
    sel = ff.name("conv", "bn").select(cnn)
    assert sel.numel == 8 * 16 * 3 * 3 + 16 + 16 + 16
    assert sel.total == len(list(cnn.parameters())) == 10


def test_repr_names_the_model_and_the_first_names(cnn: SmallCNN) -> None:
    assert repr(ff.name("head").select(cnn)) == (
        "Selection(2 of 10 parameters of SmallCNN, 85 values: ['head.weight', 'head.bias'])"
    )
    many = ff.everything().select(cnn)
    assert repr(many).endswith(
        "['stem.0.weight', 'stem.0.bias', 'stem.1.weight', 'stem.1.bias', ... (+6)])"
    )


# --------------------------------------------------------------------------- immutability


def test_a_selection_cannot_be_changed(mlp: MLP) -> None:
    sel = ff.name("fc1").select(mlp)
    with pytest.raises(TypeError):
        sel["fc2.weight"] = mlp.fc2.weight  # type: ignore[index]
    with pytest.raises(TypeError):
        del sel["fc1.weight"]  # type: ignore[attr-defined]
    with pytest.raises(AttributeError):
        sel.names = ("fc2.weight",)  # type: ignore[misc]
    with pytest.raises(AttributeError):
        sel.params = ()  # type: ignore[misc]
    with pytest.raises(AttributeError):
        sel.extra = 1  # type: ignore[attr-defined]
    assert isinstance(sel.names, tuple)
    assert isinstance(sel.params, tuple)
    assert sel.names == ("fc1.weight", "fc1.bias")


def test_changing_the_lists_it_was_built_from_changes_nothing(mlp: MLP) -> None:
    names = ["fc1.weight"]
    params = [p for n, p in mlp.named_parameters() if n == "fc1.weight"]
    aliases: list[tuple[str, ...]] = [("fc1.weight",)]
    sel = Selection(names, params, aliases, model_name="MLP", total=6)
    names.append("fc2.weight")
    params[0] = mlp.get_parameter("fc2.weight")
    aliases.clear()
    assert sel.names == ("fc1.weight",)
    assert sel.params[0] is mlp.fc1.weight
    assert mlp.fc1.weight in sel
    assert mlp.fc2.weight not in sel
    assert sel["fc1.weight"] is mlp.fc1.weight
    assert sel.aliases() == {"fc1.weight": ("fc1.weight",)}


def test_aliases_returns_a_copy(tiny_lm: TinyLM) -> None:
    sel = ff.name("embed").select(tiny_lm)
    sel.aliases()["embed.weight"] = ("x",)
    assert sel.aliases("embed.weight") == ("embed.weight", "lm_head.weight")


# --------------------------------------------------------------------------- tied parameters


def test_a_tied_parameter_is_one_entry_with_every_name(tiny_lm: TinyLM) -> None:
    assert tiny_lm.lm_head.weight is tiny_lm.embed.weight
    sel = ff.everything().select(tiny_lm)
    both = ("embed.weight", "lm_head.weight")
    # one entry, under its primary name (the first name named_parameters gives it)
    assert sel.names.count("embed.weight") == 1
    assert "lm_head.weight" not in list(sel)
    assert sum(p is tiny_lm.embed.weight for p in sel.params) == 1
    # every name finds it
    assert "lm_head.weight" in sel
    assert sel["lm_head.weight"] is sel["embed.weight"] is tiny_lm.embed.weight
    assert sel.aliases("lm_head.weight") == sel.aliases("embed.weight") == both
    # aliases() lists every selected parameter; only the tied one has two names
    every = sel.aliases()
    assert list(every) == list(sel.names)
    assert {n: a for n, a in every.items() if len(a) > 1} == {"embed.weight": both}
    assert all(a == (n,) for n, a in every.items() if n != "embed.weight")
    with pytest.raises(KeyError):
        sel.aliases("no_such.weight")


def test_a_selection_without_the_tied_parameter_knows_none_of_its_names(
    tiny_lm: TinyLM,
) -> None:
    sel = ff.name("blocks").select(tiny_lm)
    assert tiny_lm.embed.weight not in sel
    assert "embed.weight" not in sel
    assert "lm_head.weight" not in sel
    with pytest.raises(KeyError):
        sel.aliases("lm_head.weight")
    with pytest.raises(KeyError):
        sel["lm_head.weight"]


# --------------------------------------------------------------------------- equality, copies


def test_selections_are_equal_when_they_hold_the_same_parameters(mlp: MLP) -> None:
    a = ff.name("fc1").select(mlp)
    assert a == ff.name("fc1.weight", "fc1.bias").select(mlp)
    assert a == {"fc1.weight": mlp.fc1.weight, "fc1.bias": mlp.fc1.bias}
    assert a != ff.name("fc2").select(mlp)
    assert a != ff.name("fc1.weight").select(mlp)
    # the same names on an identical twin are other parameters: not equal (and no error
    # from comparing tensors by value)
    twin = ff.name("fc1").select(make_mlp())
    assert a != twin
    assert (a == twin) is False
    assert a != {"fc1.weight": twin["fc1.weight"], "fc1.bias": twin["fc1.bias"]}
    assert a != ["fc1.weight", "fc1.bias"]


def test_selections_are_not_hashable(mlp: MLP) -> None:
    with pytest.raises(TypeError):
        hash(ff.name("fc1").select(mlp))


@pytest.mark.parametrize(
    "clone", [copy.deepcopy, lambda s: pickle.loads(pickle.dumps(s))], ids=["deepcopy", "pickle"]
)
def test_a_copied_selection_holds_copies(mlp: MLP, clone: object) -> None:
    sel = ff.name("fc1").select(mlp)
    back = clone(sel)  # type: ignore[operator]
    assert isinstance(back, Selection)
    assert back.names == sel.names
    assert all(torch.equal(a, b) and a is not b for a, b in zip(back.params, sel.params))
    assert mlp.fc1.weight not in back
    assert repr(back) == repr(sel)
