"""The model-zoo table: real architectures from torchvision, timm and transformers (random
weights, nothing downloaded), what freezeflow finds in each, and what each should be.

``tests/test_zoo.py`` checks every row; ``docs/model-zoo.md`` shows the table this module
generates (``python tests/zoo.py --write`` rewrites it, and the test fails when the two
differ).
"""

from __future__ import annotations

import functools
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

import freezeflow as ff

DOC = Path(__file__).resolve().parents[1] / "docs" / "model-zoo.md"
BEGIN, END = "<!-- zoo-table: begin -->", "<!-- zoo-table: end -->"


@dataclass(frozen=True)
class Arch:
    """One architecture and what its blocks must be.

    ``blocks``: the expected count, written as the sum of its parts (stem + units +
    downsampling layers + head). ``last2``: the two units ``last(2)`` of the backbone (all
    but the head block) selects. ``head``: the modules of the last block. ``timm_extra``: for
    timm models, how many blocks freezeflow has that timm's own fine grouping
    (``group_matcher(coarse=False)``) folds into the next block (the downsampling layers).
    """

    zoo: str
    name: str
    build: Callable[[], nn.Module]
    blocks: int
    last2: tuple[str, str]
    head: tuple[str, ...]
    timm_extra: int | None = None


def _tv(name: str) -> Callable[[], nn.Module]:
    return lambda: getattr(torchvision.models, name)(weights=None)


