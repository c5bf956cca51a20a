"""LR schedulers over the unfreezer's param groups: adopting one, and rescaling at stage changes.

A scheduler built after the :class:`~freezeflow.GradualUnfreezer` already drives every group.
One built before it, over the optimizer's original single group, is *extended*: its
per-group lists and the LR keys it wrote into that group are copied to every group, scaled to
each group's base LR. At a stage change the unfreezer *rescales* every LR-valued quantity of a
group (in the group and in each attached scheduler) by ``new base LR / old base LR``, so a
group keeps training at ``stage.lr * lr_scale * f(t)``. Floors (``eta_min``, ``min_lr``,
``min_lrs``) are absolute and never rescaled.

torch offers no public API for either, so this module reads and writes scheduler internals.
It is the only module of freezeflow that does; each one is named below with what it is and
why it is needed, and ``tests/test_lr_schedulers.py`` checks every one against the installed
torch (a failure there names the attribute and the torch version).
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from typing import Any, TypeAlias

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from freezeflow.errors import OptimizerError, OptimizerTypeError

__all__ = [
    "CHILDREN",
    "EXTENDED_LISTS",
    "LAST_LR",
    "LR_KEYS",
    "MOMENTUM_KEYS",
    "REDUCE_LR",
    "SCALED_LISTS",
    "STEP_WRAPPED",
    "PlateauByLargestDrop",
    "Scheduler",
    "Schedulers",
    "StageLR",
    "check_group_lists",
    "check_scheduler",
    "has_scheduler",
    "live_schedulers",
    "schedulers_in",
]

Scheduler: TypeAlias = "LRScheduler | ReduceLROnPlateau"

# --------------------------------------------------------------------------- torch internals

CHILDREN = "_schedulers"
"""Private. ``SequentialLR`` and ``ChainedScheduler`` keep the schedulers they drive in
``_schedulers`` (no public accessor). The children hold the per-group lists that compute the
LRs, so extending or rescaling only the parent would change nothing."""

LAST_LR = "_last_lr"
"""Private. Every scheduler's last LR per group, which ``get_last_lr()`` returns (and which
Lightning's and the Hugging Face Trainer's LR logging read). Extended and rescaled with the
groups so that it has one entry per group and reports each group's real LR."""

STEP_WRAPPED = "_wrapped_by_lr_sched"
"""Private. ``LRScheduler.__init__`` wraps ``optimizer.step`` (to count steps) and marks the
wrapper with this attribute: the only trace on an optimizer that a scheduler was built over
it. Read to warn when such a scheduler is not handed to the unfreezer, which would otherwise
keep driving the optimizer's original single group only."""

SCALED_LISTS = ("base_lrs", "_last_lr", "max_lrs")
"""Per-group lists holding LRs, scaled with a group's base LR: ``base_lrs`` (every
``LRScheduler``: the LR each group started from, from which most schedulers compute the next
LR), ``_last_lr`` (above) and ``max_lrs`` (``CyclicLR``: each group's peak LR). Public
attributes, but not documented API."""

EXTENDED_LISTS = (*SCALED_LISTS, "min_lrs", "lr_lambdas", "base_momentums", "max_momentums")
"""Every per-group list of a scheduler: the scaled ones plus ``min_lrs``
(``ReduceLROnPlateau``: each group's absolute floor), ``lr_lambdas`` (``LambdaLR``,
``MultiplicativeLR``: each group's factor function) and ``base_momentums``/``max_momentums``
(``CyclicLR`` with ``cycle_momentum``: each group's momentum bounds), copied unchanged to new
groups. Schedulers zip these with the optimizer's groups (strictly, in recent torch), so all
must be extended."""

LR_KEYS = ("lr", "initial_lr", "max_lr", "min_lr")
"""LR keys of a param group: ``lr`` (the optimizer's), ``initial_lr`` (written by every
``LRScheduler``; read back by schedulers resumed with ``last_epoch``), ``max_lr`` and
``min_lr`` (written by ``OneCycleLR``, which computes each step's LR from them)."""

MOMENTUM_KEYS = ("max_momentum", "base_momentum")
"""Momentum bounds ``OneCycleLR`` and ``CyclicLR`` write into each group (with
``cycle_momentum``); copied to new groups as they are."""

REDUCE_LR = "_reduce_lr"
"""Private. ``ReduceLROnPlateau.step`` calls ``_reduce_lr(epoch)`` to lower every group's LR
by ``factor``, skipping a group whose drop is not larger than ``eps`` (1e-8 by default). Under
``lr_decay`` the deep blocks' LRs fall below that, so they would stop following
``stage.lr * lr_scale * f(t)``. An attached ``ReduceLROnPlateau`` is given a subclass
(:class:`PlateauByLargestDrop`) whose ``_reduce_lr`` decides once, on the largest drop of any
group, and then lowers every group (floors ``min_lrs`` kept), delegating the update itself to
torch's."""

