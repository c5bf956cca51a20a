"""Small, seeded toy models for the freezeflow test suite, and the helpers every test shares.

Every factory seeds torch itself, so two calls give bit-identical models. One place for:

- the toy models (:class:`MLP`, :class:`SmallCNN`, :class:`TinyLM`, :class:`NestedLists`,
  torchvision's ResNet18, and :class:`Net` for the unfreezer tests);
- state helpers: :func:`snapshot`, :func:`flags`, :func:`training_flags`, :func:`norm_state`,
  :func:`trainable_names`, :func:`names_of`, :func:`group_view`;
- :func:`one_thread` (the ``single_thread`` fixture of ``conftest.py`` wraps it);
- data and recipes: :func:`batch`, :func:`train_step`, :func:`three_stage`,
  :func:`CLASSIC_PYTORCH`, :func:`classic_keras`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Literal, cast

import torch
import torchvision
from torch import nn

import freezeflow as ff
from freezeflow.training.run import Callback, Run

__all__ = [
    "ALL_NAMES",
    "BLOCKS",
    "BODY1",
    "CLASSIC_PYTORCH",
    "DECAY_SCALE",
    "FACTORIES",
    "HEAD",
    "MLP",
    "RESNET18_BLOCKS",
    "STAGE_SETS",
    "Block",
    "NestedLists",
    "Net",
    "SmallCNN",
    "StopAfter",
    "Ticking",
    "TiedEmbedding",
    "TinyLM",
    "batch",
    "block_of",
    "classic_keras",
    "flags",
    "group_view",
    "make_mlp",
    "make_nested",
    "make_net",
    "make_resnet18",
    "make_small_cnn",
    "make_tiny_lm",
    "names_of",
    "norm_state",
    "one_thread",
    "snapshot",
    "three_stage",
    "train_step",
    "trainable_names",
    "training_flags",
]


# --------------------------------------------------------------------------- toy models


class MLP(nn.Module):
    """fc1 -> relu -> fc2 -> relu -> fc3; blocks are fc1, fc2, fc3."""

    def __init__(self, d_in: int = 6, hidden: int = 12, d_out: int = 3) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.fc3(self.act(self.fc2(self.act(self.fc1(x)))))
        return y


class SmallCNN(nn.Module):
    """A stem (conv + BatchNorm + ReLU), a conv + BatchNorm pair, Dropout and a linear head.

    Args:
        classes: outputs of the head.
        stem_norm: whether the stem has its BatchNorm (``stem`` is then conv, BatchNorm, ReLU;
            else conv, ReLU). BatchNorm draws nothing from the RNG, so both variants get the
            same weights from the same seed.
        pool: how the feature map is pooled before the head (``"mean"`` or ``"amax"``).

    ``SmallCNN(3, stem_norm=False, pool="amax")`` is the training tests' CNN.
    """

    def __init__(
        self, classes: int = 5, *, stem_norm: bool = True, pool: Literal["mean", "amax"] = "mean"
    ) -> None:
        super().__init__()
        stem: list[nn.Module] = [nn.Conv2d(3, 8, 3, padding=1)]
        if stem_norm:
            stem.append(nn.BatchNorm2d(8))
        self.stem = nn.Sequential(*stem, nn.ReLU())
        self.conv = nn.Conv2d(8, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.drop = nn.Dropout(0.25)
        self.head = nn.Linear(16, classes)
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(self.stem(x))))
        x = x.mean(dim=(2, 3)) if self.pool == "mean" else x.amax(dim=(2, 3))
        y: torch.Tensor = self.head(self.drop(x))
        return y


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
        y: torch.Tensor = x + self.mlp(self.ln2(x))
        return y


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
        y: torch.Tensor = self.lm_head(self.ln_f(x))
        return y


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
            for block in cast(nn.ModuleList, stage):
                x = x + block(x)
        y: torch.Tensor = self.out(x)
        return y


def make_mlp() -> MLP:
    """A :class:`MLP` from ``torch.manual_seed(0)``."""
    torch.manual_seed(0)
    return MLP()


def make_small_cnn(
    classes: int = 5,
    *,
    seed: int = 0,
    stem_norm: bool = True,
    pool: Literal["mean", "amax"] = "mean",
) -> SmallCNN:
    """A :class:`SmallCNN` from ``torch.manual_seed(seed)`` (arguments as for the class)."""
    torch.manual_seed(seed)
    return SmallCNN(classes, stem_norm=stem_norm, pool=pool)


def make_tiny_lm() -> TinyLM:
    """A :class:`TinyLM` from ``torch.manual_seed(0)``."""
    torch.manual_seed(0)
    return TinyLM()


def make_nested() -> NestedLists:
    """A :class:`NestedLists` from ``torch.manual_seed(0)``."""
    torch.manual_seed(0)
    return NestedLists()


def make_resnet18() -> nn.Module:
    """torchvision's ResNet18 (no weights) from ``torch.manual_seed(0)``."""
    torch.manual_seed(0)
    model: nn.Module = torchvision.models.resnet18(weights=None)
    return model


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


