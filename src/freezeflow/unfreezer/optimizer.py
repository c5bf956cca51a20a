"""The optimizer a :class:`~freezeflow.GradualUnfreezer` manages: the user's own, with its
param groups rebuilt in place, or one built over the groups by a class or a factory.

Everything is checked before the user's optimizer changes.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any, TypeAlias

import torch
from torch import nn
from torch.optim import Optimizer

from freezeflow.errors import OptimizerError, OptimizerTypeError
from freezeflow.schedules.schedule import Schedule
from freezeflow.unfreezer.layout import Layout
from freezeflow.unfreezer.lr_schedulers import (
    Scheduler,
    check_group_lists,
    check_scheduler,
)

__all__ = ["OptimizerFactory", "adopt_layout", "adopt_optimizer", "weight_decay_of"]

OptimizerFactory: TypeAlias = Callable[[list[dict[str, Any]]], Optimizer]
"""A function building an optimizer from a list of param groups (an optimizer class is one)."""


def _check_params(optimizer: Optimizer, params: Sequence[nn.Parameter], model_name: str) -> None:
    known = {id(p) for p in params}
    foreign = [
        tuple(p.shape) for g in optimizer.param_groups for p in g["params"] if id(p) not in known
    ]
    if foreign:
        raise OptimizerError(
            f"the optimizer holds {len(foreign)} parameter(s) that are not in "
            f"{model_name} (shapes {foreign[:3]}); hint: build it over "
            "this model's parameters, e.g. AdamW(model.parameters()), after replacing the "
            "head"
        )


def _number(value: object) -> float:
    try:
        out = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0.0
    return out if math.isfinite(out) else 0.0


def weight_decay_of(
    optimizer: Optimizer | OptimizerFactory | type[Optimizer] | None, *, built_here: bool = False
) -> float:
    """The weight decay ``optimizer`` was built with: what every decay group gets while no
    stage sets one.

    For an optimizer object: the ``weight_decay`` of its single param group (the one it was
    built with), else its ``defaults["weight_decay"]`` (always the defaults when
    ``built_here``: an optimizer built over the unfreezer's groups); for an optimizer class:
    the default of its ``weight_decay`` argument; None stands for the unfreezer's default,
    ``torch.optim.AdamW`` (0.01). An optimizer without weight decay, or a factory (which can
    only tell once it has built one), gives 0.

    Example:
        >>> import torch
        >>> weight_decay_of(torch.optim.AdamW), weight_decay_of(torch.optim.SGD)
        (0.01, 0.0)
    """
    if optimizer is None:
        optimizer = torch.optim.AdamW
    if isinstance(optimizer, Optimizer):
        groups = optimizer.param_groups
        value = groups[0].get("weight_decay") if len(groups) == 1 and not built_here else None
        if value is None:
            value = optimizer.defaults.get("weight_decay", 0.0)
        return _number(value)
    if isinstance(optimizer, type) and issubclass(optimizer, Optimizer):
        arg = inspect.signature(optimizer).parameters.get("weight_decay")
        return 0.0 if arg is None else _number(arg.default)
    return 0.0


def _build(
    optimizer: OptimizerFactory | type[Optimizer] | None, groups: list[dict[str, Any]]
) -> Optimizer:
    factory: Callable[[list[dict[str, Any]]], Any] = (
        torch.optim.AdamW if optimizer is None else optimizer
    )
    if not callable(factory):
        raise OptimizerTypeError(
            f"optimizer must be a torch.optim.Optimizer, an optimizer class or a "
            f"factory taking param groups, got {factory!r} of type {type(factory).__name__}; "
            "hint: optimizer=torch.optim.AdamW, or functools.partial(torch.optim.SGD, "
            "momentum=0.9)"
        )
    built = factory(groups)
    if not isinstance(built, Optimizer):
        raise OptimizerTypeError(
            f"the optimizer factory returned {built!r} of type {type(built).__name__}, not a "
            "torch.optim.Optimizer; hint: the factory takes the param groups and returns "
            "e.g. torch.optim.AdamW(groups)"
        )
    return built


def adopt_optimizer(
    optimizer: Optimizer | OptimizerFactory | type[Optimizer] | None,
    groups: list[dict[str, Any]],
    *,
    params: Sequence[nn.Parameter],
    model_name: str,
    schedulers: Sequence[Scheduler] = (),
) -> tuple[Optimizer, dict[str, Any] | None]:
    """The optimizer over ``groups``: ``optimizer`` itself with its groups replaced, or the one
    ``optimizer`` (a class or factory, default ``AdamW``) builds.

    Args:
        optimizer: an optimizer over (some of) ``params``, a class, a factory, or None.
        groups: the param groups to give it.
        params: every parameter of the model (an optimizer holding others is refused).
        model_name: for messages.
        schedulers: the LR schedulers over the optimizer that the unfreezer will drive (the
            one handed over, and those found bound to it), checked here.

    Returns:
        The optimizer and the template for :class:`~freezeflow.unfreezer.lr_schedulers.Schedulers`:
        the hyper-parameters of the user's optimizer's single group before it was replaced
        (None when it had several, or when the optimizer was built here).

    Raises:
        OptimizerError: foreign parameters, a scheduler bound elsewhere or over groups that
            cannot be mapped, or a factory that does not build an optimizer; the user's
            optimizer has not changed then.
    """
    if not isinstance(optimizer, Optimizer):
        built = _build(optimizer, groups)
        for scheduler in schedulers:
            check_scheduler(scheduler, built)
        return built, None
    _check_params(optimizer, params, model_name)
    for scheduler in schedulers:
        check_scheduler(scheduler, optimizer)
    template = None
    if len(optimizer.param_groups) == 1:
        template = {k: v for k, v in optimizer.param_groups[0].items() if k != "params"}
    for scheduler in schedulers:
        check_group_lists(scheduler, len(groups), extendable=template is not None)
    optimizer.param_groups.clear()
    for g in groups:
        optimizer.add_param_group(g)
    return optimizer, template


def adopt_layout(
    optimizer: Optimizer | OptimizerFactory | type[Optimizer] | None,
    layout: Layout,
    schedule: Schedule,
    *,
    model_name: str,
    schedulers: Sequence[Scheduler] = (),
) -> tuple[Optimizer, dict[str, Any] | None, float]:
    """:func:`adopt_optimizer` over the groups of ``layout``, with their weight decay: a
    stage's where one sets it, else the weight decay the optimizer was built with
    (:func:`weight_decay_of`; for one built here, its ``defaults``), 0 for no-decay groups.

    Returns:
        The optimizer, the template (see :func:`adopt_optimizer`) and that weight decay.
    """
    wd = weight_decay_of(optimizer) if isinstance(optimizer, Optimizer) else None
    built, template = adopt_optimizer(
        optimizer,
        layout.optimizer_groups(schedule, wd),  # None: the optimizer fills in its default
        params=layout.params,
        model_name=model_name,
        schedulers=schedulers,
    )
    if wd is None:
        wd = weight_decay_of(built, built_here=True)
    for spec, group in zip(layout.groups, built.param_groups):
        group["weight_decay"] = layout.weight_decay(schedule, spec.stage_index, spec, wd)
    return built, template, wd
