"""Setting up a :func:`~freezeflow.fit` run from its arguments: checks, the device, the
optimizer and unfreezer, the LR scheduler, mixed precision, and the callbacks that carry
the features (DDP glue, feature cache, progress output, checkpoints), in the order they
run."""

from __future__ import annotations

import os
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
    FreezeflowError,
    OptimizerError,
    OptimizerTypeError,
    ScheduleError,
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

__all__ = [
    "Scheduler",
    "SchedulerArg",
    "amp_dtype",
    "batch_count",
    "build_optimizer",
    "build_scheduler",
    "check_data",
    "feature_callbacks",
    "pick_device",
    "seed_everything",
]

Scheduler: TypeAlias = "LRScheduler | ReduceLROnPlateau"
SchedulerFactory: TypeAlias = Callable[[Optimizer], Any]
Interval: TypeAlias = Literal["batch", "epoch"]
SchedulerArg: TypeAlias = (
    "Scheduler | SchedulerFactory | tuple[Scheduler | SchedulerFactory, Interval] | None"
)


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


def build_optimizer(
    model: nn.Module,
    schedule: Schedule | Sequence[Stage] | GradualUnfreezer | None,
    optimizer: Optimizer | OptimizerFactory | type[Optimizer] | None,
    epochs: int,
    total_steps: int | None,
) -> tuple[GradualUnfreezer | None, Optimizer]:
    """The unfreezer (given, built from the schedule, or none) and the optimizer."""
    if isinstance(schedule, GradualUnfreezer):
        if optimizer is not None:
            raise ScheduleError(
                "fit() got a GradualUnfreezer as schedule= and also optimizer=; hint: the "
                "unfreezer holds its optimizer, pass it alone"
            )
        if schedule.model is not model:
            raise ScheduleError("the unfreezer was built over another model than fit()'s")
        schedule.set_run_length(total_steps or None, epochs)
        return schedule, schedule.optimizer
    if schedule is not None:
        u = GradualUnfreezer(
            model, schedule, optimizer, total_epochs=epochs, total_steps=total_steps or None
        )
        return u, u.optimizer
    if isinstance(optimizer, Optimizer):
        return None, optimizer
    factory: Callable[[Any], Any] = torch.optim.AdamW if optimizer is None else optimizer
    built = factory([p for p in model.parameters() if p.requires_grad])
    if not isinstance(built, Optimizer):
        raise OptimizerTypeError(
            f"the optimizer factory returned {built!r} of type {type(built).__name__}, not a "
            "torch.optim.Optimizer; hint: optimizer=torch.optim.AdamW, or a function of the "
            "parameters that returns an optimizer"
        )
    return None, built


def _split_scheduler(scheduler: SchedulerArg) -> tuple[Any, Interval]:
    if not isinstance(scheduler, tuple):
        return scheduler, "epoch"
    if len(scheduler) != 2 or scheduler[1] not in ("batch", "epoch"):
        raise TrainingArgumentError(
            f"fit(scheduler={scheduler!r}): expected a scheduler, a factory, or a pair "
            "(scheduler or factory, 'batch' or 'epoch'); hint: scheduler=(sched, 'batch') "
            "steps it after every optimizer step"
        )
    return scheduler


def build_scheduler(
    scheduler: SchedulerArg, optimizer: Optimizer, unfreezer: GradualUnfreezer | None
) -> tuple[Any, Interval]:
    """The LR scheduler (built from a factory if need be, attached to the unfreezer) and the
    interval it steps at."""
    given, interval = _split_scheduler(scheduler)
    if given is None:  # the schedule's own LR curve, if it brings one (ff.auto's cosine)
        own = None if unfreezer is None else unfreezer.lr_scheduler()
        return own, "batch"
    built = given if isinstance(given, (LRScheduler, ReduceLROnPlateau)) else given(optimizer)
    if not isinstance(built, (LRScheduler, ReduceLROnPlateau)):
        raise OptimizerTypeError(
            "scheduler must be an LR scheduler or a factory f(optimizer) returning one, "
            f"got {built!r} of type {type(built).__name__}; hint: scheduler=lambda opt: "
            "torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)"
        )
    if isinstance(built, ReduceLROnPlateau) and interval == "batch":
        raise OptimizerError(
            "ReduceLROnPlateau steps once per epoch; hint: scheduler=(scheduler, 'epoch'), or "
            "the scheduler alone"
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


def _feature(
    what: str, value: Any, cls: type[Callback], error: type[FreezeflowError]
) -> Callback | None:
    if value is True:
        return cls()
    if value is False or value is None:
        return None
    if isinstance(value, cls):
        return value
    raise error(
        f"fit({what}={value!r}): expected True, False or a {cls.__name__}, got a "
        f"{type(value).__name__}; hint: fit({what}={cls.__name__}(...)) to configure it"
    )


def feature_callbacks(
    callbacks: Sequence[Callback],
    checkpoint: str | os.PathLike[str] | Checkpoint | None,
    cache: bool | FeatureCaching,
    progress: bool | ProgressBar,
) -> tuple[list[Callback], Checkpoint | None]:
    """Every callback of the run, in the order they run, and the checkpoint callback.

    The order: the DDP glue (under torchrun), the feature cache, ``callbacks``, the progress
    output (unless ``callbacks`` holds a :class:`ProgressBar`; rank 0 only), the checkpoint
    (last, so that it saves the other callbacks' states as of the epoch's end).
    """
    if isinstance(checkpoint, (str, os.PathLike)):
        checkpoint = Checkpoint(Path(checkpoint))
    elif checkpoint is not None and not isinstance(checkpoint, Checkpoint):
        raise TrainingTypeError(
            f"fit(checkpoint={checkpoint!r}): expected a directory or a Checkpoint(...), got a "
            f"{type(checkpoint).__name__}; hint: checkpoint='runs/ckpt'"
        )
    caching = _feature("cache", cache, FeatureCaching, TrainingTypeError)
    bar = _feature("progress", progress, ProgressBar, TrainingTypeError)
    if any(isinstance(cb, ProgressBar) for cb in callbacks):
        bar = None
    out: list[Callback] = [DistributedTraining()] if world_size() > 1 else []
    out += [caching] if caching is not None else []
    out += list(callbacks) + ([bar] if bar is not None else [])
    out += [checkpoint] if checkpoint is not None else []
    return on_this_rank(out), checkpoint
