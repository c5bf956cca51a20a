"""What a model looks like to freezeflow: its parameters, their names, its blocks and layers.

A :class:`ModelIndex` is built from a model each time a policy is resolved. It knows every
name of every parameter (tied parameters have several), the module that owns each name, the
model's *blocks* in order from input to output, and its *layers* (modules that own parameters
directly, the Keras ``model.layers`` idiom).

Blocks are found generically (see :func:`find_blocks`) and can be overridden per model with
:func:`set_blocks`.
"""

from __future__ import annotations

import weakref
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from freezeflow.errors import PolicyError, PolicyTypeError, nearest, quote_list

__all__ = [
    "NORM_TYPES",
    "Block",
    "ModelIndex",
    "clear_blocks",
    "find_blocks",
    "is_norm_layer",
    "set_blocks",
]

NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)
"""Module types treated as norm layers (BatchNorm*, InstanceNorm*, SyncBatchNorm, GroupNorm,
LayerNorm, RMSNorm, LocalResponseNorm)."""

_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


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


def _is_composite(module: nn.Module) -> bool:
    """Two or more modules under it (itself included) own parameters."""
    owners = 0
    for m in module.modules():
        if next(m.parameters(recurse=False), None) is not None:
            owners += 1
            if owners >= 2:
                return True
    return False


def _is_repeated(container: nn.Module) -> bool:
    """A container of repeated blocks: >= 2 composite children of one type, or >= 4 leaf
    layers of one type (VGG's ``features``)."""
    if not isinstance(container, _CONTAINERS):
        return False
    children = [c for _, c in _param_children(container)]
    composite = Counter(type(c) for c in children if _is_composite(c))
    leaves = Counter(type(c) for c in children if not _is_composite(c))
    return any(v >= 2 for v in composite.values()) or any(v >= 4 for v in leaves.values())


def _has_trunk(module: nn.Module) -> bool:
    return any(_is_repeated(m) for m in module.modules())


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _discover(model: nn.Module) -> list[Block]:
    entries: list[list[str]] = []  # module paths per block
    loose: list[list[str]] = []  # loose parameter names per block
    pending: list[str] = []  # loose parameters seen before the first block

    def attach(module: nn.Module, prefix: str) -> None:
        names = [_join(prefix, n) for n, _ in module.named_parameters(recurse=False)]
        if not names:
            return
        if loose:
            loose[-1].extend(names)
        else:
            pending.extend(names)

    def emit(path: str) -> None:
        entries.append([path])
        loose.append([])

    def expand(container: nn.Module, prefix: str) -> None:
        attach(container, prefix)
        for name, child in _param_children(container):
            path = _join(prefix, name)
            if _is_repeated(child):
                expand(child, path)
            else:
                emit(path)

    def walk(module: nn.Module, prefix: str) -> None:
        attach(module, prefix)
        for name, child in _param_children(module):
            path = _join(prefix, name)
            if _is_repeated(child):
                expand(child, path)
            elif _has_trunk(child) and len(_param_children(child)) >= 1:
                walk(child, path)
            else:
                emit(path)

    walk(model, "")
    if not entries:  # a model that owns its parameters directly (e.g. a bare nn.Linear)
        return [Block(name="<root>", modules=("",))]
    if pending:
        loose[0] = pending + loose[0]

    # merge a norm layer into the single leaf layer just before it (conv1 + bn1 = the stem)
    modules = dict(model.named_modules(remove_duplicate=False))
    merged_m: list[list[str]] = []
    merged_p: list[list[str]] = []
    for mods, params in zip(entries, loose):
        prev = merged_m[-1] if merged_m else None
        if (
            prev is not None
            and len(mods) == 1
            and is_norm_layer(modules[mods[0]])
            and not _is_composite(modules[prev[-1]])
            and not is_norm_layer(modules[prev[-1]])
        ):
            prev.extend(mods)
            merged_p[-1].extend(params)
        else:
            merged_m.append(list(mods))
            merged_p.append(list(params))
    return [
        Block(name="+".join(m), modules=tuple(m), params=tuple(p))
        for m, p in zip(merged_m, merged_p)
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
                    f"{type(model).__name__}; nearest: {near}"
                )
        out.append(Block(name="+".join(names), modules=tuple(mods), params=tuple(loose)))
    _OVERRIDES[model] = tuple(out)


def clear_blocks(model: nn.Module) -> None:
    """Forget a :func:`set_blocks` override: blocks are found automatically again."""
    _OVERRIDES.pop(model, None)


