"""The run that :func:`~freezeflow.fit` drives, and the hooks it calls on callbacks.

A :class:`Run` holds what is fixed for one ``fit()`` call (model, optimizer, unfreezer, data,
loss, callbacks...): a frozen dataclass. Its :attr:`~Run.progress` (a :class:`Progress`)
holds what moves (epoch, batch, step, the epoch's loss sums, logs, history...), with
``state_dict``/``load_state_dict`` for checkpoints. Every hook of a :class:`Callback`
receives the run.

Order of the hooks in one ``fit()``::

    on_train_start                        (after a resume, if any)
    each epoch:
      on_stage_change                     (when a stage begins at this epoch)
      on_epoch_start
      batches(train=True)                 (loop hook: cached batches instead of the data)
      each batch:
        on_batch_start
        train_forward                     (loop hook: the DDP module instead of the model)
        on_before_optimizer_step          (gradients complete, before the optimizer steps)
        on_stage_change                   (when a step trigger fires after the step)
        on_batch_end
      on_evaluate_start
      batches(train=False)                (loop hook, when there is validation data)
      reduce                              (loop hook: sums over the processes)
      on_evaluate                         (the epoch's logs)
      on_epoch_end                        (history record written, scheduler stepped)
    on_train_end                          (not when training fails)
    on_teardown                           (always, last)

``on_note`` comes whenever the loop or a callback records a one-line message.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from freezeflow.errors import TrainingError
from freezeflow.training.history import History
from freezeflow.unfreezer.gradual import GradualUnfreezer, Transition

__all__ = ["Callback", "Metric", "Progress", "Run"]

Metric: TypeAlias = Callable[[Any, Any], "float | Tensor"]


class Callback:
    """Base class of :func:`~freezeflow.fit`'s callbacks: every hook does nothing; override
    the ones you need. Set ``run.progress.stop`` to a reason to end training after the
    current epoch. A callback that holds state implements :meth:`state_dict` and
    :meth:`load_state_dict`, so that checkpoints resume it too.

    The *loop hooks* (:meth:`batches`, :meth:`train_forward`, :meth:`reduce`) change how the
    loop runs rather than observe it; the feature cache and the ``torchrun`` glue are built
    on them.

    Example:
        >>> import torch, freezeflow as ff
        >>> class Losses(ff.callbacks.Callback):
        ...     def __init__(self):
        ...         self.seen = []
        ...     def on_batch_end(self, run):
        ...         self.seen.append(run.progress.loss)
        >>> model = torch.nn.Linear(3, 2)
        >>> data = [(torch.randn(4, 3), torch.tensor([0, 1, 0, 1]))] * 2
        >>> losses = Losses()
        >>> _ = ff.fit(model, data, epochs=2, callbacks=[losses], progress=False)
        >>> len(losses.seen)
        4
    """

    def on_train_start(self, run: Run) -> None:
        """Before the first epoch (after a resume, if any)."""

    def on_train_end(self, run: Run) -> None:
        """After the last epoch, after early stopping, or after Ctrl-C
        (``run.progress.history.interrupted`` is then true). Not called when training
        fails."""

    def on_teardown(self, run: Run) -> None:
        """The very last hook, called even when training fails: free what the callback
        holds (files, process-group resources)."""

    def on_epoch_start(self, run: Run) -> None:
        """At the start of epoch ``run.progress.epoch`` (after the unfreezer's stage change,
        if any)."""

    def on_epoch_end(self, run: Run) -> None:
        """After the epoch's record is in the history (``run.progress.logs`` holds it flat)
        and the LR scheduler stepped; ``run.progress.epoch`` already counts the epoch as
        done."""

    def on_batch_start(self, run: Run) -> None:
        """Before batch ``run.progress.batch`` of the epoch (0-based)."""

    def on_batch_end(self, run: Run) -> None:
        """After a batch: ``run.progress.batch`` counts the batches done, ``loss`` and
        ``batch_size`` describe this one."""

    def on_before_optimizer_step(self, run: Run) -> None:
        """The step's gradients are complete (accumulated, and unscaled when the callback
        calls ``run.scaler.unscale_(run.optimizer)``); the optimizer steps next."""

    def on_stage_change(self, run: Run, transition: Transition) -> None:
        """After the unfreezer enters a new stage (model and optimizer already updated)."""

    def on_evaluate_start(self, run: Run) -> None:
        """After the epoch's training batches (and its last optimizer step), before
        validation."""

    def on_evaluate(self, run: Run, logs: dict[str, float]) -> None:
        """After validation; ``logs`` holds ``train_loss``, ``val_loss`` and ``val_<metric>``
        (a callback may add entries)."""

    def on_note(self, run: Run, message: str) -> None:
        """A one-line message (e.g. whether the feature cache is used), also recorded in the
        history."""

    def batches(self, run: Run, train: bool) -> Iterator[Any] | None:
        """Loop hook: this epoch's training batches (``train=True``, once per epoch) or
        validation batches (``train=False``), instead of iterating the data; ``None`` to
        leave it to the next callback. The first answer wins; the loop closes the iterator
        when it is done with it (so a generator may hold a context open while it yields)."""
        return None

    def train_forward(self, run: Run) -> Callable[[Any], Any] | None:
        """Loop hook: what the training forward calls instead of ``run.model`` (evaluation
        always calls the model); ``None`` to leave it to the next callback."""
        return None

    def reduce(self, run: Run, sums: dict[str, float], count: int) -> tuple[dict[str, float], int]:
        """Loop hook: combine this process's epoch totals with those of the other processes.
        ``sums`` are the validation sums (each metric times the samples) over ``count``
        samples; return the combined ones, and combine ``run.progress.loss_sum``,
        ``samples`` and ``seconds`` in place. Called on every callback, in order."""
        return sums, count

    def state_dict(self) -> dict[str, Any]:
        """What to save in a checkpoint (plain values only)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


