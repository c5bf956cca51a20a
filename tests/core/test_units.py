"""freezeflow.core.units: the walk that finds a model's repeated units (which entries are
units, which stage an entry is in), and its cached facts against the plain definitions."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from models import FACTORIES
from torch import nn

from freezeflow.core.units import UNIT_OWNERS, Entry, _Facts, owners, walk


def unit(width: int = 4) -> nn.Module:
    """A unit: three parameter-owning layers."""
    return nn.Sequential(nn.Linear(width, width), nn.LayerNorm(width), nn.Linear(width, width))


class Other(nn.Module):
    """A unit of another type (EdgeNeXt's transposed-attention block after conv blocks)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 4)


def entries_of(model: nn.Module) -> dict[str, Entry]:
    found, _ = walk(model)
    return {"+".join(e.modules): e for e in found}


def test_units_of_several_types_in_one_container_are_each_a_unit() -> None:
    model = nn.Module()
    model.stem = nn.Linear(4, 4)
    model.blocks = nn.Sequential(unit(), Other(), unit())  # no type appears twice in a row
    model.head = nn.Linear(4, 2)
    got = entries_of(model)
    assert [k for k, e in got.items() if e.unit] == ["blocks.0", "blocks.1", "blocks.2"]
    assert not got["stem"].unit and not got["head"].unit


def test_a_module_named_stem_is_one_entry_whatever_it_holds() -> None:
    model = nn.Module()
    model.stem = nn.Sequential(*(nn.Conv2d(3, 3, 3) for _ in range(4)))  # repeated leaves
    model.layers = nn.ModuleList(unit() for _ in range(2))
    got = entries_of(model)
    assert "stem" in got and not got["stem"].unit
    assert not any(k.startswith("stem.") for k in got)


class Parallel(nn.Module):
    """Two branches side by side and the layer that fuses them (HRNet)."""

    def __init__(self) -> None:
        super().__init__()
        self.branches = nn.ModuleList(nn.Sequential(unit(), unit()) for _ in range(2))
        self.fuse_layers = nn.ModuleList([nn.Linear(4, 4)])


def test_a_module_of_parallel_branches_is_one_unit() -> None:
    model = nn.Module()
    model.stem = nn.Linear(4, 4)
    model.stage2 = nn.Sequential(Parallel())
    model.stage3 = nn.Sequential(Parallel(), Parallel())
    got = entries_of(model)
    units = [k for k, e in got.items() if e.unit]
    assert units == ["stage2.0", "stage3.0", "stage3.1"]


def test_one_shared_layer_in_a_module_list_is_a_unit() -> None:
    model = nn.Module()
    model.embeddings = nn.Embedding(10, 4)
    model.groups = nn.ModuleList([unit()])  # ALBERT: one layer applied N times
    model.pooler = nn.Linear(4, 4)
    got = entries_of(model)
    assert got["groups.0"].unit
    # one parameter-owning layer in a list is no unit: a list of one projection
    model.groups = nn.ModuleList([nn.Linear(4, 4)])
    assert not any(e.unit for e in entries_of(model).values())


def test_a_stages_entries_name_their_stage() -> None:
    stage = nn.Module()
    stage.downsample = nn.Conv2d(4, 4, 2)
    stage.blocks = nn.Sequential(unit(), unit())
    model = nn.Module()
    model.stages = nn.Sequential(stage, nn.Module())
    model.stages[1].downsample = nn.Conv2d(4, 4, 2)
    model.stages[1].blocks = nn.Sequential(unit(), unit())
    got = entries_of(model)
    assert got["stages.0.downsample"].stage == "stages.0"
    assert got["stages.1.blocks.1"].stage == "stages.1"
    assert not got["stages.1.downsample"].unit and got["stages.1.blocks.1"].unit


@pytest.mark.parametrize("make", FACTORIES.values(), ids=FACTORIES.keys())
def test_cached_facts_agree_with_the_definitions(make: Callable[[], nn.Module]) -> None:
    model = make()
    facts = _Facts(model)
    for m in model.modules():
        assert facts.owners(m) == owners(m)
        assert facts.unit_sized(m) == (owners(m) >= UNIT_OWNERS)
        trunk = any(facts.repeated(x) for x in m.modules())
        assert facts.trunk(m) == trunk


def test_a_pair_of_sub_blocks_recurring_in_a_list_is_one_unit() -> None:
    # DaVit: every unit is a (spatial, channel) pair; the pair is the unit, not each half
    model = nn.Module()
    model.stem = nn.Linear(4, 4)
    model.blocks = nn.Sequential(*(nn.Sequential(unit(), Other()) for _ in range(3)))
    units = [k for k, e in entries_of(model).items() if e.unit]
    assert units == ["blocks.0", "blocks.1", "blocks.2"]
    # the same two types once, as a stage of a bottleneck and an attention block: two units
    model.blocks = nn.Sequential(nn.Sequential(unit(), unit()), nn.Sequential(unit(), Other()))
    units = [k for k, e in entries_of(model).items() if e.unit]
    assert units == ["blocks.0.0", "blocks.0.1", "blocks.1.0", "blocks.1.1"]


def test_a_recurring_pair_holding_units_of_its_own_is_a_stage() -> None:
    # MobileViT: every stage is a bottleneck and a MobileViT block, which holds transformer
    # layers: the stage is walked into, not taken as one unit
    def mobilevit_block() -> nn.Module:
        block = nn.Module()
        block.conv_kxk = nn.Conv2d(4, 4, 3)
        block.conv_1x1 = nn.Conv2d(4, 4, 1)
        block.transformer = nn.Sequential(unit(), unit())
        block.conv_proj = nn.Conv2d(4, 4, 1)
        return block

    model = nn.Module()
    model.stem = nn.Conv2d(3, 4, 3)
    model.stages = nn.Sequential(*(nn.Sequential(Other(), mobilevit_block()) for _ in range(2)))
    units = [k for k, e in entries_of(model).items() if e.unit]
    assert "stages.0" not in units and "stages.0.1.transformer.1" in units


def test_a_stage_with_a_single_unit_is_not_walked_into_for_its_sibling() -> None:
    # HGNet's last stage holds one block (a list of conv-norm layers and an aggregation)
    def block() -> nn.Module:
        b = nn.Module()
        b.layers = nn.ModuleList(
            nn.Sequential(nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4)) for _ in range(4)
        )
        b.aggregation = nn.Conv2d(16, 4, 1)
        return b

    def stage(n: int) -> nn.Module:
        s = nn.Module()
        s.downsample = nn.Conv2d(4, 4, 2)
        s.blocks = nn.Sequential(*(block() for _ in range(n)))
        return s

    model = nn.Module()
    model.stages = nn.Sequential(stage(2), stage(1))
    units = [k for k, e in entries_of(model).items() if e.unit]
    assert units[-1] == "stages.1"
    assert "stages.0.blocks.1" in units and not any(".layers." in k for k in units)
