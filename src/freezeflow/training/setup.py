"""Setting up a :func:`~freezeflow.fit` run from its arguments: checks, the device, the
optimizer and unfreezer, the LR scheduler, mixed precision, and the callbacks that carry
the features (DDP glue, feature cache, progress output, checkpoints), in the order they
run."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, TypeAlias

import numpy as np
import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from freezeflow.distributed.process_group import world_size
from freezeflow.errors import (
    CheckpointError,
    OptimizerError,
    OptimizerTypeError,
    TrainingArgumentError,
    TrainingTypeError,
)
from freezeflow.schedules.schedule import Schedule, Stage
from freezeflow.training.caching import FeatureCaching
from freezeflow.training.callbacks import ProgressBar
from freezeflow.training.checkpoint import Checkpoint
from freezeflow.training.run import Callback
from freezeflow.training.torchrun import DistributedTraining, on_this_rank
from freezeflow.unfreezer.gradual import GradualUnfreezer, OptimizerFactory
from freezeflow.unfreezer.state import schedule_fingerprint

__all__ = [
    "Scheduler",
    "SchedulerArg",
    "amp_dtype",
    "batch_count",
    "build_optimizer",
    "build_scheduler",
    "build_unfreezer",
    "check_data",
    "check_interval",
    "check_resumable",
    "check_watched_metrics",
    "feature_callbacks",
    "pick_device",
    "seed_everything",
]

Scheduler: TypeAlias = "LRScheduler | ReduceLROnPlateau"
SchedulerFactory: TypeAlias = Callable[[Optimizer], Any]
Interval: TypeAlias = Literal["batch", "epoch"]
SchedulerArg: TypeAlias = "Scheduler | SchedulerFactory | None"


def pick_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"``: CUDA if available, then MPS, then CPU; else ``torch.device(device)``."""
    if device != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global RNG and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def batch_count(data: Iterable[Any]) -> int | None:
    """``len(data)``, or ``None`` when it has no length."""
    try:
        return len(data)  # type: ignore[arg-type]
    except TypeError:
        return None


def check_data(train_data: Iterable[Any]) -> None:
    """Refuse training data that cannot be iterated once per epoch, or is empty."""
    # not iter(train_data) is train_data: iter() of a DataLoader draws its base seed from
    # the RNG, which would shift every random number of a run seeded before fit()
    if not isinstance(train_data, Iterable) or isinstance(train_data, Iterator):
        raise TrainingTypeError(
            f"train_data must be re-iterable (a DataLoader, a list of batches...), got "
            f"{type(train_data).__name__}; hint: a generator is used up after one epoch"
        )
    if batch_count(train_data) == 0:
        raise TrainingArgumentError(
            f"train_data is empty (len 0, a {type(train_data).__name__}); hint: check the "
            "dataset, and drop_last= with a batch size larger than the dataset"
        )


def build_unfreezer(
    model: nn.Module,
    schedule: Schedule | Sequence[Stage] | None,
    unfreezer: GradualUnfreezer | None,
    optimizer: Optimizer | OptimizerFactory | type[Optimizer] | None,
    epochs: int,
    total_steps: int | None,
) -> GradualUnfreezer | None:
    """The unfreezer of the run: the one given (told the run's length, checked against
    it), one built from ``schedule``, or None (no schedule: what is trainable trains)."""
    if isinstance(schedule, GradualUnfreezer):
        raise TrainingTypeError(
            "fit(schedule=) got a GradualUnfreezer; expected a Schedule or a list of Stage; "
            "hint: pass the unfreezer you built as fit(unfreezer=...)"
        )
    if unfreezer is not None:
        if not isinstance(unfreezer, GradualUnfreezer):
            raise TrainingTypeError(
                f"fit(unfreezer={unfreezer!r}): expected a GradualUnfreezer, got a "
                f"{type(unfreezer).__name__}; hint: a schedule goes in fit(schedule=...)"
            )
        if schedule is not None or optimizer is not None:
            given = " and ".join(
                n for n, v in (("schedule=", schedule), ("optimizer=", optimizer)) if v is not None
            )
            raise TrainingArgumentError(
                f"fit() got unfreezer= and also {given}; expected the unfreezer alone (it "
                "holds its schedule and its optimizer); hint: drop "
                f"{given}, or build the unfreezer with them"
            )
        if unfreezer.model is not model:
            theirs, ours = type(unfreezer.model).__name__, type(model).__name__
            raise TrainingArgumentError(
                f"fit(unfreezer=...) was built over another model ({theirs}) than fit()'s "
                f"({ours}); expected the same model object; hint: "
                "GradualUnfreezer(model, schedule) with fit()'s model"
            )
        unfreezer.set_run_length(total_steps or None, epochs)
        return unfreezer
    if schedule is None:
        return None
    return GradualUnfreezer(
        model, schedule, optimizer, total_epochs=epochs, total_steps=total_steps or None
    )


