"""Policies: immutable descriptions of a set of parameters.

A policy knows nothing about a model until it is resolved with :meth:`Policy.select`.
Policies combine with ``|`` (union), ``&`` (intersection), ``-`` (difference) and ``~``
(complement) into an expression tree of frozen dataclasses: repr, equality, hashing and
pickling come for free.

Resolution works on every *name* of a parameter (a tied parameter has several) and on
parameters; see :meth:`Policy.select` for how tied parameters are decided.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, TypeAlias

from torch import nn

from freezeflow.core.blocks import ModelIndex, is_norm_layer
from freezeflow.core.selection import Selection
from freezeflow.errors import (
    EmptySelectionError,
    PolicyError,
    PolicyTypeError,
    TiedParameterError,
    nearest,
    quote_list,
)

__all__ = [
    "ALL",
    "NONE",
    "Policy",
    "PolicyLike",
    "as_policy",
    "blocks",
    "everything",
    "first",
    "last",
    "layers",
    "name",
    "norm_layers",
    "nothing",
    "of_type",
    "policy_from_data",
    "policy_to_data",
    "regex",
    "where",
]

Ids: TypeAlias = frozenset[int]
Result: TypeAlias = tuple[Ids, Ids]  # (parameter indices, alias indices)
Cache: TypeAlias = dict["Policy", Result]


class Policy:
    """Base class of all policies. Build them with the constructors (:func:`name`,
    :func:`regex`, :func:`of_type`, :func:`blocks`, :func:`where`...), not directly."""

    __slots__ = ()

    # -- algebra -------------------------------------------------------------------------
    def __or__(self, other: PolicyLike) -> Policy:
        return _union(self, as_policy(other, "the right side of |"))

    def __ror__(self, other: PolicyLike) -> Policy:
        return _union(as_policy(other, "the left side of |"), self)

    def __and__(self, other: PolicyLike) -> Policy:
        return _intersection(self, as_policy(other, "the right side of &"))

    def __rand__(self, other: PolicyLike) -> Policy:
        return _intersection(as_policy(other, "the left side of &"), self)

    def __sub__(self, other: PolicyLike) -> Policy:
        return Difference(self, as_policy(other, "the right side of -"))

    def __rsub__(self, other: PolicyLike) -> Policy:
        return Difference(as_policy(other, "the left side of -"), self)

    def __invert__(self) -> Policy:
        if isinstance(self, Complement):
            return self.inner
        return Complement(self)

    # -- resolution ----------------------------------------------------------------------
    def select(self, model: nn.Module, *, allow_empty: bool = False) -> Selection:
        """Resolve this policy on ``model``.

        Args:
            model: any ``nn.Module``.
            allow_empty: return an empty selection instead of raising when nothing matches.

        Returns:
            The selected parameters, in model order, matched by identity.

        Raises:
            EmptySelectionError: nothing was selected (and ``allow_empty`` is false).
            PolicyError: a name, pattern or depth does not fit this model.
            TiedParameterError: the policy selects one name of a tied parameter and
                excludes another (``name("embed") - name("lm_head")`` when the two share a
                weight).

        Tied parameters: a parameter is selected when the policy, applied to parameters,
        includes it (a name matches a parameter when it matches any of its names). If the
        same policy applied to the individual names keeps some name of a parameter that it
        does not select, the policy contradicts itself and raises.
        """
        idx = ModelIndex.build(model)
        params, aliases = self._resolve(idx, {})
        contradictions = [
            i
            for i in range(len(idx.params))
            if i not in params and aliases.intersection(idx.param_aliases[i])
        ]
        if contradictions:
            i = contradictions[0]
            kept = [idx.aliases[a] for a in idx.param_aliases[i] if a in aliases]
            dropped = [idx.aliases[a] for a in idx.param_aliases[i] if a not in aliases]
            # every name can be kept while the parameter is not (~(a & b) where a and b each
            # hold the parameter through a different name): a contradiction all the same
            what = (
                f"selects {quote_list(kept)} but excludes {quote_list(dropped)}"
                if dropped
                else f"keeps the names {quote_list(kept)} but not the parameter they share"
            )
            every = ", ".join(repr(idx.aliases[a]) for a in idx.param_aliases[i])
            raise TiedParameterError(
                f"{self!r} {what}, and these are one tied parameter of {type(model).__name__}; "
                "hint: select or exclude all names of a tied parameter together, e.g. "
                f"name({every})"
            )
        if not params and not allow_empty:
            raise EmptySelectionError(
                f"{self!r} selected 0 of {len(idx.params)} parameters of "
                f"{type(model).__name__}; hint: check the policy against "
                f"freezeflow.core.summary(model), or pass allow_empty=True"
            )
        order = sorted(params)
        return Selection(
            [idx.aliases[idx.param_aliases[i][0]] for i in order],
            [idx.params[i] for i in order],
            [tuple(idx.aliases[a] for a in idx.param_aliases[i]) for i in order],
            model_name=type(model).__name__,
            total=len(idx.params),
        )

    def _resolve(self, idx: ModelIndex, cache: Cache) -> Result:
        hit = cache.get(self)
        if hit is None:
            hit = cache[self] = self._eval(idx, cache)
        return hit

    def _eval(self, idx: ModelIndex, cache: Cache) -> Result:  # pragma: no cover - abstract
        raise NotImplementedError


PolicyLike: TypeAlias = "Policy | str | Iterable[str]"


def as_policy(value: object, what: str = "policy") -> Policy:
    """Turn ``value`` into a policy: a policy is kept, a string or a list of strings
    becomes :func:`name`. Anything else raises :class:`PolicyTypeError`."""
    if isinstance(value, Policy):
        return value
    if isinstance(value, str):
        return name(value)
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        return name(*value)
    raise PolicyTypeError(
        f"{what} must be a freezeflow Policy, a name or a list of names, got {value!r} "
        f"of type {type(value).__name__}; hint: build one with freezeflow.name('layer4'), "
        "freezeflow.last(2), freezeflow.of_type(nn.Linear)..."
    )


def _from_aliases(idx: ModelIndex, aliases: Iterable[int]) -> Result:
    a = frozenset(aliases)
    return frozenset(idx.alias_param[i] for i in a), a


# --------------------------------------------------------------------------- combinators


@dataclass(frozen=True, repr=False)
class Union(Policy):
    parts: tuple[Policy, ...]

    def _eval(self, idx: ModelIndex, cache: Cache) -> Result:
        p: set[int] = set()
        a: set[int] = set()
        for part in self.parts:
            pp, aa = part._resolve(idx, cache)
            p |= pp
            a |= aa
        return frozenset(p), frozenset(a)

    def __repr__(self) -> str:
        return " | ".join(_wrap(x, Union) for x in self.parts)


@dataclass(frozen=True, repr=False)
class Intersection(Policy):
    parts: tuple[Policy, ...]

    def _eval(self, idx: ModelIndex, cache: Cache) -> Result:
        p, a = self.parts[0]._resolve(idx, cache)
        for part in self.parts[1:]:
            pp, aa = part._resolve(idx, cache)
            p, a = p & pp, a & aa
        return p, a

    def __repr__(self) -> str:
        return " & ".join(_wrap(x, Intersection) for x in self.parts)


@dataclass(frozen=True, repr=False)
class Difference(Policy):
    left: Policy
    right: Policy

    def _eval(self, idx: ModelIndex, cache: Cache) -> Result:
        lp, la = self.left._resolve(idx, cache)
        rp, ra = self.right._resolve(idx, cache)
        return lp - rp, la - ra

    def __repr__(self) -> str:
        return f"{_wrap(self.left, Difference)} - {_wrap(self.right, None)}"


@dataclass(frozen=True, repr=False)
class Complement(Policy):
    inner: Policy

    def _eval(self, idx: ModelIndex, cache: Cache) -> Result:
        p, a = self.inner._resolve(idx, cache)
        return (
            frozenset(range(len(idx.params))) - p,
            frozenset(range(len(idx.aliases))) - a,
        )

    def __repr__(self) -> str:
        return f"~{_wrap(self.inner, None)}"


def _wrap(p: Policy, same: type | None) -> str:
    simple = not isinstance(p, (Union, Intersection, Difference)) or type(p) is same
    return repr(p) if simple else f"({p!r})"


def _union(a: Policy, b: Policy) -> Policy:
    parts = [
        *(a.parts if isinstance(a, Union) else (a,)),
        *(b.parts if isinstance(b, Union) else (b,)),
    ]
    parts = list(dict.fromkeys(parts))
    return parts[0] if len(parts) == 1 else Union(tuple(parts))


def _intersection(a: Policy, b: Policy) -> Policy:
    parts = [
        *(a.parts if isinstance(a, Intersection) else (a,)),
        *(b.parts if isinstance(b, Intersection) else (b,)),
    ]
    parts = list(dict.fromkeys(parts))
    return parts[0] if len(parts) == 1 else Intersection(tuple(parts))


# --------------------------------------------------------------------------- leaves


@dataclass(frozen=True, repr=False)
class _All(Policy):
    def _eval(self, idx: ModelIndex, cache: Cache) -> Result:
        return frozenset(range(len(idx.params))), frozenset(range(len(idx.aliases)))

    def __repr__(self) -> str:
        return "everything()"


@dataclass(frozen=True, repr=False)
class _Nothing(Policy):
    def _eval(self, idx: ModelIndex, cache: Cache) -> Result:
        return frozenset(), frozenset()

    def __repr__(self) -> str:
        return "nothing()"


ALL: Policy = _All()
"""Every parameter of the model."""
NONE: Policy = _Nothing()
"""No parameter."""


def everything() -> Policy:
    """Every parameter. ``~everything()`` is :func:`nothing`."""
    return ALL


def nothing() -> Policy:
    """No parameter (useful as the start of a union built in a loop)."""
    return NONE


@lru_cache(maxsize=512)
def _glob_regex(pattern: str) -> re.Pattern[str]:
    """``*`` matches within one dotted component, ``**`` across components, ``?`` one
    character, ``[...]`` a character class."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^.]*")
        elif c == "?":
            out.append("[^.]")
        elif c == "[":
            end = pattern.find("]", i + 1)
            if end == -1:
                raise PolicyError(
                    f"glob pattern {pattern!r} has an unclosed '['; hint: escape it as [[] or "
                    "use regex()"
                )
            body = pattern[i + 1 : end]
            if body.startswith("!"):
                body = "^." + body[1:]  # like '?', a negated class never matches the dot
            out.append(f"[{body}]")
            i = end + 1
            continue
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out))


