"""Selectors: policies that pick parameters by a regular expression, a module type, norm
layers, or any predicate. Names and globs are :func:`~freezeflow.name` (in
:mod:`~freezeflow.core.policy`, since a plain string is a name); depth is in
:mod:`~freezeflow.core.depth`."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from freezeflow.core.discovery import is_norm_layer
from freezeflow.core.index import ModelIndex
from freezeflow.core.matching import fullmatch, match_names
from freezeflow.core.policy import Cache, FreezePolicy, Result, from_aliases
from freezeflow.errors import PolicyError, PolicyTypeError, nearest, quote_list

__all__ = ["NormLayers", "OfType", "Regex", "Where", "norm_layers", "of_type", "regex", "where"]


@dataclass(frozen=True, repr=False)
class Regex(FreezePolicy):
    pattern: str
    strict: bool = True

    def _eval(self, idx: ModelIndex, cache: Cache) -> Result:
        rx = re.compile(self.pattern)
        found, _ = match_names(idx, fullmatch(rx))
        if not found and self.strict:
            raise PolicyError(
                f"regex({self.pattern!r}) fully matches no module or parameter name of "
                f"{type(idx.model).__name__}; nearest: "
                f"{quote_list(nearest(self.pattern, idx.aliases))}; hint: the regex must "
                "match the whole dotted name, e.g. r'layer4\\..*'"
            )
        return from_aliases(idx, found)

    def __repr__(self) -> str:
        return f"regex({self.pattern!r}{'' if self.strict else ', strict=False'})"


def regex(pattern: str, *, strict: bool = True) -> FreezePolicy:
    """Parameters whose dotted name, or an enclosing module's path, fully matches ``pattern``.

    Example:
        >>> import torchvision, freezeflow as ff
        >>> model = torchvision.models.resnet18()
        >>> ff.regex(r"layer[34]\\.\\d+\\.conv1\\.weight").select(model).names[:2]
        ('layer3.0.conv1.weight', 'layer3.1.conv1.weight')
    """
    if not isinstance(pattern, str):
        raise PolicyTypeError(
            f"regex() takes a string, got {pattern!r} of type {type(pattern).__name__}; "
            r"hint: regex(r'layer4\..*')"
        )
    try:
        re.compile(pattern)
    except re.error as exc:
        raise PolicyError(
            f"regex({pattern!r}) is not a valid regular expression: {exc}; hint: escape "
            "literal dots and brackets, e.g. r'layer4\\.0\\..*'"
        ) from exc
    return Regex(pattern, strict)


@dataclass(frozen=True, repr=False)
class OfType(FreezePolicy):
    types: tuple[type[nn.Module], ...]

    def _eval(self, idx: ModelIndex, cache: Cache) -> Result:
        typed = {path for path, m in idx.modules.items() if isinstance(m, self.types)}
        return from_aliases(
            idx, (a for a in range(len(idx.aliases)) if any(m in typed for m in idx.ancestors(a)))
        )

    def __repr__(self) -> str:
        return f"of_type({', '.join(t.__qualname__ for t in self.types)})"


def of_type(*types: type[nn.Module]) -> FreezePolicy:
    """Parameters of modules of the given types (and of everything inside them).

    Example:
        >>> import torch.nn as nn, torchvision, freezeflow as ff
        >>> len(ff.of_type(nn.Linear).select(torchvision.models.resnet18()))
        2
    """
    if not types:
        raise PolicyError("of_type() needs at least one module type; hint: of_type(nn.Linear)")
    for t in types:
        if not (isinstance(t, type) and issubclass(t, nn.Module)):
            raise PolicyTypeError(
                f"of_type() takes nn.Module subclasses, got {t!r} of type "
                f"{type(t).__name__}; hint: of_type(nn.BatchNorm2d), not of_type(nn.BatchNorm2d(8))"
            )
    return OfType(tuple(types))


@dataclass(frozen=True, repr=False)
class NormLayers(FreezePolicy):
    def _eval(self, idx: ModelIndex, cache: Cache) -> Result:
        norms = {path for path, m in idx.modules.items() if is_norm_layer(m)}
        return from_aliases(idx, (a for a in range(len(idx.aliases)) if idx.owner(a) in norms))

    def __repr__(self) -> str:
        return "norm_layers()"


def norm_layers() -> FreezePolicy:
    """Parameters of every normalisation layer (BatchNorm, LayerNorm, GroupNorm, RMSNorm,
    InstanceNorm and look-alikes; see :func:`freezeflow.core.discovery.is_norm_layer`)."""
    return NormLayers()


@dataclass(frozen=True, repr=False)
class Where(FreezePolicy):
    predicate: Callable[[str, nn.Parameter, nn.Module], bool]
    label: str = ""

    def _eval(self, idx: ModelIndex, cache: Cache) -> Result:
        hits = []
        for a, alias in enumerate(idx.aliases):
            param = idx.params[idx.alias_param[a]]
            if self.predicate(alias, param, idx.modules[idx.owner(a)]):
                hits.append(a)
        return from_aliases(idx, hits)

    def __repr__(self) -> str:
        label = self.label or getattr(self.predicate, "__name__", repr(self.predicate))
        return f"where({label})"


def where(
    predicate: Callable[[str, nn.Parameter, nn.Module], bool], label: str = ""
) -> FreezePolicy:
    """Parameters for which ``predicate(name, parameter, owning_module)`` is true.

    Example:
        >>> import torchvision, freezeflow as ff
        >>> biases = ff.where(lambda n, p, m: p.ndim == 1, label="1-d")
        >>> biases
        where(1-d)
        >>> len(biases.select(torchvision.models.resnet18()))
        41
    """
    if not callable(predicate):
        raise PolicyTypeError(
            f"where() takes a callable (name, param, module) -> bool, got {predicate!r} of type "
            f"{type(predicate).__name__}; hint: where(lambda name, p, m: p.ndim == 1)"
        )
    return Where(predicate, label)
