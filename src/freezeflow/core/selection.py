"""A policy resolved on one model: which parameters, by identity, in model order."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, overload

import torch
from torch import nn

from freezeflow.errors import NotSelectedError

__all__ = ["Selection"]


class Selection(Mapping[str, nn.Parameter]):
    """An ordered, immutable mapping of parameter names to the selected parameters.

    Keys are each parameter's primary name (the first name ``named_parameters`` gives it), in
    model order. A tied parameter appears once; :meth:`aliases` lists all its names.
    Membership of a tensor (``param in selection``) is by identity, never by value, and so
    is equality: two selections (or a selection and a mapping) are equal when they map the
    same names to the same parameter objects. A copy (``copy.deepcopy``, pickling) holds
    copies of the parameters, and only those.

    Example:
        >>> import torch.nn as nn, freezeflow as ff
        >>> net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> sel = ff.name("2").select(net)
        >>> list(sel), sel.numel
        (['2.weight', '2.bias'], 10)
    """

    __slots__ = ("_aliases", "_ids", "_model_name", "_names", "_params", "_total")

    def __init__(
        self,
        names: list[str],
        params: list[nn.Parameter],
        aliases: list[tuple[str, ...]],
        *,
        model_name: str,
        total: int,
    ) -> None:
        self._names = tuple(names)
        self._params = tuple(params)
        self._aliases = tuple(aliases)
        self._ids = {id(p): i for i, p in enumerate(params)}
        self._model_name = model_name
        self._total = total

    def _not_selected(self, key: object) -> str:
        return (
            f"{key!r} is not one of the {len(self._names)} parameter names selected on "
            f"{self._model_name}; expected a selected name (or one of its aliases); hint: "
            "list(selection) gives them"
        )

    # -- Mapping -------------------------------------------------------------------------
    def __getitem__(self, key: str) -> nn.Parameter:
        for i, names in enumerate(self._aliases):
            if key in names:
                return self._params[i]
        raise NotSelectedError(self._not_selected(key))

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, key: object) -> bool:
        if isinstance(key, torch.Tensor):
            return id(key) in self._ids
        return isinstance(key, str) and any(key in names for names in self._aliases)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mapping):
            return NotImplemented
        return self.keys() == other.keys() and all(
            other[n] is p for n, p in zip(self._names, self._params)
        )

    __hash__ = None  # type: ignore[assignment]  # a mutable model's view: not hashable

    def __reduce__(self) -> tuple[Any, ...]:
        # rebuilt through __init__, so that identity membership follows the copied tensors
        return (
            _rebuild,
            (
                list(self._names),
                list(self._params),
                list(self._aliases),
                self._model_name,
                self._total,
            ),
        )

    # -- views ---------------------------------------------------------------------------
    @property
    def names(self) -> tuple[str, ...]:
        """Primary names of the selected parameters, in model order."""
        return self._names

    @property
    def params(self) -> tuple[nn.Parameter, ...]:
        """The selected parameters, in model order."""
        return self._params

    @overload
    def aliases(self) -> dict[str, tuple[str, ...]]: ...
    @overload
    def aliases(self, name: str) -> tuple[str, ...]: ...
    def aliases(self, name: str | None = None) -> dict[str, tuple[str, ...]] | tuple[str, ...]:
        """All names of each selected parameter (more than one for tied parameters)."""
        if name is None:
            return dict(zip(self._names, self._aliases))
        for names in self._aliases:
            if name in names:
                return names
        raise NotSelectedError(self._not_selected(name))

    @property
    def numel(self) -> int:
        """Number of scalar values in the selected parameters."""
        return sum(p.numel() for p in self._params)

    @property
    def total(self) -> int:
        """Number of (unique) parameters the model has."""
        return self._total

    def __repr__(self) -> str:
        shown = ", ".join(repr(n) for n in self._names[:4])
        more = f", ... (+{len(self) - 4})" if len(self) > 4 else ""
        return (
            f"Selection({len(self)} of {self._total} parameters of {self._model_name}, "
            f"{self.numel:,} values: [{shown}{more}])"
        )


def _rebuild(
    names: list[str],
    params: list[nn.Parameter],
    aliases: list[tuple[str, ...]],
    model_name: str,
    total: int,
) -> Selection:
    return Selection(names, params, aliases, model_name=model_name, total=total)
