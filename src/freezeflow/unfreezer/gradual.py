"""GradualUnfreezer: the one object that touches both the model and the optimizer.

How LRs combine (the formula the tests check): while stage ``s`` runs, param group ``g``
trains at

    lr(g, t) = s.lr * lr_scale(g) * f(t)

where ``lr_scale(g) = s.lr_decay ** (blocks_after(g))`` (1 without ``lr_decay``) and ``f(t)``
is the factor the user's LR scheduler applies at step ``t`` to a group whose base LR is 1.
The unfreezer keeps ``base_lr = s.lr * lr_scale`` in each group and, at a stage boundary,
rescales every LR-valued quantity of that group (``lr``, ``initial_lr``, OneCycle's
``max_lr``/``min_lr``, the scheduler's ``base_lrs``) by ``new base / old base``. Floors such as
``eta_min`` and ``min_lr`` are absolute and are not rescaled.

All groups are created once, up front, for every parameter any stage will train, so an LR
scheduler built after the unfreezer sees every group from the start and none is ever added.
A scheduler built before it (over the optimizer's original single group) can be handed over
with ``scheduler=`` and is extended to the new groups.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypeAlias

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from freezeflow.core.freezing import NormMode, _check_mode, freeze, norm_mode, unfreeze
from freezeflow.core.policy import PolicyLike
from freezeflow.core.selectors import where
from freezeflow.errors import (
    FreezeflowWarning,
    OptimizerError,
    PolicyError,
    ScheduleError,
    StateError,
)
from freezeflow.schedules.schedule import Schedule, Stage
from freezeflow.schedules.triggers import AtEpoch, AtFraction, AtStep, OnPlateau, PlateauTracker
from freezeflow.unfreezer.layout import Layout, layout

__all__ = ["GradualUnfreezer", "OptimizerFactory", "Transition"]

OptimizerFactory: TypeAlias = Callable[[list[dict[str, Any]]], Optimizer]
Scheduler: TypeAlias = "LRScheduler | ReduceLROnPlateau"
_STATE_FORMAT = "freezeflow.GradualUnfreezer/1"
_LR_KEYS = ("lr", "initial_lr", "max_lr", "min_lr")


@dataclass(frozen=True)
class Transition:
    """A stage change, as recorded in :attr:`GradualUnfreezer.history`."""

    stage: int
    name: str
    epoch: int
    step: int
    trainable: int
    """Trainable parameter values after the transition."""
    lrs: dict[str, float]
    """Each active group's LR right after the transition."""
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _schedulers_in(s: Any) -> list[Any]:
    """A scheduler and the schedulers inside it (SequentialLR, ChainedScheduler)."""
    out = [s]
    for child in getattr(s, "_schedulers", ()):
        out.extend(_schedulers_in(child))
    return out


def _group_lists(s: Any) -> dict[str, list[Any]]:
    """A scheduler's per-param-group lists."""
    return {
        k: v
        for k, v in vars(s).items()
        if isinstance(v, list) and k in ("base_lrs", "_last_lr", "min_lrs", "lr_lambdas", "max_lrs")
    }