@dataclass(eq=False)
class Progress:
    """What moves during a :func:`~freezeflow.fit` run; a checkpoint saves its
    :meth:`state_dict`.

    Example:
        >>> p = Progress(epoch=2, batch=3, step=11, loss_sum=4.5, samples=48)
        >>> q = Progress()
        >>> q.load_state_dict(p.state_dict())
        >>> (q.epoch, q.batch, q.step, q.loss_sum, q.samples, q.resumed)
        (2, 3, 11, 4.5, 48, True)
    """

    epoch: int = 0
    """The 0-based epoch in progress (after an epoch ends: the next one)."""
    batch: int = 0
    """Batches done in this epoch."""
    step: int = 0
    """Optimizer steps done."""
    loss: float = math.nan
    """The last batch's loss."""
    batch_size: int = 0
    """The last batch's number of samples."""
    loss_sum: float = 0.0
    """This epoch's training loss times samples, summed."""
    samples: int = 0
    """This epoch's training samples."""
    seconds: float = 0.0
    """Seconds spent in this epoch's training batches."""
    logs: dict[str, float] = field(default_factory=dict)
    """The last evaluation's logs: ``train_loss``, ``val_loss``, ``val_<metric>``."""
    stop: str | None = None
    """Set it to a reason to end training after the current epoch."""
    history: History = field(default_factory=History)
    epoch_rng: dict[str, Any] | None = None
    """RNG states at the start of this epoch (to replay it after a mid-epoch resume)."""
    resume_rng: dict[str, Any] | None = None
    """RNG states at the interruption, put back once a resumed epoch's start is replayed."""
    resumed: bool = False
    """Whether the run went on from a checkpoint."""

    def metric(self, name: str, who: str) -> float:
        """``logs[name]``, or a :class:`~freezeflow.errors.TrainingError` naming ``who``
        wanted it and what is logged."""
        if name not in self.logs:
            hint = " (val_* metrics need val_data=)" if name.startswith("val_") else ""
            raise TrainingError(
                f"{who} watches {name!r}, which is not logged; logged: {sorted(self.logs)}{hint}"
            )
        return self.logs[name]

    def next_epoch(self) -> None:
        """Count the epoch as done and clear its sums."""
        self.epoch, self.batch, self.loss_sum, self.samples, self.seconds = (
            self.epoch + 1,
            0,
            0.0,
            0,
            0.0,
        )

    def state_dict(self) -> dict[str, Any]:
        """Position, the epoch's sums, its starting RNG states (mid-epoch only), the logs
        (at an epoch's end only) and the history, as plain values and tensors."""
        mid_epoch = self.batch > 0
        return {
            "position": {"epoch": self.epoch, "batch": self.batch, "step": self.step},
            "epoch_rng": self.epoch_rng if mid_epoch else None,
            "progress": {
                "loss_sum": self.loss_sum,
                "samples": self.samples,
                "seconds": self.seconds,
            },
            "history": self.history.to_dicts(),
            "logs": dict(self.logs) if not mid_epoch else {},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Go on from :meth:`state_dict`'s output (a checkpoint's ``"rng"``, the RNG states
        at the interruption, becomes :attr:`resume_rng`); :attr:`resumed` becomes true."""
        pos, sums = state["position"], state["progress"]
        self.epoch, self.batch, self.step = int(pos["epoch"]), int(pos["batch"]), int(pos["step"])
        self.loss_sum, self.samples = float(sums["loss_sum"]), int(sums["samples"])
        self.seconds = float(sums["seconds"])
        self.epoch_rng, self.resume_rng = state["epoch_rng"], state.get("rng")
        self.history.records = list(state["history"])
        self.logs = dict(state["logs"])
        self.resumed = True


@dataclass(frozen=True, eq=False)
class Run:
    """One :func:`~freezeflow.fit` call: what is fixed for the run, and its
    :attr:`progress`. Handed to every :class:`Callback` hook."""

    model: nn.Module
    """The plain model (evaluation and checkpoints use it; see :meth:`Callback.train_forward`)."""
    optimizer: Optimizer
    unfreezer: GradualUnfreezer | None
    scheduler: Any
    """The LR scheduler, or ``None``."""
    scheduler_interval: Literal["batch", "epoch"]
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    device: torch.device
    train_data: Iterable[Any]
    """This process's training batches (its shard under ``torchrun``)."""
    val_data: Iterable[Any] | None
    loss_fn: Callable[[Any, Any], Tensor]
    metrics: Mapping[str, Metric] | None
    epochs: int
    accumulate: int
    callbacks: tuple[Callback, ...]
    batches_per_epoch: int | None = None
    """``len(train_data)`` when known."""
    progress: Progress = field(default_factory=Progress)

    @property
    def stage_name(self) -> str | None:
        """The current stage's name (``None`` without a schedule)."""
        return self.unfreezer.stage_name if self.unfreezer is not None else None

    def emit(self, hook: str, *args: Any) -> None:
        """Call ``hook`` on every callback, in order."""
        for cb in self.callbacks:
            getattr(cb, hook)(self, *args)

    def first(self, hook: str, *args: Any) -> Any:
        """The first answer other than ``None`` of the callbacks' ``hook`` (a loop hook)."""
        for cb in self.callbacks:
            answer = getattr(cb, hook)(self, *args)
            if answer is not None:
                return answer
        return None

    def note(self, message: str) -> None:
        """Record a one-line message in the history and show it (``on_note``)."""
        self.progress.history.add_note(self.progress.epoch, message)
        self.emit("on_note", message)

    def stage_changed(self, transitions: list[Transition]) -> None:
        """Record the unfreezer's transitions and announce them (``on_stage_change``)."""
        for t in transitions:
            self.progress.history.add_transition(t)
            self.emit("on_stage_change", t)

    def autocast(self) -> torch.autocast:
        """The mixed-precision context of the forward passes (disabled without AMP)."""
        dtype = self.amp_dtype or torch.bfloat16  # the dtype does not matter when disabled
        return torch.autocast(self.device.type, dtype=dtype, enabled=self.amp_dtype is not None)
