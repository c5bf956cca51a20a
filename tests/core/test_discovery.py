"""Block discovery (find_blocks, on toy, torchvision and timm models), overrides (set_blocks /
clear_blocks) and norm detection (freezeflow.core.discovery)."""

from __future__ import annotations

import pytest
import torchvision
from models import RESNET18_BLOCKS, make_mlp, make_nested, make_small_cnn, make_tiny_lm
from torch import nn

import freezeflow as ff


class VGGish(nn.Module):
    """A ``features`` Sequential of four convs (repeated leaves) and a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(),
            nn.Conv2d(4, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(),
        )  # fmt: skip
        self.classifier = nn.Linear(4, 2)


class Trunk(nn.Module):
    """A trunk (an embedding, repeated layers deep inside, a final norm) and a head."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Module()
        self.backbone.embed = nn.Linear(3, 4)
        self.backbone.encoder = nn.Module()
        self.backbone.encoder.layer = nn.ModuleList(
            nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)) for _ in range(3)
        )
        self.backbone.norm = nn.LayerNorm(4)
        self.head = nn.Linear(4, 2)


class TwoHeads(nn.Module):
    """Layers, then a pooler and a classifier of one type, or two heads (``head`` and
    ``head_dist``, LeViT's distillation head)."""

    def __init__(self, *tail: str) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 4)) for _ in range(2)
        )
        for name in tail:
            self.add_module(name, nn.Linear(4, 4))


def block_names(model: nn.Module) -> list[str]:
    return [b.name for b in ff.find_blocks(model)]


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (make_mlp, ["fc1", "fc2", "fc3"]),
        (make_small_cnn, ["stem", "conv+bn", "head"]),
        (make_tiny_lm, ["embed", "blocks.0", "blocks.1+ln_f", "lm_head"]),
        (
            make_nested,
            ["inp", "stages.0.0", "stages.0.1", "stages.1.0", "stages.1.1", "out"],
        ),
        (VGGish, ["features.0", "features.2", "features.4", "features.6", "classifier"]),
        (
            Trunk,
            [
                "backbone.embed",
                "backbone.encoder.layer.0",
                "backbone.encoder.layer.1",
                "backbone.encoder.layer.2+backbone.norm",
                "head",
            ],
        ),
        (lambda: nn.Linear(3, 2), ["<root>"]),
        (lambda: TwoHeads("pooler", "classifier"), ["layers.0", "layers.1+pooler", "classifier"]),
        (lambda: TwoHeads("head", "head_dist"), ["layers.0", "layers.1", "head+head_dist"]),
    ],
    ids=[
        "mlp",
        "cnn",
        "tiny_lm",
        "nested_modulelists",
        "vggish",
        "trunk",
        "bare_linear",
        "pooler_then_head",
        "two_heads",
    ],
)
def test_toy_blocks(make: type[nn.Module], expected: list[str]) -> None:
    assert block_names(make()) == expected


def test_resnet18_blocks() -> None:
    model = torchvision.models.resnet18(weights=None)
    blocks = ff.find_blocks(model)
    assert tuple(b.name for b in blocks) == RESNET18_BLOCKS
    assert blocks[0].modules == ("conv1", "bn1")
    assert blocks[0].params == ()


def test_vit_b_16_blocks() -> None:
    model = torchvision.models.vit_b_16(weights=None)
    blocks = ff.find_blocks(model)
    expected = [
        "conv_proj",
        *(f"encoder.layers.encoder_layer_{i}" for i in range(11)),
        "encoder.layers.encoder_layer_11+encoder.ln",
        "heads",
    ]
    assert [b.name for b in blocks] == expected
    assert blocks[0].modules == ("conv_proj",)
    assert set(blocks[0].params) == {"class_token", "encoder.pos_embedding"}
    assert all(b.params == () for b in blocks[1:])
    # the loose parameters go with the patch embedding when selecting by depth
    assert ff.first(1).select(model).names == (
        "class_token",
        "conv_proj.weight",
        "conv_proj.bias",
        "encoder.pos_embedding",
    )
    # the final norm goes with the last layer: the backbone's last two blocks are its last
    # two layers
    last2 = ff.last(2, among=~ff.name("heads")).select(model).names
    assert {n.split(".")[2] for n in last2 if n.startswith("encoder.layers.")} == {
        "encoder_layer_10",
        "encoder_layer_11",
    }
    assert last2[-2:] == ("encoder.ln.weight", "encoder.ln.bias")


@pytest.mark.parametrize(
    ("arch", "expected"),
    [
        (
            "vit_tiny_patch16_224",
            ["patch_embed", *(f"blocks.{i}" for i in range(11)), "blocks.11+norm", "head"],
        ),
        ("resnet18", list(RESNET18_BLOCKS)),
    ],
)
def test_timm_blocks(arch: str, expected: list[str]) -> None:
    # timm is in the test dependencies; the guard skips only where it is not installed
    timm = pytest.importorskip("timm")
    model = timm.create_model(arch, pretrained=False)
    blocks = ff.find_blocks(model)
    assert [b.name for b in blocks] == expected
    if arch.startswith("vit"):
        # the loose class token and position embedding go with the patch embedding
        assert set(blocks[0].params) == {"cls_token", "pos_embed"}
    head = tuple(n for n, _ in model.named_parameters() if n.startswith(expected[-1] + "."))
    assert head
    assert ff.last(1).select(model).names == head


