"""Selectors (freezeflow.core.selectors): regex, of_type, norm_layers and where resolve to
exactly the right parameters, in model order."""

from __future__ import annotations

import pytest
from expected import (
    CNN_CONV_BN,
    CNN_HEAD,
    CNN_STEM,
    assert_selects,
    in_conv,
    is_bias,
    is_matrix,
    lm_block,
    named_lm_head,
)
from torch import nn

import freezeflow as ff
from freezeflow.core.policy import FreezePolicy

# (model, policy, exact names selected, in model order)
CASES: list[tuple[str, FreezePolicy, tuple[str, ...]]] = [
    # -- regex (full match, against parameter names and module paths) ----------------------
    ("mlp", ff.regex(r"fc\d\.bias"), ("fc1.bias", "fc2.bias", "fc3.bias")),
    ("mlp", ff.regex(r"fc[12]"), ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias")),
    ("mlp", ff.regex(r".*weight"), ("fc1.weight", "fc2.weight", "fc3.weight")),
    ("mlp", ff.regex(r"fc", strict=False), ()),
    ("cnn", ff.regex(r"stem\.\d"), CNN_STEM),
    # -- of_type (modules of a type and everything inside them) ---------------------------
    ("cnn", ff.of_type(nn.Linear), CNN_HEAD),
    ("cnn", ff.of_type(nn.Conv2d, nn.BatchNorm2d), CNN_STEM + CNN_CONV_BN),
    ("cnn", ff.of_type(nn.Sequential), CNN_STEM),
    ("cnn", ff.of_type(nn.BatchNorm2d), ("stem.1.weight", "stem.1.bias", "bn.weight", "bn.bias")),
    ("cnn", ff.of_type(nn.Embedding), ()),
    (
        "tiny_lm",
        ff.of_type(nn.MultiheadAttention),
        tuple(n for i in range(2) for n in lm_block(i) if ".attn." in n),
    ),
    # -- norm_layers ----------------------------------------------------------------------
    ("cnn", ff.norm_layers(), ("stem.1.weight", "stem.1.bias", "bn.weight", "bn.bias")),
    ("mlp", ff.norm_layers(), ()),
    (
        "tiny_lm",
        ff.norm_layers(),
        (
            *tuple(n for i in range(2) for n in lm_block(i) if ".ln" in n),
            "ln_f.weight",
            "ln_f.bias",
        ),
    ),
    # -- where ----------------------------------------------------------------------------
    ("mlp", ff.where(is_bias), ("fc1.bias", "fc2.bias", "fc3.bias")),
    ("cnn", ff.where(is_matrix), ("stem.0.weight", "conv.weight", "head.weight")),
    ("cnn", ff.where(in_conv), ("stem.0.weight", "stem.0.bias", "conv.weight", "conv.bias")),
    ("tiny_lm", ff.where(named_lm_head), ("embed.weight",)),
    # -- selectors combined with names ----------------------------------------------------
    ("cnn", ff.of_type(nn.BatchNorm2d) & ff.name("**.bias"), ("stem.1.bias", "bn.bias")),
    (
        "cnn",
        ff.everything() - ff.norm_layers() - ff.name("head"),
        CNN_STEM[:2] + CNN_CONV_BN[:2],
    ),
]


@pytest.mark.parametrize(
    ("model_name", "policy", "expected"),
    CASES,
    ids=[f"{m}-{p!r}" for m, p, _ in CASES],
)
def test_selector_selects_exact_names(
    model_name: str, policy: FreezePolicy, expected: tuple[str, ...]
) -> None:
    assert_selects(model_name, policy, expected)
