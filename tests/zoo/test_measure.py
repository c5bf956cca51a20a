"""freezeflow.zoo.measure: one architecture measured against its zoo's own grouping (timm's
fine groups, transformers' layer lists and the layers a classification model adds)."""

from __future__ import annotations

from typing import Any

import pytest
from torch import nn

from freezeflow.zoo.measure import (
    _label,
    layer_counts,
    measure_timm,
    measure_transformers,
    reference_lists,
)

pytest.importorskip("timm")
pytest.importorskip("transformers")


@pytest.mark.parametrize("name", ["resnet18", "convnext_atto", "edgenext_xx_small"])
def test_a_timm_model_that_agrees(name: str) -> None:
    r = measure_timm(name)
    assert r["status"] == "agree", r.get("reason")
    assert r["straddling"] == [] and r["head_last"] is True and r["last2"] is True
    assert r["blocks"] >= r["reference"] - 1  # freezeflow is never coarser than timm


def test_a_timm_disagreement_says_why() -> None:
    # FasterNet registers a stage's downsampling layer after its blocks and applies it
    # first (timm groups it with the stage's first block): registration order is not the
    # order of depth there, and the downsampling joins the stage's last block
    r = measure_timm("fasternet_t0")
    assert r["status"] == "disagree"
    assert "stages.1.downsample" in r["reason"] and "straddles" in r["reason"]
    assert any(s.endswith("stages.1.downsample") for s in r["straddling"])


@pytest.mark.parametrize(
    ("name", "moved"),
    [
        ("densenet121", "features.norm5"),  # timm: with the classifier; freezeflow: last unit
        ("ghostnet_100", "conv_head"),  # timm: with the last unit; freezeflow: after the pool
        ("rexnet_100", "features.16"),  # timm: a group of its own
    ],
)
def test_a_layer_between_the_last_unit_and_the_classifier_may_go_either_way(
    name: str, moved: str
) -> None:
    r = measure_timm(name)
    assert r["status"] == "agree", r.get("reason")
    assert r["boundary"] == moved


def test_a_module_timm_names_in_no_group_before_the_units_is_not_compared() -> None:
    # timm's matcher for EVA does not name `rope` (learnt frequencies, used by every block):
    # its fallback puts it in the head group, which a module before the units is not
    r = measure_timm("vit_small_patch16_rope_mixed_224")
    assert r["status"] == "agree", r.get("reason")
    assert r["unnamed"] == "rope"
    assert "unnamed" not in measure_timm("vit_tiny_patch16_224")


def test_a_unit_beside_the_classifier_is_no_boundary_layer() -> None:
    # VOLO's aux_head is a second classifier (reset_classifier replaces it): it must be in
    # the head block, not accepted as a pretrained layer with the last unit
    r = measure_timm("volo_d1_224")
    assert r["status"] == "agree", r.get("reason")
    assert "boundary" not in r or "aux_head" not in r["boundary"]


def test_a_name_that_does_not_build_is_reported_not_raised() -> None:
    r = measure_timm("no_such_model_anywhere")
    assert r["status"] == "build_error" and "no_such_model_anywhere" in r["reason"]


@pytest.mark.parametrize("model_type", ["bert", "distilbert", "albert", "t5"])
def test_a_transformers_type_that_agrees(model_type: str) -> None:
    r = measure_transformers(model_type)
    assert r["status"] == "agree", r.get("reason")
    assert r["layers_ok"] is True and r["head_ok"] is True
    assert r["head_model"].endswith("ForSequenceClassification")


def test_layer_counts_read_every_count_of_a_configuration() -> None:
    tr = pytest.importorskip("transformers")
    counts = layer_counts(tr.T5Config(num_layers=5, num_decoder_layers=3))
    assert {5, 3} <= counts
    swin = layer_counts(tr.SwinConfig(depths=[2, 2, 6, 2]))
    assert {2, 6} <= swin


def test_reference_lists_are_the_innermost_lists_of_a_configured_length() -> None:
    model = nn.Module()
    model.layers = nn.ModuleList(nn.Module() for _ in range(2))  # stages (Swin)
    for stage in model.layers:
        stage.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2), nn.Linear(2, 2)) for _ in range(3)
        )
    found = reference_lists(model, {2, 3})
    assert [p for p, _ in found] == ["layers.0.blocks", "layers.1.blocks"]
    assert found[0][1] == ["layers.0.blocks.0", "layers.0.blocks.1", "layers.0.blocks.2"]
    assert reference_lists(model, {4}) == []


def test_labels_name_the_modules_that_hold_a_group() -> None:
    assert _label(["blocks.3.attn.qkv.weight", "blocks.3.mlp.fc1.bias"]) == "blocks.3"
    names = ["blocks.11.attn.qkv.weight", "blocks.11.mlp.fc1.weight", "norm.weight"]
    assert _label(names) == "blocks.11+norm"


def test_last2_is_not_compared_where_the_model_goes_on_after_its_last_list() -> None:
    # SAM: the vision encoder's layers are the last counted list; the mask decoder, with
    # two-way attention layers of its own, comes after it
    r = measure_transformers("sam")
    assert r["status"] == "agree", r.get("reason")
    assert r["goes_on"].startswith("mask_decoder") or "mask_decoder" in r["goes_on"]
    assert "goes_on" not in measure_transformers("bert")


def test_a_head_inside_the_base_model_is_found_by_name() -> None:
    # TimmWrapperForImageClassification's classifier lives inside its timm model, under the
    # base model prefix: the new layers are the names the base model does not have
    r = measure_transformers("timm_wrapper")
    assert r["head_ok"] is True, r.get("reason")
    # Perceiver's classification model builds a text preprocessor (embeddings) in front of
    # the base model's layers and a decoder after them: the decoder alone is new
    r = measure_transformers("perceiver")
    assert r["head_ok"] is True, r.get("reason")


def test_a_norm_timm_groups_apart_from_its_conv_by_index_counts_with_it() -> None:
    # VGG-BN: timm's matcher groups features.(\d+), so a conv and its batch norm are two
    # groups; freezeflow's conv+bn block is one layer, not a straddle
    r = measure_timm("vgg11_bn")
    assert r["status"] == "agree", r.get("reason")
    assert "features.0+features.1" in [b.name for b in find_blocks_of("vgg11_bn")]


def find_blocks_of(name: str) -> list[Any]:
    import timm

    from freezeflow.core.discovery import find_blocks
    from freezeflow.core.meta import on_meta_device

    with on_meta_device():
        return find_blocks(timm.create_model(name))


def test_a_classifier_timm_folds_into_the_last_units_group_is_its_head_group() -> None:
    # IFormer's matcher maps ^head to the group before it: the classifier is split off as
    # the head group and the last unit is compared strictly, not accepted as a boundary
    r = measure_timm("iformer_t")
    assert r["status"] == "agree", r.get("reason")
    assert "boundary" not in r and r["last2"] is True
