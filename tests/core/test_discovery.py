"""Block discovery (find_blocks, on toy, torchvision and timm models), overrides (set_blocks /
clear_blocks) and norm detection (freezeflow.core.discovery)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torchvision
from models import RESNET18_BLOCKS, make_mlp, make_nested, make_small_cnn, make_tiny_lm
from torch import nn

import freezeflow as ff
from freezeflow.core.meta import on_meta_device


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


def _adaptive_norm() -> nn.Module:
    """Named like a norm, but a Linear in it predicts the scale (diffusers' AdaLayerNorm)."""
    cls: type[nn.Module] = type("AdaLayerNorm", (nn.Module,), {})
    m = cls()
    m.linear, m.norm, m.drop = nn.Linear(4, 8), nn.LayerNorm(4), nn.Dropout()
    return m


def _norm_of_norms() -> nn.Module:
    """Named like a norm, holding only norms and parameter-free modules."""
    cls: type[nn.Module] = type("SplitBatchNorm", (nn.Module,), {})
    m = cls()
    m.a, m.b, m.act = nn.BatchNorm2d(3), nn.GroupNorm(1, 3), nn.ReLU()
    return m


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
        (_adaptive_norm(), False),
        (_norm_of_norms(), True),
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


# --------------------------------------------------------------------------- the families
# Each family of architectures a rule exists for, built on the meta device (no memory, no
# initialisation), checked by invariants: which modules share a block, what the head holds.


def meta(build: Callable[[], nn.Module]) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with on_meta_device():
            return build()


def timm_model(name: str, **kwargs: Any) -> nn.Module:
    timm = pytest.importorskip("timm")
    return meta(lambda: timm.create_model(name, **kwargs))


def hf_model(cls: str, config: str, **kwargs: Any) -> nn.Module:
    tr = pytest.importorskip("transformers")
    small = {"hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 37, **kwargs}
    cfg = getattr(tr, config)(**small)
    return meta(lambda: getattr(tr, cls)(cfg))


def block_holding(model: nn.Module, name: str) -> int:
    (b,) = [i for i, block in enumerate(ff.find_blocks(model)) if block.covers(name)]
    return b


def params_under(model: nn.Module, *paths: str) -> list[str]:
    return [n for n, _ in model.named_parameters() if any(n.startswith(p + ".") for p in paths)]


@pytest.mark.parametrize(
    ("arch", "stage"),
    [("edgenext_xx_small", "stages.3.blocks"), ("efficientformer_l1", "stages.3.blocks")],
)
def test_units_of_several_types_are_a_block_each(arch: str, stage: str) -> None:
    # EdgeNeXt ends a stage with a transposed-attention block after its conv blocks;
    # EfficientFormer with 1d blocks after 2d ones (and a parameter-free Flat between)
    model = timm_model(arch)
    container = model.get_submodule(stage)
    units = [
        f"{stage}.{n}"
        for n, c in container.named_children()
        if next(c.parameters(), None) is not None
    ]
    assert len({type(model.get_submodule(u)) for u in units}) == 2
    blocks = [block_holding(model, params_under(model, u)[0]) for u in units]
    assert blocks == list(range(blocks[0], blocks[0] + len(units)))  # one each, in order
    head = ff.find_blocks(model)[-1]
    last2 = ff.last(2, among=~ff.name(*head.modules)).select(model).names
    assert {n for n in last2 if n.startswith(stage)} == set(params_under(model, *units[-2:]))


def test_a_mixed_stage_of_two_unit_types_is_walked_into() -> None:
    model = timm_model("botnet26t_256")  # stages.2: a bottleneck, then a self-attention block
    names = [b.name for b in ff.find_blocks(model)]
    assert "stages.2.0" in names and "stages.2.1" in names and "stages.2" not in names


@pytest.mark.parametrize(
    ("cls", "config", "new"),
    [
        (
            "DistilBertForSequenceClassification",
            "DistilBertConfig",
            ("pre_classifier", "classifier"),
        ),
        (
            "DeiTForImageClassificationWithTeacher",
            "DeiTConfig",
            ("cls_classifier", "distillation_classifier"),
        ),
        ("BertForSequenceClassification", "BertConfig", ("classifier",)),
    ],
)
def test_the_head_block_holds_every_new_head_layer(
    cls: str, config: str, new: tuple[str, ...]
) -> None:
    extra = {"dim": 32, "hidden_dim": 37, "n_heads": 2} if config == "DistilBertConfig" else {}
    if config == "DeiTConfig":
        extra = {"image_size": 32, "patch_size": 8}
    model = hf_model(cls, config, num_hidden_layers=3, n_layers=3, **extra)
    head = ff.find_blocks(model)[-1]
    body = getattr(model, str(model.base_model_prefix))
    in_body = {id(p) for p in body.parameters()}
    added = {n for n, p in model.named_parameters() if id(p) not in in_body}
    assert added == set(params_under(model, *new))
    # last(1), the head stage of a schedule, trains every new layer and nothing pretrained
    assert set(ff.last(1).select(model).names) == added
    assert head.modules == new


def test_a_weight_shared_layer_is_one_block_between_embeddings_and_head() -> None:
    # ALBERT (standard configuration): one layer, applied num_hidden_layers times
    model = hf_model(
        "AlbertForSequenceClassification", "AlbertConfig", num_hidden_layers=12, embedding_size=16
    )
    blocks = ff.find_blocks(model)
    assert len(blocks) == 3
    first = set(ff.first(1).select(model).names)
    assert first == set(
        params_under(model, "albert.embeddings", "albert.encoder.embedding_hidden_mapping_in")
    )
    shared = params_under(model, "albert.encoder.albert_layer_groups")
    assert set(ff.blocks(1, 2).select(model).names) >= set(shared)
    assert set(ff.last(1).select(model).names) == set(params_under(model, "classifier"))


def test_parallel_branches_are_one_unit_per_multi_resolution_module() -> None:
    model = timm_model("hrnet_w18_small")
    blocks = ff.find_blocks(model)
    names = [b.name for b in blocks]
    modules = [
        f"stage{s}.{i}"
        for s in (2, 3, 4)
        for i in range(len(list(model.get_submodule(f"stage{s}").children())))
    ]
    # each multi-resolution module begins a block of its own (the last one's takes the neck)
    assert [b.modules[0] for b in blocks if b.modules[0].startswith("stage")] == modules
    assert not any("branches" in n or "fuse_layers" in n for n in names)
    # lr_decay gives parallel branches of one module one LR: they are in one group
    groups = ff.param_groups(model, lr=1.0, lr_decay=0.5)
    of = {id(p): g["lr"] for g in groups for p in g["params"]}
    branch_lrs = {
        of[id(p)] for n, p in model.named_parameters() if n.startswith("stage2.0.branches.")
    }
    assert len(branch_lrs) == 1


class TwoTowers(nn.Module):
    """A CLIP-like model: a temperature on the model itself, two towers, two projections."""

    def __init__(self) -> None:
        super().__init__()
        self.logit_scale = nn.Parameter(torch.ones(()))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 4))
        self.embed = nn.Linear(4, 4)
        self.layers = nn.ModuleList(
            nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 4)) for _ in range(2)
        )
        self.head = nn.Linear(4, 2)


