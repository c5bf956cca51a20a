"""freezeflow.core.index: ModelIndex lists every name of every parameter, each name's module and
block; its blocks are found once per index and its caches are not dataclass fields."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest
from models import FACTORIES, TiedEmbedding
from torch import nn

import freezeflow as ff
from freezeflow.core import index as index_module
from freezeflow.core.index import ModelIndex
from freezeflow.errors import PolicyTypeError


@pytest.mark.parametrize("make", FACTORIES.values(), ids=FACTORIES.keys())
def test_aliases_and_parameters_are_inverse_maps(make: Callable[[], nn.Module]) -> None:
    model = make()
    idx = ModelIndex.build(model)
    named = list(model.named_parameters(remove_duplicate=False))
    assert idx.aliases == [n for n, _ in named]
    assert [id(p) for p in idx.params] == [id(p) for p in model.parameters()]
    for a, name in enumerate(idx.aliases):
        assert idx.params[idx.alias_param[a]] is dict(named)[name]
        assert a in idx.param_aliases[idx.alias_param[a]]
    assert sorted(a for aliases in idx.param_aliases for a in aliases) == list(
        range(len(idx.aliases))
    )
    assert idx.names == [idx.aliases[a[0]] for a in idx.param_aliases]


def test_a_tied_parameter_has_every_name_and_the_deepest_block() -> None:
    model = TiedEmbedding()
    idx = ModelIndex.build(model)
    (tied,) = [i for i, a in enumerate(idx.param_aliases) if len(a) > 1]
    assert {idx.aliases[a] for a in idx.param_aliases[tied]} == {"embed.weight", "out.weight"}
    by_alias = idx.block_of_alias()
    block_of_param = idx.block_of_param()
    for j, aliases in enumerate(idx.param_aliases):
        assert block_of_param[j] == max(by_alias[a] for a in aliases)
    assert block_of_param[tied] == len(idx.blocks) - 1 > by_alias[idx.param_aliases[tied][0]]


def test_a_name_outside_every_block_counts_as_the_last_block() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2), nn.Linear(2, 1))
    ff.set_blocks(model, ["0", "1"])  # "2" is in no block
    idx = ModelIndex.build(model)
    assert idx.block_of_alias()[-1] == -1
    assert idx.block_of_param() == [0, 0, 1, 1, 1, 1]


def test_blocks_are_found_once_per_index(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[nn.Module] = []
    real = index_module.find_blocks  # type: ignore[attr-defined]

    def counting(model: nn.Module) -> list[ff.core.Block]:
        calls.append(model)
        return real(model)

    monkeypatch.setattr(index_module, "find_blocks", counting)
    model = TiedEmbedding()
    idx = ModelIndex.build(model)
    assert calls == []  # found on first use, not when the index is built
    for policy in (ff.last(1), ff.first(1), ff.blocks(1, 2), ff.last(1) | ff.blocks(1, 2)):
        policy.select(model, index=idx)
    idx.block_of_param()
    assert calls == [model]
    assert ModelIndex.build(model).blocks  # a new index finds them again
    assert calls == [model, model]


def test_caches_are_not_dataclass_fields() -> None:
    assert not dataclasses.is_dataclass(ModelIndex)
    idx = ModelIndex.build(TiedEmbedding())
    idx.blocks, idx.layers, idx.block_of_alias()
    # the public state is what the index was built from; caches are set on first use
    assert {"model", "params", "aliases", "alias_param", "param_aliases", "modules"} <= set(
        vars(idx)
    )


def test_layers_are_the_modules_owning_parameters_directly() -> None:
    model = TiedEmbedding()
    idx = ModelIndex.build(model)
    assert idx.layers == ["embed", "mid", "out"]
    assert [idx.layers[i] for i in idx.layer_of_alias()] == [
        a.rpartition(".")[0] for a in idx.aliases
    ]


@pytest.mark.parametrize("bad", [[nn.Parameter()], {"w": 1}, None])
def test_a_non_module_is_refused_with_a_hint(bad: object) -> None:
    with pytest.raises(PolicyTypeError, match=r"(?s)expected a torch.nn.Module.*of type.*hint"):
        ModelIndex.build(bad)  # type: ignore[arg-type]