def _fullmatch(rx: re.Pattern[str]) -> Callable[[str], bool]:
    return lambda s: rx.fullmatch(s) is not None


def _match_names(idx: ModelIndex, match: Callable[[str], bool]) -> tuple[set[int], bool]:
    """Aliases whose own name, or the path of a module enclosing them, matches."""
    modules = {path for path in idx.modules if path and match(path)}
    hits = set()
    for a, alias in enumerate(idx.aliases):
        if match(alias) or any(m in modules for m in idx.ancestors(a)):
            hits.add(a)
    return hits, bool(modules)


@dataclass(frozen=True, repr=False)
class Name(Policy):
    patterns: tuple[str, ...]
    strict: bool = True

    def _eval(self, idx: ModelIndex, cache: Cache) -> Result:
        hits: set[int] = set()
        for pattern in self.patterns:
            rx = _glob_regex(pattern)
            found, _ = _match_names(idx, _fullmatch(rx))
            if not found and self.strict:
                owners = {a.rpartition(".")[0] for a in idx.aliases}
                with_params = [
                    p
                    for p in idx.modules
                    if p and any(o == p or o.startswith(p + ".") for o in owners)
                ]
                candidates = [*with_params, *idx.aliases]
                raise PolicyError(
                    f"name({pattern!r}) matches no module or parameter of "
                    f"{type(idx.model).__name__}; nearest: "
                    f"{quote_list(nearest(pattern, candidates))}; hint: '*' matches within one "
                    "dotted component and '**' across them, or pass strict=False"
                )
            hits |= found
        return _from_aliases(idx, hits)

    def __repr__(self) -> str:
        args = ", ".join(repr(p) for p in self.patterns)
        return f"name({args}{'' if self.strict else ', strict=False'})"


