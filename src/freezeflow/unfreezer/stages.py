"""Applying one stage of a schedule to the model and the optimizer: which parameters require
gradients (with the norm modes of the layers left frozen), the optimizer state frozen
parameters give back, and each active group's base LR, LR scale and weight decay (attached
LR schedulers rescaled with them). The :class:`~freezeflow.GradualUnfreezer` decides *when*
and, through its planner, *what*; this module does the change.
"""

from __future__ import annotations

from collections import defaultdict

from torch import nn
from torch.optim import Optimizer

from freezeflow.core.freezing import NormMode, freeze_params, unfreeze_params
from freezeflow.schedules.schedule import Schedule
from freezeflow.unfreezer.layout import Layout
from freezeflow.unfreezer.lr_schedulers import Schedulers

__all__ = ["apply_stage"]


def apply_stage(
    model: nn.Module,
    layout: Layout,
    optimizer: Optimizer,
    schedulers: Schedulers,
    schedule: Schedule,
    k: int,
    before: frozenset[int] | None,
    now: frozenset[int],
    scales: dict[int, float] | None,
    *,
    norm: NormMode,
    eval_frozen: bool,
    default_weight_decay: float,
) -> dict[int, str]:
    """Make stage ``k`` train the parameters ``now`` (indices into ``layout.params``).

    ``before`` is what trained until now (None at the start: everything the stage does not
    train is frozen). ``scales`` holds the LR scale decided for each block (None: the
    layout's; a block left out keeps the scale its group has). Returns the index and name of
    every group the stage trains.
    """
    stage = schedule.stages[k]
    if before is None:
        off, on = frozenset(range(len(layout.params))) - now, now
    else:
        off, on = before - now, now - before
    if off:
        leaving = [layout.params[i] for i in sorted(off)]
        freeze_params(model, leaving, norm=norm, eval_frozen=eval_frozen)
        for p in leaving:  # frozen parameters hold no optimizer state (memory back)
            optimizer.state.pop(p, None)
    if on:
        unfreeze_params(model, [layout.params[i] for i in sorted(on)])
    if stage.reset_state:
        optimizer.state = defaultdict(dict)
    active: dict[int, str] = {}
    for i, (spec, group) in enumerate(zip(layout.groups, optimizer.param_groups)):
        if not any(j in now for j in spec.params):
            continue
        block = -1 if spec.block is None else spec.block
        scale = layout.scale(stage, spec) if scales is None else scales.get(block)
        if scale is None:  # a block the planner did not decide now keeps its scale
            scale = float(group["lr_scale"])
        new_base = stage.lr * scale
        old_base = float(group.get("base_lr", new_base))
        if old_base > 0 and new_base != old_base:
            schedulers.rescale(i, new_base / old_base)
        group["base_lr"] = new_base
        group["lr_scale"] = scale
        group["weight_decay"] = layout.weight_decay(schedule, k, spec, default_weight_decay)
        active[i] = spec.name
    return active