def _timm(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import timm

        model: nn.Module = timm.create_model(name, pretrained=False)
        return model

    return build


def _hf(kind: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import transformers as tr

        small: dict[str, Any] = {
            "hidden_size": 32,
            "num_hidden_layers": 3,
            "num_attention_heads": 2,
            "intermediate_size": 37,
        }
        vision: dict[str, Any] = {"image_size": 32, "patch_size": 8}
        model: nn.Module
        cfg: Any
        if kind == "bert":
            model = tr.BertForSequenceClassification(tr.BertConfig(vocab_size=99, **small))
        elif kind == "roberta":
            model = tr.RobertaForSequenceClassification(tr.RobertaConfig(vocab_size=99, **small))
        elif kind == "gpt2":
            cfg = tr.GPT2Config(
                vocab_size=99, n_embd=32, n_layer=3, n_head=2, bos_token_id=0, eos_token_id=0
            )
            model = tr.GPT2LMHeadModel(cfg)
        elif kind == "vit":
            model = tr.ViTForImageClassification(tr.ViTConfig(**vision, **small))
        elif kind == "clip":
            model = tr.CLIPVisionModelWithProjection(
                tr.CLIPVisionConfig(**vision, projection_dim=16, **small)
            )
        else:
            cfg = tr.T5Config(
                vocab_size=99, d_model=32, d_kv=8, d_ff=37, num_layers=3,
                num_decoder_layers=2, num_heads=2,
            )  # fmt: skip
            model = tr.T5ForConditionalGeneration(cfg)
        return model

    return build


TV, TIMM, HF = "torchvision", "timm", "transformers"
ARCHS: tuple[Arch, ...] = (
    # torchvision
    Arch(TV, "resnet18", _tv("resnet18"), 1 + 8 + 1, ("layer4.0", "layer4.1"), ("fc",)),
    Arch(TV, "resnet50", _tv("resnet50"), 1 + 16 + 1, ("layer4.1", "layer4.2"), ("fc",)),
    Arch(
        TV,
        "mobilenet_v3_small",
        _tv("mobilenet_v3_small"),
        1 + 11 + 1,
        ("features.10", "features.11"),
        ("classifier",),
    ),
    Arch(
        TV,
        "efficientnet_b0",
        _tv("efficientnet_b0"),
        1 + 16 + 1,
        ("features.6.3", "features.7"),
        ("classifier",),
    ),
    Arch(
        TV,
        "convnext_tiny",
        _tv("convnext_tiny"),
        1 + 18 + 3 + 1,
        ("features.7.1", "features.7.2"),
        ("classifier",),
    ),
    Arch(
        TV,
        "regnet_y_400mf",
        _tv("regnet_y_400mf"),
        1 + 16 + 1,
        ("trunk_output.block4.block4-4", "trunk_output.block4.block4-5"),
        ("fc",),
    ),
    Arch(
        TV,
        "vit_b_16",
        _tv("vit_b_16"),
        1 + 12 + 1,
        ("encoder.layers.encoder_layer_10", "encoder.layers.encoder_layer_11"),
        ("heads",),
    ),
    Arch(TV, "swin_t", _tv("swin_t"), 1 + 12 + 3 + 1, ("features.7.0", "features.7.1"), ("head",)),
    Arch(
        TV,
        "densenet121",
        _tv("densenet121"),
        1 + 58 + 3 + 1,
        ("features.denseblock4.denselayer15", "features.denseblock4.denselayer16"),
        ("classifier",),
    ),
    # timm
    Arch(TIMM, "resnet18", _timm("resnet18"), 1 + 8 + 1, ("layer4.0", "layer4.1"), ("fc",), 0),
    Arch(
        TIMM,
        "convnext_atto",
        _timm("convnext_atto"),
        1 + 12 + 3 + 1,
        ("stages.3.blocks.0", "stages.3.blocks.1"),
        ("head",),
        3,
    ),
    Arch(
        TIMM,
        "convnextv2_atto",
        _timm("convnextv2_atto"),
        1 + 12 + 3 + 1,
        ("stages.3.blocks.0", "stages.3.blocks.1"),
        ("head",),
        3,
    ),
    Arch(
        TIMM,
        "efficientnet_b0",
        _timm("efficientnet_b0"),
        1 + 16 + 1,
        ("blocks.5.3", "blocks.6"),
        ("classifier",),
        0,
    ),
    Arch(
        TIMM,
        "vit_tiny_patch16_224",
        _timm("vit_tiny_patch16_224"),
        1 + 12 + 1,
        ("blocks.10", "blocks.11"),
        ("head",),
        0,
    ),
    Arch(
        TIMM,
        "deit_tiny_patch16_224",
        _timm("deit_tiny_patch16_224"),
        1 + 12 + 1,
        ("blocks.10", "blocks.11"),
        ("head",),
        0,
    ),
    Arch(
        TIMM,
        "swin_tiny_patch4_window7_224",
        _timm("swin_tiny_patch4_window7_224"),
        1 + 12 + 3 + 1,
        ("layers.3.blocks.0", "layers.3.blocks.1"),
        ("head",),
        3,
    ),
    Arch(TIMM, "regnetx_002", _timm("regnetx_002"), 1 + 13 + 1, ("s4.b6", "s4.b7"), ("head",), 0),
    Arch(
        TIMM,
        "resnetv2_50",
        _timm("resnetv2_50"),
        1 + 16 + 1,
        ("stages.3.blocks.1", "stages.3.blocks.2"),
        ("head",),
        0,
    ),
    Arch(
        TIMM,
        "efficientvit_b0",
        _timm("efficientvit_b0"),
        1 + 10 + 1,
        ("stages.3.blocks.1", "stages.3.blocks.2"),
        ("head",),
        0,
    ),
    Arch(
        TIMM,
        "levit_128s",
        _timm("levit_128s"),
        1 + 9 + 2 + 1,
        ("stages.2.blocks.2", "stages.2.blocks.3"),
        ("head", "head_dist"),
        2,
    ),
    # transformers, from tiny configs
    Arch(
        HF,
        "BERT",
        _hf("bert"),
        1 + 3 + 1,
        ("bert.encoder.layer.1", "bert.encoder.layer.2"),
        ("classifier",),
    ),
    Arch(
        HF,
        "RoBERTa",
        _hf("roberta"),
        1 + 3 + 1,
        ("roberta.encoder.layer.1", "roberta.encoder.layer.2"),
        ("classifier",),
    ),
    Arch(
        HF,
        "GPT-2 (tied head)",
        _hf("gpt2"),
        1 + 3 + 1,
        ("transformer.h.1", "transformer.h.2"),
        ("lm_head",),
    ),
    Arch(HF, "ViT", _hf("vit"), 1 + 3 + 1, ("vit.layers.1", "vit.layers.2"), ("classifier",)),
    Arch(
        HF,
        "CLIP vision",
        _hf("clip"),
        1 + 3 + 1,
        ("vision_model.encoder.layers.1", "vision_model.encoder.layers.2"),
        ("visual_projection",),
    ),
    Arch(
        HF,
        "T5 (encoder-decoder)",
        _hf("t5"),
        1 + 3 + 1 + 2 + 1,
        ("decoder.block.0", "decoder.block.1"),
        ("lm_head",),
    ),
)


@dataclass(frozen=True)
class Row:
    """What freezeflow finds in one architecture."""

    arch: Arch
    blocks: tuple[ff.core.Block, ...]
    last2: tuple[str, ...]
    """Parameter names ``last(2)`` of the backbone selects."""
    last2_blocks: tuple[str, ...]
    """The blocks they lie in."""
    share: float
    """Their share of the backbone's parameters (by element count)."""
    timm_groups: tuple[frozenset[str], ...] | None
    """timm's fine parameter groups (timm models only)."""


def backbone(model: nn.Module) -> ff.FreezePolicy:
    """Everything but the head block."""
    head = ff.find_blocks(model)[-1]
    return ~ff.name(*head.modules, *head.params)


@functools.cache
def row(arch: Arch) -> Row:
    """Build ``arch`` (seeded, random weights) and measure it; cached per run."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = arch.build()
    blocks = tuple(ff.find_blocks(model))
    back = backbone(model)
    last2 = ff.last(2, among=back).select(model).names
    params = dict(model.named_parameters(remove_duplicate=False))
    in_backbone = {
        id(p): p.numel()
        for n, p in params.items()
        if any(b.covers(n) for b in blocks[:-1]) and not blocks[-1].covers(n)
    }
    picked = {id(params[n]): params[n].numel() for n in last2}
    share = sum(picked.values()) / sum(in_backbone.values())
    groups = None
    if arch.zoo == TIMM:
        from timm.models._manipulate import group_parameters

        timm_model: Any = model
        grouped = group_parameters(model, timm_model.group_matcher(coarse=False))
        groups = tuple(frozenset(names) for names in grouped.values())
    hit = tuple(b.name for b in blocks[:-1] if any(b.covers(n) for n in last2))
    return Row(arch, blocks, last2, hit, share, groups)


def _short(names: tuple[str, ...] | list[str]) -> str:
    return ", ".join(f"`{n}`" for n in names)


def table() -> str:
    """The markdown table of every architecture."""
    lines = [
        "| zoo | model | blocks | first block | last block (head) "
        "| `last(2)` of the backbone | share of backbone parameters |",
        "|---|---|---:|---|---|---|---:|",
    ]
    for arch in ARCHS:
        r = row(arch)
        lines.append(
            f"| {arch.zoo} | {arch.name} | {len(r.blocks)} | `{r.blocks[0].name}` | "
            f"`{r.blocks[-1].name}` | {_short(r.last2_blocks)} | {100 * r.share:.0f}% |"
        )
    return "\n".join(lines) + "\n"


def write() -> None:
    """Put the generated table between the markers of docs/model-zoo.md."""
    text = DOC.read_text()
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    DOC.write_text(text[:start] + "\n" + table() + text[end:])


if __name__ == "__main__":
    torch.set_num_threads(1)
    if "--write" in sys.argv[1:]:
        write()
    else:
        print(table(), end="")