def check_resumable(
    resume: tuple[Path, dict[str, Any]] | None,
    schedule: Schedule | Sequence[Stage] | None,
    unfreezer: GradualUnfreezer | None,
) -> None:
    """Refuse, before anything changes, a checkpoint saved with another schedule (or with
    one, for a run without, and the reverse) than this run's."""
    if resume is None:
        return
    path, ckpt = resume
    if isinstance(unfreezer, GradualUnfreezer):
        sched: Schedule | None = unfreezer.schedule
    elif isinstance(schedule, (Schedule, list, tuple)):
        sched = schedule if isinstance(schedule, Schedule) else Schedule(schedule)
    else:
        sched = None
    saved = ckpt.get("unfreezer")
    if (saved is None) != (sched is None):
        raise CheckpointError(
            f"{str(path)!r} was saved {'with' if sched is None else 'without'} a schedule, "
            "this run has the opposite; expected the run the checkpoint was saved from; hint: "
            "pass the same schedule= as before"
        )
    if sched is None or not isinstance(saved, dict):
        return
    theirs = saved.get("fingerprint", {}).get("schedule")
    mine = schedule_fingerprint(sched)
    if theirs is not None and theirs != mine:
        raise CheckpointError(
            f"{str(path)!r} was saved for another schedule (fingerprint {theirs!r}, this run's "
            f"is {mine!r}); expected the schedule it was saved with; hint: rebuild the same "
            "schedule before resuming, or start a fresh run in another directory"
        )


def check_watched_metrics(
    schedule: Schedule | Sequence[Stage] | None,
    unfreezer: GradualUnfreezer | None,
    val_data: Iterable[Any] | None,
    epochs: int,
) -> list[str]:
    """Refuse, before anything changes, a stage that waits for a validation metric (a
    plateau) when there is no validation data and nothing else will start it; return a note
    for each stage that will start at its cap instead (``ff.auto`` without ``val_data``)."""
    if val_data is not None:
        return []
    if isinstance(unfreezer, GradualUnfreezer):
        sched, first = unfreezer.schedule, max(unfreezer.stage_index, 0) + 1
    elif isinstance(schedule, (Schedule, list, tuple)):  # anything else: build_unfreezer says
        sched, first = schedule if isinstance(schedule, Schedule) else Schedule(schedule), 1
    else:
        return []
    notes = []
    for k in range(first, len(sched)):
        trigger = sched.stages[k].start
        metric = trigger.watches()
        if metric is None or not metric.startswith("val_"):
            continue
        name = sched.names[k]
        if trigger.expected_epoch(epochs, 1) is None:
            raise TrainingArgumentError(
                f"stage {k} ({name!r}) starts on a plateau of {metric!r}, but fit() got no "
                "val_data, so that metric is never logged and the stage would never start; "
                "expected val_data= or a stage start that needs no validation; hint: pass "
                "val_data= (a split of the training data), on_plateau(max_epoch=...) for a "
                "cap, or metric='train_loss'"
            )
        notes.append(
            f"no val_data: stage {k} ({name!r}) starts at its cap, {trigger.describe()}, "
            f"not on a plateau of {metric}"
        )
    return notes


def build_optimizer(
    model: nn.Module, optimizer: Optimizer | OptimizerFactory | type[Optimizer] | None
) -> Optimizer:
    """The optimizer of a run without a schedule: the one given, or one built by the class
    or factory given (default ``torch.optim.AdamW``) over the trainable parameters."""
    if isinstance(optimizer, Optimizer):
        return optimizer
    factory: Callable[[Any], Any] = torch.optim.AdamW if optimizer is None else optimizer
    built = factory([p for p in model.parameters() if p.requires_grad])
    if not isinstance(built, Optimizer):
        raise OptimizerTypeError(
            f"the optimizer factory returned {built!r} of type {type(built).__name__}, not a "
            "torch.optim.Optimizer; hint: optimizer=torch.optim.AdamW, or a function of the "
            "parameters that returns an optimizer"
        )
    return built


def check_interval(interval: object) -> Interval:
    """``interval`` when it is ``"epoch"`` or ``"batch"``."""
    if interval not in ("epoch", "batch"):
        raise TrainingArgumentError(
            f"fit(scheduler_interval={interval!r}): expected 'epoch' or 'batch'; hint: "
            "'batch' steps the scheduler after every optimizer step"
        )
    return interval