def find_blocks(model: nn.Module) -> list[Block]:
    """The blocks of ``model`` from input to output.

    Containers of repeated blocks (``Sequential``/``ModuleList``/``ModuleDict`` holding two
    or more sub-networks of one type, or four or more layers of one type) are expanded; a module
    that holds such a container deep inside (a trunk: ``BertModel``, a ViT ``encoder``) is
    walked into; everything else is one block. A norm layer right after a single layer joins
    it (``conv1+bn1``). Loose parameters (a ViT's ``class_token``) go with the block before
    them, or the first block. Modules without parameters are skipped. Order is registration
    order; override it with :func:`set_blocks`.

    Example:
        >>> import torchvision, freezeflow as ff
        >>> [b.name for b in ff.find_blocks(torchvision.models.resnet18())][:3]
        ['conv1+bn1', 'layer1.0', 'layer1.1']
    """
    override = _OVERRIDES.get(model)
    if override is not None:
        return list(override)
    return _discover(model)


# --------------------------------------------------------------------------- the index


@dataclass
class ModelIndex:
    """Everything a policy needs to know about one model, computed once per resolution."""

    model: nn.Module
    params: list[nn.Parameter] = field(default_factory=list)
    """Unique parameters in model order."""
    aliases: list[str] = field(default_factory=list)
    """Every name of every parameter (tied parameters have several)."""
    alias_param: list[int] = field(default_factory=list)
    """For each alias, the index of its parameter in :attr:`params`."""
    param_aliases: list[list[int]] = field(default_factory=list)
    """For each parameter, the indices of its aliases."""
    modules: dict[str, nn.Module] = field(default_factory=dict)

    @classmethod
    def build(cls, model: nn.Module) -> ModelIndex:
        if not isinstance(model, nn.Module):
            raise PolicyTypeError(
                f"expected a torch.nn.Module, got {model!r} of type {type(model).__name__}; "
                "hint: pass the model itself, not its parameters or state_dict"
            )
        idx = cls(model=model)
        seen: dict[int, int] = {}
        for name, p in model.named_parameters(remove_duplicate=False):
            pid = seen.get(id(p))
            if pid is None:
                pid = seen[id(p)] = len(idx.params)
                idx.params.append(p)
                idx.param_aliases.append([])
            idx.param_aliases[pid].append(len(idx.aliases))
            idx.aliases.append(name)
            idx.alias_param.append(pid)
        idx.modules = dict(model.named_modules(remove_duplicate=False))
        return idx

    @property
    def names(self) -> list[str]:
        """The primary (first) name of each parameter."""
        return [self.aliases[a[0]] for a in self.param_aliases]

    def owner(self, alias: int) -> str:
        """Path of the module that owns alias ``alias`` directly ('' for the root)."""
        name = self.aliases[alias]
        return name.rpartition(".")[0]

    def ancestors(self, alias: int) -> Iterator[str]:
        """Module paths enclosing an alias, innermost first, '' (the root) last."""
        path = self.owner(alias)
        while True:
            yield path
            if not path:
                return
            path = path.rpartition(".")[0]

    # -- depth ---------------------------------------------------------------------------

    _blocks: list[Block] | None = None
    _layers: list[str] | None = None

    @property
    def blocks(self) -> list[Block]:
        if self._blocks is None:
            self._blocks = find_blocks(self.model)
        return self._blocks

    @property
    def layers(self) -> list[str]:
        """Paths of modules that own parameters directly, in registration order."""
        if self._layers is None:
            seen: set[int] = set()
            out: list[str] = []
            for path, m in self.model.named_modules():
                if id(m) in seen:
                    continue
                seen.add(id(m))
                if next(m.parameters(recurse=False), None) is not None:
                    out.append(path)
            self._layers = out
        return self._layers

    _block_of: list[int] | None = None

    def block_of_alias(self) -> list[int]:
        """For each alias, the index of the block that covers it (-1 if none); computed once
        per index (several depth policies in one expression share it)."""
        if self._block_of is not None:
            return self._block_of
        out = [-1] * len(self.aliases)
        for a, name in enumerate(self.aliases):
            for b, block in enumerate(self.blocks):
                if block.covers(name):
                    out[a] = b
                    break
        self._block_of = out
        return out

    def layer_of_alias(self) -> list[int]:
        """For each alias, the index of the layer that owns it (-1 if none)."""
        by_id = {id(self.modules[p]): i for i, p in enumerate(self.layers)}
        return [by_id.get(id(self.modules[self.owner(a)]), -1) for a in range(len(self.aliases))]

    def param_tensor(self, i: int) -> torch.Tensor:
        return self.params[i]