@pytest.mark.parametrize(
    "make",
    [make_mlp, make_small_cnn, make_tiny_lm, make_nested, VGGish, Trunk],
    ids=["mlp", "cnn", "tiny_lm", "nested", "vggish", "trunk"],
)
def test_blocks_partition_every_parameter_name(make: type[nn.Module]) -> None:
    model = make()
    blocks = ff.find_blocks(model)
    for name, _ in model.named_parameters(remove_duplicate=False):
        covering = [b.name for b in blocks if b.covers(name)]
        assert len(covering) == 1, (name, covering)
    # one block at a time, the depth policies reach every parameter (a tied one from each
    # block that holds one of its names)
    n = len(blocks)
    per_block = [ff.blocks(i, i + 1).select(model).names for i in range(n)]
    assert set().union(*per_block) == set(ff.everything().select(model).names)
    assert ff.first(n).select(model).names == ff.everything().select(model).names


def test_set_blocks_overrides_and_clear_blocks_restores(mlp: nn.Module) -> None:
    ff.set_blocks(mlp, ["fc1", ["fc2", "fc3"]])
    assert block_names(mlp) == ["fc1", "fc2+fc3"]
    assert ff.last(1).select(mlp).names == ("fc2.weight", "fc2.bias", "fc3.weight", "fc3.bias")
    assert ff.first(1).select(mlp).names == ("fc1.weight", "fc1.bias")
    with pytest.raises(ff.PolicyError):
        ff.blocks(2).select(mlp)  # only two blocks now
    # the override belongs to this model only
    assert block_names(make_mlp()) == ["fc1", "fc2", "fc3"]
    ff.core.clear_blocks(mlp)
    assert block_names(mlp) == ["fc1", "fc2", "fc3"]
    assert ff.last(1).select(mlp).names == ("fc3.weight", "fc3.bias")
    ff.core.clear_blocks(mlp)  # clearing twice is harmless
    assert block_names(mlp) == ["fc1", "fc2", "fc3"]


def test_set_blocks_with_loose_parameters_and_partial_cover(tiny_lm: nn.Module) -> None:
    ff.set_blocks(tiny_lm, [["pos", "embed"], "blocks", ["ln_f", "lm_head"]])
    blocks = ff.find_blocks(tiny_lm)
    assert [b.name for b in blocks] == ["pos+embed", "blocks", "ln_f+lm_head"]
    assert blocks[0].params == ("pos",)
    assert blocks[0].modules == ("embed",)
    assert ff.first(1).select(tiny_lm).names == ("pos", "embed.weight")
    # the tied weight is in the first and the last block: last(1) selects it too
    assert ff.last(1).select(tiny_lm).names == ("embed.weight", "ln_f.weight", "ln_f.bias")
    # a block list that leaves parameters out: they are in no block
    ff.set_blocks(tiny_lm, ["blocks.0", "blocks.1"])
    everything_in_blocks = ff.blocks().select(tiny_lm).names
    assert all(n.startswith("blocks.") for n in everything_in_blocks)
    assert len(everything_in_blocks) == 24


def test_set_blocks_rejects_unknown_names_and_keeps_the_old_blocks(mlp: nn.Module) -> None:
    ff.set_blocks(mlp, [["fc1", "fc2"], "fc3"])
    with pytest.raises(ff.PolicyError) as info:
        ff.set_blocks(mlp, ["fc1", "fc4"])
    assert "'fc4'" in str(info.value)
    assert isinstance(info.value, ValueError)
    assert block_names(mlp) == ["fc1+fc2", "fc3"]
    with pytest.raises(ff.PolicyError):
        ff.set_blocks(mlp, [])
    assert block_names(mlp) == ["fc1+fc2", "fc3"]


@pytest.mark.parametrize(
    ("module", "expected"),
    [
        (nn.BatchNorm1d(3), True),
        (nn.BatchNorm2d(3), True),
        (nn.BatchNorm2d(3, affine=False), True),
        (nn.SyncBatchNorm(3), True),
        (nn.InstanceNorm2d(3), True),
        (nn.LayerNorm(3), True),
        (nn.GroupNorm(1, 3), True),
        (nn.LocalResponseNorm(2), True),
        (torchvision.ops.FrozenBatchNorm2d(3), True),
        (type("LayerNorm2d", (nn.Module,), {})(), True),
        (type("MyRMSNorm", (nn.Module,), {})(), True),
        (nn.Linear(2, 2), False),
        (nn.Conv2d(2, 2, 1), False),
        (nn.Dropout(), False),
        (nn.Embedding(3, 2), False),
        (type("Normalizer", (nn.Module,), {})(), False),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, nn.Module) else str(v),
)
def test_is_norm_layer(module: nn.Module, expected: bool) -> None:
    assert ff.core.is_norm_layer(module) is expected


def test_norm_merges_only_into_a_single_preceding_layer() -> None:
    # a norm after a composite block stays its own block; after a norm it stays too
    net = nn.Sequential()
    net.add_module("conv", nn.Conv2d(3, 4, 1))
    net.add_module("bn", nn.BatchNorm2d(4))
    net.add_module("bn_again", nn.BatchNorm2d(4))
    net.add_module("body", nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4)))
    net.add_module("ln", nn.LayerNorm(4))
    assert block_names(net) == ["conv+bn", "bn_again", "body", "ln"]