# --------------------------------------------------------------------------- checks


def schedulers_in(scheduler: Any) -> list[Any]:
    """A scheduler and, recursively, the schedulers it drives (``SequentialLR``,
    ``ChainedScheduler``)."""
    out = [scheduler]
    for child in getattr(scheduler, CHILDREN, ()):
        out.extend(schedulers_in(child))
    return out


def _group_lists(scheduler: Any) -> Iterator[tuple[Any, str, list[Any]]]:
    """(scheduler, name, list) of every per-group list in ``scheduler`` and its children."""
    for s in schedulers_in(scheduler):
        for key, values in vars(s).items():
            if key in EXTENDED_LISTS and isinstance(values, list):
                yield s, key, values


def has_scheduler(optimizer: Optimizer) -> bool:
    """Whether an LR scheduler was built over ``optimizer``."""
    return bool(getattr(optimizer.step, STEP_WRAPPED, False))


def live_schedulers(optimizer: Optimizer) -> list[Any]:
    """The LR schedulers alive in this process that are bound to ``optimizer`` or to a
    wrapper holding it as ``.optimizer`` (accelerate's ``AcceleratedOptimizer``), outermost
    only (a ``SequentialLR``, not its children).

    torch keeps no link from an optimizer to its schedulers, so they are found through the
    garbage collector's referrer lists: a scheduler refers to its optimizer from its
    ``__dict__``. A scan of the objects the collector tracks per optimizer looked at;
    freezeflow runs it when an unfreezer adopts a user's optimizer, and at a stage change
    only when a scheduler was built over the optimizer (its ``step`` is wrapped, or its
    groups hold ``initial_lr``) and none is attached.
    """
    kinds = (LRScheduler, ReduceLROnPlateau)
    found: list[Any] = []
    targets: list[Any] = [optimizer]
    for target in targets:
        for ref in gc.get_referrers(target):
            # the object itself (attributes stored inline) or its __dict__
            if isinstance(ref, dict) and ref.get("optimizer") is target:
                owners = [o for o in gc.get_referrers(ref) if getattr(o, "__dict__", None) is ref]
            else:
                owners = [ref] if getattr(ref, "optimizer", None) is target else []
            for o in owners:
                if isinstance(o, kinds):
                    if o.optimizer is target and all(o is not f for f in found):
                        found.append(o)
                elif isinstance(o, Optimizer) and len(targets) < 4 and o not in targets:
                    targets.append(o)  # a wrapper: its schedulers drive our groups too
    children = {id(c) for s in found for c in schedulers_in(s)[1:]}
    return [s for s in found if id(s) not in children]


def check_scheduler(scheduler: object, optimizer: Optimizer) -> None:
    """Raise :class:`~freezeflow.errors.OptimizerTypeError` unless ``scheduler`` is a torch
    LR scheduler, :class:`~freezeflow.errors.OptimizerError` unless it is bound to
    ``optimizer`` (or to a wrapper around it)."""
    if not isinstance(scheduler, (LRScheduler, ReduceLROnPlateau)):
        raise OptimizerTypeError(
            f"scheduler must be a torch.optim.lr_scheduler scheduler, got {scheduler!r} of "
            f"type {type(scheduler).__name__}; hint: build one over unfreezer.optimizer, e.g. "
            "CosineAnnealingLR(unfreezer.optimizer, T_max=10)"
        )
    bound: Any = scheduler.optimizer
    # a wrapper sharing our param groups (accelerate's AcceleratedOptimizer, which the
    # Hugging Face Trainer builds its LR scheduler over; under DeepSpeed, accelerate's wrapper
    # around the ZeRO optimizer around ours) holds the optimizer as .optimizer
    for _ in range(4):
        if bound is optimizer or getattr(bound, "optimizer", None) is None:
            break
        bound = bound.optimizer
    if bound is not optimizer:
        raise OptimizerError(
            f"the LR scheduler {type(scheduler).__name__} is bound to another optimizer "
            f"({type(scheduler.optimizer).__name__} at {id(scheduler.optimizer):#x}), not "
            f"the one this unfreezer manages; hint: build it over unfreezer.optimizer"
        )


