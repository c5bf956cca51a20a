"""Depth policies: parameters by their position from input to output.

:func:`blocks` and :func:`layers` slice the model's blocks (see
:func:`~freezeflow.find_blocks`) or its leaf layers with parameters; :func:`first` and
:func:`last` are the common slices. Each may be counted ``among`` another policy (e.g. the
backbone: ``last(2, among=~name("fc"))``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from freezeflow.core.index import ModelIndex
from freezeflow.core.policy import Cache, FreezePolicy, PolicyLike, Result, as_policy, from_aliases
from freezeflow.errors import PolicyError, PolicyTypeError, check_int

__all__ = ["Blocks", "Layers", "blocks", "first", "last", "layers"]


def _check_range(kind: str, start: int | None, stop: int | None) -> None:
    for v in (start, stop):
        if v is not None and (not isinstance(v, int) or isinstance(v, bool)):
            raise PolicyTypeError(
                f"{kind}() takes integer positions (or None), got {v!r} of type "
                f"{type(v).__name__}; hint: {kind}(-2) is the last two"
            )


def _slice_units(
    policy: FreezePolicy,
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
            f"last; see freezeflow.summary(model)"
        )
    return picked


class _Depth(FreezePolicy):
    """Slices of a model's depth units (blocks or leaf layers), optionally counted only among
    what another policy selects."""

    kind = ""
    start: int | None
    stop: int | None
    among: FreezePolicy | None

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
        return from_aliases(idx, hits)

    def __repr__(self) -> str:
        return _depth_repr(self.kind, self.start, self.stop, self.among)


@dataclass(frozen=True, repr=False)
class Blocks(_Depth):
    kind = "blocks"
    start: int | None
    stop: int | None
    among: FreezePolicy | None = None

    def _units(self, idx: ModelIndex) -> tuple[int, list[int]]:
        return len(idx.blocks), idx.block_of_alias()


@dataclass(frozen=True, repr=False)
class Layers(_Depth):
    kind = "layers"
    start: int | None
    stop: int | None
    among: FreezePolicy | None = None

    def _units(self, idx: ModelIndex) -> tuple[int, list[int]]:
        return len(idx.layers), idx.layer_of_alias()


def _depth_repr(kind: str, start: int | None, stop: int | None, among: FreezePolicy | None) -> str:
    if kind == "blocks" and start is None and stop is not None and stop > 0:
        core = f"first({stop}"
    elif kind == "blocks" and stop is None and start is not None and start < 0:
        core = f"last({-start}"
    else:
        core = f"{kind}({start}" + ("" if stop is None else f", {stop}")
    return core + ("" if among is None else f", among={among!r}") + ")"


def blocks(
    start: int | None = None, stop: int | None = None, *, among: PolicyLike | None = None
) -> FreezePolicy:
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


def first(n: int, *, among: PolicyLike | None = None) -> FreezePolicy:
    """The first ``n`` blocks (input side)."""
    _check_count("first", n)
    return blocks(None, n, among=among)


def last(n: int, *, among: PolicyLike | None = None) -> FreezePolicy:
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
) -> FreezePolicy:
    """Leaf layers ``start:stop`` (modules that own parameters), the Keras
    ``model.layers[-10:]`` idiom: ``layers(-10)``.

    Unlike Keras, layers without parameters (activations, pooling, additions) are not
    counted, since PyTorch models often reuse one activation module or have none.
    """
    _check_range("layers", start, stop)
    return Layers(start, stop, None if among is None else as_policy(among, "among"))


def _check_count(kind: str, n: object) -> None:
    check_int(f"{kind}() (a number of blocks)", n, 1, PolicyError, f"{kind}(2)")