class GradualUnfreezer:
    """Applies a :class:`~freezeflow.Schedule` to a model and its optimizer.

    On construction it checks everything, then freezes all but the first stage's parameters
    and (re)builds the optimizer's param groups: one group per (stage that first trains it,
    block when ``lr_decay`` is used, decay/no-decay), named like ``stage0/decay``. The same
    optimizer object is kept when one is given; parameters no stage ever trains are left out
    of it, so they hold no optimizer state.

    Call :meth:`on_epoch_start` at the start of each epoch, :meth:`step` after each optimizer
    step, and :meth:`observe` after each evaluation (for plateau triggers).
    :func:`freezeflow.fit` does all three.

    Args:
        model: the model to fine-tune.
        schedule: a :class:`~freezeflow.Schedule` or a list of :class:`~freezeflow.Stage`.
        optimizer: an optimizer built over the model's parameters (its groups are rebuilt in
            place), or an optimizer class / factory called with the list of param groups.
            Default: ``torch.optim.AdamW``.
        scheduler: an LR scheduler already built over ``optimizer``. Better: build it after
            the unfreezer and :meth:`attach` it.
        norm: norm mode for frozen norm layers (see :func:`freezeflow.freeze`).
        eval_frozen: run modules whose parameters are all frozen in eval mode (see
            :func:`freezeflow.freeze`); needed for frozen-prefix caching of models with
            dropout or stochastic depth in their frozen blocks.
        no_decay: parameters that get no weight decay (default: ``ndim <= 1`` and norm layers).
        total_steps, total_epochs: length of the run, for :func:`~freezeflow.at_fraction`.

    Example:
        >>> import torch, torchvision, freezeflow as ff
        >>> model = torchvision.models.resnet18()
        >>> opt = torch.optim.AdamW(model.parameters())
        >>> uf = ff.GradualUnfreezer(model, ff.presets.ulmfit(3, lr=1e-3), opt)
        >>> [g["name"] for g in opt.param_groups][:2]
        ['last1/fc/no_decay', 'last1/fc/decay']
        >>> uf.on_epoch_start(1)[0].name
        'last2'
    """

    def __init__(
        self,
        model: nn.Module,
        schedule: Schedule | Sequence[Stage],
        optimizer: Optimizer | OptimizerFactory | type[Optimizer] | None = None,
        *,
        scheduler: Scheduler | None = None,
        norm: NormMode = "eval",
        eval_frozen: bool = False,
        no_decay: PolicyLike | None = None,
        total_steps: int | None = None,
        total_epochs: int | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise PolicyError(
                f"GradualUnfreezer needs an nn.Module, got {model!r} of type {type(model).__name__}"
            )
        schedule = schedule if isinstance(schedule, Schedule) else Schedule(schedule)
        _check_mode(norm)
        for what, value in (("total_steps", total_steps), ("total_epochs", total_epochs)):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value <= 0
            ):
                raise ScheduleError(f"{what}={value!r}: expected a positive integer")
        if any(isinstance(s.start, AtFraction) for s in schedule.stages[1:]) and not (
            total_steps or total_epochs
        ):
            raise ScheduleError(
                "a stage starts at a fraction of training, but the run's length is unknown; "
                "hint: pass total_steps= or total_epochs= (fit() does)"
            )
        lay = layout(model, schedule, no_decay)  # raises before anything changes

        self.model = model
        self.schedule = schedule
        self.layout: Layout = lay
        self.norm: NormMode = norm
        self.eval_frozen = eval_frozen
        self.total_steps = total_steps
        self.total_epochs = total_epochs
        self.stage = -1
        self.epoch = 0
        self.global_step = 0
        self.history: list[Transition] = []
        self._plateau = PlateauTracker(1)
        self._plateau_ready = False
        self._schedulers: list[Any] = []
        self._template: dict[str, Any] | None = None
        self._listeners: list[Callable[[Transition], None]] = []

        groups = self._initial_groups()
        if isinstance(optimizer, Optimizer):
            self._check_optimizer(optimizer)
            if scheduler is not None:
                self._check_scheduler(scheduler, optimizer)
            elif getattr(optimizer.step, "_wrapped_by_lr_sched", False):
                warnings.warn(
                    "this optimizer already has an LR scheduler; pass it as scheduler= (or "
                    "build the scheduler after the GradualUnfreezer) so that it drives every "
                    "param group the unfreezer creates",
                    FreezeflowWarning,
                    stacklevel=2,
                )
            if len(optimizer.param_groups) == 1:
                self._template = {
                    k: v for k, v in optimizer.param_groups[0].items() if k != "params"
                }
            if scheduler is not None:  # before anything changes
                self._check_lists(scheduler, len(groups), self._template)
            self.optimizer = optimizer
            optimizer.param_groups.clear()
            for g in groups:
                optimizer.add_param_group(g)
        else:
            factory: Callable[[list[dict[str, Any]]], Any] = (
                torch.optim.AdamW if optimizer is None else optimizer
            )
            if not callable(factory):
                raise OptimizerError(
                    f"optimizer must be a torch.optim.Optimizer, an optimizer class or a "
                    f"factory taking param groups, got {optimizer!r}"
                )
            built = factory(groups)
            if not isinstance(built, Optimizer):
                raise OptimizerError(
                    f"the optimizer factory returned {built!r}, not a torch.optim.Optimizer"
                )
            self.optimizer = built
            if scheduler is not None:
                self._check_scheduler(scheduler, built)
        self._enter(0, "start")
        if scheduler is not None:
            self.attach(scheduler)

    # ------------------------------------------------------------------ construction checks
    def _initial_groups(self) -> list[dict[str, Any]]:
        lay, sched = self.layout, self.schedule
        out = []
        for g in lay.groups:
            stage = sched.stages[g.stage]
            base = lay.lr(stage, g)
            out.append(
                {
                    "params": [lay.params[i] for i in g.params],
                    "name": g.name,
                    "lr": base,
                    "base_lr": base,
                    "lr_scale": lay.scale(stage, g),
                    "weight_decay": lay.weight_decay(sched, g.stage, g),
                }
            )
        return out

    def _check_optimizer(self, optimizer: Optimizer) -> None:
        known = {id(p) for p in self.layout.params}
        foreign = [
            tuple(p.shape)
            for g in optimizer.param_groups
            for p in g["params"]
            if id(p) not in known
        ]
        if foreign:
            raise OptimizerError(
                f"the optimizer holds {len(foreign)} parameter(s) that are not in "
                f"{type(self.model).__name__} (shapes {foreign[:3]}); hint: build it over "
                "this model's parameters, e.g. AdamW(model.parameters()), after replacing the "
                "head"
            )

    def _check_scheduler(self, scheduler: Any, optimizer: Optimizer) -> None:
        if not isinstance(scheduler, (LRScheduler, ReduceLROnPlateau)):
            raise OptimizerError(
                f"scheduler must be a torch.optim.lr_scheduler scheduler, got {scheduler!r}"
            )
        bound: Any = scheduler.optimizer
        # a wrapper sharing our param groups (accelerate's AcceleratedOptimizer, which the
        # Hugging Face Trainer builds its LR scheduler over) holds the optimizer as .optimizer
        while bound is not optimizer and isinstance(getattr(bound, "optimizer", None), Optimizer):
            bound = bound.optimizer
        if bound is not optimizer:
            raise OptimizerError(
                f"the LR scheduler {type(scheduler).__name__} is bound to another optimizer "
                f"({type(scheduler.optimizer).__name__} at {id(scheduler.optimizer):#x}), not "
                f"the one this unfreezer manages; hint: build it over unfreezer.optimizer"
            )

    # ------------------------------------------------------------------ schedulers
    def attach(self, scheduler: Scheduler) -> None:
        """Let ``scheduler`` keep driving every group through every transition.

        A scheduler built after the unfreezer already knows every group. One built before,
        over the optimizer's original single group, is extended: its per-group lists and
        LR keys are copied to every group, scaled to each group's base LR.

        Raises:
            OptimizerError: the scheduler is bound to another optimizer, or was built over
                several groups that cannot be mapped to the new ones.
        """
        self._check_scheduler(scheduler, self.optimizer)
        n = len(self.optimizer.param_groups)
        self._check_lists(scheduler, n, self._template)
        extended = False
        for s in _schedulers_in(scheduler):
            for key, values in _group_lists(s).items():
                if len(values) == n:
                    continue
                extended = True
                ref = self._template_ref()
                if key in ("base_lrs", "_last_lr", "max_lrs"):
                    setattr(
                        s,
                        key,
                        [values[0] * g["base_lr"] / ref for g in self.optimizer.param_groups],
                    )
                else:
                    setattr(s, key, [values[0]] * n)
        # The template (the optimizer's original single group) only describes a scheduler
        # built before the unfreezer: one whose lists had to be extended, or whose LR keys
        # (initial_lr, max_lr...) the new groups lack. A scheduler built after it has already
        # set every group's LRs; copying the template would undo its first step.
        template = self._template
        if template is not None and (
            extended
            or any(
                k in _LR_KEYS and k not in g for g in self.optimizer.param_groups for k in template
            )
        ):
            ref = self._template_ref()
            for g in self.optimizer.param_groups:
                for key, value in template.items():
                    if key in _LR_KEYS:
                        g[key] = value * g["base_lr"] / ref
                    elif key not in g or key in ("max_momentum", "base_momentum"):
                        g[key] = value
            self._template = None
        if scheduler not in self._schedulers:
            self._schedulers.append(scheduler)

    @staticmethod
    def _check_lists(scheduler: Any, n: int, template: dict[str, Any] | None) -> None:
        """Raise unless every per-group list of ``scheduler`` fits ``n`` groups or can be
        extended from the optimizer's original single group."""
        for s in _schedulers_in(scheduler):
            for key, values in _group_lists(s).items():
                if len(values) != n and (len(values) != 1 or template is None):
                    raise OptimizerError(
                        f"{type(s).__name__}.{key} has {len(values)} entries but the optimizer "
                        f"now has {n} param groups; hint: build the LR scheduler after the "
                        "GradualUnfreezer"
                    )

    def _template_ref(self) -> float:
        t = self._template or {}
        return float(t.get("max_lr", t.get("initial_lr", t.get("lr", 1.0))))

    def _rescale(self, i: int, ratio: float) -> None:
        group = self.optimizer.param_groups[i]
        for key in _LR_KEYS:
            if key in group:
                group[key] = group[key] * ratio
        seen: set[int] = set()
        for top in self._schedulers:
            for s in _schedulers_in(top):
                for key in ("base_lrs", "_last_lr", "max_lrs"):
                    values = getattr(s, key, None)
                    if isinstance(values, list) and id(values) not in seen and i < len(values):
                        seen.add(id(values))
                        values[i] = values[i] * ratio

    # ------------------------------------------------------------------ stages
    def _stage_params(self, k: int) -> frozenset[int]:
        return self.layout.trainable[k]

    def _by_ids(self, ids: Iterable[int], label: str) -> Any:
        members = {id(self.layout.params[i]) for i in ids}
        return where(lambda n, p, m: id(p) in members, label=label)

    def _enter(self, k: int, reason: str) -> Transition:
        lay, stage = self.layout, self.schedule.stages[k]
        now = self._stage_params(k)
        before = (
            frozenset(i for i, p in enumerate(lay.params) if p.requires_grad)
            if self.stage >= 0
            else frozenset()
        )
        # at the start, freeze everything the first stage does not train
        off = frozenset(range(len(lay.params))) - now if self.stage < 0 else before - now
        on = now - before if self.stage >= 0 else now
        if off:
            freeze(
                self.model,
                self._by_ids(off, "leaving"),
                norm=self.norm,
                eval_frozen=self.eval_frozen,
            )
            for i in off:  # frozen parameters hold no optimizer state (memory back)
                self.optimizer.state.pop(lay.params[i], None)
        if on:
            unfreeze(self.model, self._by_ids(on, "joining"))
        if stage.reset_state:
            self.optimizer.state = defaultdict(dict)
        lrs: dict[str, float] = {}
        for i, (spec, group) in enumerate(zip(lay.groups, self.optimizer.param_groups)):
            if not any(j in now for j in spec.params):
                continue
            new_base = lay.lr(stage, spec)
            old_base = float(group.get("base_lr", new_base))
            if old_base > 0 and new_base != old_base:
                self._rescale(i, new_base / old_base)
            group["base_lr"] = new_base
            group["lr_scale"] = lay.scale(stage, spec)
            group["weight_decay"] = lay.weight_decay(self.schedule, k, spec)
            lrs[spec.name] = float(group["lr"])
        self.stage = k
        self._plateau.reset()
        self._plateau_ready = False
        t = Transition(
            stage=k,
            name=self.schedule.names[k],
            epoch=self.epoch,
            step=self.global_step,
            trainable=sum(p.numel() for p in lay.params if p.requires_grad),  # as applied
            lrs=lrs,
            reason=reason,
        )
        self.history.append(t)
        for listener in self._listeners:
            listener(t)
        return t

    def add_listener(self, fn: Callable[[Transition], None]) -> None:
        """Call ``fn(transition)`` after every stage change (the start excluded), once the
        model and optimizer are updated. Used by :func:`freezeflow.fit` and by the DDP helper
        to re-wrap the model."""
        if not callable(fn):
            raise OptimizerError(f"add_listener() takes a callable, got {fn!r}")
        self._listeners.append(fn)

    def _due(self, k: int, at_epoch_start: bool) -> str | None:
        trig = self.schedule.stages[k].start
        if isinstance(trig, AtEpoch):
            return (
                f"epoch {trig.epoch}"
                if self.epoch >= trig.epoch and (at_epoch_start or self.epoch > trig.epoch)
                else None
            )
        if isinstance(trig, AtStep):
            return f"step {trig.step}" if self.global_step >= trig.step else None
        if isinstance(trig, AtFraction):
            if self.total_steps:
                done = self.global_step / self.total_steps
            elif self.total_epochs and at_epoch_start:
                done = self.epoch / self.total_epochs
            else:
                return None
            return f"{trig.fraction:.0%} of training" if done >= trig.fraction else None
        if isinstance(trig, OnPlateau) and at_epoch_start:
            if self._plateau_ready:
                return f"plateau of {trig.metric}"
            if trig.max_epoch is not None and self.epoch >= trig.max_epoch:
                return f"epoch {trig.max_epoch} (plateau cap)"
        return None

    def _advance(self, at_epoch_start: bool) -> list[Transition]:
        out = []
        while self.stage + 1 < len(self.schedule):
            reason = self._due(self.stage + 1, at_epoch_start)
            if reason is None:
                break
            out.append(self._enter(self.stage + 1, reason))
        return out

    # ------------------------------------------------------------------ hooks
    def on_epoch_start(self, epoch: int) -> list[Transition]:
        """Tell the unfreezer epoch ``epoch`` (0-based) begins; returns the transitions it
        made (empty when none)."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ScheduleError(f"on_epoch_start({epoch!r}): expected an epoch number >= 0")
        self.epoch = epoch
        return self._advance(at_epoch_start=True)

    def step(self) -> list[Transition]:
        """Call after each optimizer step; returns the transitions it made (step and
        fraction triggers start here, mid-epoch)."""
        self.global_step += 1
        return self._advance(at_epoch_start=False)

    def observe(self, value: float) -> bool:
        """Report a validation metric (for a next stage that starts on a plateau).

        Returns:
            True when the plateau is reached; the stage then starts at the next
            :meth:`on_epoch_start`.
        """
        if self.stage + 1 >= len(self.schedule):
            return False
        trig = self.schedule.stages[self.stage + 1].start
        if not isinstance(trig, OnPlateau):
            return False
        value = float(value)
        if not math.isfinite(value):
            raise ScheduleError(f"observe({value!r}): the metric must be finite")
        tracker = self._plateau
        tracker.patience, tracker.min_delta, tracker.mode = trig.patience, trig.min_delta, trig.mode
        if tracker.update(value):
            self._plateau_ready = True
        return self._plateau_ready

    # ------------------------------------------------------------------ views
    @property
    def waiting_for(self) -> str | None:
        """The metric the next stage's plateau trigger waits for (feed it to
        :meth:`observe` after each evaluation), or None when the next stage starts on an
        epoch, a step or a fraction, or there is no next stage."""
        if self.stage + 1 >= len(self.schedule):
            return None
        trigger = self.schedule.stages[self.stage + 1].start
        return trigger.metric if isinstance(trigger, OnPlateau) else None

    @property
    def stage_name(self) -> str:
        return self.schedule.names[self.stage]

    @property
    def trainable_count(self) -> int:
        """Trainable parameter values now."""
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    def trained_later(self) -> list[nn.Parameter]:
        """Every parameter that is trainable now or in a stage still to come: the rest of
        the model stays frozen until the schedule ends (the part ``fit(cache=True)`` computes
        once for all the remaining stages)."""
        ids = frozenset().union(*self.layout.trainable[max(self.stage, 0) :])
        return [self.layout.params[i] for i in sorted(ids)]

    @property
    def group_names(self) -> list[str]:
        return [g.name for g in self.layout.groups]

    def lrs(self) -> dict[str, float]:
        """Current LR of each param group, by group name."""
        return {g["name"]: float(g["lr"]) for g in self.optimizer.param_groups}

    def plan(self) -> Any:
        """The per-stage plan of this unfreezer (see :func:`freezeflow.plan`)."""
        from freezeflow.unfreezer.plan import Plan

        return Plan.build(self.model, self.schedule, self.layout)

    # ------------------------------------------------------------------ state
    def _fingerprint(self) -> dict[str, str]:
        model = hashlib.sha256()
        for n, p in zip(self.layout.names, self.layout.params):
            model.update(f"{n}:{tuple(p.shape)};".encode())
        try:
            sched = repr(self.schedule.to_dict())
        except PolicyError:
            sched = repr([(s.lr, s.start, repr(s.trainable)) for s in self.schedule.stages])
        return {
            "model": model.hexdigest()[:16],
            "schedule": hashlib.sha256(sched.encode()).hexdigest()[:16],
            "groups": hashlib.sha256(repr(self.group_names).encode()).hexdigest()[:16],
        }

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume mid-schedule (plain values; safe for
        ``torch.load(weights_only=True)``). Save it with the model's, optimizer's and
        scheduler's state dicts."""
        modules = dict(self.model.named_modules())
        return {
            "format": _STATE_FORMAT,
            "fingerprint": self._fingerprint(),
            "stage": self.stage,
            "epoch": self.epoch,
            "global_step": self.global_step,
            "plateau": {
                "best": self._plateau.best,
                "bad": self._plateau.bad,
                "ready": self._plateau_ready,
            },
            "trainable": [
                n for n, p in zip(self.layout.names, self.layout.params) if p.requires_grad
            ],
            "norm_modes": {
                path: norm_mode(m) for path, m in modules.items() if norm_mode(m) is not None
            },
            "groups": [
                {
                    k: g[k]
                    for k in ("name", "base_lr", "lr_scale", "weight_decay", *_LR_KEYS)
                    if k in g
                }
                for g in self.optimizer.param_groups
            ],
            "history": [t.to_dict() for t in self.history],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`: stage, step and epoch counters, which parameters are
        trainable, norm modes, group hyper-parameters and the transition history.

        Raises:
            StateError: the state is from another model, schedule or group layout, or is not
                a GradualUnfreezer state; nothing has changed then.
        """
        if not isinstance(state, dict) or state.get("format") != _STATE_FORMAT:
            found = state.get("format") if isinstance(state, dict) else type(state).__name__
            raise StateError(
                f"not a GradualUnfreezer state (found {found!r}, expected {_STATE_FORMAT!r}); "
                "hint: pass what unfreezer.state_dict() returned"
            )
        mine = self._fingerprint()
        theirs = state.get("fingerprint", {})
        for key, what in (("model", "model"), ("schedule", "schedule"), ("groups", "groups")):
            if theirs.get(key) != mine[key]:
                raise StateError(
                    f"this state was saved for another {what} (fingerprint "
                    f"{theirs.get(key)!r}, this one is {mine[key]!r}); hint: rebuild the same "
                    "model (same head) and schedule before loading"
                )
        names = set(state["trainable"])
        unknown = names - set(self.layout.names)
        modules = dict(self.model.named_modules())
        bad_modules = [p for p in state["norm_modes"] if p not in modules]
        if unknown or bad_modules or len(state["groups"]) != len(self.optimizer.param_groups):
            raise StateError(
                "the state names parameters, modules or groups this model does not have: "
                f"{sorted(unknown)[:3] or bad_modules[:3]}"
            )
        # validated: apply
        from freezeflow.core.freezing import _lock, _unlock

        for n, p in zip(self.layout.names, self.layout.params):
            p.requires_grad_(n in names)
            if n not in names:
                p.grad = None
        for path, m in modules.items():
            mode = state["norm_modes"].get(path)
            if mode is None and norm_mode(m) is not None:
                parent = modules[path.rpartition(".")[0]] if path else self.model
                _unlock(m, parent.training)
            elif mode is not None:
                _lock(m, mode)
        for group, saved in zip(self.optimizer.param_groups, state["groups"]):
            group.update({k: v for k, v in saved.items() if k != "name"})
        self.stage = int(state["stage"])
        self.epoch = int(state["epoch"])
        self.global_step = int(state["global_step"])
        plateau = state["plateau"]
        self._plateau.best, self._plateau.bad = plateau["best"], int(plateau["bad"])
        self._plateau_ready = bool(plateau["ready"])
        self.history = [Transition(**t) for t in state["history"]]

    def __repr__(self) -> str:
        return (
            f"GradualUnfreezer(stage {self.stage} {self.stage_name!r} of {len(self.schedule)}, "
            f"epoch {self.epoch}, step {self.global_step}, "
            f"{len(self.optimizer.param_groups)} groups)"
        )
