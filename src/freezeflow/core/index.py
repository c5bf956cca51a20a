"""What a model looks like to a policy: every name of every parameter, the owning modules, the
blocks and the layers.

A :class:`ModelIndex` is built once per question about a model (one policy resolution, one
:func:`~freezeflow.unfreezer.layout.layout`) and handed to whatever resolves against it:
``policy.select(model, index=idx)`` reuses it. Blocks, layers and the block of each name are
computed on first use and kept for the index's lifetime.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

from torch import nn

from freezeflow.core.discovery import Block, find_blocks
from freezeflow.errors import PolicyTypeError

__all__ = ["ModelIndex"]


class ModelIndex:
    """Everything a policy needs to know about one model, computed once per question.

    Build it with :meth:`build` (or ``ModelIndex(model)``). The index reads the model when it
    is built and when a lazy attribute (:attr:`blocks`, :attr:`layers`) is first read; a
    model changed afterwards needs a new index.

    Attributes:
        model: the indexed model.
        params: unique parameters in model order.
        aliases: every name of every parameter (tied parameters have several).
        alias_param: for each alias, the index of its parameter in :attr:`params`.
        param_aliases: for each parameter, the indices of its aliases.
        modules: every module by dotted path (duplicates kept, '' for the root).

    Example:
        >>> import torch.nn as nn
        >>> from freezeflow.core.index import ModelIndex
        >>> idx = ModelIndex.build(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1)))
        >>> idx.names, [b.name for b in idx.blocks]
        (['0.weight', '0.bias', '1.weight', '1.bias'], ['0', '1'])
    """

    def __init__(self, model: nn.Module) -> None:
        if not isinstance(model, nn.Module):
            raise PolicyTypeError(
                f"expected a torch.nn.Module, got {model!r} of type {type(model).__name__}; "
                "hint: pass the model itself, not its parameters or state_dict"
            )
        self.model = model
        self.params: list[nn.Parameter] = []
        self.aliases: list[str] = []
        self.alias_param: list[int] = []
        self.param_aliases: list[list[int]] = []
        seen: dict[int, int] = {}
        for name, p in model.named_parameters(remove_duplicate=False):
            pid = seen.get(id(p))
            if pid is None:
                pid = seen[id(p)] = len(self.params)
                self.params.append(p)
                self.param_aliases.append([])
            self.param_aliases[pid].append(len(self.aliases))
            self.aliases.append(name)
            self.alias_param.append(pid)
        self.modules: dict[str, nn.Module] = dict(model.named_modules(remove_duplicate=False))

    @classmethod
    def build(cls, model: nn.Module) -> ModelIndex:
        """Index ``model``.

        Raises:
            PolicyTypeError: ``model`` is not an ``nn.Module``.
        """
        return cls(model)

    def __repr__(self) -> str:
        return (
            f"ModelIndex({type(self.model).__name__}, {len(self.params)} parameters, "
            f"{len(self.aliases)} names)"
        )

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

    @functools.cached_property
    def blocks(self) -> list[Block]:
        """The model's blocks, input to output (:func:`~freezeflow.core.find_blocks`)."""
        return find_blocks(self.model)

    @functools.cached_property
    def layers(self) -> list[str]:
        """Paths of modules that own parameters directly, in registration order."""
        seen: set[int] = set()
        out: list[str] = []
        for path, m in self.model.named_modules():
            if id(m) in seen:
                continue
            seen.add(id(m))
            if next(m.parameters(recurse=False), None) is not None:
                out.append(path)
        return out

    @functools.cached_property
    def _block_of(self) -> list[int]:
        out = [-1] * len(self.aliases)
        for a, name in enumerate(self.aliases):
            for b, block in enumerate(self.blocks):
                if block.covers(name):
                    out[a] = b
                    break
        return out

    def block_of_alias(self) -> list[int]:
        """For each alias, the index of the block that covers it (-1 if none); computed once
        per index (several depth policies in one expression share it)."""
        return self._block_of

    def block_of_param(self) -> list[int]:
        """For each parameter, the index of its block: a tied parameter takes the deepest
        (output-side) block of all its names (GPT-2's shared embedding and output matrix goes
        with the output head), and a name outside every block (possible with
        :func:`~freezeflow.core.set_blocks`) counts as the last block."""
        last = len(self.blocks) - 1
        out = [-1] * len(self.params)
        for a, b in enumerate(self.block_of_alias()):
            j = self.alias_param[a]
            out[j] = max(out[j], b if b >= 0 else last)
        return out

    def layer_of_alias(self) -> list[int]:
        """For each alias, the index of the layer that owns it (-1 if none)."""
        by_id = {id(self.modules[p]): i for i, p in enumerate(self.layers)}
        return [by_id.get(id(self.modules[self.owner(a)]), -1) for a in range(len(self.aliases))]