# --------------------------------------------------------------------------- the unfreezer's Net

BLOCKS = ("stem", "body.0", "body.1", "head")
"""The blocks of :class:`Net`, input to output."""


class Block(nn.Module):
    """A residual conv + BatchNorm block of :class:`Net`."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1, bias=False)  # BatchNorm follows
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.bn(self.conv(x)))


class Net(nn.Module):
    """stem (conv + BatchNorm) -> body.0 -> body.1 (conv + BatchNorm each) -> head (linear)."""

    def __init__(self, classes: int = 3, c: int = 4) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU()
        )
        self.body = nn.Sequential(Block(c), Block(c))
        self.head = nn.Linear(c, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.body(self.stem(x))
        y: torch.Tensor = self.head(x.mean(dim=(2, 3)))
        return y


def make_net(classes: int = 3, seed: int = 0) -> Net:
    """A :class:`Net` from ``torch.manual_seed(seed)``."""
    torch.manual_seed(seed)
    return Net(classes)


def block_of(param_name: str) -> str:
    """The block of a parameter of :class:`Net` (independent of freezeflow's discovery)."""
    for b in BLOCKS:
        if param_name.startswith(b + "."):
            return b
    raise AssertionError(param_name)


def three_stage(*, reset_state: bool = False, weight_decay: float = 0.1) -> ff.Schedule:
    """head at 1e-2 (epoch 0), + body.1 at 3e-3 (epoch 2), + everything at 1e-3 with
    lr_decay 0.5 (epoch 4)."""
    return ff.Schedule(
        [
            ff.Stage("head", lr=1e-2, weight_decay=weight_decay),
            ff.Stage("body.1", lr=3e-3, start=2, reset_state=reset_state),
            ff.Stage(ff.everything(), lr=1e-3, start=4, lr_decay=0.5, reset_state=reset_state),
        ]
    )


# trainable parameter names of Net per stage of three_stage()
HEAD = frozenset({"head.weight", "head.bias"})
BODY1 = frozenset({"body.1.conv.weight", "body.1.bn.weight", "body.1.bn.bias"})
ALL_NAMES = frozenset(
    {"stem.0.weight", "stem.1.weight", "stem.1.bias"}
    | {f"body.{i}.{p}" for i in (0, 1) for p in ("conv.weight", "bn.weight", "bn.bias")}
    | HEAD
)
"""Every parameter name of :class:`Net` (written out: building a Net here would draw from
torch's global RNG at import)."""
STAGE_SETS = (HEAD, HEAD | BODY1, ALL_NAMES)
# lr_scale of each block under lr_decay=0.5 (head is the last of four blocks)
DECAY_SCALE = {"head": 1.0, "body.1": 0.5, "body.0": 0.25, "stem": 0.125}


def batch(step: int, n: int = 4, classes: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """The same (inputs, labels) batch of :class:`Net` for the same step, in any process."""
    g = torch.Generator().manual_seed(1000 + step)
    return torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, classes, (n,), generator=g)


def train_step(
    model: nn.Module, opt: torch.optim.Optimizer, step: int, *, set_to_none: bool = True
) -> float:
    """One cross-entropy step on :func:`batch` ``(step)``; returns the loss."""
    x, y = batch(step)
    opt.zero_grad(set_to_none=set_to_none)
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()  # type: ignore[no-untyped-call]
    opt.step()
    return loss.item()


# --------------------------------------------------------------------------- state helpers


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch single-threaded: the toy models are tiny, and on a busy machine intra-op
    threads cost far more than they give. Restores the previous setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def snapshot(model: nn.Module, *, buffers: bool = False) -> dict[str, torch.Tensor]:
    """A detached copy of every parameter by name; with ``buffers=True``, of the whole
    ``state_dict`` (parameters and persistent buffers)."""
    if buffers:
        return {n: t.detach().clone() for n, t in model.state_dict().items()}
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def flags(model: nn.Module) -> dict[str, bool]:
    """``requires_grad`` of every parameter name (tied names included)."""
    return {n: p.requires_grad for n, p in model.named_parameters(remove_duplicate=False)}


def training_flags(model: nn.Module) -> dict[str, bool]:
    """``training`` of every module path."""
    return {n: m.training for n, m in model.named_modules(remove_duplicate=False)}


def trainable_names(model: nn.Module) -> frozenset[str]:
    """The names of the parameters that require grad."""
    return frozenset(n for n, p in model.named_parameters() if p.requires_grad)


def names_of(model: nn.Module, params: Iterable[torch.Tensor]) -> set[str]:
    """The names in ``model`` of the given parameters."""
    by_id = {id(p): n for n, p in model.named_parameters()}
    return {by_id[id(p)] for p in params}


def norm_state(model: nn.Module) -> dict[str, tuple[str | None, bool]]:
    """(freezeflow norm mode, training flag) of every norm layer (``ff.core.is_norm_layer``)."""
    return {
        path: (ff.core.norm_mode(m), m.training)
        for path, m in model.named_modules()
        if ff.core.is_norm_layer(m)
    }


def group_view(opt: torch.optim.Optimizer) -> list[dict[str, Any]]:
    """Every param group's hyper-parameters and parameter identities (for "nothing changed")."""
    return [
        {**{k: v for k, v in g.items() if k != "params"}, "params": [id(p) for p in g["params"]]}
        for g in opt.param_groups
    ]


# --------------------------------------------------------------------------- recipes


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


class TiedEmbedding(nn.Module):
    """An embedding, a layer, and an output layer whose weight is the embedding's (tied)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.mid = nn.Linear(4, 4)
        self.out = nn.Linear(4, 10, bias=False)
        self.out.weight = self.embed.weight


class StopAfter(Callback):
    """End training (cleanly, with a checkpoint) once ``epochs`` epochs are done."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_epoch_end(self, run: Run) -> None:
        if run.progress.epoch >= self.epochs:
            run.progress.stop = f"stopped after {self.epochs} epochs"


def staged(*starts: Any) -> ff.Schedule:
    """A schedule over :class:`Net`: the head, then body.1, body.0 and the stem at
    ``starts``."""
    policies = ["head", "body.1", "body.0", "stem"]
    return ff.Schedule(
        [ff.Stage(policies[0], lr=1e-2)]
        + [ff.Stage(policies[k + 1], lr=1e-3, start=s) for k, s in enumerate(starts)]
    )


def staged_unfreezer(schedule: ff.Schedule, **kw: Any) -> ff.GradualUnfreezer:
    """An unfreezer of ``schedule`` over a fresh :class:`Net` and its SGD."""
    model = make_net()
    return ff.GradualUnfreezer(model, schedule, torch.optim.SGD(model.parameters(), lr=0.1), **kw)


def drive(uf: ff.GradualUnfreezer, epochs: int, steps: int) -> list[tuple[int, int, int]]:
    """(stage, epoch, global step) of every transition, driving epochs x steps."""
    seen = []
    for e in range(epochs):
        seen += [(t.stage_index, t.epoch, t.step) for t in uf.on_epoch_start(e)]
        for _ in range(steps):
            seen += [(t.stage_index, t.epoch, t.step) for t in uf.step()]
    return seen


class Ticking:
    """A fake ``time`` module for freezeflow's run clock (``monkeypatch.setattr(
    freezeflow.unfreezer.clock, "time", Ticking())``): every read is one second on."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        self.now += 1.0
        return self.now
