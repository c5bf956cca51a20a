"""Policies: immutable descriptions of a set of parameters.

A policy knows nothing about a model until it is resolved with :meth:`FreezePolicy.select`.
Policies combine with ``|`` (union), ``&`` (intersection), ``-`` (difference) and ``~``
(complement) into an expression tree of frozen dataclasses: repr, equality, hashing and
pickling come for free.

Resolution works on every *name* of a parameter (a tied parameter has several) and on
parameters; see :meth:`FreezePolicy.select` for how tied parameters are decided.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeAlias

from torch import nn

from freezeflow.core.index import ModelIndex
from freezeflow.core.matching import fullmatch, glob_regex, match_names
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
    "POLICY_READERS",
    "Cache",
    "FreezePolicy",
    "Name",
    "PolicyLike",
    "Result",
    "as_policy",
    "everything",
    "from_aliases",
    "index_for",
    "name",
    "nothing",
]

Ids: TypeAlias = frozenset[int]
Result: TypeAlias = tuple[Ids, Ids]  # (parameter indices, alias indices)
Cache: TypeAlias = dict["FreezePolicy", Result]

POLICY_READERS: dict[str, Callable[[Any, str], FreezePolicy]] = {}
"""How each kind of policy defined outside :mod:`freezeflow.core.serialize` is read from data,
by the key of its data form; a :class:`FreezePolicy` subclass with a ``data_key`` registers
itself."""


class FreezePolicy:
    """Base class of all policies. Build them with the constructors (:func:`name`,
    :func:`regex`, :func:`of_type`, :func:`blocks`, :func:`where`...), not directly."""

    __slots__ = ()

    data_key: ClassVar[str] = ""
    """The key of the data form ``{data_key: value}`` of a new kind of policy. A subclass
    that sets it, :meth:`to_data` and :meth:`from_data` is written and read by
    :func:`~freezeflow.core.serialize.policy_to_data` and
    :func:`~freezeflow.core.serialize.policy_from_data` (and so by schedule files) with no
    change to freezeflow; the built-in kinds are written by that module."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.data_key and "data_key" in cls.__dict__:
            POLICY_READERS[cls.data_key] = cls.from_data

    def to_data(self) -> Any:
        """The policy as plain data, ``{data_key: value}`` (see :attr:`data_key`)."""
        raise PolicyError(
            f"{self!r} cannot be written as data (a where() predicate is code, and "
            f"{type(self).__name__} sets no data_key); hint: use name(), regex(), of_type() "
            "or depth policies in schedules you save"
        )

    @classmethod
    def from_data(cls, value: Any, where: str) -> FreezePolicy:
        """The policy of ``{data_key: value}``; ``where`` names the place for errors."""
        raise PolicyError(f"{where}: {cls.__name__} cannot be read from data")

    # -- algebra -------------------------------------------------------------------------
    def __or__(self, other: PolicyLike) -> FreezePolicy:
        return _union(self, as_policy(other, "the right side of |"))

    def __ror__(self, other: PolicyLike) -> FreezePolicy:
        return _union(as_policy(other, "the left side of |"), self)

    def __and__(self, other: PolicyLike) -> FreezePolicy:
        return _intersection(self, as_policy(other, "the right side of &"))

    def __rand__(self, other: PolicyLike) -> FreezePolicy:
        return _intersection(as_policy(other, "the left side of &"), self)

    def __sub__(self, other: PolicyLike) -> FreezePolicy:
        return Difference(self, as_policy(other, "the right side of -"))

    def __rsub__(self, other: PolicyLike) -> FreezePolicy:
        return Difference(as_policy(other, "the left side of -"), self)

    def __invert__(self) -> FreezePolicy:
        if isinstance(self, Complement):
            return self.inner
        return Complement(self)

    # -- resolution ----------------------------------------------------------------------
    def select(
        self, model: nn.Module, *, allow_empty: bool = False, index: ModelIndex | None = None
    ) -> Selection:
        """Resolve this policy on ``model``.

        Args:
            model: any ``nn.Module``.
            allow_empty: return an empty selection instead of raising when nothing matches.
            index: the :class:`~freezeflow.core.index.ModelIndex` of ``model`` to resolve
                against, so that several questions about one model share one index (blocks
                are found once); None builds one.

        Returns:
            The selected parameters, in model order, matched by identity.

        Raises:
            EmptySelectionError: nothing was selected (and ``allow_empty`` is false).
            PolicyError: a name, pattern or depth does not fit this model, or ``index`` was
                built for another model.
            TiedParameterError: the policy selects one name of a tied parameter and
                excludes another (``name("embed") - name("lm_head")`` when the two share a
                weight).

        Tied parameters: a parameter is selected when the policy, applied to parameters,
        includes it (a name matches a parameter when it matches any of its names). If the
        same policy applied to the individual names keeps some name of a parameter that it
        does not select, the policy contradicts itself and raises.
        """
        idx = index_for(model, index)
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
                f"freezeflow.summary(model), or pass allow_empty=True"
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


def index_for(model: nn.Module, index: ModelIndex | None) -> ModelIndex:
    """``index`` when it indexes ``model``, a new index of ``model`` when it is None.

    Raises:
        PolicyTypeError: ``index`` is not a ModelIndex, or ``model`` not a module.
        PolicyError: ``index`` was built for another model.
    """
    if index is None:
        return ModelIndex.build(model)
    if not isinstance(index, ModelIndex):
        raise PolicyTypeError(
            f"index must be a freezeflow ModelIndex, got {index!r} of type "
            f"{type(index).__name__}; hint: pass ModelIndex.build(model), or leave it out"
        )
    if index.model is not model:
        raise PolicyError(
            f"index was built for {type(index.model).__name__} at {id(index.model):#x}, not for "
            f"the {type(model).__name__} at {id(model):#x} being resolved; hint: pass "
            "ModelIndex.build(model) for this model, or leave index out"
        )
    return index


