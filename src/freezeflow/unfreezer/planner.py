"""Stage planners: what each stage of a schedule trains, and at which LR scale per block.

A :class:`~freezeflow.GradualUnfreezer` chooses one planner when it is built, by the
schedule's :attr:`~freezeflow.Schedule.planner` name, and asks it every question whose answer
depends on the kind of schedule, so that neither the unfreezer, nor :func:`~freezeflow.plan`,
nor ``fit()``, nor the integrations hold a branch on it:

- :meth:`StagePlanner.choose`: what stage ``k`` trains when it begins, at which LR scales, and
  a note for the transition's reason;
- :meth:`StagePlanner.planned`: the same, before training or for stages still to come (what a
  plan shows);
- :meth:`StagePlanner.trained_later`: what may still train (what a feature cache must not
  cover);
- :meth:`StagePlanner.check_run`: whether the run's length suits the schedule;
- :meth:`StagePlanner.lr_scheduler`: an LR curve of its own for runs without a scheduler;
- :meth:`StagePlanner.between`: a change within the running stage at an epoch start where
  no stage begins (only freezing: ``ff.auto(refreeze=True)``'s converged prefix), from what
  it observed (:meth:`StagePlanner.on_epoch_start`, :meth:`StagePlanner.on_optimizer_step`
  when :attr:`StagePlanner.watches_steps`);
- :attr:`StagePlanner.needs_probe` / :meth:`StagePlanner.set_probe`: measurements it needs
  from the training loop (a :class:`Probe`);
- :meth:`StagePlanner.state_dict` / :meth:`StagePlanner.load_state_dict`: its decisions, saved
  with the unfreezer's state.

Ordinary schedules get :class:`FixedPlanner` (each stage trains what its policy selects, at
the layout's scales). ``ff.auto`` gets :class:`~freezeflow.unfreezer.auto.AutoPlanner`. A new
planner is a subclass registered with :func:`register_planner` and named by a
:class:`~freezeflow.Schedule` subclass's ``planner``; nothing else changes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from freezeflow.errors import ScheduleError, ScheduleTypeError, StateError, nearest
from freezeflow.schedules.schedule import Schedule
from freezeflow.unfreezer.layout import Layout

__all__ = [
    "PLANNERS",
    "FixedPlanner",
    "PlannedStage",
    "Probe",
    "StageChoice",
    "StagePlanner",
    "StageTime",
    "planner_for",
    "register_planner",
]


@dataclass(frozen=True)
class Probe:
    """Training batches and the loss, for a planner that measures (``ff.auto``).

    Args:
        batches: ``batches(n, seed)`` returns ``n`` training batches, the same ones for the
            same seed, already on the model's device.
        loss: ``loss(model, batch)``, a scalar tensor (the training loss of one batch).
    """

    batches: Callable[[int, int], Sequence[Any]]
    loss: Callable[[nn.Module, Any], Tensor]


@dataclass(frozen=True)
class StageChoice:
    """What a stage trains when it begins (indices into the layout's parameters), the LR
    scale decided for each block (None: the layout's own scales; a block left out keeps the
    scale it had), and a note added to the transition's reason."""

    trainable: frozenset[int]
    scales: dict[int, float] | None = None
    note: str = ""


@dataclass(frozen=True)
class PlannedStage:
    """What a plan shows for one stage: what it trains, the LR scale of each block (None:
    the layout's), and the policy in words (None: the stage's policy as written)."""

    trainable: frozenset[int]
    scales: dict[int, float] | None = None
    policy: str | None = None


@dataclass(frozen=True)
class StageTime:
    """Where a running unfreezer is: the stage running and the (epoch, step) it began at, the
    epoch and optimizer steps now, and the run's length where known."""

    stage_index: int
    started: tuple[int, int]
    epoch: int
    step: int
    total_steps: int | None
    total_epochs: int | None
    seconds: float | None = None
    """Seconds of training when the epoch running began (None: not started)."""
    last_epoch: float | None = None
    """How long the epoch before took (None: none before)."""


class StagePlanner:
    """Decides the stages of one unfreezer's schedule on one model (see the module's
    docstring for the questions it answers). The defaults are those of a schedule whose
    stages are fixed: :class:`FixedPlanner`.

    Args:
        model: the model.
        schedule: the schedule.
        layout: the schedule resolved on the model (its parameters, per-stage sets, groups).
    """

    name: ClassVar[str] = ""
    warns_overlap: ClassVar[bool] = True
    """Whether a stage re-selecting part of what trains is worth a warning (not when the
    planner re-selects by design)."""

    supports_soft: ClassVar[bool] = True
    """Whether the planner works under soft freezing (it never flips ``requires_grad`` to
    measure)."""

    def __init__(self, model: nn.Module, schedule: Schedule, layout: Layout) -> None:
        self.model = model
        self.schedule = schedule
        self.layout = layout
        self.probe: Probe | None = None
        self.decisions: list[Any] = []
        """What the planner decided so far (each with a one-line ``text``)."""

    # ------------------------------------------------------------------ running
    def check_run(self, total_steps: int | None, total_epochs: int | None) -> None:
        """Raise :class:`~freezeflow.errors.ScheduleError` when a run of this length cannot
        apply the schedule as planned (nothing by default)."""

    def choose(self, k: int, trainable: frozenset[int]) -> StageChoice:
        """What stage ``k`` trains from now on, given what ``trainable`` holds now."""
        return StageChoice(self.layout.trainable_ids[k])

    def trained_later(self, trainable: frozenset[int], stage_index: int) -> frozenset[int]:
        """What trains now (``trainable``) or may train in a stage still to come."""
        later = self.layout.trainable_ids[max(stage_index, 0) :]
        return frozenset(trainable).union(*later)

    time_budget: float | None = None
    """How many seconds the run may train, or None for no time budget; the unfreezer's
    :meth:`~freezeflow.GradualUnfreezer.out_of_time` reads it."""

    watches_steps: bool = False
    """Whether the unfreezer calls :meth:`on_optimizer_step` (an optimizer step pre-hook)."""

    def on_optimizer_step(self) -> None:
        """Before each optimizer step, the gradients in place (when :attr:`watches_steps`);
        nothing by default."""

    def on_epoch_start(self, epoch: int) -> None:
        """At each epoch start, before any stage begins (the same epoch again after a
        resume); nothing by default."""

    def epoch_mark(self) -> object:
        """What :meth:`on_epoch_start` would change, taken before it runs, so that an epoch
        start refused later (a decision that raises) can be undone with
        :meth:`undo_epoch_start`; None by default (nothing changes)."""
        return None

    def undo_epoch_start(self, mark: object) -> None:
        """Put back what :meth:`epoch_mark` returned (nothing by default)."""

    def between(self, k: int, trainable: frozenset[int]) -> StageChoice | None:
        """At an epoch start where no stage begins: what stage ``k`` trains from now on, a
        subset of ``trainable`` (what trains now), or None to change nothing (the
        default)."""
        return None

    def lr_scheduler(
        self, optimizer: Optimizer, now: Callable[[], StageTime]
    ) -> LRScheduler | None:
        """An LR scheduler of the planner's own (``now()`` tells where the run is), for runs
        that bring none; None by default."""
        return None

    @property
    def needs_probe(self) -> bool:
        """Whether the planner measures and has no :class:`Probe` yet."""
        return False

    def set_probe(self, probe: Probe) -> None:
        """Give the planner the batches and loss it measures."""
        self.probe = probe

    # ------------------------------------------------------------------ planning
    def planned(self, k: int, before: frozenset[int]) -> PlannedStage:
        """What stage ``k`` trains as far as is known before it runs (``before``: what the
        stage before it trains)."""
        return PlannedStage(self.layout.trainable_ids[k])

    # ------------------------------------------------------------------ state
    def state_dict(self) -> Any:
        """The planner's decisions as plain values (None: nothing to save)."""
        return None

    def load_state_dict(self, data: Any) -> None:
        """Restore :meth:`state_dict`; checks everything before changing anything.

        Raises:
            StateError: the data does not fit this planner.
        """
        if data is not None:
            raise StateError(
                f"the state holds decisions of a stage planner ({data!r}), but this schedule's "
                f"planner ({type(self).__name__}) makes none; expected a state saved with the "
                "same schedule; hint: resume with the schedule the state was saved with"
            )


class FixedPlanner(StagePlanner):
    """Each stage trains what its policy selects (with earlier stages' parameters, unless
    ``exclusive``), at the layout's per-block scales: every ordinary schedule."""

    name = "fixed"


PLANNERS: dict[str, type[StagePlanner]] = {"fixed": FixedPlanner}
"""The stage planners by name (:attr:`freezeflow.Schedule.planner`)."""

P = TypeVar("P", bound=type[StagePlanner])


def register_planner(name: str) -> Callable[[P], P]:
    """Class decorator: register a :class:`StagePlanner` subclass under ``name``, the value
    of ``planner`` on the schedules it applies.

    Example:
        >>> @register_planner("as_written")
        ... class AsWritten(FixedPlanner):
        ...     pass
        >>> PLANNERS["as_written"] is AsWritten
        True
    """

    def register(cls: P) -> P:
        if not (isinstance(cls, type) and issubclass(cls, StagePlanner)):
            raise ScheduleTypeError(
                f"register_planner({name!r}) decorates {cls!r}, not a StagePlanner subclass; "
                "hint: class MyPlanner(freezeflow.unfreezer.planner.StagePlanner): ..."
            )
        cls.name = name
        PLANNERS[name] = cls
        return cls

    return register


def planner_for(model: nn.Module, schedule: Schedule, layout: Layout) -> StagePlanner:
    """The planner ``schedule`` names, built over ``model`` and ``layout``.

    Raises:
        ScheduleError: no planner is registered under that name.
    """
    cls = PLANNERS.get(schedule.planner)
    if cls is None:
        raise ScheduleError(
            f"{type(schedule).__name__} names the stage planner {schedule.planner!r}, but none "
            f"is registered by that name; expected one of {sorted(PLANNERS)}; nearest: "
            f"{nearest(schedule.planner, PLANNERS, n=1)[0]!r}; hint: decorate its class with "
            "freezeflow.unfreezer.planner.register_planner(name) and import its module"
        )
    return cls(model, schedule, layout)
