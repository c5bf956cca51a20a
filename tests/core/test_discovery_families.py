"""Block discovery on the families of timm architectures the zoo measurement found wrong
(issue 23), each built on the meta device (no weights, no memory) and checked by invariants:
which modules begin a block, what ``last(2)`` of the backbone and the head block hold."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
from torch import nn

import freezeflow as ff
from freezeflow.core.meta import on_meta_device

timm = pytest.importorskip("timm")


def timm_model(name: str, **kwargs: Any) -> nn.Module:
    with warnings.catch_warnings(), on_meta_device():
        warnings.simplefilter("ignore")
        model: nn.Module = timm.create_model(name, **kwargs)
    return model


def kids(model: nn.Module, path: str) -> list[nn.Module]:
    """The children of the submodule at ``path``, in order."""
    return list(model.get_submodule(path).children())


def params_under(model: nn.Module, *paths: str) -> set[str]:
    return {
        n
        for n, _ in model.named_parameters()
        if any(n == p or n.startswith(p + ".") for p in paths)
    }


def backbone_last2(model: nn.Module) -> set[str]:
    """What ``last(2)`` selects among every block but the head."""
    head = ff.find_blocks(model)[-1]
    return set(ff.last(2, among=~ff.name(*head.modules, *head.params)).select(model).names)


def classifier_params(model: Any) -> set[str]:
    """The parameters ``reset_classifier`` replaces: every newly initialised head layer."""
    before = dict(model.named_parameters())
    with on_meta_device():
        model.reset_classifier(model.num_classes)
    after = dict(model.named_parameters())
    return {n for n, p in before.items() if after.get(n) is not p}


def test_volo_aux_head_is_in_the_head_block_and_its_final_norm_is_not() -> None:
    # VOLO: post_network, aux_head (a classifier on every token), norm, head
    model = timm_model("volo_d1_224")
    head = ff.find_blocks(model)[-1]
    new = classifier_params(model)
    assert new == params_under(model, "aux_head", "head")
    assert set(ff.last(1).select(model).names) == new  # every new layer, nothing pretrained
    assert head.modules == ("aux_head", "head")
    # the final norm is pretrained: with the last unit, not trained as part of the head
    assert params_under(model, "norm", "post_network.1") == set(
        ff.blocks(-2, -1).select(model).names
    )


@pytest.mark.parametrize("name", ["crossvit_tiny_240", "crossvit_9_dagger_240"])
def test_crossvit_multi_scale_blocks_are_one_unit_each(name: str) -> None:
    # each multi-scale block runs two branches (one per patch size) side by side, with its
    # per-branch projections and fusions: one depth, as timm groups it
    model = timm_model(name)
    blocks = ff.find_blocks(model)
    units = [f"blocks.{i}" for i in range(len(kids(model, "blocks")))]
    assert [b.modules[0] for b in blocks[1:-1]] == units
    assert backbone_last2(model) == params_under(model, *units[-2:], "norm")
    assert set(ff.last(1).select(model).names) == params_under(model, "head", "head_dist")
    # lr_decay: the two branches of one block have one LR
    groups = ff.param_groups(model, lr=1.0, lr_decay=0.5)
    lr = {id(p): g["lr"] for g in groups for p in g["params"]}
    assert len({lr[id(p)] for n, p in model.named_parameters() if n.startswith("blocks.0.")}) == 1


@pytest.mark.parametrize("name", ["hrnet_w18_small", "hrnet_w18"])
def test_hrnet_depth_is_its_multi_resolution_modules(name: str) -> None:
    model = timm_model(name)
    blocks = ff.find_blocks(model)
    modules = [
        f"stage{s}.{i}"
        for s in (2, 3, 4)
        for i in range(len(list(model.get_submodule(f"stage{s}").children())))
    ]
    # each multi-resolution module begins a block; each transition (one layer per branch,
    # side by side, made for the next stage) is in one block, the one before it, as timm
    # groups it
    assert [b.modules[0] for b in blocks if b.modules[0].startswith("stage")] == modules
    for t in (1, 2, 3):
        (holder,) = [b for b in blocks if f"transition{t}" in b.modules]
        assert holder.modules[-1] == f"transition{t}" and len(holder.modules) > 1
    # the neck that merges the branches goes with the last module: last(2) of the backbone
    # is the last two multi-resolution modules (with the transition after the first, where
    # it ends stage 3), and the classifier alone is the head
    neck = ("incre_modules", "downsamp_modules", "final_layer")
    before, last = modules[-2:]
    transition = ("transition3",) if before.startswith("stage3") else ()
    assert backbone_last2(model) == params_under(model, before, *transition, last, *neck)
    assert blocks[-1].modules == ("classifier",)


@pytest.mark.parametrize("name", ["starnet_s050", "starnet_s1"])
def test_starnet_stage_downsampling_is_a_block_apart_from_the_stem(name: str) -> None:
    # each stage is a Sequential: a downsampling conv, then star blocks (s050's first stage
    # has a single block); the downsampling conv of each stage is a block of its own, the
    # first one's too, and the stem stays one block
    model = timm_model(name)
    blocks = ff.find_blocks(model)
    assert blocks[0].modules == ("stem",)
    stages = kids(model, "stages")
    for s, stage in enumerate(stages):
        down = f"stages.{s}.0"
        assert type(kids(model, f"stages.{s}")[0]).__name__ == "ConvBN"
        assert (down,) in [b.modules for b in blocks]
        units = [f"stages.{s}.{i}" for i in range(1, len(list(stage.children())))]
        assert all(any(b.modules[0] == u for b in blocks) for u in units)
    last = len(stages) - 1
    n = len(kids(model, f"stages.{last}"))
    assert backbone_last2(model) == params_under(
        model, f"stages.{last}.{n - 2}", f"stages.{last}.{n - 1}", "norm"
    )


def test_nest_level_position_embedding_goes_with_its_level() -> None:
    # each level adds its pos_embed as it begins: the parameter goes with the level's first
    # block (its pooling layer, or, in the first level, its first transformer layer), not with
    # the previous level's last layer
    model = timm_model("nest_tiny")
    blocks = ff.find_blocks(model)
    owner = {p: b.name for b in blocks for p in b.params}
    assert owner["levels.0.pos_embed"] == "levels.0.transformer_encoder.0"
    assert owner["levels.1.pos_embed"] == "levels.1.pool"
    assert owner["levels.2.pos_embed"] == "levels.2.pool"
    # (torchvision's ViT, whose encoder is no stage, keeps its encoder.pos_embedding with the
    # patch embedding: test_discovery.py's test_vit_b_16_blocks)


@pytest.mark.parametrize("name", ["efficientvim_m1", "efficientvim_m1_dist"])
def test_efficientvim_heads_and_their_weights_are_the_head(name: str) -> None:
    # one classifier per stage (heads, heads_dist) mixed by a weight vector per list of heads
    # on the model itself; a stem and downsampling layers made of conv-norm pairs, one layer
    # each
    model = timm_model(name)
    blocks = ff.find_blocks(model)
    new = classifier_params(model)
    assert set(ff.last(1).select(model).names) == new | {
        n for n, _ in model.named_parameters(recurse=False)
    }
    assert blocks[0].modules == ("patch_embed",)
    for s in range(len(kids(model, "stages")) - 1):
        # the downsampling layer, registered and applied after a stage's units, joins the
        # last of them, as timm groups it
        stage = f"stages.{s}"
        last_unit = f"{stage}.blocks.{len(kids(model, stage + '.blocks')) - 1}"
        assert (last_unit, f"{stage}.downsample") in [b.modules for b in blocks]
    last = len(kids(model, "stages")) - 1
    assert backbone_last2(model) == params_under(
        model, f"stages.{last}.blocks.0", f"stages.{last}.blocks.1", "norm"
    )


@pytest.mark.parametrize("name", ["ghostnet_100", "ghostnetv3_050"])
def test_ghostnet_bottlenecks_are_whole_units(name: str) -> None:
    # a ghost bottleneck holds two numbered ghost modules (ghost1, ghost2: an expansion and a
    # projection); it is one unit, not a stage of two; conv_head after the pooling is head
    model = timm_model(name)
    blocks = ff.find_blocks(model)
    assert not any("ghost" in m for b in blocks for m in b.modules)
    assert blocks[-1].modules == ("conv_head", "classifier")
    assert backbone_last2(model) == params_under(model, "blocks.8.3", "blocks.9")


@pytest.mark.parametrize("name", ["dla34", "dla60x"])
def test_dla_levels_and_trees(name: str) -> None:
    # levels 0 and 1 (conv layers before the first tree) are numbered among the levels:
    # a block each after the stem; a level whose trees are basic blocks holds two units,
    # tree1 and tree2, its projection a block before them and its root (which aggregates
    # the trees) with the last
    model = timm_model(name)
    blocks = ff.find_blocks(model)
    assert [b.modules for b in blocks[:3]] == [("base_layer",), ("level0",), ("level1",)]
    level5 = [b.modules for b in blocks if b.modules[0].startswith("level5")]
    assert level5 == [("level5.project",), ("level5.tree1",), ("level5.tree2", "level5.root")]
    assert backbone_last2(model) == params_under(
        model, "level5.tree1", "level5.tree2", "level5.root"
    )
    assert blocks[-1].modules == ("fc",)


def hf_model(cls: str, config: str, **kwargs: Any) -> nn.Module:
    tr = pytest.importorskip("transformers")
    cfg = getattr(tr, config)(**kwargs)
    with warnings.catch_warnings(), on_meta_device():
        warnings.simplefilter("ignore")
        model: nn.Module = getattr(tr, cls)(cfg)
    return model


def test_xlm_parallel_lists_are_one_layer_per_index() -> None:
    # XLM keeps each layer's parts in four sibling lists (attentions, layer_norm1, ffns,
    # layer_norm2): the i-th element of each is layer i, one block
    model = hf_model("XLMModel", "XLMConfig", n_layers=3, emb_dim=32, n_heads=2)
    blocks = ff.find_blocks(model)
    parts = ("attentions", "layer_norm1", "ffns", "layer_norm2")
    layers = [b for b in blocks if b.modules[0].startswith("attentions.")]
    assert [b.modules for b in layers] == [tuple(f"{p}.{i}" for p in parts) for i in range(3)]
    assert set(ff.last(2).select(model).names) == params_under(
        model, *(f"{p}.{i}" for p in parts for i in (1, 2))
    )


def test_glpn_stage_lists_are_taken_by_stage() -> None:
    # GLPN (SegFormer's encoder) keeps per-stage lists: patch_embeddings, block (the stage's
    # layers), layer_norm; stage i is its patch embedding, its layers, its final norm
    model = hf_model("GLPNModel", "GLPNConfig", depths=[2, 2, 2, 2])
    blocks = [b.modules for b in ff.find_blocks(model)]
    enc = "encoder"
    for s in range(4):
        assert (f"{enc}.patch_embeddings.{s}",) in blocks or s == 0
        assert (f"{enc}.block.{s}.0",) in blocks
        assert (f"{enc}.block.{s}.1", f"{enc}.layer_norm.{s}") in blocks
    assert blocks[0] == (f"{enc}.patch_embeddings.0",)


@pytest.mark.parametrize("name", ["coat_lite_tiny", "coat_tiny"])
def test_coat_stages_numbered_in_names_come_in_their_order(name: str) -> None:
    # CoaT registers every stage's patch embedding, then every cpe, every crpe, then every
    # stage's blocks; the names number the stages (patch_embed2, cpe2, crpe2, serial_blocks2,
    # cls_token2), and the blocks follow the numbers: stage i's own layers, then its blocks
    model = timm_model(name)
    blocks = ff.find_blocks(model)
    for s in (1, 2, 3, 4):
        (entry,) = [b for b in blocks if f"patch_embed{s}" in b.modules]
        assert entry.modules == (f"patch_embed{s}", f"cpe{s}", f"crpe{s}")
        assert f"cls_token{s}" in entry.params
        after = blocks[blocks.index(entry) + 1]
        assert after.modules[0] == f"serial_blocks{s}.0"
    # the stages' serial blocks are not taken by index (they are one type: stages, not the
    # parts of one layer)
    assert not any(len({m.split(".")[0] for m in b.modules if "serial" in m}) > 1 for b in blocks)


def test_visformer_numbered_position_embeddings_go_with_their_stage() -> None:
    model = timm_model("visformer_tiny")
    owner = {p: b.modules for b in ff.find_blocks(model) for p in b.params}
    assert owner == {f"pos_embed{s}": (f"patch_embed{s}",) for s in (1, 2, 3)}