def build_scheduler(
    scheduler: SchedulerArg,
    interval: Interval,
    optimizer: Optimizer,
    unfreezer: GradualUnfreezer | None,
) -> tuple[Any, Interval]:
    """The LR scheduler (built from a factory if need be, attached to the unfreezer) and the
    interval it steps at; without one, the schedule's own curve, if it brings one
    (``ff.auto``'s in-stage cosine), stepped after every optimizer step."""
    if isinstance(scheduler, tuple):
        raise TrainingTypeError(
            f"fit(scheduler={scheduler!r}): expected an LR scheduler or a factory, not a "
            "tuple; hint: fit(scheduler=sched, scheduler_interval='batch') steps it after "
            "every optimizer step"
        )
    if scheduler is None:
        own = None if unfreezer is None else unfreezer.lr_scheduler()
        return own, "batch"
    given = scheduler
    built = given if isinstance(given, (LRScheduler, ReduceLROnPlateau)) else given(optimizer)
    if not isinstance(built, (LRScheduler, ReduceLROnPlateau)):
        raise OptimizerTypeError(
            "scheduler must be an LR scheduler or a factory f(optimizer) returning one, "
            f"got {built!r} of type {type(built).__name__}; hint: scheduler=lambda opt: "
            "torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)"
        )
    if isinstance(built, ReduceLROnPlateau) and interval == "batch":
        raise OptimizerError(
            "ReduceLROnPlateau steps once per epoch, on the validation loss; expected "
            "scheduler_interval='epoch'; hint: leave scheduler_interval out"
        )
    if unfreezer is not None:
        unfreezer.attach(built)
    return built, interval


def amp_dtype(amp: bool | str | None, device: torch.device) -> torch.dtype | None:
    """The autocast dtype ``fit(amp=...)`` asks for on ``device`` (``None``: no AMP)."""
    if amp is None:
        amp = device.type == "cuda"
    if amp is False:
        return None
    if amp is True:
        amp = "fp16" if device.type == "cuda" and not torch.cuda.is_bf16_supported() else "bf16"
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
    if amp not in dtypes:
        raise TrainingArgumentError(
            f"fit(amp={amp!r}): expected None, True, False, 'bf16' or 'fp16'; hint: None "
            "uses mixed precision on CUDA only"
        )
    return dtypes[amp]


def feature_callbacks(
    callbacks: Sequence[Callback], progress: bool
) -> tuple[list[Callback], Checkpoint | None]:
    """Every callback of the run, in the order they run, and the checkpoint callback.

    The order: the DDP glue (under torchrun), the feature cache (a
    :class:`~freezeflow.training.caching.FeatureCaching` in ``callbacks``), the other
    ``callbacks`` in their order, the progress output (``progress=True`` and no
    :class:`ProgressBar` in ``callbacks``; rank 0 only), the :class:`Checkpoint` in
    ``callbacks`` (last, so that it saves the other callbacks' states as of the epoch's end).
    """
    if not isinstance(progress, bool):
        raise TrainingTypeError(
            f"fit(progress={progress!r}): expected True or False, got a "
            f"{type(progress).__name__}; hint: put a ProgressBar(...) in callbacks= to set it up"
        )
    if isinstance(callbacks, Callback) or not isinstance(callbacks, (list, tuple)):
        raise TrainingTypeError(
            f"fit(callbacks={callbacks!r}): expected a list of Callback objects; hint: "
            "callbacks=[ff.Checkpoint('runs/x')]"
        )
    for cb in callbacks:
        if not isinstance(cb, Callback):
            raise TrainingTypeError(
                f"fit(callbacks=...) holds {cb!r} of type {type(cb).__name__}, not a Callback; "
                "hint: subclass ff.callbacks.Callback"
            )
    found: dict[type, list[Callback]] = {}
    for cls in (Checkpoint, FeatureCaching):
        found[cls] = [cb for cb in callbacks if isinstance(cb, cls)]
        if len(found[cls]) > 1:
            raise TrainingArgumentError(
                f"fit(callbacks=...) holds {len(found[cls])} {cls.__name__} callbacks; expected "
                f"at most one; hint: keep one {cls.__name__}"
            )
    checkpoint = next((cb for cb in callbacks if isinstance(cb, Checkpoint)), None)
    caching = found[FeatureCaching]
    rest = [cb for cb in callbacks if not isinstance(cb, (Checkpoint, FeatureCaching))]
    bar = [] if not progress or any(isinstance(cb, ProgressBar) for cb in rest) else [ProgressBar()]
    out: list[Callback] = [DistributedTraining()] if world_size() > 1 else []
    out += caching + rest + bar + ([checkpoint] if checkpoint is not None else [])
    return on_this_rank(out), checkpoint