def name(*patterns: str, strict: bool = True) -> Policy:
    """Parameters by module or parameter name, exact or glob.

    A pattern that names a module selects every parameter under it. Globs match whole dotted
    names: ``*`` stays within one component (``blocks.*.attn``), ``**`` crosses components
    (``**.bias``), ``?`` is one character and ``[..]`` a character class.

    Args:
        *patterns: one or more names or globs; the result is their union.
        strict: raise when a pattern matches nothing (the error lists the nearest names).

    Example:
        >>> import torchvision, freezeflow as ff
        >>> model = torchvision.models.resnet18()
        >>> ff.name("layer4", "fc").select(model).numel
        8906728
        >>> ff.name("layer4.*.bn?.bias").select(model).names
        ('layer4.0.bn1.bias', 'layer4.0.bn2.bias', 'layer4.1.bn1.bias', 'layer4.1.bn2.bias')
    """
    if not patterns:
        raise PolicyError("name() needs at least one pattern; hint: name('layer4')")
    for p in patterns:
        if not isinstance(p, str) or not p:
            raise PolicyTypeError(
                f"name() takes non-empty strings, got {p!r} of type {type(p).__name__}; "
                "hint: name('layer4', 'fc')"
            )
        _glob_regex(p)
    return Name(tuple(patterns), strict)


