"""Cutting a model after its frozen prefix: how many leading blocks are frozen, the output of
those blocks, and running the rest of the model on given features.

A :class:`Cut` after ``k`` blocks knows the prefix's modules and the one whose output ends
the prefix (found with a trial forward pass). :meth:`Cut.prefix` runs the model up to that
module and stops; inside ``with cut.replaying(features):`` the prefix modules pass their
input through and the last one returns the features, so ``model(features)`` runs only the
rest of the network.

Example:
    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> _ = model[0].requires_grad_(False)
    >>> frozen_prefix(model)
    1
    >>> cut = Cut(model, 1, lambda: torch.randn(2, 4))
    >>> x = torch.randn(3, 4)
    >>> with torch.no_grad(), cut.replaying(cut.prefix(x)):
    ...     replayed = model(torch.empty(0))
    >>> torch.allclose(replayed, model(x))
    True
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn

from freezeflow.core.discovery import find_blocks
from freezeflow.errors import CacheRefused, TrainingError

__all__ = ["Cut", "frozen_prefix"]


def frozen_prefix(model: nn.Module, *, will_train: Iterable[torch.Tensor] = ()) -> int:
    """How many leading blocks of ``model`` have only frozen parameters (at most all but the
    last block).

    ``will_train``: parameters that count as trainable although frozen now (those a later
    stage of a schedule unfreezes), to find the prefix that stays frozen for the rest of it.
    """
    later = {id(p) for p in will_train}
    blocks = find_blocks(model)
    modules = dict(model.named_modules(remove_duplicate=False))
    params = dict(model.named_parameters(remove_duplicate=False))
    k = 0
    for block in blocks[:-1]:
        owned = [p for path in block.modules for p in modules[path].parameters()]
        owned += [params[n] for n in block.params]
        if not owned or any(p.requires_grad or id(p) in later for p in owned):
            break
        k += 1
    return k


class _Stop(Exception):  # noqa: N818 - control flow
    pass


class _Replay:
    """Stands in for the module that ends the prefix: returns the cached batch."""

    def __init__(self, features: torch.Tensor | None) -> None:
        self.features = features

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.features is None:
            raise TrainingError(
                "the frozen prefix was replayed with no cached features set for this forward "
                "pass; expected handle.features set inside Cut.replaying(); hint: this is a "
                "freezeflow bug if fit() raised it, please report it"
            )
        return self.features


def _passthrough(x: Any, *args: Any, **kwargs: Any) -> Any:
    return x


class Cut:
    """``model`` cut after its first ``boundary`` blocks.

    Args:
        model: the model.
        boundary: how many leading blocks the prefix holds.
        sample: returns a batch of inputs for the trial forward pass (in eval mode, without
            gradient) that finds the module whose output ends the prefix; called once the
            prefix's modules are known.

    Raises:
        CacheRefused: a block of the prefix owns loose parameters, the prefix has no module,
            or the trial forward fails or never calls a prefix module.
    """

    def __init__(self, model: nn.Module, boundary: int, sample: Callable[[], torch.Tensor]) -> None:
        self.model = model
        self.boundary = boundary
        self.modules = self._prefix_modules()
        """The modules of the prefix's blocks."""
        self.last = self._last_called(sample)
        """The prefix module called last in forward: its output is the prefix's."""

    def _prefix_modules(self) -> list[nn.Module]:
        modules = dict(self.model.named_modules(remove_duplicate=False))
        out: list[nn.Module] = []
        for block in find_blocks(self.model)[: self.boundary]:
            if block.params:
                raise CacheRefused(
                    f"block {block.name!r} owns loose parameters ({block.params[0]!r}) that "
                    "the forward uses directly; the model cannot be cut there"
                )
            out += [modules[path] for path in block.modules if path]
        if not out:
            raise CacheRefused("the frozen prefix has no module to cut at")
        return out

    def _last_called(self, sample: Callable[[], torch.Tensor]) -> nn.Module:
        order: list[nn.Module] = []
        hooks = [m.register_forward_hook(lambda m, i, o: order.append(m)) for m in self.modules]
        was_training = self.model.training
        try:
            self.model.eval()
            with torch.no_grad():
                self.model(sample())
        except Exception as exc:
            raise CacheRefused(f"a trial forward pass failed: {exc}") from exc
        finally:
            for h in hooks:
                h.remove()
            self.model.train(was_training)
        ran = [m for m in order if any(m is p for p in self.modules)]
        if not ran:
            raise CacheRefused("the prefix modules are never called in forward")
        return ran[-1]

    def still_valid(self) -> bool:
        """Whether the prefix is unchanged (same boundary, all still frozen)."""
        return frozen_prefix(self.model) >= self.boundary and not any(
            p.requires_grad for m in self.modules for p in m.parameters()
        )

    def prefix(self, inputs: torch.Tensor) -> torch.Tensor:
        """Output of the prefix for ``inputs`` (no gradient); the rest of the model does not
        run."""
        captured: list[torch.Tensor] = []

        def stop(module: nn.Module, args: Any, output: Any) -> None:
            if not isinstance(output, torch.Tensor):
                raise CacheRefused("the prefix's last module does not return one tensor")
            captured.append(output)
            raise _Stop

        handle = self.last.register_forward_hook(stop)
        try:
            with torch.no_grad():
                self.model(inputs)
        except _Stop:
            pass
        finally:
            handle.remove()
        if not captured:
            raise CacheRefused("the forward pass ended without reaching the cut")
        return captured[0].detach()

    @contextlib.contextmanager
    def replaying(self, features: torch.Tensor | None = None) -> Iterator[_Replay]:
        """Within the block, the prefix modules pass their input through and the cut returns
        the features set on the yielded handle (``handle.features = batch``)."""
        handle = _Replay(features)
        saved: list[tuple[nn.Module, Any]] = []
        for m in self.modules:
            saved.append((m, m.__dict__.get("forward")))
            m.__dict__["forward"] = handle if m is self.last else _passthrough
        try:
            yield handle
        finally:
            for m, fwd in saved:
                if fwd is None:
                    m.__dict__.pop("forward", None)
                else:
                    m.__dict__["forward"] = fwd
