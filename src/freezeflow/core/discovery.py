"""Block discovery: a model's blocks, from input to output, at the level of its repeated units.

Blocks are found generically (see :func:`find_blocks`) and can be overridden per model with
:func:`set_blocks`. :func:`is_norm_layer` says which modules are normalisation layers. What a
policy resolves against (every name of every parameter, the owning modules, the blocks and
layers) is :class:`~freezeflow.core.index.ModelIndex`.
"""

from __future__ import annotations

import functools
import weakref
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from torch import nn

from freezeflow._torch_internals import NORM_BASE
from freezeflow.errors import PolicyError, nearest, quote_list

__all__ = [
    "NORM_TYPES",
    "Block",
    "clear_blocks",
    "find_blocks",
    "is_norm_layer",
    "set_blocks",
]

NORM_TYPES: tuple[type[nn.Module], ...] = (
    NORM_BASE,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)
"""Module types treated as norm layers (BatchNorm*, InstanceNorm*, SyncBatchNorm, GroupNorm,
LayerNorm, RMSNorm, LocalResponseNorm)."""

_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
_UNIT_OWNERS = 3
"""A repeated unit owns parameters in at least this many layers (a conv-norm pair has two)."""


def is_norm_layer(module: nn.Module) -> bool:
    """Whether ``module`` is a normalisation layer.

    Besides the built-in types in :data:`NORM_TYPES`, any module whose class name ends in
    ``Norm``, ``Norm1d/2d/3d`` or contains ``BatchNorm`` (e.g. torchvision's
    ``FrozenBatchNorm2d``, timm's ``LayerNorm2d``) counts.
    """
    if isinstance(module, NORM_TYPES):
        return True
    cls = type(module).__name__
    return "BatchNorm" in cls or cls.endswith(("Norm", "Norm1d", "Norm2d", "Norm3d"))


@dataclass(frozen=True)
class Block:
    """One block of a model: a run of modules (and loose parameters) at one depth.

    Attributes:
        name: display name, the module paths joined by ``+`` (``"conv1+bn1"``).
        modules: dotted module paths that belong to the block.
        params: dotted names of loose parameters attached to the block (e.g. a ViT's
            ``class_token`` goes with the patch embedding).
    """

    name: str
    modules: tuple[str, ...]
    params: tuple[str, ...] = ()

    def covers(self, alias: str) -> bool:
        """Whether the parameter name ``alias`` lies in this block."""
        if alias in self.params:
            return True
        return any(m == "" or alias.startswith(m + ".") for m in self.modules)


# --------------------------------------------------------------------------- block discovery

_OVERRIDES: weakref.WeakKeyDictionary[nn.Module, tuple[Block, ...]] = weakref.WeakKeyDictionary()


def _has_params(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None


def _param_children(module: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, c) for n, c in module.named_children() if _has_params(c)]


def _owners(module: nn.Module) -> int:
    """How many modules under ``module`` (itself included) own parameters directly."""
    return sum(1 for m in module.modules() if next(m.parameters(recurse=False), None) is not None)


def _is_composite(module: nn.Module) -> bool:
    """Two or more modules under it (itself included) own parameters."""
    return _owners(module) >= 2


def _numbered(names: list[str]) -> bool:
    """``b1``, ``b2``, ...: one stem, different trailing numbers."""
    stems = {n.rstrip("0123456789") for n in names}
    return len(stems) == 1 and all(n[len(n.rstrip("0123456789")) :] for n in names)


def _is_repeated(module: nn.Module) -> bool:
    """A container of repeated blocks.

    A ``Sequential``/``ModuleList``/``ModuleDict`` with >= 2 composite children of one type
    or >= 4 leaf layers of one type (VGG's ``features``); a *subclass* of ``Sequential`` (a
    conv-norm-activation, a stem) needs its composite children to be units (>= 3
    parameter-owning layers each). Any other module counts when its children are numbered
    units of one type (timm's ``RegStage`` holding ``b1``, ``b2``, ...).
    """
    named = _param_children(module)
    children = [c for _, c in named]
    if not isinstance(module, _CONTAINERS):
        return (
            len(children) >= 2
            and len({type(c) for c in children}) == 1
            and not isinstance(children[0], _CONTAINERS)
            and _numbered([n for n, _ in named])
            and next(module.parameters(recurse=False), None) is None
            and all(_owners(c) >= _UNIT_OWNERS for c in children)
        )
    exact = type(module) in _CONTAINERS
    composite = Counter(
        type(c) for c in children if _is_composite(c) and (exact or _owners(c) >= _UNIT_OWNERS)
    )
    leaves = Counter(type(c) for c in children if not _is_composite(c))
    return any(v >= 2 for v in composite.values()) or any(v >= 4 for v in leaves.values())