@dataclass(frozen=True, repr=False)
class Regex(Policy):
    pattern: str
    strict: bool = True

    def _eval(self, idx: ModelIndex, cache: Cache) -> Result:
        rx = re.compile(self.pattern)
        found, _ = _match_names(idx, _fullmatch(rx))
        if not found and self.strict:
            raise PolicyError(
                f"regex({self.pattern!r}) fully matches no module or parameter name of "
                f"{type(idx.model).__name__}; nearest: "
                f"{quote_list(nearest(self.pattern, idx.aliases))}; hint: the regex must "
                "match the whole dotted name, e.g. r'layer4\\..*'"
            )
        return _from_aliases(idx, found)

    def __repr__(self) -> str:
        return f"regex({self.pattern!r}{'' if self.strict else ', strict=False'})"


def regex(pattern: str, *, strict: bool = True) -> Policy:
    """Parameters whose dotted name, or an enclosing module's path, fully matches ``pattern``.

    Example:
        >>> import torchvision, freezeflow as ff
        >>> model = torchvision.models.resnet18()
        >>> ff.regex(r"layer[34]\\.\\d+\\.conv1\\.weight").select(model).names[:2]
        ('layer3.0.conv1.weight', 'layer3.1.conv1.weight')
    """
    if not isinstance(pattern, str):
        raise PolicyTypeError(
            f"regex() takes a string, got {pattern!r} of type {type(pattern).__name__}"
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
class OfType(Policy):
    types: tuple[type[nn.Module], ...]

    def _eval(self, idx: ModelIndex, cache: Cache) -> Result:
        typed = {path for path, m in idx.modules.items() if isinstance(m, self.types)}
        return _from_aliases(
            idx, (a for a in range(len(idx.aliases)) if any(m in typed for m in idx.ancestors(a)))
        )

    def __repr__(self) -> str:
        return f"of_type({', '.join(t.__qualname__ for t in self.types)})"


def of_type(*types: type[nn.Module]) -> Policy:
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
class NormLayers(Policy):
    def _eval(self, idx: ModelIndex, cache: Cache) -> Result:
        norms = {path for path, m in idx.modules.items() if is_norm_layer(m)}
        return _from_aliases(idx, (a for a in range(len(idx.aliases)) if idx.owner(a) in norms))

    def __repr__(self) -> str:
        return "norm_layers()"


def norm_layers() -> Policy:
    """Parameters of every normalisation layer (BatchNorm, LayerNorm, GroupNorm, RMSNorm,
    InstanceNorm and look-alikes; see :func:`freezeflow.core.blocks.is_norm_layer`)."""
    return NormLayers()


@dataclass(frozen=True, repr=False)
class Where(Policy):
    predicate: Callable[[str, nn.Parameter, nn.Module], bool]
    label: str = ""

    def _eval(self, idx: ModelIndex, cache: Cache) -> Result:
        hits = []
        for a, alias in enumerate(idx.aliases):
            param = idx.params[idx.alias_param[a]]
            if self.predicate(alias, param, idx.modules[idx.owner(a)]):
                hits.append(a)
        return _from_aliases(idx, hits)

    def __repr__(self) -> str:
        label = self.label or getattr(self.predicate, "__name__", repr(self.predicate))
        return f"where({label})"


def where(predicate: Callable[[str, nn.Parameter, nn.Module], bool], label: str = "") -> Policy:
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
            f"where() takes a callable (name, param, module) -> bool, got {predicate!r}"
        )
    return Where(predicate, label)


