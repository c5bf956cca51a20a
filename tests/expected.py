"""What the toy models of :mod:`models` are made of, name by name, for the tests that check a
resolution exactly (test_policy, test_selectors, test_depth, test_policy_laws).

The names are written out here, independently of freezeflow, so a test compares a
resolution with a fact about the model rather than with another resolution.
"""

from __future__ import annotations

from collections.abc import Callable

from models import make_mlp, make_nested, make_resnet18, make_small_cnn, make_tiny_lm
from torch import nn

from freezeflow.core.discovery import is_norm_layer
from freezeflow.core.policy import FreezePolicy

__all__ = [
    "CNN_CONV_BN",
    "CNN_HEAD",
    "CNN_STEM",
    "MAKERS",
    "assert_selects",
    "in_conv",
    "in_norm",
    "is_bias",
    "is_matrix",
    "lm_block",
    "named_lm_head",
    "nested_stage",
]

MAKERS: dict[str, Callable[[], nn.Module]] = {
    "mlp": make_mlp,
    "cnn": make_small_cnn,
    "tiny_lm": make_tiny_lm,
    "nested": make_nested,
    "resnet18": make_resnet18,
}
"""Every toy model by name, ResNet18 included."""

# SmallCNN's parameters by part, in model order
CNN_STEM = ("stem.0.weight", "stem.0.bias", "stem.1.weight", "stem.1.bias")
CNN_CONV_BN = ("conv.weight", "conv.bias", "bn.weight", "bn.bias")
CNN_HEAD = ("head.weight", "head.bias")


def nested_stage(i: int, j: int) -> tuple[str, ...]:
    """The parameters of NestedLists' ``stages[i][j]`` (a Linear and a LayerNorm)."""
    p = f"stages.{i}.{j}"
    return (f"{p}.0.weight", f"{p}.0.bias", f"{p}.1.weight", f"{p}.1.bias")


def lm_block(i: int) -> tuple[str, ...]:
    """The parameters of TinyLM's ``blocks[i]``, in model order."""
    return tuple(
        f"blocks.{i}.{s}"
        for s in (
            "ln1.weight",
            "ln1.bias",
            "attn.in_proj_weight",
            "attn.in_proj_bias",
            "attn.out_proj.weight",
            "attn.out_proj.bias",
            "ln2.weight",
            "ln2.bias",
            "mlp.0.weight",
            "mlp.0.bias",
            "mlp.2.weight",
            "mlp.2.bias",
        )
    )


# predicates for where() (module-level functions, so policies built on them pickle)


def is_bias(n: str, p: nn.Parameter, m: nn.Module) -> bool:
    """Parameters named ``*bias``."""
    return n.endswith("bias")


def is_matrix(n: str, p: nn.Parameter, m: nn.Module) -> bool:
    """Parameters with two or more dimensions."""
    return p.ndim >= 2


def in_conv(n: str, p: nn.Parameter, m: nn.Module) -> bool:
    """Parameters owned by a Conv2d."""
    return isinstance(m, nn.Conv2d)


def in_norm(n: str, p: nn.Parameter, m: nn.Module) -> bool:
    """Parameters owned by a norm layer."""
    return is_norm_layer(m)


def named_lm_head(n: str, p: nn.Parameter, m: nn.Module) -> bool:
    """Parameters reached through the name ``lm_head.*`` (TinyLM's tied head)."""
    return n.startswith("lm_head.")


def assert_selects(model_name: str, policy: FreezePolicy, expected: tuple[str, ...]) -> None:
    """``policy`` on a fresh ``MAKERS[model_name]()`` selects exactly ``expected`` (primary
    names, in model order), and its parameters are the model's own tensors."""
    model = MAKERS[model_name]()
    sel = policy.select(model, allow_empty=True)
    assert sel.names == expected
    assert tuple(sel) == expected
    params = dict(model.named_parameters())
    assert len(sel.params) == len(expected)
    assert all(sel.params[i] is params[n] for i, n in enumerate(expected))