def _holds_units(module: nn.Module) -> bool:
    """Whether a container of *units* lies inside ``module``: a repeated container whose
    children all have at least three parameter-owning layers (a ConvNeXt stage's ``blocks``),
    not the conv-norm pairs inside one unit (an MBConv's ``block``)."""
    for m in module.modules():
        if m is module or not _is_repeated(m):
            continue
        children = [c for _, c in _param_children(m)]
        kinds = Counter(type(c) for c in children)
        if max(kinds.values()) >= 2 and all(_owners(c) >= _UNIT_OWNERS for c in children):
            return True
    return False


def _has_trunk(module: nn.Module) -> bool:
    return any(_is_repeated(m) for m in module.modules())


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


@dataclass
class _Entry:
    modules: list[str]
    params: list[str] = field(default_factory=list)
    unit: bool = False
    """Emitted as one of the repeated units of a container (a ResNet basic block, a
    transformer layer), not a stem, a downsampling layer, a final norm or a head."""


def _walk(model: nn.Module) -> tuple[list[_Entry], list[str]]:
    """Blocks in registration order, and the loose parameters seen before the first one."""
    entries: list[_Entry] = []
    pending: list[str] = []

    def attach(module: nn.Module, prefix: str) -> None:
        names = [_join(prefix, n) for n, _ in module.named_parameters(recurse=False)]
        (entries[-1].params if entries else pending).extend(names)

    def expand(container: nn.Module, prefix: str) -> None:
        attach(container, prefix)
        children = _param_children(container)
        counts = Counter(type(c) for _, c in children)
        top = max(counts.values())
        for name, child in children:
            path = _join(prefix, name)
            if _is_repeated(child):
                expand(child, path)
            elif _holds_units(child):  # a stage: its downsampling layer, then its units
                walk(child, path)
            else:
                entries.append(_Entry([path], unit=counts[type(child)] == top))

    def walk(module: nn.Module, prefix: str) -> None:
        attach(module, prefix)
        children = _param_children(module)
        # a sibling of the same type as a repeated one is a unit too (timm RegNet's ``s1``
        # holds one block, ``s3`` several)
        stages = {
            type(c) for _, c in children if _is_repeated(c) and not isinstance(c, _CONTAINERS)
        }
        kinds = Counter(type(c) for _, c in children)
        for name, child in children:
            path = _join(prefix, name)
            if _is_repeated(child):
                expand(child, path)
            elif _holds_units(child):
                walk(child, path)
            elif kinds[type(child)] >= 2 and _owners(child) >= _UNIT_OWNERS:
                # a unit among siblings of its type (GoogLeNet's inception3a, inception3b...)
                entries.append(_Entry([path], unit=True))
            elif _has_trunk(child):
                walk(child, path)
            else:
                entries.append(_Entry([path], unit=type(child) in stages))

    walk(model, "")
    return entries, pending


def _merge(a: _Entry, b: _Entry) -> _Entry:
    return _Entry(a.modules + b.modules, a.params + b.params, a.unit or b.unit)


def _same_head(e: _Entry, head: _Entry, modules: dict[str, nn.Module]) -> bool:
    """``e`` is one more head beside ``head``: same type, same first word (LeViT's ``head``
    and ``head_dist``; not a ``pooler`` before a ``classifier``)."""
    a, b = e.modules[0], head.modules[0]
    word = a.rpartition(".")[2].split("_")[0]
    return type(modules[a]) is type(modules[b]) and word == b.rpartition(".")[2].split("_")[0]


def _discover(model: nn.Module) -> list[Block]:
    entries, pending = _walk(model)
    if not entries:  # a model that owns its parameters directly (e.g. a bare nn.Linear)
        return [Block(name="<root>", modules=("",))]
    entries[0].params[:0] = pending
    modules = dict(model.named_modules(remove_duplicate=False))

    # a norm layer right after a single leaf layer joins it (conv1 + bn1 = the stem)
    merged: list[_Entry] = []
    for e in entries:
        prev = merged[-1] if merged else None
        if (
            prev is not None
            and len(e.modules) == 1
            and is_norm_layer(modules[e.modules[0]])
            and not _is_composite(modules[prev.modules[-1]])
            and not is_norm_layer(modules[prev.modules[-1]])
        ):
            merged[-1] = _merge(prev, e)
        else:
            merged.append(e)

    units = [i for i, e in enumerate(merged) if e.unit]
    if units:
        last = units[-1]
        # a module whose parameters all belong to earlier blocks (T5's encoder.embed_tokens,
        # tied to ``shared``) is no depth of its own, except after the last unit (a tied head)
        seen: set[int] = set()
        kept: list[_Entry] = []
        for i, e in enumerate(merged):
            owned = {id(p) for m in e.modules for p in modules[m].parameters()}
            if i <= last and owned and owned <= seen and not e.params:
                continue
            seen |= owned
            kept.append(e)
        last = max(i for i, e in enumerate(kept) if e.unit)
        first = min(i for i, e in enumerate(kept) if e.unit)
        # what comes before the first unit is one block (the stem, the embeddings); after the
        # last unit, the last module (and a sibling head: LeViT's head and head_dist) is the
        # head, and what lies between (a final norm, a conv head, BERT's pooler) joins the
        # last unit, as timm's own grouping does
        stem, tail = kept[:first], kept[last + 1 :]
        merged = kept[first : last + 1]
        if stem:
            merged.insert(0, functools.reduce(_merge, stem))
        if tail:
            cut = next(i for i, e in enumerate(tail) if _same_head(e, tail[-1], modules))
            if cut:
                merged[-1] = functools.reduce(_merge, tail[:cut], merged[-1])
            merged.append(functools.reduce(_merge, tail[cut:]))
    return [
        Block(name="+".join(e.modules), modules=tuple(e.modules), params=tuple(e.params))
        for e in merged
    ]


