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
with ``scheduler=`` and is extended to the new groups (:mod:`freezeflow.unfreezer.lr_schedulers`).
Saving and restoring mid-schedule: :mod:`freezeflow.unfreezer.state`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from freezeflow.core.freezing import NormMode, check_norm_mode
from freezeflow.core.policy import PolicyLike
from freezeflow.errors import (
    OptimizerError,
    OptimizerTypeError,
    PolicyTypeError,
    ScheduleError,
    check_int,
)
from freezeflow.schedules.plateau import PlateauTracker
from freezeflow.schedules.schedule import Schedule, Stage
from freezeflow.unfreezer import agreement, checks
from freezeflow.unfreezer.clock import RunClock
from freezeflow.unfreezer.hooks import LoopHooks
from freezeflow.unfreezer.layout import Layout, layout
from freezeflow.unfreezer.lr_schedulers import (
    Scheduler,
    Schedulers,
    live_schedulers,
)
from freezeflow.unfreezer.optimizer import OptimizerFactory, adopt_layout
from freezeflow.unfreezer.planner import (
    Probe,
    StageChoice,
    StagePlanner,
    StageTime,
    planner_for,
)
from freezeflow.unfreezer.soft import FreezingMode, SoftFreezing
from freezeflow.unfreezer.stages import apply_stage
from freezeflow.unfreezer.state import STATE_FORMAT, apply_state, capture, fingerprint, read_state
from freezeflow.unfreezer.transition import Transition
from freezeflow.unfreezer.verify import TransitionCheck

__all__ = ["GradualUnfreezer", "OptimizerFactory", "Transition"]