# --------------------------------------------------------------------------- depth


def _check_range(kind: str, start: int | None, stop: int | None) -> None:
    for v in (start, stop):
        if v is not None and (not isinstance(v, int) or isinstance(v, bool)):
            raise PolicyTypeError(
                f"{kind}() takes integer positions (or None), got {v!r} of type "
                f"{type(v).__name__}; hint: {kind}(-2) is the last two"
            )


def _slice_units(
    policy: Policy,
    kind: str,
    units: list[Any],
    start: int | None,
    stop: int | None,
    model: nn.Module,
) -> list[int]:
    n = len(units)
    picked = list(range(n))[slice(start, stop)]
    bad = [v for v in (start, stop) if v is not None and not -n <= v <= n]
    if bad or not picked:
        raise PolicyError(
            f"{policy!r} is out of range: {type(model).__name__} has {n} {kind}; "
            f"hint: positions run from 0 (input side) to {n - 1} (output side), or -1 for the "
            f"last; see freezeflow.core.summary(model)"
        )
    return picked


class _Depth(Policy):
    """Slices of a model's depth units (blocks or leaf layers), optionally counted only among
    what another policy selects."""

    kind = ""
    start: int | None
    stop: int | None
    among: Policy | None

    def _units(self, idx: ModelIndex) -> tuple[int, list[int]]:
        """(number of units, unit index of each alias or -1)."""
        raise NotImplementedError  # pragma: no cover

    def _eval(self, idx: ModelIndex, cache: Cache) -> Result:
        allowed = self.among._resolve(idx, cache)[1] if self.among is not None else None
        n, unit_of = self._units(idx)
        if allowed is None:
            units = list(range(n))
        else:
            present = {unit_of[a] for a in allowed}
            units = [u for u in range(n) if u in present]
        picked = {
            units[i] for i in _slice_units(self, self.kind, units, self.start, self.stop, idx.model)
        }
        hits = (a for a, u in enumerate(unit_of) if u in picked)
        if allowed is not None:
            hits = (a for a in hits if a in allowed)
        return _from_aliases(idx, hits)

    def __repr__(self) -> str:
        return _depth_repr(self.kind, self.start, self.stop, self.among)


@dataclass(frozen=True, repr=False)
class Blocks(_Depth):
    kind = "blocks"
    start: int | None
    stop: int | None
    among: Policy | None = None

    def _units(self, idx: ModelIndex) -> tuple[int, list[int]]:
        return len(idx.blocks), idx.block_of_alias()