def set_blocks(model: nn.Module, blocks: Sequence[str | Sequence[str]]) -> None:
    """Override the blocks freezeflow finds in ``model`` (input to output).

    Each entry is a module path (``"layer4"``), a parameter name, or a list of them that form
    one block. Depth policies (:func:`~freezeflow.first`, :func:`~freezeflow.last`,
    :func:`~freezeflow.blocks`) and layer-wise LR decay then use these blocks.

    Raises:
        PolicyError: if a name is neither a module path nor a parameter name of ``model``.

    Example:
        >>> import torch.nn as nn, freezeflow as ff
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2), nn.Linear(2, 1))
        >>> ff.set_blocks(net, ["0", ["2", "3"]])
        >>> [b.name for b in ff.find_blocks(net)]
        ['0', '2+3']
    """
    modules = dict(model.named_modules(remove_duplicate=False))
    params = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    out: list[Block] = []
    if isinstance(blocks, str) or not len(blocks):
        raise PolicyError(
            f"set_blocks() needs a non-empty list of blocks, got {blocks!r}; "
            "hint: pass e.g. ['conv1', 'layer1', 'layer2', 'fc']"
        )
    for entry in blocks:
        names = [entry] if isinstance(entry, str) else list(entry)
        mods: list[str] = []
        loose: list[str] = []
        for n in names:
            if n in modules:
                mods.append(n)
            elif n in params:
                loose.append(n)
            else:
                near = quote_list(nearest(n, [*modules, *params]))
                raise PolicyError(
                    f"set_blocks(): {n!r} is not a module or parameter of "
                    f"{type(model).__name__}; nearest: {near}; hint: blocks are named by the "
                    "dotted paths of model.named_modules() or model.named_parameters()"
                )
        out.append(Block(name="+".join(names), modules=tuple(mods), params=tuple(loose)))
    _OVERRIDES[model] = tuple(out)


def clear_blocks(model: nn.Module) -> None:
    """Forget a :func:`set_blocks` override: blocks are found automatically again."""
    _OVERRIDES.pop(model, None)


def find_blocks(model: nn.Module) -> list[Block]:
    """The blocks of ``model`` from input to output, at the level of its repeated units.

    A *unit* is one of the repeated sub-networks a model is made of: a ResNet basic block, a
    ConvNeXt or Swin block, an MBConv, a transformer layer. Discovery walks into every module
    that holds units, however deep (a ConvNeXt stage is walked into: its downsampling layer is
    a block, then each of its units). Then:

    - what comes before the first unit is one block (the stem, the embeddings, loose
      parameters such as a ViT's ``cls_token``);
    - the last module is the head block (with a sibling head of its type: LeViT's ``head``
      and ``head_dist``);
    - what lies between the last unit and the head (a final norm, a conv head, BERT's
      pooler) joins the last unit, as timm's own grouping does;
    - a module whose parameters all belong to earlier blocks (T5's ``encoder.embed_tokens``)
      adds no depth, except a tied output head;
    - a norm layer right after a single layer joins it (``conv1+bn1``); modules without
      parameters are skipped.

    Order is registration order. Depth is counted in units, not in parameters: the last two
    blocks of a ConvNeXt backbone are its last two blocks, about half of its parameters
    because the last stage is the widest. Override the blocks with :func:`set_blocks`.

    Example:
        >>> import torchvision, freezeflow as ff
        >>> [b.name for b in ff.find_blocks(torchvision.models.resnet18())][:3]
        ['conv1+bn1', 'layer1.0', 'layer1.1']
    """
    override = _OVERRIDES.get(model)
    if override is not None:
        return list(override)
    return _discover(model)
