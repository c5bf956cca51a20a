"""Misuse a :class:`~freezeflow.GradualUnfreezer` refuses or warns about, found where it
happens: parameters replaced under it, stages that cannot start in the order given (or that
ran for no step), a stage that re-selects part of what is already trainable, epochs going
backwards, steps counted without epochs, and an LR scheduler built over its optimizer but
never attached.

Every check here is O(number of parameters or stages) and does no tensor work. Warnings go
through :class:`Once`, so each is given once per unfreezer, attributed to the first caller
outside freezeflow.
"""

from __future__ import annotations

import itertools
import os
import sys
import warnings

from torch import nn

from freezeflow.errors import FreezeflowWarning, ModelChangedError, ScheduleError, quote_list
from freezeflow.schedules.schedule import Schedule
from freezeflow.schedules.triggers import Trigger
from freezeflow.unfreezer.layout import Layout

__all__ = [
    "Once",
    "check_epoch",
    "check_model",
    "check_stage_order",
    "overlap_warning",
    "run_for_no_step",
    "steps_without_epochs",
]

_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


class Once:
    """Warnings given once each (per owner, by key), attributed to the first caller outside
    the freezeflow package."""

    def __init__(self) -> None:
        self.given: set[str] = set()

    def warn(self, key: str, message: str) -> None:
        if key in self.given:
            return
        self.given.add(key)
        level, frame = 1, sys._getframe(0)
        while frame.f_back is not None and frame.f_code.co_filename.startswith(_PACKAGE):
            frame, level = frame.f_back, level + 1
        warnings.warn(message, FreezeflowWarning, stacklevel=level)


# --------------------------------------------------------------------------- the model


def check_model(model: nn.Module, layout: Layout, held: frozenset[int]) -> None:
    """Raise :class:`~freezeflow.errors.ModelChangedError` unless ``model``'s parameters are
    the very objects ``layout`` holds (``held``: their ids). Moving or converting in place
    (``.to(device)``, ``.cuda()``, ``.float()``) keeps them; replacing a module,
    ``to_empty()``, ``load_state_dict(assign=True)`` or a conversion under
    ``torch.__future__.set_overwrite_module_params_on_conversion(True)`` does not."""
    count = -1
    for count, p in enumerate(model.parameters()):  # noqa: B007 - counted after the loop
        if id(p) not in held:
            break
    else:
        if count + 1 == len(held):
            return
    new = [n for n, p in model.named_parameters() if id(p) not in held]
    now = {id(p) for p in model.parameters()}
    gone = [n for n, p in zip(layout.names, layout.params) if id(p) not in now]
    what = type(model).__name__
    found = []
    if new:
        found.append(
            f"{len(new)} parameter(s) of {what} are not the ones it holds ({quote_list(new)})"
        )
    if gone:
        found.append(
            f"{len(gone)} parameter(s) it holds are no longer in {what} ({quote_list(gone)})"
        )
    raise ModelChangedError(
        f"{what} changed after the GradualUnfreezer was built: {'; '.join(found)}. They are "
        "in no param group, so a new head would never train and freezing cannot reach them; "
        "expected the parameter objects the unfreezer was built over (moving or converting "
        "in place with .to(), .cuda() or .float() keeps them; replacing a module, "
        "to_empty(), load_state_dict(assign=True) or a conversion after "
        "torch.__future__.set_overwrite_module_params_on_conversion(True) does not); hint: "
        "change the model first (replace the head, convert, load), then build the optimizer "
        "and the GradualUnfreezer over it"
    )


# --------------------------------------------------------------------------- the schedule


def _at(trigger: Trigger, unit: str, value: float) -> str:
    """``trigger`` described, with its position in ``unit`` when that is not its own."""
    shown = f" ({unit} {value:g})" if trigger.unit != unit else ""
    return trigger.describe() + shown


def check_stage_order(
    schedule: Schedule, total_steps: int | None, total_epochs: int | None
) -> None:
    """Raise :class:`~freezeflow.errors.ScheduleError` when a stage starts no later than an
    earlier stage (after the first), comparing triggers of different kinds where the run's
    length allows it (steps and epochs with both lengths, fractions with either). The
    unfreezer only ever moves to the next stage, so such a stage would start right after
    the earlier one, which would run for no step."""
    names = schedule.names
    seen: list[tuple[int, float | None, float | None]] = []
    for k, stage in enumerate(schedule.stages):
        step, epoch = stage.start.position(total_steps, total_epochs)
        if k == 0:
            continue
        for j, step_j, epoch_j in seen:
            if step is not None and step_j is not None:
                unit, mine, theirs = "step", step, step_j
            elif epoch is not None and epoch_j is not None:
                unit, mine, theirs = "epoch", epoch, epoch_j
            else:
                continue
            if mine > theirs:
                continue
            before = schedule.stages[j].start
            lengths = ", ".join(
                f"{n}={v}"
                for n, v in (("total_steps", total_steps), ("total_epochs", total_epochs))
                if v
            )
            raise ScheduleError(
                f"stage {k} ({names[k]!r}) starts at {_at(stage.start, unit, mine)}, not after "
                f"stage {j} ({names[j]!r}) at {_at(before, unit, theirs)} (with {lengths}); "
                f"stages start in order, so stage {k} would start right after stage {j}, "
                f"which would run for no step; expected starts that increase from stage to "
                "stage, across kinds of trigger; hint: reorder the stages, or give them the "
                "same kind of trigger"
            )
        seen.append((k, step, epoch))