@dataclass(frozen=True, repr=False)
class Layers(_Depth):
    kind = "layers"
    start: int | None
    stop: int | None
    among: Policy | None = None

    def _units(self, idx: ModelIndex) -> tuple[int, list[int]]:
        return len(idx.layers), idx.layer_of_alias()


def _depth_repr(kind: str, start: int | None, stop: int | None, among: Policy | None) -> str:
    if kind == "blocks" and start is None and stop is not None and stop > 0:
        core = f"first({stop}"
    elif kind == "blocks" and stop is None and start is not None and start < 0:
        core = f"last({-start}"
    else:
        core = f"{kind}({start}" + ("" if stop is None else f", {stop}")
    return core + ("" if among is None else f", among={among!r}") + ")"


def blocks(
    start: int | None = None, stop: int | None = None, *, among: PolicyLike | None = None
) -> Policy:
    """Blocks ``start:stop`` from input (0) to output (-1), Python slice rules.

    ``blocks(-2)`` is the last two blocks, ``blocks(0, 3)`` the first three. See
    :func:`freezeflow.find_blocks` for what a block is.

    Args:
        start, stop: slice bounds over the model's blocks.
        among: count only the blocks (and parameters) this policy selects, e.g. the
            backbone without the head: ``blocks(-2, among=~name("fc"))``.
    """
    _check_range("blocks", start, stop)
    return Blocks(start, stop, None if among is None else as_policy(among, "among"))


def first(n: int, *, among: PolicyLike | None = None) -> Policy:
    """The first ``n`` blocks (input side)."""
    _check_count("first", n)
    return blocks(None, n, among=among)


def last(n: int, *, among: PolicyLike | None = None) -> Policy:
    """The last ``n`` blocks (output side).

    Example:
        >>> import torchvision, freezeflow as ff
        >>> ff.last(2).select(torchvision.models.resnet18()).names[-2:]
        ('fc.weight', 'fc.bias')
    """
    _check_count("last", n)
    return blocks(-n, None, among=among)


def layers(
    start: int | None = None, stop: int | None = None, *, among: PolicyLike | None = None
) -> Policy:
    """Leaf layers ``start:stop`` (modules that own parameters), the Keras
    ``model.layers[-10:]`` idiom: ``layers(-10)``.

    Unlike Keras, layers without parameters (activations, pooling, additions) are not
    counted, since PyTorch models often reuse one activation module or have none.
    """
    _check_range("layers", start, stop)
    return Layers(start, stop, None if among is None else as_policy(among, "among"))


def _check_count(kind: str, n: object) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
        raise PolicyError(f"{kind}() takes a positive number of blocks, got {n!r}; hint: {kind}(2)")


# --------------------------------------------------------------------------- as plain data


def policy_to_data(policy: Policy) -> Any:
    """A policy as plain JSON/YAML values; :func:`policy_from_data` reads it back.

    ``where()`` predicates are code, not data, and raise :class:`PolicyError`.
    """
    if isinstance(policy, Name):
        pats: Any = policy.patterns[0] if len(policy.patterns) == 1 else list(policy.patterns)
        if not policy.strict:
            return {"name": pats, "strict": False}
        # a bare string that spells a keyword would read back as that keyword
        return {"name": pats} if pats in ("everything", "nothing", "norm_layers") else pats
    if isinstance(policy, Regex):
        return (
            {"regex": policy.pattern}
            if policy.strict
            else {"regex": policy.pattern, "strict": False}
        )
    if isinstance(policy, OfType):
        names = [f"{t.__module__}.{t.__qualname__}" for t in policy.types]
        return {"type": names[0] if len(names) == 1 else names}
    if isinstance(policy, NormLayers):
        return "norm_layers"
    if isinstance(policy, _All):
        return "everything"
    if isinstance(policy, _Nothing):
        return "nothing"
    if isinstance(policy, (Blocks, Layers)):
        kind = "blocks" if isinstance(policy, Blocks) else "layers"
        data: dict[str, Any] = {kind: [policy.start, policy.stop]}
        if policy.among is not None:
            data["among"] = policy_to_data(policy.among)
        return data
    if isinstance(policy, Union):
        return {"or": [policy_to_data(p) for p in policy.parts]}
    if isinstance(policy, Intersection):
        return {"and": [policy_to_data(p) for p in policy.parts]}
    if isinstance(policy, Difference):
        return {"minus": [policy_to_data(policy.left), policy_to_data(policy.right)]}
    if isinstance(policy, Complement):
        return {"not": policy_to_data(policy.inner)}
    raise PolicyError(
        f"{policy!r} cannot be written as data (a where() predicate is code); hint: use "
        "name(), regex(), of_type() or depth policies in schedules you save"
    )