def check_group_lists(scheduler: object, n: int, *, extendable: bool) -> None:
    """Raise :class:`~freezeflow.errors.OptimizerError` unless every per-group list of
    ``scheduler`` has ``n`` entries, or one when it can be extended from the optimizer's
    original single group (``extendable``)."""
    for s, key, values in _group_lists(scheduler):
        if len(values) != n and (len(values) != 1 or not extendable):
            raise OptimizerError(
                f"{type(s).__name__}.{key} has {len(values)} entries but the optimizer "
                f"now has {n} param groups; hint: build the LR scheduler after the "
                "GradualUnfreezer"
            )


# --------------------------------------------------------------------------- ReduceLROnPlateau


class PlateauByLargestDrop(ReduceLROnPlateau):
    """A ``ReduceLROnPlateau`` whose reductions are decided once for all groups: when the
    largest drop of any group (``lr - max(lr * factor, min_lr)``) exceeds ``eps``, every
    group is lowered, however small its own drop; else none is. torch decides per group,
    so groups whose LR is below ``eps / (1 - factor)`` (deep blocks under ``lr_decay``)
    would stop following the others. :meth:`Schedulers.attach` gives an attached
    ``ReduceLROnPlateau`` this class; its state dict is unchanged."""

    def _reduce_lr(self, epoch: Any) -> None:
        groups = self.optimizer.param_groups
        if len(groups) != len(self.min_lrs):  # torch's own message (or extension)
            super()._reduce_lr(epoch)
            return
        drops = [
            float(g["lr"]) - max(float(g["lr"]) * self.factor, floor)
            for g, floor in zip(groups, self.min_lrs)
        ]
        if max(drops, default=0.0) <= self.eps:
            return
        eps, self.eps = self.eps, 0.0  # every group that can still go down does
        try:
            super()._reduce_lr(epoch)
        finally:
            self.eps = eps


_BY_LARGEST_DROP: dict[type, type] = {ReduceLROnPlateau: PlateauByLargestDrop}


def _decide_by_largest_drop(scheduler: object) -> None:
    """Give a ``ReduceLROnPlateau`` (or a subclass of it that keeps torch's ``_reduce_lr``)
    the reductions of :class:`PlateauByLargestDrop`, in place."""
    cls = type(scheduler)
    if not isinstance(scheduler, ReduceLROnPlateau) or isinstance(scheduler, PlateauByLargestDrop):
        return
    if getattr(cls, REDUCE_LR) is not getattr(ReduceLROnPlateau, REDUCE_LR):
        return  # a subclass with its own reductions: left as it is
    sub = _BY_LARGEST_DROP.get(cls)
    if sub is None:
        sub = _BY_LARGEST_DROP[cls] = type(cls.__name__, (PlateauByLargestDrop, cls), {})
    scheduler.__class__ = sub


# --------------------------------------------------------------------------- adoption


