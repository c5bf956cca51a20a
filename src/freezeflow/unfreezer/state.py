"""What a :class:`~freezeflow.GradualUnfreezer` saves to resume mid-schedule: the state format,
the fingerprints that tie a state to its model, schedule and groups, and checking a state in
full before anything changes.

The state holds plain values only (safe for ``torch.load(weights_only=True)`` and JSON).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from torch import nn
from torch.optim import Optimizer

from freezeflow.core.freezing import norm_mode, restore_norm_modes
from freezeflow.errors import PolicyError, StateError
from freezeflow.schedules.schedule import Schedule
from freezeflow.unfreezer.layout import Layout
from freezeflow.unfreezer.lr_schedulers import LR_KEYS
from freezeflow.unfreezer.transition import Transition

__all__ = [
    "STATE_FORMAT",
    "apply_state",
    "capture",
    "fingerprint",
    "read_state",
    "schedule_fingerprint",
]

STATE_FORMAT = "freezeflow.GradualUnfreezer/2"
_GROUP_KEYS = ("name", "base_lr", "lr_scale", "weight_decay", *LR_KEYS)


def schedule_fingerprint(schedule: Schedule) -> str:
    """A short hash of ``schedule`` (its data form; the repr of what cannot be written as
    data): what a saved state's ``fingerprint["schedule"]`` holds."""
    try:
        sched = repr(schedule.to_dict())
    except PolicyError:  # a policy that cannot be written as data (e.g. where(fn))
        sched = repr([(s.lr, s.start, repr(s.trainable)) for s in schedule.stages])
    return hashlib.sha256(sched.encode()).hexdigest()[:16]


def fingerprint(layout: Layout, schedule: Schedule) -> dict[str, str]:
    """Short hashes of the model's parameter names and shapes, of the schedule and of the
    group names: a state only loads where all three match."""
    model = hashlib.sha256()
    for n, p in zip(layout.names, layout.params):
        model.update(f"{n}:{tuple(p.shape)};".encode())
    groups = [g.name for g in layout.groups]
    return {
        "model": model.hexdigest()[:16],
        "schedule": schedule_fingerprint(schedule),
        "groups": hashlib.sha256(repr(groups).encode()).hexdigest()[:16],
    }


def capture(
    model: nn.Module, layout: Layout, optimizer: Optimizer, trainable: frozenset[int]
) -> dict[str, Any]:
    """The model and optimizer part of a state: which parameters are trainable (by name;
    ``trainable`` indexes the layout's parameters), the norm modes, and each group's
    hyper-parameters."""
    modes = {path: mode for path, m in model.named_modules() if (mode := norm_mode(m))}
    return {
        "trainable_names": [n for i, n in enumerate(layout.names) if i in trainable],
        "norm_modes": modes,
        "groups": [{k: g[k] for k in _GROUP_KEYS if k in g} for g in optimizer.param_groups],
    }


def read_state(
    state: object, model: nn.Module, layout: Layout, schedule: Schedule, optimizer: Optimizer
) -> dict[str, Any]:
    """Check that ``state`` is an unfreezer state saved for this model, schedule and group
    layout; returns it.

    Raises:
        StateError: it is not an unfreezer state, or was saved for another model, schedule
            or group layout, or names parameters, modules or groups this model lacks.
    """
    found = state.get("format") if isinstance(state, dict) else type(state).__name__
    if not isinstance(state, dict) or found != STATE_FORMAT:
        raise StateError(
            f"not a GradualUnfreezer state (found {found!r}, expected {STATE_FORMAT!r}); "
            "hint: pass what unfreezer.state_dict() returned"
        )
    mine = fingerprint(layout, schedule)
    theirs = state.get("fingerprint", {})
    for key in ("model", "schedule", "groups"):
        if theirs.get(key) != mine[key]:
            raise StateError(
                f"this state was saved for another {key} (fingerprint "
                f"{theirs.get(key)!r}, this one is {mine[key]!r}); hint: rebuild the same "
                "model (same head) and schedule before loading"
            )
    unknown = set(state["trainable_names"]) - set(layout.names)
    modules = dict(model.named_modules())
    bad_modules = [p for p in state["norm_modes"] if p not in modules]
    if unknown or bad_modules or len(state["groups"]) != len(optimizer.param_groups):
        raise StateError(
            "the state names parameters, modules or groups this model does not have: "
            f"{sorted(unknown)[:3] or bad_modules[:3] or len(state['groups'])} (this optimizer "
            f"has {len(optimizer.param_groups)} groups); expected a state saved from this "
            "model; hint: rebuild the same model (same head) and schedule before loading"
        )
    return state


def apply_state(
    state: Mapping[str, Any], model: nn.Module, layout: Layout, optimizer: Optimizer
) -> list[Transition]:
    """Apply a state :func:`read_state` returned: norm modes, trainable flags and group
    hyper-parameters; returns the saved transitions.

    Raises:
        StateError: a saved norm mode or transition is malformed; nothing has changed then.
    """
    history = [Transition.from_dict(t) for t in state["history"]]
    try:
        restore_norm_modes(model, state["norm_modes"])  # checks everything first
    except PolicyError as exc:
        raise StateError(
            f"the state's norm modes do not fit this model: {exc}; hint: load a state saved "
            "from this model"
        ) from exc
    names = set(state["trainable_names"])
    for n, p in zip(layout.names, layout.params):
        p.requires_grad_(n in names)
        if n not in names:
            p.grad = None
    for group, saved in zip(optimizer.param_groups, state["groups"]):
        group.update({k: v for k, v in saved.items() if k != "name"})
    return history