def _import_type(path: str, where_: str) -> type[nn.Module]:
    import importlib

    module_name, _, attr = path.rpartition(".")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError, ValueError) as exc:
        raise PolicyError(
            f"{where_}: cannot import module type {path!r}; hint: write the full dotted path, "
            "e.g. 'torch.nn.BatchNorm2d'"
        ) from exc
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        raise PolicyError(f"{where_}: {path!r} is not an nn.Module subclass")
    return obj


def policy_from_data(data: Any, where_: str = "policy") -> Policy:
    """Read a policy written by :func:`policy_to_data` (see
    :meth:`freezeflow.Schedule.from_dict` for the format)."""
    if isinstance(data, str):
        if data == "everything":
            return ALL
        if data == "nothing":
            return NONE
        if data == "norm_layers":
            return norm_layers()
        return name(data)
    if isinstance(data, list) and data and all(isinstance(d, str) for d in data):
        return name(*data)
    if isinstance(data, dict) and data:
        key = next(iter(data))
        rest = {k: v for k, v in data.items() if k != key}
        sub = f"{where_}.{key}"

        def parts(value: Any) -> list[Policy]:
            if not isinstance(value, list) or not value:
                raise PolicyError(f"{sub}: expected a non-empty list of policies, got {value!r}")
            return [policy_from_data(v, f"{sub}[{i}]") for i, v in enumerate(value)]

        def extra(allowed: set[str]) -> None:
            bad = [k for k in rest if k not in allowed]
            if bad:
                raise PolicyError(f"{where_}: unknown option {bad[0]!r} for {key!r}")

        if key == "name":
            extra({"strict"})
            pats = data[key] if isinstance(data[key], list) else [data[key]]
            return name(*pats, strict=bool(rest.get("strict", True)))
        if key == "regex":
            extra({"strict"})
            return regex(data[key], strict=bool(rest.get("strict", True)))
        if key == "type":
            extra(set())
            paths = data[key] if isinstance(data[key], list) else [data[key]]
            return of_type(*(_import_type(p, sub) for p in paths))
        if key in ("blocks", "layers", "first", "last"):
            extra({"among"})
            among = policy_from_data(rest["among"], f"{where_}.among") if "among" in rest else None
            value = data[key]
            if key in ("first", "last"):
                return (first if key == "first" else last)(value, among=among)
            if not (isinstance(value, list) and len(value) == 2):
                raise PolicyError(f"{sub}: expected [start, stop], got {value!r}")
            return (blocks if key == "blocks" else layers)(*value, among=among)
        if key in ("or", "and"):
            extra(set())
            ps = parts(data[key])
            out = ps[0]
            for p in ps[1:]:
                out = (out | p) if key == "or" else (out & p)
            return out
        if key == "minus":
            extra(set())
            ps = parts(data[key])
            if len(ps) != 2:
                raise PolicyError(f"{sub}: expected [policy, policy_to_remove], got {data[key]!r}")
            return ps[0] - ps[1]
        if key == "not":
            extra(set())
            return ~policy_from_data(data[key], sub)
    raise PolicyError(
        f"{where_}: {data!r} is not a policy; expected a name, a list of names, "
        "'everything', 'norm_layers', or a mapping with one of the keys name, regex, type, "
        "blocks, layers, first, last, or, and, minus, not"
    )
