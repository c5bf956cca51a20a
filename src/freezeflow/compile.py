"""``torch.compile`` with a schedule that changes what trains.

:func:`compile_for_unfreezing` compiles a model and resets Dynamo's caches at each
transition, so each stage gets a fresh recompile budget; :func:`check_recompile_limit` warns
when a schedule has more distinct frozen sets than Dynamo's recompile limit.
"""

from __future__ import annotations

import warnings
from typing import Any, cast

import torch
from torch import nn

from freezeflow._torch_internals import recompile_limit as _dynamo_recompile_limit
from freezeflow.errors import FreezeflowWarning, TrainingArgumentError
from freezeflow.unfreezer.gradual import GradualUnfreezer
from freezeflow.unfreezer.transition import Transition

__all__ = [
    "CompiledForUnfreezing",
    "check_recompile_limit",
    "compile_for_unfreezing",
    "distinct_trainable_sets",
    "recompile_limit",
]


def recompile_limit() -> int:
    """Dynamo's per-function limit on compiled variants (``recompile_limit``, called
    ``cache_size_limit`` before torch 2.6), read from torch's private Dynamo config by
    :func:`freezeflow._torch_internals.recompile_limit`."""
    return _dynamo_recompile_limit()


def distinct_trainable_sets(unfreezer: GradualUnfreezer) -> int:
    """How many different trainable sets the unfreezer's schedule goes through."""
    return len(set(unfreezer.layout.trainable_ids))


def check_recompile_limit(
    unfreezer: GradualUnfreezer,
    *,
    modes: int = 2,
    reset_on_transition: bool = False,
    stacklevel: int = 2,
) -> int:
    """Warn (:class:`~freezeflow.FreezeflowWarning`) when a compiled model would exceed
    Dynamo's recompile limit over this schedule; returns the number of variants expected.

    Each distinct trainable set is a separate compiled graph, times ``modes`` (2 when the
    loop also runs the model in eval mode). Past the limit Dynamo runs the model eagerly
    (still correct, no longer compiled) and only logs it. With ``reset_on_transition``
    (what :func:`compile_for_unfreezing` does) the caches are emptied at every transition,
    so only one stage's variants count.
    """
    limit = recompile_limit()
    sets = distinct_trainable_sets(unfreezer)
    expected = modes if reset_on_transition else sets * modes
    if expected > limit:
        warnings.warn(
            f"the schedule goes through {sets} distinct frozen sets ({expected} compiled "
            f"variants with {modes} train/eval mode(s)), more than torch._dynamo's recompile "
            f"limit of {limit}: later stages would run eagerly (uncompiled); hint: use "
            "compile_for_unfreezing() (resets Dynamo at each transition) or raise "
            "torch._dynamo.config.recompile_limit",
            FreezeflowWarning,
            stacklevel=stacklevel,
        )
    return expected


class _CompiledModel:
    """Holds the compiled module for :func:`compile_for_unfreezing`."""

    def __init__(self, model: nn.Module, kwargs: dict[str, Any]) -> None:
        self.model = model
        self.kwargs = kwargs
        self.compiled: nn.Module = cast(nn.Module, torch.compile(model, **kwargs))
        self.resets = 0

    def on_transition(self, transition: Transition) -> None:
        torch.compiler.reset()
        self.compiled = cast(nn.Module, torch.compile(self.model, **self.kwargs))
        self.resets += 1


class CompiledForUnfreezing(nn.Module):
    """The module :func:`compile_for_unfreezing` returns: forwards to the current compiled
    module (``.compiled``); ``.model`` is the plain one. Its state dict is the model's."""

    def __init__(self, holder: _CompiledModel) -> None:
        super().__init__()
        self._holder = holder
        self.model = holder.model

    @property
    def compiled(self) -> nn.Module:
        return self._holder.compiled

    @property
    def resets(self) -> int:
        """Dynamo resets done so far (one per transition)."""
        return self._holder.resets

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self._holder.compiled(*args, **kwargs)

    def state_dict(self, *args: Any, **kwargs: Any) -> Any:
        return self.model.state_dict(*args, **kwargs)

    def load_state_dict(self, *args: Any, **kwargs: Any) -> Any:
        return self.model.load_state_dict(*args, **kwargs)


def compile_for_unfreezing(
    model: nn.Module,
    unfreezer: GradualUnfreezer,
    *,
    reset_on_transition: bool = True,
    modes: int = 2,
    **compile_kwargs: Any,
) -> nn.Module:
    """``torch.compile(model, **compile_kwargs)`` that stays correct and compiled across
    stage transitions.

    With ``reset_on_transition`` (default) each transition calls ``torch.compiler.reset()``
    and compiles the model again, so every stage starts with a full recompile budget (the
    reset is process-wide: other compiled functions recompile on their next call too).
    Without it, Dynamo's own guards on ``requires_grad`` recompile at each transition and
    :func:`check_recompile_limit` warns when the schedule would exceed the limit.

    For DDP, use ``wrap_ddp(model, unfreezer, compile=True)`` instead (compiles the DDP
    module after every re-wrap).
    """
    if unfreezer.model is not model:
        raise TrainingArgumentError(
            f"the unfreezer manages another model ({type(unfreezer.model).__name__} at "
            f"{id(unfreezer.model):#x}) than the one given to compile_for_unfreezing() "
            f"({type(model).__name__} at {id(model):#x}); expected the same object; hint: build "
            "the GradualUnfreezer over the model you compile"
        )
    check_recompile_limit(
        unfreezer, modes=modes, reset_on_transition=reset_on_transition, stacklevel=3
    )
    holder = _CompiledModel(model, dict(compile_kwargs))
    if reset_on_transition:
        unfreezer.add_listener(holder.on_transition)
    return CompiledForUnfreezing(holder)