def test_a_single_number_on_the_model_itself_goes_with_the_head() -> None:
    model = TwoTowers()
    blocks = ff.find_blocks(model)
    assert "logit_scale" in blocks[-1].params and "logit_scale" not in blocks[0].params
    assert "cls_token" in blocks[0].params  # a token is input side
    assert "logit_scale" not in ff.first(1).select(model).names
    clip = hf_model(
        "CLIPModel",
        "CLIPConfig",
        text_config={"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                     "intermediate_size": 37},
        vision_config={"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "intermediate_size": 37, "image_size": 32, "patch_size": 8},
    )  # fmt: skip
    assert block_holding(clip, "logit_scale") == len(ff.find_blocks(clip)) - 1


@pytest.mark.parametrize(("arch", "stem"), [("dm_nfnet_f0", "stem"), ("fastvit_t8", "stem")])
def test_a_stem_of_several_layers_is_one_block(arch: str, stem: str) -> None:
    model = timm_model(arch)
    first = ff.find_blocks(model)[0]
    assert set(params_under(model, stem)) <= set(ff.first(1).select(model).names)
    assert first.modules[0] == stem and len(first.modules) == 1


class CrossStages(nn.Module):
    """A CSPNet-like model: a stem, then stages that each begin with their own layers (a
    downsampling conv, an expansion conv) before their units."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3)
        self.stages = nn.Sequential(*(self._stage() for _ in range(3)))
        self.head = nn.Linear(4, 2)

    @staticmethod
    def _stage() -> nn.Module:
        stage = nn.Module()
        stage.conv_down = nn.Conv2d(4, 4, 3)
        stage.conv_exp = nn.Conv2d(4, 4, 1)
        stage.blocks = nn.Sequential(
            *(
                nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 3))
                for _ in range(2)
            )
        )
        return stage


def test_the_first_stages_own_layers_are_a_block_apart_from_the_stem() -> None:
    names = block_names(CrossStages())
    assert names[:3] == ["stem", "stages.0.conv_down+stages.0.conv_exp", "stages.0.blocks.0"]
    assert names.count("stages.1.conv_down+stages.1.conv_exp") == 1  # as in later stages


@pytest.mark.parametrize(
    ("arch", "head"),
    [("eva02_tiny_patch14_224", ("fc_norm", "head")), ("vit_tiny_patch16_224", ("head",))],
)
def test_a_final_norm_named_for_the_head_joins_it(arch: str, head: tuple[str, ...]) -> None:
    model = timm_model(arch, num_classes=10)
    blocks = ff.find_blocks(model)
    assert blocks[-1].modules == head
    assert blocks[-2].name.startswith("blocks.")  # ViT's norm joins the last unit


def test_a_headless_backbones_final_norm_joins_the_last_unit() -> None:
    model = timm_model("vit_tiny_patch16_224", num_classes=0)
    blocks = ff.find_blocks(model)
    assert blocks[-1].modules == ("blocks.11", "norm")
    assert len(blocks) == 1 + 12


@pytest.mark.parametrize(
    ("arch", "head"),
    [
        ("mobilenetv3_large_100", ("conv_head", "norm_head", "classifier")),
        ("efficientnet_b0", ("classifier",)),  # its conv_head comes before the pooling
    ],
)
def test_layers_after_the_pooling_are_the_head(arch: str, head: tuple[str, ...]) -> None:
    model = timm_model(arch)
    have = [m for m in head if next(model.get_submodule(m).parameters(), None) is not None]
    assert ff.find_blocks(model)[-1].modules == tuple(have)


def test_a_unit_whose_class_name_ends_in_norm_is_no_norm_layer_to_merge() -> None:
    # timm's EvaBlockPostNorm: a transformer block, named like a norm layer
    model = timm_model("eva02_enormous_patch14_clip_224")
    names = [b.name for b in ff.find_blocks(model)]
    assert names[:2] == ["patch_embed", "blocks.0"]
