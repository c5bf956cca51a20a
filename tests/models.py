"""Small, seeded toy models for the freezeflow test suite, and helpers to snapshot model state.

Every factory seeds torch itself, so two calls give bit-identical models.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torchvision
from torch import nn

import freezeflow as ff

__all__ = [
    "CLASSIC_PYTORCH",
    "FACTORIES",
    "MLP",
    "RESNET18_BLOCKS",
    "NestedLists",
    "SmallCNN",
    "TinyLM",
    "classic_keras",
    "flags",
    "make_mlp",
    "make_nested",
    "make_resnet18",
    "make_small_cnn",
    "make_tiny_lm",
    "training_flags",
]


class MLP(nn.Module):
    """fc1 -> relu -> fc2 -> relu -> fc3; blocks are fc1, fc2, fc3."""

    def __init__(self, d_in: int = 6, hidden: int = 12, d_out: int = 3) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(self.act(self.fc2(self.act(self.fc1(x)))))


class SmallCNN(nn.Module):
    """A stem (conv + BatchNorm + ReLU), a conv + BatchNorm pair, Dropout and a linear head."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.conv = nn.Conv2d(8, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.drop = nn.Dropout(0.25)
        self.head = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(self.stem(x))))
        x = x.mean(dim=(2, 3))
        return self.head(self.drop(x))


class _Layer(nn.Module):
    """A pre-norm transformer layer."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, 2, batch_first=True)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class TinyLM(nn.Module):
    """A tiny transformer language model whose output head shares the input embedding
    (``lm_head.weight is embed.weight``) and with a loose positional parameter ``pos``."""

    def __init__(self, vocab: int = 32, d: int = 16, context: int = 8, depth: int = 2) -> None:
        super().__init__()
        self.pos = nn.Parameter(torch.randn(context, d) * 0.02)
        self.embed = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(_Layer(d) for _ in range(depth))
        self.ln_f = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.lm_head.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens) + self.pos[: tokens.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


class NestedLists(nn.Module):
    """Residual stages held in a ModuleList of ModuleLists of (Linear, LayerNorm) pairs."""

    def __init__(self, d_in: int = 4, d: int = 8, d_out: int = 2) -> None:
        super().__init__()
        self.inp = nn.Linear(d_in, d)
        self.stages = nn.ModuleList(
            nn.ModuleList(nn.Sequential(nn.Linear(d, d), nn.LayerNorm(d)) for _ in range(2))
            for _ in range(2)
        )
        self.out = nn.Linear(d, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.inp(x))
        for stage in self.stages:
            for block in stage:
                x = x + block(x)
        return self.out(x)


def make_mlp() -> MLP:
    torch.manual_seed(0)
    return MLP()


def make_small_cnn() -> SmallCNN:
    torch.manual_seed(0)
    return SmallCNN()


def make_tiny_lm() -> TinyLM:
    torch.manual_seed(0)
    return TinyLM()


def make_nested() -> NestedLists:
    torch.manual_seed(0)
    return NestedLists()


def make_resnet18() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None)


# the blocks find_blocks discovers in torchvision's ResNet18, input to output
RESNET18_BLOCKS = (
    "conv1+bn1",
    "layer1.0",
    "layer1.1",
    "layer2.0",
    "layer2.1",
    "layer3.0",
    "layer3.1",
    "layer4.0",
    "layer4.1",
    "fc",
)


FACTORIES: dict[str, Callable[[], nn.Module]] = {
    "mlp": make_mlp,
    "cnn": make_small_cnn,
    "tiny_lm": make_tiny_lm,
    "nested": make_nested,
}
"""The toy models (resnet18 is kept apart: it is larger)."""


def flags(model: nn.Module) -> dict[str, bool]:
    """``requires_grad`` of every parameter name (tied names included)."""
    return {n: p.requires_grad for n, p in model.named_parameters(remove_duplicate=False)}


def training_flags(model: nn.Module) -> dict[str, bool]:
    """``training`` of every module path."""
    return {n: m.training for n, m in model.named_modules(remove_duplicate=False)}


def CLASSIC_PYTORCH() -> ff.Schedule:  # noqa: N802 - a constant recipe, built fresh
    """The classic tutorial's PyTorch ResNet18 recipe: the head 5 epochs at 1e-3, then
    ``layer4`` too at 1e-5 with a new Adam."""
    return ff.presets.two_stage("fc", "layer4", head_epochs=5, lr=1e-5, reset_state=True)


def classic_keras(head: Any = "fc", *, n_layers: int = 6, head_epochs: int = 5) -> ff.Schedule:
    """The classic tutorial's Keras ResNet50 recipe: the head, then the backbone's last
    ``n_layers`` layers with parameters (its last 10 Keras layers) at 1e-5, state reset."""
    backbone = ~ff.core.as_policy(head)
    return ff.presets.two_stage(
        head,
        ff.layers(-n_layers, among=backbone),
        head_epochs=head_epochs,
        lr=1e-5,
        reset_state=True,
    )