def overlap_warning(schedule: Schedule, layout: Layout) -> str | None:
    """The warning for the first stage that re-selects part, but not all, of what earlier
    stages made trainable (stages accumulate, so the rest stays trainable too: the mark of a
    schedule written as if stages were exclusive), or None. A stage selecting everything
    trainable so far and more (ULMFiT's ``last(k + 1)``, ``everything()``) is cumulative by
    design and not warned about."""
    names, stage_names = layout.names, schedule.names
    found: list[int] = []
    for k in range(1, len(schedule)):
        before, chosen = layout.trainable_ids[k - 1], layout.selected_ids[k]
        if not schedule.stages[k].exclusive and chosen & before and not before <= chosen:
            found.append(k)
    if not found:
        return None
    k = found[0]
    before, chosen = layout.trainable_ids[k - 1], layout.selected_ids[k]
    again = sorted(chosen & before)
    left = sorted(before - chosen)
    since = k - 1
    while since > 0 and again[0] in layout.trainable_ids[since - 1]:
        since -= 1
    more = f" (and {len(found) - 1} later stage(s) like it)" if len(found) > 1 else ""
    return (
        f"stage {k} ({stage_names[k]!r}) selects {quote_list([names[i] for i in again], 2)}, "
        f"already trainable since stage {since} ({stage_names[since]!r}), but not "
        f"{quote_list([names[i] for i in left], 2)}, also trainable{more}; stages accumulate, "
        f"so stage {k} trains its selection and everything earlier stages made trainable, "
        "these too; expected a stage to select only what it adds, or everything trainable so "
        "far and more; hint: pass exclusive=True to train exactly this stage's selection, or "
        "select only the new parameters"
    )


def run_for_no_step(schedule: Schedule, entered: list[int]) -> str | None:
    """The warning for stages entered one right after the other in one call when their
    triggers are of different kinds (a step trigger before an epoch trigger that was already
    due, or the reverse): the first ran for no step, the order
    :func:`check_stage_order` checks when it knows the run's length. None when there is none
    (stages of one kind entered together are epochs skipped on purpose)."""
    for j, k in itertools.pairwise(entered):
        first, then = schedule.stages[j].start, schedule.stages[k].start
        if first.kind != then.kind:
            names = schedule.names
            return (
                f"stage {k} ({names[k]!r}, {then.describe()}) started right after stage {j} "
                f"({names[j]!r}, {first.describe()}), in the same call, so stage {j} ran for "
                f"no step: stages start in order, and stage {k}'s trigger was already due "
                f"while stage {j} waited for its own; expected starts that increase from "
                "stage to stage, across kinds of trigger; hint: reorder the stages or give "
                "them one kind of trigger (pass total_steps= and total_epochs= to have the "
                "order checked when the unfreezer is built)"
            )
    return None


# --------------------------------------------------------------------------- the hooks


def check_epoch(epoch: int, last: int) -> None:
    """Raise :class:`~freezeflow.errors.ScheduleError` when ``epoch`` is before ``last``, the
    epoch started before it."""
    if epoch < last:
        raise ScheduleError(
            f"on_epoch_start({epoch}) after epoch {last} began: epochs must not go "
            f"backwards, and the schedule would go on counting from epoch {epoch}; "
            f"expected an epoch >= {last} (the same one again is fine, as after a resume); "
            "hint: pass the training loop's own epoch counter, and build a new "
            "GradualUnfreezer for a new run (or load_state_dict() a saved one)"
        )


def steps_without_epochs(schedule: Schedule, after: int, total_steps: int | None) -> str | None:
    """The warning for a step counted before any epoch while a stage after stage ``after``
    can only start at an epoch start (an epoch or plateau trigger, a fraction without
    ``total_steps``), or None."""
    for k in range(after + 1, len(schedule)):
        t = schedule.stages[k].start
        if t.waits_for_epoch(total_steps):
            return (
                f"step() was called before any on_epoch_start(), but stage {k} "
                f"({schedule.names[k]!r}) starts at {t.describe()}, and epochs are counted by "
                "on_epoch_start() only, so that stage would never start; expected "
                "on_epoch_start(epoch) at the start of every epoch, epoch 0 included; hint: "
                "call unfreezer.on_epoch_start(epoch) before each epoch's steps (fit() and the "
                "integrations do)"
            )
    return None