PolicyLike: TypeAlias = "FreezePolicy | str | Iterable[str]"
"""What every function that takes a policy accepts: a :class:`FreezePolicy`, a name or glob,
or a list of names (see :func:`as_policy`)."""


def as_policy(value: object, what: str = "policy") -> FreezePolicy:
    """Turn ``value`` into a policy: a policy is kept, a string or a list of strings
    becomes :func:`name`. Anything else raises :class:`PolicyTypeError`."""
    if isinstance(value, FreezePolicy):
        return value
    if isinstance(value, str):
        return name(value)
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        return name(*value)
    raise PolicyTypeError(
        f"{what} must be a freezeflow FreezePolicy, a name or a list of names, got {value!r} "
        f"of type {type(value).__name__}; hint: build one with freezeflow.name('layer4'), "
        "freezeflow.last(2), freezeflow.of_type(nn.Linear)..."
    )


def from_aliases(idx: ModelIndex, aliases: Iterable[int]) -> Result:
    a = frozenset(aliases)
    return frozenset(idx.alias_param[i] for i in a), a


# --------------------------------------------------------------------------- combinators


@dataclass(frozen=True, repr=False)
class Union(FreezePolicy):
    parts: tuple[FreezePolicy, ...]

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
class Intersection(FreezePolicy):
    parts: tuple[FreezePolicy, ...]

    def _eval(self, idx: ModelIndex, cache: Cache) -> Result:
        p, a = self.parts[0]._resolve(idx, cache)
        for part in self.parts[1:]:
            pp, aa = part._resolve(idx, cache)
            p, a = p & pp, a & aa
        return p, a

    def __repr__(self) -> str:
        return " & ".join(_wrap(x, Intersection) for x in self.parts)


@dataclass(frozen=True, repr=False)
class Difference(FreezePolicy):
    left: FreezePolicy
    right: FreezePolicy

    def _eval(self, idx: ModelIndex, cache: Cache) -> Result:
        lp, la = self.left._resolve(idx, cache)
        rp, ra = self.right._resolve(idx, cache)
        return lp - rp, la - ra

    def __repr__(self) -> str:
        return f"{_wrap(self.left, Difference)} - {_wrap(self.right, None)}"


@dataclass(frozen=True, repr=False)
class Complement(FreezePolicy):
    inner: FreezePolicy

    def _eval(self, idx: ModelIndex, cache: Cache) -> Result:
        p, a = self.inner._resolve(idx, cache)
        return (
            frozenset(range(len(idx.params))) - p,
            frozenset(range(len(idx.aliases))) - a,
        )

    def __repr__(self) -> str:
        return f"~{_wrap(self.inner, None)}"


def _wrap(p: FreezePolicy, same: type | None) -> str:
    simple = not isinstance(p, (Union, Intersection, Difference)) or type(p) is same
    return repr(p) if simple else f"({p!r})"


def _union(a: FreezePolicy, b: FreezePolicy) -> FreezePolicy:
    parts = [
        *(a.parts if isinstance(a, Union) else (a,)),
        *(b.parts if isinstance(b, Union) else (b,)),
    ]
    parts = list(dict.fromkeys(parts))
    return parts[0] if len(parts) == 1 else Union(tuple(parts))


def _intersection(a: FreezePolicy, b: FreezePolicy) -> FreezePolicy:
    parts = [
        *(a.parts if isinstance(a, Intersection) else (a,)),
        *(b.parts if isinstance(b, Intersection) else (b,)),
    ]
    parts = list(dict.fromkeys(parts))
    return parts[0] if len(parts) == 1 else Intersection(tuple(parts))


# --------------------------------------------------------------------------- leaves


@dataclass(frozen=True, repr=False)
class _All(FreezePolicy):
    def _eval(self, idx: ModelIndex, cache: Cache) -> Result:
        return frozenset(range(len(idx.params))), frozenset(range(len(idx.aliases)))

    def __repr__(self) -> str:
        return "everything()"


@dataclass(frozen=True, repr=False)
class _Nothing(FreezePolicy):
    def _eval(self, idx: ModelIndex, cache: Cache) -> Result:
        return frozenset(), frozenset()

    def __repr__(self) -> str:
        return "nothing()"


_EVERYTHING: FreezePolicy = _All()
"""Every parameter of the model."""
_NOTHING: FreezePolicy = _Nothing()
"""No parameter."""


def everything() -> FreezePolicy:
    """Every parameter. ``~everything()`` is :func:`nothing`."""
    return _EVERYTHING


def nothing() -> FreezePolicy:
    """No parameter (useful as the start of a union built in a loop)."""
    return _NOTHING


@dataclass(frozen=True, repr=False)
class Name(FreezePolicy):
    patterns: tuple[str, ...]
    strict: bool = True

    def _eval(self, idx: ModelIndex, cache: Cache) -> Result:
        hits: set[int] = set()
        for pattern in self.patterns:
            rx = glob_regex(pattern)
            found, _ = match_names(idx, fullmatch(rx))
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
        return from_aliases(idx, hits)

    def __repr__(self) -> str:
        args = ", ".join(repr(p) for p in self.patterns)
        return f"name({args}{'' if self.strict else ', strict=False'})"


def name(*patterns: str, strict: bool = True) -> FreezePolicy:
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
        glob_regex(p)
    return Name(tuple(patterns), strict)