class GradualUnfreezer(LoopHooks):
    """Applies a :class:`~freezeflow.Schedule` to a model and its optimizer.

    On construction it checks everything, then freezes all but the first stage's parameters
    and (re)builds the optimizer's param groups: one group per (stage that first trains it,
    block when ``lr_decay`` is used, decay/no-decay), named like ``stage0/decay``. The same
    optimizer object is kept when one is given; parameters no stage ever trains are left out
    of it, so they hold no optimizer state.

    Call :meth:`on_epoch_start` at the start of each epoch, :meth:`step` after each optimizer
    step, and :meth:`observe` after each evaluation with the metric :attr:`waiting_for`
    names (for plateau triggers). :func:`freezeflow.fit` does all three.

    Args:
        model: the model to fine-tune.
        schedule: a :class:`~freezeflow.Schedule` or a list of :class:`~freezeflow.Stage`.
        optimizer: an optimizer built over the model's parameters (its groups are rebuilt in
            place), or an optimizer class / factory called with the list of param groups.
            Default: ``torch.optim.AdamW``. Its weight decay applies while no stage sets one.
        scheduler: an LR scheduler already built over ``optimizer``. Not needed: every LR
            scheduler alive and bound to ``optimizer`` (or to a wrapper of it) is found and
            driven, whether built before the unfreezer or after it (then found at the first
            stage change); :meth:`attach` says it explicitly.
        norm: norm mode for frozen norm layers (see :func:`freezeflow.freeze`).
        eval_frozen: run modules whose parameters are all frozen in eval mode (see
            :func:`freezeflow.freeze`); needed for frozen-prefix caching of models with
            dropout or stochastic depth in their frozen blocks.
        verify: at the first optimizer step after each stage change, refuse the step when a
            newly trainable block got no gradient (a compiled graph or a wrapper from before
            the change...) or the optimizer does not hold it
            (:mod:`freezeflow.unfreezer.verify`); under torch.distributed, also check at
            every epoch start that all ranks train the same parameters, and at that step that
            the new parameters' gradients were all-reduced
            (:mod:`freezeflow.unfreezer.agreement`).
        freezing: ``"hard"`` (default): a frozen parameter has ``requires_grad=False``.
            ``"soft"``, for engines that build their optimizer once and never look at
            ``requires_grad`` again (DeepSpeed ZeRO, FSDP1, an optimizer ``accelerate``
            prepared): every parameter some stage trains requires gradients and is in the
            optimizer from the start; a frozen one has its gradient dropped and its group LR 0
            and weight decay 0 at each step, so its weights and optimizer state stay as they
            were (:mod:`freezeflow.unfreezer.soft`). It saves no backward compute.
        no_decay: parameters that get no weight decay (default: ``ndim <= 1`` and norm layers).
        total_steps, total_epochs: length of the run, for :func:`~freezeflow.at_fraction`.

    Attributes:
        stage_index: index of the stage running now (:attr:`stage_name` is its name).
        epoch: the epoch running now (0-based).
        global_step: the optimizer steps counted so far.
        history: every :class:`~freezeflow.unfreezer.Transition`, the start included.
        layout: the :class:`~freezeflow.unfreezer.Layout` (trainable sets and groups).
        default_weight_decay: the weight decay the optimizer was built with, which decay
            groups get while no stage sets one.

    Misuse is refused where it happens (:mod:`freezeflow.unfreezer.checks`): a model whose
    parameters were replaced after the unfreezer was built, epochs going backwards, stages
    that cannot start in order; and warned about once: a stage re-selecting part of what is
    trainable, steps before any epoch while a stage waits for one, a stage run for no step
    (the next, of another kind of trigger, was already due).

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
        verify: bool = True,
        freezing: FreezingMode = "hard",
        no_decay: PolicyLike | None = None,
        total_steps: int | None = None,
        total_epochs: int | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise PolicyTypeError(
                f"GradualUnfreezer needs an nn.Module, got {model!r} of type "
                f"{type(model).__name__}; hint: GradualUnfreezer(model, schedule, optimizer)"
            )
        schedule = schedule if isinstance(schedule, Schedule) else Schedule(schedule)
        check_norm_mode(norm)
        for flag, switch in (("eval_frozen", eval_frozen), ("verify", verify)):
            if not isinstance(switch, bool):
                raise OptimizerTypeError(
                    f"GradualUnfreezer({flag}={switch!r}): expected True or False, got a "
                    f"{type(switch).__name__}; hint: {flag}=True"
                )
        if freezing not in ("hard", "soft"):
            raise OptimizerError(
                f"GradualUnfreezer(freezing={freezing!r}): expected 'hard' or 'soft'; hint: "
                "'soft' for an engine that builds its optimizer once (DeepSpeed, FSDP1), else "
                "leave it out"
            )
        for what, value in (("total_steps", total_steps), ("total_epochs", total_epochs)):
            if value is not None:
                check_int(f"GradualUnfreezer({what})", value, 1)
        if schedule.needs_run_length and not (total_steps or total_epochs):
            raise ScheduleError(
                "a stage starts at a fraction of training, but the run's length is unknown; "
                "hint: pass total_steps= or total_epochs= (fit() does)"
            )
        checks.check_stage_order(schedule, total_steps, total_epochs)
        lay = layout(model, schedule, no_decay)  # raises before anything changes
        planner = planner_for(model, schedule, lay)  # chosen once, by the schedule's kind
        planner.check_run(total_steps, total_epochs)
        if freezing == "soft" and not planner.supports_soft:
            raise ScheduleError(
                f"freezing='soft' with a schedule planned by {planner.name!r}: its "
                "measurements flip requires_grad, which soft freezing exists to avoid; "
                "expected a schedule with fixed stages; hint: a fixed schedule (a list of "
                "Stage, or a preset), or freezing='hard'"
            )

        self.model = model
        self.schedule = schedule
        self.layout: Layout = lay
        self.norm: NormMode = norm
        self.eval_frozen = eval_frozen
        self.freezing: FreezingMode = freezing
        self.total_steps = total_steps
        self.total_epochs = total_epochs
        self.stage_index = -1
        self.epoch = 0
        self.global_step = 0
        self.history: list[Transition] = []
        self._plateau = PlateauTracker(1)
        self._plateau_ready = False
        self._listeners: list[Callable[[Transition], None]] = []
        self._held = frozenset(id(p) for p in lay.params)
        self._once = checks.Once()
        self._epoch_seen = False  # on_epoch_start (or a loaded state) has counted an epoch
        self._step_checked = False  # the first step() checks the model
        self._resumed = False  # a state was loaded: the next epoch may be any
        self._planner = planner
        self.clock = RunClock()

        # the LR schedulers already built over the user's optimizer drive every group from
        # now on, handed over or not (one not attached would zip its single group's lists
        # with the new groups)
        found = live_schedulers(optimizer) if isinstance(optimizer, Optimizer) else []
        adopted = [*([] if scheduler is None else [scheduler]), *found]
        adopted = [s for i, s in enumerate(adopted) if all(s is not t for t in adopted[:i])]
        self.optimizer, template, self.default_weight_decay = adopt_layout(
            optimizer, lay, schedule, model_name=type(model).__name__, schedulers=adopted
        )
        self._schedulers = Schedulers(self.optimizer, template)
        self._soft = SoftFreezing(self.optimizer, lay) if freezing == "soft" else None
        self._verify = (
            TransitionCheck(self.optimizer, lay, self._once.warn, soft=freezing == "soft")
            if verify
            else None
        )
        if planner.watches_steps:  # signals from the steps training takes anyway
            self.optimizer.register_step_pre_hook(lambda *_: planner.on_optimizer_step())
        self._enter(0, "start")
        if planner.warns_overlap and (overlap := checks.overlap_warning(schedule, lay)):
            self._once.warn("overlap", overlap)
        self._schedulers.adopt(adopted)

    def attach(self, scheduler: Scheduler) -> None:
        """Let ``scheduler`` keep driving every group through every transition.

        A scheduler built after the unfreezer already knows every group. One built before,
        over the optimizer's original single group, is extended: its per-group lists and
        LR keys are copied to every group, scaled to each group's base LR.

        Raises:
            OptimizerError: the scheduler is bound to another optimizer, or was built over
                several groups that cannot be mapped to the new ones.
        """
        self._schedulers.attach(scheduler)

    # ------------------------------------------------------------------ stages
    def _enter(self, k: int, reason: str) -> Transition:
        before = self.trainable_ids() if self.stage_index >= 0 else None
        choice = self._planner.choose(k, before or frozenset())  # decided before any change
        if k > 0 and self._schedulers.may_miss_one():
            self._schedulers.adopt(live_schedulers(self.optimizer))  # checked, then attached
        if self._soft is not None and before is not None:
            self._soft.harden()
        if choice.note:
            reason = f"{reason}; {choice.note}"
        active = self._apply(k, before, choice)
        self.stage_index = k
        self._stage_start = (self.epoch, self.global_step)
        self._schedulers.stage_changed()  # a scheduler following the stages starts its curve
        self._plateau.reset()
        self._plateau_ready = False
        return self._record(k, active, reason, choice.trainable - (before or frozenset()))

    def _between(self) -> list[Transition]:
        """A change the planner makes within the running stage at an epoch start where no
        stage begins (only freezing, e.g. ``ff.auto(refreeze=True)``); the stage's LR curve,
        plateau tracking and start go on as they were. The model was checked at this epoch
        start already."""
        k, before = self.stage_index, self.trainable_ids()
        choice = self._planner.between(k, before)
        if choice is None or choice.trainable == before:
            return []
        if not choice.trainable <= before:
            raise ScheduleError(
                f"the {self._planner.name!r} planner asked to unfreeze parameters between "
                "stages; expected only freezing there; hint: a planner unfreezes in choose()"
            )
        if self._soft is not None:
            self._soft.harden()
        active = self._apply(k, before, StageChoice(choice.trainable, {}))
        return [self._record(k, active, choice.note, frozenset())]

    def _apply(self, k: int, before: frozenset[int] | None, choice: StageChoice) -> dict[int, str]:
        active = apply_stage(
            self.model,
            self.layout,
            self.optimizer,
            self._schedulers,
            self.schedule,
            k,
            before,
            choice.trainable,
            choice.scales,
            norm=self.norm,
            eval_frozen=self.eval_frozen,
            default_weight_decay=self.default_weight_decay,
        )
        if self._soft is not None:
            self._soft.set_trainable(choice.trainable)
        return active

    def _record(
        self, k: int, active: dict[int, str], reason: str, new: frozenset[int]
    ) -> Transition:
        lrs = {name: float(self.optimizer.param_groups[i]["lr"]) for i, name in active.items()}
        t = Transition(
            stage_index=k,
            name=self.schedule.names[k],
            epoch=self.epoch,
            step=self.global_step,
            n_trainable=self.n_trainable,  # as applied
            lrs=lrs,
            reason=reason,
        )
        self.history.append(t)
        if k > 0 and new and self._verify is not None:
            self._verify.arm(t, new)
        for listener in self._listeners:
            listener(t)
        return t

    def _check_ranks(self) -> None:
        if self._verify is not None and agreement.distributed():
            names = [self.layout.names[i] for i in sorted(self.trainable_ids())]
            agreement.check_same_stage(self.stage_index, self.schedule.names, names)

    def add_listener(self, fn: Callable[[Transition], None]) -> None:
        """Call ``fn(transition)`` after every stage change (the start excluded), once the
        model and optimizer are updated. Used by :func:`freezeflow.fit` and by the DDP helper
        to re-wrap the model."""
        if not callable(fn):
            raise OptimizerTypeError(
                f"add_listener() takes a callable, got {fn!r} of type {type(fn).__name__}; "
                "hint: add_listener(lambda transition: ...)"
            )
        self._listeners.append(fn)

    def check_model(self) -> None:
        """Check that the model's parameters are still the ones the unfreezer was built over
        (cheap: by identity, no tensor work). Called at every epoch start, at the first
        :meth:`step` and before every stage change.

        Raises:
            ModelChangedError: a module was replaced, or parameters re-created, after the
                unfreezer was built; the message names them.
        """
        checks.check_model(self.model, self.layout, self._held)

    # ------------------------------------------------------------------ views
    @property
    def stage_name(self) -> str:
        """Name of the stage running now."""
        return self.schedule.names[self.stage_index]

    @property
    def n_trainable(self) -> int:
        """Trainable parameter values now."""
        return sum(self.layout.params[i].numel() for i in self.trainable_ids())

    def trainable_ids(self) -> frozenset[int]:
        """Indices (into :attr:`layout`'s parameters) of the parameters trainable now (in
        soft mode, those the unfreezer lets move, whatever their ``requires_grad``)."""
        if self._soft is not None:
            return self._soft.trainable
        return frozenset(i for i, p in enumerate(self.layout.params) if p.requires_grad)

    def trained_later(self) -> list[nn.Parameter]:
        """Every parameter that is trainable now or in a stage still to come: the rest of
        the model stays frozen until the schedule ends (the part ``fit(cache=True)`` computes
        once for all the remaining stages)."""
        ids = self._planner.trained_later(self.trainable_ids(), self.stage_index)
        return [self.layout.params[i] for i in sorted(ids)]

    def check_run(self, total_steps: int | None, total_epochs: int | None) -> None:
        """Check that a run of this length suits the schedule (an ``ff.auto`` budget is the
        run's epochs); ``fit()`` calls it for an unfreezer built elsewhere.

        Raises:
            ScheduleError: it does not; nothing has changed then.
        """
        checks.check_stage_order(self.schedule, total_steps, total_epochs)
        self._planner.check_run(total_steps, total_epochs)

    def set_run_length(self, total_steps: int | None, total_epochs: int | None) -> None:
        """Give an unfreezer built without them the run's length (``fit()`` does): checked
        with :meth:`check_run` first, then kept where the unfreezer did not know it."""
        self.check_run(total_steps, total_epochs)
        self.total_steps = self.total_steps or total_steps
        self.total_epochs = self.total_epochs or total_epochs

    def time(self) -> StageTime:
        """Where the run is: the stage and where it began, the epoch and step now, the
        run's length where known."""
        return StageTime(
            stage_index=self.stage_index,
            started=self._stage_start,
            epoch=self.epoch,
            step=self.global_step,
            total_steps=self.total_steps,
            total_epochs=self.total_epochs,
            seconds=self.clock.epoch_seconds,
            last_epoch=self.clock.last_epoch,
        )

    def lr_scheduler(self) -> LRScheduler | None:
        """The LR scheduler the schedule brings for runs that bring none (``ff.auto``'s
        in-stage cosine), built over the optimizer and attached; None when it brings none.
        Step it after every optimizer step; ``fit()`` and the Lightning callback do when you
        give them no scheduler of your own."""
        built = self._planner.lr_scheduler(self.optimizer, self.time)
        if built is not None:
            self.attach(built)
        return built

    # ------------------------------------------------------------------ the planner
    def set_probe(self, probe: Probe) -> None:
        """Give a planner that measures (``ff.auto``) the training batches and loss its
        decisions use (:class:`~freezeflow.unfreezer.Probe`). ``fit()`` and the integrations
        do it when :attr:`needs_probe`; without a probe each ``auto`` stage takes the window
        of blocks nearest the output. Harmless for other schedules."""
        if not isinstance(probe, Probe):
            raise OptimizerTypeError(
                f"set_probe() takes a freezeflow.unfreezer.Probe, got {probe!r} of type "
                f"{type(probe).__name__}; hint: ff.unfreezer.Probe(batches=..., loss=...)"
            )
        self._planner.set_probe(probe)

    @property
    def planner(self) -> StagePlanner:
        """The stage planner the schedule named (:mod:`freezeflow.unfreezer.planner`): what
        each stage trains and at which LR scales; for ``ff.auto``, its windows of blocks and
        decisions."""
        return self._planner

    @property
    def needs_probe(self) -> bool:
        """Whether the planner measures (``ff.auto``) and has no probe yet."""
        return self._planner.needs_probe

    @property
    def decisions(self) -> list[Any]:
        """What the planner decided so far (``ff.auto``: one
        :class:`~freezeflow.unfreezer.auto.Decision` per stage begun; empty for fixed
        schedules)."""
        return list(self._planner.decisions)

    @property
    def group_names(self) -> list[str]:
        return [g.name for g in self.layout.groups]

    def lrs(self) -> dict[str, float]:
        """Current LR of each param group, by group name."""
        return {g["name"]: float(g["lr"]) for g in self.optimizer.param_groups}

    def plan(self) -> Any:
        """The per-stage plan of this unfreezer (see :func:`freezeflow.plan`)."""
        from freezeflow.unfreezer.plan import Plan

        return Plan.build(
            self.model, self.schedule, self.layout, self.default_weight_decay, self._planner
        )

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume mid-schedule (plain values; safe for
        ``torch.load(weights_only=True)``). Save it with the model's, optimizer's and
        scheduler's state dicts."""
        return {
            "format": STATE_FORMAT,
            "fingerprint": fingerprint(self.layout, self.schedule),
            "stage_index": self.stage_index,
            "epoch": self.epoch,
            "global_step": self.global_step,
            "plateau": {
                "best": self._plateau.best,
                "bad": self._plateau.bad,
                "ready": self._plateau_ready,
            },
            **capture(self.model, self.layout, self.optimizer, self.trainable_ids()),
            "history": [asdict(t) for t in self.history],
            "stage_start": list(self._stage_start),
            "planner": self._planner.state_dict(),
            # the wall clock only where a time budget reads it (else states stay deterministic)
            **({} if self._planner.time_budget is None else {"clock": self.clock.state_dict()}),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`: stage, step and epoch counters, which parameters are
        trainable, norm modes, group hyper-parameters and the transition history.

        Raises:
            StateError: the state is from another model, schedule or group layout, or is not
                a GradualUnfreezer state; nothing has changed then.
        """
        state = read_state(state, self.model, self.layout, self.schedule, self.optimizer)
        clock = RunClock()
        clock.load_state_dict(state.get("clock"))
        self._planner.load_state_dict(state.get("planner"))  # first: a bad one changes nothing
        self.history = apply_state(state, self.model, self.layout, self.optimizer)
        if self._soft is not None:
            names = set(state["trainable_names"])
            self._soft.set_trainable(
                frozenset(i for i, n in enumerate(self.layout.names) if n in names)
            )
        self.stage_index = int(state["stage_index"])
        self.epoch = int(state["epoch"])
        self.global_step = int(state["global_step"])
        plateau = state["plateau"]
        self._plateau.best, self._plateau.bad = plateau["best"], int(plateau["bad"])
        self._plateau_ready = bool(plateau["ready"])
        start = state.get("stage_start", (self.epoch, self.global_step))
        self._stage_start = (int(start[0]), int(start[1]))
        self.clock = clock
        self._epoch_seen = self._resumed = True
        if self._verify is not None:
            self._verify.disarm()

    def __repr__(self) -> str:
        return (
            f"GradualUnfreezer(stage {self.stage_index} {self.stage_name!r} of "
            f"{len(self.schedule)}, epoch {self.epoch}, step {self.global_step}, "
            f"{len(self.optimizer.param_groups)} groups)"
        )