class Schedulers:
    """The LR schedulers attached to one unfreezer's optimizer.

    Args:
        optimizer: the optimizer whose groups the unfreezer built (each with a ``base_lr``).
        template: the hyper-parameters of the optimizer's original single group (everything
            but ``params``), when it had one group before the unfreezer rebuilt them: what a
            scheduler built before the unfreezer was set up over. None otherwise.
    """

    def __init__(self, optimizer: Optimizer, template: dict[str, Any] | None) -> None:
        self.optimizer = optimizer
        self.template = template
        self.attached: list[Any] = []

    def _ratio(self, group: dict[str, Any]) -> float:
        """``group``'s base LR over the template's reference LR (the peak LR of OneCycle,
        else the scheduler's starting LR)."""
        t = self.template or {}
        ref = float(t.get("max_lr", t.get("initial_lr", t.get("lr", 1.0))))
        return float(group["base_lr"]) / ref

    def may_miss_one(self) -> bool:
        """Whether an LR scheduler may be bound to the optimizer and not attached: one was
        built over it (its ``step`` is wrapped, or its groups hold the ``initial_lr`` a
        scheduler writes). Cheap; :func:`live_schedulers` then finds them."""
        opt = self.optimizer
        return has_scheduler(opt) or any("initial_lr" in g for g in opt.param_groups)

    def adopt(self, schedulers: list[Any]) -> None:
        """Attach every scheduler of ``schedulers`` not attached yet, all checked first (see
        :meth:`attach`): a refused one leaves everything as it was."""
        new = [s for s in schedulers if all(s is not a for a in self.attached)]
        n = len(self.optimizer.param_groups)
        for s in new:
            check_scheduler(s, self.optimizer)
            check_group_lists(s, n, extendable=self.template is not None)
        template, used = self.template, False
        for s in new:
            self.template = template  # each one built before the unfreezer is extended alike
            self.attach(s)
            used = used or self.template is None
        self.template = None if used else template

    def attach(self, scheduler: Scheduler) -> None:
        """Let ``scheduler`` keep driving every group through every transition (see
        :meth:`freezeflow.GradualUnfreezer.attach`); attaching twice is harmless.

        Raises:
            OptimizerError: the scheduler is bound to another optimizer, or was built over
                several groups that cannot be mapped to the new ones; nothing has changed.
        """
        check_scheduler(scheduler, self.optimizer)
        groups = self.optimizer.param_groups
        n = len(groups)
        check_group_lists(scheduler, n, extendable=self.template is not None)
        extended = False
        for s, key, values in list(_group_lists(scheduler)):
            if len(values) == n:
                continue
            extended = True
            if key in SCALED_LISTS:
                setattr(s, key, [values[0] * self._ratio(g) for g in groups])
            else:
                setattr(s, key, [values[0]] * n)
        # The template only describes a scheduler built before the unfreezer: one whose lists
        # had to be extended, or whose LR keys (initial_lr, max_lr...) the new groups lack. A
        # scheduler built after it has already set every group's LRs; copying the template
        # would undo its first step.
        template = self.template
        if template is not None and (
            extended or any(k in LR_KEYS and k not in g for g in groups for k in template)
        ):
            for g in groups:
                ratio = self._ratio(g)
                for key, value in template.items():
                    if key in LR_KEYS:
                        g[key] = value * ratio
                    elif key not in g or key in MOMENTUM_KEYS:
                        g[key] = value
            self.template = None
        for s in schedulers_in(scheduler):
            _decide_by_largest_drop(s)
        if scheduler not in self.attached:
            self.attached.append(scheduler)

    def stage_changed(self) -> None:
        """After a stage change (and its rescaling): let every attached scheduler whose LR
        curve follows the stages (:class:`StageLR`) start the new stage's curve."""
        for top in self.attached:
            for s in schedulers_in(top):
                if isinstance(s, StageLR):
                    s.stage_changed()

    def rescale(self, index: int, ratio: float) -> None:
        """Multiply every LR-valued quantity of group ``index`` by ``ratio``: its LR keys and
        the matching entry of every attached scheduler's LR lists (floors excluded)."""
        group = self.optimizer.param_groups[index]
        for key in LR_KEYS:
            if key in group:
                group[key] = group[key] * ratio
        seen: set[int] = set()
        for top in self.attached:
            for s in schedulers_in(top):
                for key in SCALED_LISTS:
                    values = getattr(s, key, None)
                    # a list shared by a parent and a child (SequentialLR) is scaled once
                    if isinstance(values, list) and id(values) not in seen and index < len(values):
                        seen.add(id(values))
                        values[index] = values[index] * ratio


# --------------------------------------------------------------------------- a stage's curve


class StageLR(LRScheduler):
    """An LR scheduler whose curve restarts at every stage: each group trains at
    ``base_lr * curve(n)`` after ``n`` steps of the stage running. ``curve_for()`` gives the
    running stage's curve; it is asked again after every stage change, and after a load
    (lazily, at the next step, once the unfreezer's own state is back). A stage planner
    supplies one for runs that bring no scheduler (``ff.auto``'s in-stage cosine); attached to
    the unfreezer like any scheduler, its base LRs follow the stages' base LRs, so every LR
    still comes from the unfreezer's formula times this scheduler's factor.

    Step it after each optimizer step, as any per-batch scheduler. ``steps_done``: steps of
    the running stage already done when it is built (after a resume).
    """

    def __init__(
        self,
        optimizer: Optimizer,
        curve_for: Callable[[], Callable[[int], float]],
        steps_done: int = 0,
    ) -> None:
        self.curve_for = curve_for
        self.stage_begin = -steps_done
        self._curve: Callable[[int], float] | None = None
        super().__init__(optimizer)

    def _factor(self) -> float:
        if self._curve is None:
            self._curve = self.curve_for()
        return float(self._curve(max(0, self.last_epoch - self.stage_begin)))

    def get_lr(self) -> list[float]:  # type: ignore[override]
        factor = self._factor()
        return [float(base) * factor for base in self.base_lrs]

    def stage_changed(self) -> None:
        """A stage began: its curve starts now, at its own first value."""
        self.stage_begin, self._curve = self.last_epoch, None
        lrs = self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = lr
        setattr(self, LAST_LR, lrs)

    def state_dict(self) -> dict[str, Any]:
        return {
            k: v for k, v in self.__dict__.items() if k not in ("optimizer", "curve_for", "_curve")
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.__dict__.update(state_dict)
        self._curve = None
