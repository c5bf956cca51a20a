"""``fit()``: a short training loop that drives a :class:`~freezeflow.GradualUnfreezer`.

Read :func:`fit` top to bottom: set up, then for each epoch: stage change, train, evaluate,
record. Everything else (progress output, early stopping, checkpoints) is a callback
(:mod:`freezeflow.callbacks`); the :class:`Run` they receive holds the whole state of
training.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeAlias

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau
from torch.utils.data import DataLoader, DistributedSampler

import freezeflow.distributed as ffd
from freezeflow.core.freezing import NormMode
from freezeflow.errors import (
    CacheRefused,
    FreezeflowWarning,
    OptimizerError,
    ScheduleError,
    TrainingError,
)
from freezeflow.schedules.schedule import Schedule, Stage
from freezeflow.training.cache import CachedEpoch, FeatureCache, frozen_prefix
from freezeflow.training.callbacks import Callback, ProgressBar, lookup
from freezeflow.training.checkpoint import (
    Checkpoint,
    find_checkpoint,
    restore,
    rng_state,
    set_rng_state,
)
from freezeflow.unfreezer.gradual import GradualUnfreezer, OptimizerFactory, Transition

__all__ = ["History", "Metric", "Run", "accuracy", "fit", "seed_everything"]

Metric: TypeAlias = Callable[[Any, Any], "float | Tensor"]
Scheduler: TypeAlias = "LRScheduler | ReduceLROnPlateau"
SchedulerFactory: TypeAlias = Callable[[Optimizer], Any]
_HISTORY_FORMAT = "freezeflow.History/1"


# --------------------------------------------------------------------------- history


@dataclass
class History:
    """What :func:`fit` did: one record per epoch and one per stage change, in order.

    An epoch record (``kind == "epoch"``) holds ``epoch`` (0-based), ``stage``,
    ``train_loss`` (mean over the epoch's samples), ``val_loss`` (``None`` without
    validation data), ``metrics`` (``{"val_accuracy": ...}``), ``lrs`` (LR of each param
    group), ``trainable`` (trainable parameter values), ``steps`` (optimizer steps so far),
    ``seconds`` and ``images_per_s``. A transition record (``kind == "transition"``) holds the
    fields of :class:`~freezeflow.Transition`.
    """

    records: list[dict[str, Any]] = field(default_factory=list)
    interrupted: bool = False
    """True when training ended on Ctrl-C (``KeyboardInterrupt``)."""
    stop_reason: str | None = None
    """Why training ended early (e.g. early stopping), else ``None``."""

    @property
    def epochs(self) -> list[dict[str, Any]]:
        """The epoch records."""
        return [r for r in self.records if r["kind"] == "epoch"]

    @property
    def transitions(self) -> list[dict[str, Any]]:
        """The stage-change records (the first stage's start included)."""
        return [r for r in self.records if r["kind"] == "transition"]

    def add_transition(self, t: Transition) -> None:
        self.records.append({"kind": "transition", **t.to_dict()})

    def to_dicts(self) -> list[dict[str, Any]]:
        """All records as plain dicts (a deep copy)."""
        return json.loads(json.dumps(self.records))  # type: ignore[no-any-return]

    def to_json(self, indent: int | None = None) -> str:
        """The history as JSON text; :meth:`from_json` reads it back."""
        data = {
            "format": _HISTORY_FORMAT,
            "interrupted": self.interrupted,
            "stop_reason": self.stop_reason,
            "records": self.records,
        }
        return json.dumps(data, indent=indent)

    @classmethod
    def from_json(cls, text: str) -> History:
        """Read what :meth:`to_json` wrote."""
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("format") != _HISTORY_FORMAT:
            raise TrainingError(f"not a freezeflow History (expected format {_HISTORY_FORMAT!r})")
        return cls(list(data["records"]), bool(data["interrupted"]), data["stop_reason"])

    def to_dataframe(self) -> Any:
        """The epoch records as a ``pandas.DataFrame``, one row per epoch, metrics and LRs
        flattened into columns (``val_accuracy``, ``lr/<group>``). Needs pandas."""
        try:
            import pandas as pd
        except ImportError:
            raise TrainingError(
                "History.to_dataframe() needs pandas; hint: pip install pandas, or use "
                "History.to_dicts()"
            ) from None
        rows = []
        for r in self.epochs:
            row = {k: v for k, v in r.items() if k not in ("kind", "metrics", "lrs")}
            row.update(r["metrics"])
            row.update({f"lr/{g}": lr for g, lr in r["lrs"].items()})
            rows.append(row)
        return pd.DataFrame(rows)

    def plot(self, metrics: Sequence[str] | None = None) -> Any:
        """Loss curves (and metric curves, default: all logged) against epochs, with a dashed
        line where each stage begins. Returns a ``matplotlib.figure.Figure``. Needs
        matplotlib."""
        try:
            from matplotlib.figure import Figure
        except ImportError:
            raise TrainingError(
                "History.plot() needs matplotlib; hint: pip install 'freezeflow[plot]'"
            ) from None
        epochs = self.epochs
        names = (
            list(metrics)
            if metrics is not None
            else sorted({m for r in epochs for m in r["metrics"]})
        )
        fig = Figure(figsize=(6 + 4 * bool(names), 4), layout="constrained")
        axes = fig.subplots(1, 1 + bool(names), squeeze=False)[0]
        x = [r["epoch"] + 1 for r in epochs]
        axes[0].plot(x, [r["train_loss"] for r in epochs], marker="o", label="train_loss")
        if any(r["val_loss"] is not None for r in epochs):
            axes[0].plot(x, [r["val_loss"] for r in epochs], marker="o", label="val_loss")
        for name in names:
            axes[1].plot(
                x, [r["metrics"].get(name, math.nan) for r in epochs], marker="o", label=name
            )
        for ax, title in zip(axes, ("loss", "metrics")):
            for t in self.transitions[1:]:
                ax.axvline(t["epoch"], color="grey", linestyle="--", linewidth=1)
                ax.text(
                    t["epoch"],
                    1,
                    f" {t['name']}",
                    transform=ax.get_xaxis_transform(),
                    va="top",
                    fontsize=8,
                )
            ax.set(xlabel="epoch", title=title)
            ax.legend()
        return fig

    def __len__(self) -> int:
        return len(self.epochs)


# --------------------------------------------------------------------------- the run


@dataclass(eq=False)
class Run:
    """The state of one :func:`fit` call, handed to every callback hook.

    ``epoch`` is the 0-based epoch in progress (after an epoch ends, the next one), ``batch``
    the number of batches done in it, ``step`` the number of optimizer steps done. Set
    ``stop`` to a reason to end training after the current epoch.
    """

    model: nn.Module
    optimizer: Optimizer
    unfreezer: GradualUnfreezer | None
    scheduler: Any
    scheduler_interval: Literal["batch", "epoch"]
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    device: torch.device
    train_data: Iterable[Any]
    val_data: Iterable[Any] | None
    loss_fn: Callable[[Any, Any], Tensor]
    metrics: Mapping[str, Metric] | None
    epochs: int
    accumulate: int
    grad_clip: float | None
    callbacks: list[Callback]
    history: History = field(default_factory=History)
    epoch: int = 0
    batch: int = 0
    step: int = 0
    loss: float = math.nan
    batch_size: int = 0
    batches_per_epoch: int | None = None
    logs: dict[str, float] = field(default_factory=dict)
    stop: str | None = None
    resumed: bool = False
    loss_sum: float = 0.0
    samples: int = 0
    seconds: float = 0.0
    epoch_rng: dict[str, Any] | None = None
    """RNG states at the start of the epoch in progress (to replay it after a resume)."""
    resume_rng: dict[str, Any] | None = None
    cache_features: bool = False
    """Whether frozen-prefix caching is on (``fit(cache=True)``)."""
    cache_options: dict[str, Any] = field(default_factory=dict)
    cache: FeatureCache | None = None
    val_cache: FeatureCache | None = None
    cache_base: FeatureCache | None = None
    """The blocks frozen until the schedule ends, cached once for all stages."""
    val_cache_base: FeatureCache | None = None
    cache_for: int | None = None
    """The frozen prefix (in blocks) the caches were last set up, or refused, for."""
    ddp: ffd.DDPWrapper | None = None
    """Under ``torchrun`` (world size > 1): the DDP wrapper the training forward runs
    through; ``model`` stays the plain module (checkpoints, evaluation)."""

    @property
    def stage(self) -> str | None:
        """The current stage's name (``None`` without a schedule)."""
        return self.unfreezer.stage_name if self.unfreezer is not None else None

    def emit(self, hook: str, *args: Any) -> None:
        """Call ``hook`` on every callback, in order."""
        for cb in self.callbacks:
            getattr(cb, hook)(self, *args)

    def note(self, message: str) -> None:
        """Record a one-line message in the history and show it (``on_note``)."""
        self.history.records.append({"kind": "note", "epoch": self.epoch, "message": message})
        self.emit("on_note", message)

    def stage_changed(self, transitions: list[Transition]) -> None:
        for t in transitions:
            self.history.add_transition(t)
            self.emit("on_stage_change", t)

    def autocast(self) -> torch.autocast:
        dtype = self.amp_dtype or torch.bfloat16  # the dtype does not matter when disabled
        return torch.autocast(self.device.type, dtype=dtype, enabled=self.amp_dtype is not None)


# --------------------------------------------------------------------------- fit


def fit(
    model: nn.Module,
    train_data: Iterable[Any],
    *,
    epochs: int,
    schedule: Schedule | Sequence[Stage] | None = None,
    unfreezer: GradualUnfreezer | None = None,
    optimizer: Optimizer | OptimizerFactory | type[Optimizer] | None = None,
    loss_fn: Callable[[Any, Any], Tensor] = F.cross_entropy,
    val_data: Iterable[Any] | None = None,
    metrics: Mapping[str, Metric] | None = None,
    device: str | torch.device = "auto",
    amp: bool | Literal["bf16", "fp16"] | None = None,
    grad_clip: float | None = None,
    accumulate: int = 1,
    scheduler: Scheduler | SchedulerFactory | None = None,
    scheduler_interval: Literal["batch", "epoch"] = "epoch",
    callbacks: Sequence[Callback] = (),
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 1,
    keep_last: int | None = 3,
    keep_best: str | tuple[str, Literal["min", "max"]] | None = None,
    resume: bool | str | Path = False,
    quiet: bool = False,
    seed: int | None = None,
    norm: NormMode = "eval",
    eval_frozen: bool = False,
    cache: bool = False,
    cache_dir: str | Path | None = None,
    cache_max_bytes: int = 2 << 30,
) -> History:
    """Train ``model`` on ``train_data`` for ``epochs`` epochs, following a schedule.

    Under ``torchrun`` (a process group of world size > 1, initialised by you) it trains
    with DistributedDataParallel: data loaders are sharded, metrics are reduced over the
    ranks, and only rank 0 prints and saves (docs/distributed.md, "fit() under torchrun").

    Args:
        model: the model; moved to ``device``.
        train_data: a ``DataLoader`` or any re-iterable of ``(inputs, targets)`` batches;
            the model is called as ``model(inputs)``.
        epochs: total number of epochs (a resumed run goes on up to this number).
        schedule: stages to follow; ``fit`` builds the :class:`~freezeflow.GradualUnfreezer`
            (with ``total_epochs``, and ``total_steps`` when ``len(train_data)`` is known).
        unfreezer: an unfreezer built by you, instead of ``schedule`` (its optimizer is used).
        optimizer: an optimizer, or a class / factory called with the param groups
            (default ``torch.optim.AdamW``). Without a schedule, everything trainable trains.
        loss_fn: ``loss_fn(outputs, targets)``, a scalar tensor.
        val_data: batches to evaluate on after each epoch (``val_loss`` and metrics).
        metrics: ``{name: fn(outputs, targets)}`` averaged over validation samples and logged
            as ``val_<name>``. Default: ``accuracy`` when outputs look like class logits.
        device: ``"auto"`` (CUDA, then MPS, then CPU) or a torch device.
        amp: mixed precision: ``"bf16"``, ``"fp16"`` (with a ``GradScaler``), ``True`` (bf16
            where supported) or ``False``. ``None``: on for CUDA, off elsewhere.
        grad_clip: clip the gradient norm of the trainable parameters to this value.
        accumulate: batches per optimizer step (gradient accumulation).
        scheduler: an LR scheduler over the optimizer, or a factory ``f(optimizer)``;
            stepped once per ``scheduler_interval`` (``"epoch"`` or ``"batch"``).
            ``ReduceLROnPlateau`` is given the plateau metric (``val_loss``, else
            ``train_loss``).
        callbacks: :class:`~freezeflow.training.callbacks.Callback` objects, called in order.
        checkpoint_dir: where to save checkpoints (adds a
            :class:`~freezeflow.Checkpoint` callback): every ``checkpoint_every``
            epochs, at the end and on Ctrl-C, keeping the last ``keep_last`` and the best by
            ``keep_best`` (a metric name, mode ``"min"`` for names ending in ``loss`` and
            ``"max"`` otherwise, or a ``(name, mode)`` pair).
        resume: ``True`` to go on from the latest checkpoint in ``checkpoint_dir`` (a fresh
            start when there is none), or the path of a checkpoint file or directory.
        quiet: print nothing (no :class:`~freezeflow.training.callbacks.ProgressBar`).
        seed: seed Python's, NumPy's and torch's RNGs first (a resume restores them).
        norm, eval_frozen: how the unfreezer built from ``schedule`` treats frozen norm layers
            and fully frozen modules (see :func:`freezeflow.freeze`).
        cache: your training inputs are deterministic (no random augmentation): compute the
            frozen prefix of the model once per stage and train the rest on the cached
            features (:class:`~freezeflow.FeatureCache`); validation data is cached the same
            way. Needs
            ``DataLoader`` objects over map-style datasets and a deterministic frozen prefix
            (norm layers in eval mode; ``eval_frozen=True`` for dropout or stochastic depth
            in frozen blocks). When a stage cannot be cached, ``fit`` says why in one line
            and trains normally. Results equal the uncached run up to float rounding.
        cache_dir, cache_max_bytes: features above ``cache_max_bytes`` go to a memory-mapped
            file in ``cache_dir`` (default: a temporary directory).

    Returns:
        The :class:`History`; ``history.interrupted`` is true after Ctrl-C.

    Raises:
        TrainingError: empty data, a non-scalar or non-finite loss, mismatched devices...
        CheckpointError: a checkpoint to resume from is missing, corrupt, unsafe or from
            another model or schedule.

    Example:
        >>> import torch, freezeflow as ff
        >>> from torch import nn
        >>> from freezeflow.training.loop import fit
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> x = torch.randn(64, 4)
        >>> data = [(x[i : i + 16], (x[i : i + 16, 0] > 0).long()) for i in range(0, 64, 16)]
        >>> sched = ff.Schedule([ff.Stage("2", lr=1e-2), ff.Stage("0", lr=1e-2, start=2)])
        >>> history = fit(model, data, schedule=sched, epochs=3, quiet=True, seed=0)
        >>> [r["stage"] for r in history.epochs]
        ['stage0', 'stage0', 'stage1']
        >>> [(t["name"], t["epoch"]) for t in history.transitions]
        [('stage0', 0), ('stage1', 2)]
    """
    _check_args(train_data, epochs, accumulate, checkpoint_every, scheduler_interval)
    dev = _fit_device(device)
    model.to(dev)
    if seed is not None:
        seed_everything(seed)
    train_data, val_data = _shard(train_data, val_data, seed)  # no-op without torchrun
    n_batches = _length(train_data)
    total_steps = n_batches and epochs * math.ceil(n_batches / accumulate)
    unfreezer, opt = _optimizer(
        model, schedule, unfreezer, optimizer, epochs, total_steps, norm, eval_frozen
    )
    amp_dtype = _amp_dtype(amp, dev)
    run = Run(
        model=model,
        optimizer=opt,
        unfreezer=unfreezer,
        scheduler=_scheduler(scheduler, opt, unfreezer, scheduler_interval),
        scheduler_interval=scheduler_interval,
        scaler=torch.amp.GradScaler(dev.type, enabled=amp_dtype == torch.float16),
        amp_dtype=amp_dtype,
        device=dev,
        train_data=train_data,
        val_data=val_data,
        loss_fn=loss_fn,
        metrics=metrics,
        epochs=epochs,
        accumulate=accumulate,
        grad_clip=grad_clip,
        callbacks=_callbacks(callbacks, quiet),
        batches_per_epoch=n_batches,
        cache_features=cache,
        cache_options={"disk_dir": cache_dir, "max_bytes": cache_max_bytes},
    )
    if checkpoint_dir is not None:
        run.callbacks.append(Checkpoint(checkpoint_dir, checkpoint_every, keep_last, keep_best))
    if unfreezer is not None:
        for t in unfreezer.history:  # the first stage began on construction
            run.history.add_transition(t)
    path = find_checkpoint(resume, checkpoint_dir) if resume else None
    if path is not None:
        restore(run, path)
    _wrap_ddp(run)  # no-op without torchrun

    try:
        run.emit("on_train_start")
        while run.epoch < epochs and run.stop is None:
            if unfreezer is not None:
                run.stage_changed(unfreezer.on_epoch_start(run.epoch))
            _refresh_caches(run)
            run.emit("on_epoch_start")
            _train_epoch(run)
            run.logs = _evaluate(run)
            run.emit("on_evaluate", run.logs)
            _end_epoch(run)
            run.emit("on_epoch_end")
    except KeyboardInterrupt:
        run.history.interrupted = True
    finally:
        _close_caches(run, keep_base=False)
        if run.ddp is not None:
            run.ddp.close()
    run.history.stop_reason = run.stop
    run.emit("on_train_end")
    return run.history


# --------------------------------------------------------------------------- one epoch


def _train_epoch(run: Run) -> None:
    run.model.train()
    start = time.perf_counter() - run.seconds
    batches = _epoch_batches(run)
    stage, stale = _stage_index(run), False
    with _replaying(run.cache) as replay:  # cached prefix features, when fit(cache=True)
        for batch in batches:
            _train_batch(run, batch, replay, start)
            if _stage_index(run) != stage:  # a stage began mid-epoch (step/fraction trigger)
                stage = _stage_index(run)
                if run.cache is not None and not run.cache.still_valid():
                    stale = True
                    break
    if stale and isinstance(batches, CachedEpoch):
        # the new stage unfroze blocks inside the cached prefix: the rest of the epoch (and
        # its evaluation) runs on the inputs; the next epoch caches the new prefix
        run.note("a stage unfroze cached blocks mid-epoch: the rest of the epoch runs uncached")
        _close_caches(run, keep_base=True)
        run.cache_for = None
        for batch in batches.rest_uncached():
            _train_batch(run, batch, _NoReplay(), start)
    if run.batch == 0:
        raise TrainingError(
            f"train_data yielded no batches in epoch {run.epoch}; hint: check that the "
            "dataset is not empty (and drop_last= with a batch size above its size)"
        )
    if any(p.grad is not None for g in run.optimizer.param_groups for p in g["params"]):
        _optimizer_step(run)  # the last, partial accumulation window


def _stage_index(run: Run) -> int:
    return run.unfreezer.stage if run.unfreezer is not None else -1


def _train_batch(run: Run, batch: Any, replay: Any, start: float) -> None:
    run.emit("on_batch_start")
    inputs, targets = _to_device(_split(batch), run.device)
    replay.features = inputs
    with run.autocast():
        loss = _loss(run, _forward(run, inputs, train=True), targets)
    run.loss, run.batch_size = loss.item(), _batch_size(inputs)
    if not math.isfinite(run.loss):
        raise TrainingError(
            f"the loss is {run.loss} at epoch {run.epoch}, batch {run.batch} "
            f"(optimizer step {run.step}); training stopped and nothing was saved "
            "after the last good checkpoint; hint: lower the learning rate, set "
            "grad_clip=, or look for NaN/inf in the inputs"
        )
    run.scaler.scale(loss / run.accumulate).backward()  # type: ignore[no-untyped-call]
    run.batch += 1
    if run.batch % run.accumulate == 0:
        _optimizer_step(run)
    run.loss_sum += run.loss * run.batch_size
    run.samples += run.batch_size
    run.seconds = time.perf_counter() - start
    run.emit("on_batch_end")


def _optimizer_step(run: Run) -> None:
    opt = run.optimizer
    if run.grad_clip is not None:
        run.scaler.unscale_(opt)
        params = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, run.grad_clip)
    run.scaler.step(opt)
    run.scaler.update()
    opt.zero_grad(set_to_none=True)
    run.step += 1
    if run.scheduler is not None and run.scheduler_interval == "batch":
        run.scheduler.step()
    if run.unfreezer is not None:
        run.stage_changed(run.unfreezer.step())


def _evaluate(run: Run) -> dict[str, float]:
    """``train_loss`` and the ``val_*`` metrics: sample-weighted means (over all ranks)."""
    if run.ddp is not None:
        ffd.broadcast_buffers(run.model)  # rank 0's BatchNorm statistics, as it checkpoints
    sums: dict[str, float] = defaultdict(float)
    n = 0
    if run.val_data is not None:
        run.model.eval()
        batches = run.val_cache.batches() if run.val_cache is not None else run.val_data
        with torch.no_grad(), run.autocast(), _replaying(run.val_cache) as replay:
            for batch in batches:
                inputs, targets = _to_device(_split(batch), run.device)
                replay.features = inputs
                outputs = _forward(run, inputs)  # the plain model: no collective per batch
                k = _batch_size(inputs)
                sums["val_loss"] += float(_loss(run, outputs, targets)) * k
                for name, fn in _metric_fns(run.metrics, outputs, targets).items():
                    sums[f"val_{name}"] += float(fn(outputs, targets)) * k
                n += k
        run.model.train()
    if run.ddp is not None:
        sums, n = _sum_over_ranks(run, sums, n)
    logs = {"train_loss": run.loss_sum / max(run.samples, 1)}
    if run.val_data is None:
        return logs
    if n == 0:
        raise TrainingError("val_data yielded no batches; hint: pass val_data=None to skip it")
    return logs | {name: total / n for name, total in sums.items()}


def _end_epoch(run: Run) -> None:
    """Record the epoch, feed the plateau trigger and the scheduler, move to the next."""
    logs = run.logs
    run.history.records.append(
        {
            "kind": "epoch",
            "epoch": run.epoch,
            "stage": run.stage,
            "train_loss": logs["train_loss"],
            "val_loss": logs.get("val_loss"),
            "metrics": {k: v for k, v in logs.items() if k not in ("train_loss", "val_loss")},
            "lrs": {
                g.get("name", f"group{i}"): float(g["lr"])
                for i, g in enumerate(run.optimizer.param_groups)
            },
            "trainable": sum(p.numel() for p in run.model.parameters() if p.requires_grad),
            "steps": run.step,
            "seconds": run.seconds,
            "images_per_s": run.samples / max(run.seconds, 1e-9),
        }
    )
    u = run.unfreezer
    if u is not None and u.waiting_for is not None:
        u.observe(lookup(logs, u.waiting_for, "the on_plateau trigger"))
    if isinstance(run.scheduler, ReduceLROnPlateau):
        run.scheduler.step(logs.get("val_loss", logs["train_loss"]))
    elif run.scheduler is not None and run.scheduler_interval == "epoch":
        run.scheduler.step()
    run.epoch, run.batch, run.loss_sum, run.samples, run.seconds = run.epoch + 1, 0, 0.0, 0, 0.0


# --------------------------------------------------------------------------- helpers


def _epoch_batches(run: Run) -> Iterator[Any]:
    """An iterator over this epoch's batches. After a mid-epoch resume: the epoch's start is
    replayed with the RNG states it had (same shuffle), the batches already done are
    skipped, and the RNGs are put back as they were at the interruption."""
    source: Iterable[Any] = run.train_data
    if run.ddp is not None:
        _set_epoch(run.train_data, run.epoch)
    if run.cache is not None:
        source = _Reiterable(run.cache)
    if run.batch == 0 or run.epoch_rng is None:
        run.epoch_rng = rng_state(run)
        return iter(source)
    set_rng_state(run, run.epoch_rng)
    batches = iter(source)
    for k in range(run.batch):
        if next(batches, None) is None:
            raise TrainingError(
                f"resuming epoch {run.epoch} after {run.batch} batches, but train_data has "
                f"only {k} batches now; hint: resume with the same data"
            )
    if run.resume_rng is not None:
        set_rng_state(run, run.resume_rng)
        run.resume_rng = None
    return batches


class _Reiterable:
    def __init__(self, cache: FeatureCache) -> None:
        self.cache = cache

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return self.cache.batches()


class _NoReplay:
    features: Any = None


def _replaying(cache: FeatureCache | None) -> contextlib.AbstractContextManager[Any]:
    return cache.replaying() if cache is not None else contextlib.nullcontext(_NoReplay())


def _refresh_caches(run: Run) -> None:
    """With ``fit(cache=True)``: (re)build the frozen-prefix caches when the prefix changed
    (a new stage), or say in one line why this stage trains without them.

    With a schedule, the blocks that stay frozen until it ends are computed once, as a shared
    *base*; each stage's cache is then built from the base's features by running only the
    frozen blocks after it, and a stage whose frozen prefix is the base (or whose own cut is
    refused) replays the base."""
    if not run.cache_features:
        return
    k = frozen_prefix(run.model)
    if run.cache_for == k and (run.cache is None or run.cache.still_valid()):
        return  # set up (or refused) for this prefix already
    _close_caches(run, keep_base=True)
    run.cache_for = k
    floor = k
    if run.unfreezer is not None:
        floor = min(k, frozen_prefix(run.model, will_train=run.unfreezer.trained_later()))
    was_training = run.model.training
    try:
        if 0 < floor < k:
            _ensure_base(run, floor)
        base = run.cache_base
        if base is not None and not (base.still_valid() and base.boundary <= k):
            _close_caches(run, keep_base=False)  # its blocks are no longer all frozen
            base = None
        if base is not None and base.boundary == k:
            run.cache, run.val_cache = base, run.val_cache_base
            run.note(f"replaying the cached blocks 0-{k - 1}")
            return
        started = time.perf_counter()
        try:
            run.cache, run.val_cache = _cache_pair(run, None, base, run.val_cache_base)
        except CacheRefused as why:
            if base is None:
                run.note(f"training without the feature cache this stage: {why}")
                return
            run.cache, run.val_cache = base, run.val_cache_base
            run.note(f"replaying only the cached blocks 0-{base.boundary - 1}: {why}")
            return
        first = base.boundary if base is not None else 0
        run.note(
            f"caching the frozen prefix (blocks {first}-{run.cache.boundary - 1}"
            f"{' on the cached blocks before them' if base is not None else ''}): "
            f"{_mib(run.cache, run.val_cache)} of features in "
            f"{time.perf_counter() - started:.1f} s"
        )
    finally:
        run.model.train(was_training)


def _cache_pair(
    run: Run,
    boundary: int | None,
    base: FeatureCache | None,
    val_base: FeatureCache | None,
) -> tuple[FeatureCache, FeatureCache | None]:
    """Build and return the training cache (in train mode) and the validation cache (in eval
    mode, as evaluation computes it) of the prefix of ``boundary`` blocks (default: the frozen
    prefix), from ``base``'s features when given. On any failure both are freed."""
    train = val = None
    try:
        run.model.train()
        train = FeatureCache(
            run.model,
            run.train_data,
            boundary=boundary,
            device=run.device,
            source=base,
            **run.cache_options,
        )
        train.check()
        if run.val_data is not None:
            val = FeatureCache(
                run.model,
                run.val_data,
                boundary=train.boundary,
                device=run.device,
                source=val_base if base is not None else None,
                **run.cache_options,
            )
        train.build()
        run.model.eval()
        if val is not None:
            val.build()
    except BaseException:
        for c in (train, val):
            if c is not None:
                c.close()
        raise
    return train, val


def _mib(train: FeatureCache, val: FeatureCache | None) -> str:
    return f"{(train.nbytes + (val.nbytes if val is not None else 0)) / 2**20:.1f} MiB"


def _ensure_base(run: Run, floor: int) -> None:
    """Build the shared caches of the ``floor`` blocks frozen until the schedule ends (once;
    left unset when they cannot be cached, and each stage then caches on its own)."""
    base = run.cache_base
    if base is not None and base.still_valid() and base.boundary == floor:
        return
    _close_caches(run, keep_base=False)
    started = time.perf_counter()
    try:
        run.cache_base, run.val_cache_base = _cache_pair(run, floor, None, None)
    except CacheRefused:
        return
    run.note(
        f"caching blocks 0-{floor - 1}, frozen for the rest of the schedule: "
        f"{_mib(run.cache_base, run.val_cache_base)} of features in "
        f"{time.perf_counter() - started:.1f} s"
    )


def _close_caches(run: Run, *, keep_base: bool) -> None:
    """Free the stage caches (and the shared base unless ``keep_base``)."""
    keep = {id(run.cache_base), id(run.val_cache_base)} if keep_base else set()
    for c in (run.cache, run.val_cache, run.cache_base, run.val_cache_base):
        if c is not None and id(c) not in keep:
            c.close()
    run.cache = run.val_cache = None
    if not keep_base:
        run.cache_base = run.val_cache_base = None


# --------------------------------------------------------------------------- torchrun / DDP
# Every helper here is a no-op without a process group of world size > 1.


def _fit_device(device: str | torch.device) -> torch.device:
    """``pick_device``; under torchrun, an index-less ``cuda`` is this rank's GPU."""
    dev = pick_device(device)
    if ffd.world_size() > 1 and dev.type == "cuda":
        index: int | None = dev.index  # None for a plain "cuda" (typed int in torch's stubs)
        if index is None:
            dev = torch.device("cuda", ffd.local_rank())
        torch.cuda.set_device(dev)
    return dev


def _shard(
    train_data: Iterable[Any], val_data: Iterable[Any] | None, seed: int | None
) -> tuple[Iterable[Any], Iterable[Any] | None]:
    """Give each rank its share of the data (see :func:`freezeflow.distributed.shard_loader`)
    and check that every rank has as many training batches (DDP needs it)."""
    if ffd.world_size() < 2:
        return train_data, val_data
    whys = []
    if isinstance(train_data, DataLoader):
        train_data, why = ffd.shard_loader(train_data, train=True, seed=seed or 0)
        whys += [f"train_data ({why})"] if why else []
    if isinstance(val_data, DataLoader):
        val_data, why = ffd.shard_loader(val_data, train=False)
        whys += [f"val_data ({why})"] if why else []
    if whys and ffd.is_main_process():
        warnings.warn(
            f"fit() under torchrun cannot shard {' and '.join(whys)}: every rank reads all of "
            "it; hint: give it a DistributedSampler, or shard it by rank yourself",
            FreezeflowWarning,
            stacklevel=3,
        )
    lengths = ffd.all_gather_objects(_length(train_data))
    if len(set(lengths)) > 1:
        raise ffd.DistributedError(
            f"the ranks have different numbers of training batches per epoch ({lengths}); "
            "DDP needs the same number of steps on every rank; hint: pass a DataLoader "
            "(fit shards it with a DistributedSampler) or give every rank equal shards"
        )
    return train_data, val_data


def _callbacks(callbacks: Sequence[Callback], quiet: bool) -> list[Callback]:
    """The callbacks, with a :class:`ProgressBar` unless ``quiet``; none on ranks > 0."""
    out = list(callbacks) + ([] if quiet else [ProgressBar()])
    if ffd.is_main_process():
        return out
    return [cb for cb in out if not isinstance(cb, ProgressBar)]


def _wrap_ddp(run: Run) -> None:
    """Under torchrun: run the training forward through :func:`~freezeflow.distributed.wrap_ddp`
    (re-wrapped at each stage change; plain DDP without an unfreezer), and turn the feature
    cache off."""
    if ffd.world_size() < 2:
        return
    if run.batch > 0:
        raise ffd.DistributedError(
            f"cannot resume mid-epoch (epoch {run.epoch}, batch {run.batch}) under torchrun: "
            "the batches done depend on how the data was sharded; hint: resume from an "
            "end-of-epoch checkpoint (resume=<checkpoint_dir>/epoch-NNNN.pt)"
        )
    ids = [run.device.index] if run.device.type == "cuda" else None
    run.ddp = ffd.wrap_ddp(run.model, run.unfreezer, device_ids=ids)
    if run.cache_features:
        run.cache_features = False
        run.note(
            "feature caching is off under DDP: the cache is built per process over the whole "
            "dataset and replays batches in its own order, not this rank's shard"
        )


def _set_epoch(data: Iterable[Any], epoch: int) -> None:
    """``set_epoch(epoch)`` on a DataLoader's DistributedSampler (a new shuffle per epoch)."""
    for sampler in (
        getattr(data, "sampler", None),
        getattr(getattr(data, "batch_sampler", None), "sampler", None),
    ):
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(epoch)
            return


def _sum_over_ranks(run: Run, sums: dict[str, float], n: int) -> tuple[dict[str, float], int]:
    """Sum the epoch's training loss and samples and the validation sums and count over the
    ranks (exact, same order on every rank); ``run.seconds`` becomes the slowest rank's."""
    mine = (run.loss_sum, run.samples, run.seconds, dict(sums), n)
    ranks = ffd.all_gather_objects(mine)
    run.loss_sum = math.fsum(r[0] for r in ranks)
    run.samples = sum(r[1] for r in ranks)
    run.seconds = max(r[2] for r in ranks)
    names = list(dict.fromkeys(name for r in ranks for name in r[3]))
    totals = {name: math.fsum(r[3].get(name, 0.0) for r in ranks) for name in names}
    return totals, sum(r[4] for r in ranks)


def _split(batch: Any) -> tuple[Any, Any]:
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    size = f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else ""
    raise TrainingError(
        f"a batch must be an (inputs, targets) pair, got a {type(batch).__name__}{size}; "
        "hint: a Dataset's __getitem__ should return (input, target)"
    )


def _to_device(x: Any, device: torch.device) -> Any:
    if isinstance(x, Tensor):
        return x.to(device, non_blocking=device.type == "cuda")
    if isinstance(x, (tuple, list)):
        return type(x)(_to_device(v, device) for v in x)
    if isinstance(x, dict):
        return {k: _to_device(v, device) for k, v in x.items()}
    return x


def _batch_size(x: Any) -> int:
    if isinstance(x, Tensor):
        return int(x.shape[0]) if x.ndim else 1
    if isinstance(x, (tuple, list)) and x:
        return _batch_size(x[0])
    if isinstance(x, dict) and x:
        return _batch_size(next(iter(x.values())))
    return len(x) if hasattr(x, "__len__") else 1


def _forward(run: Run, inputs: Any, train: bool = False) -> Any:
    net = run.ddp if train and run.ddp is not None else run.model
    try:
        return net(inputs)
    except RuntimeError as exc:
        if "device" not in str(exc):
            raise
        raise TrainingError(
            f"the model and the batch are on different devices: the model was moved to "
            f"{run.device} ({exc}); hint: fit() moves the model and each batch to device=; "
            "a tensor the model keeps as a plain attribute must be a registered buffer"
        ) from exc


def _loss(run: Run, outputs: Any, targets: Any) -> Tensor:
    loss = run.loss_fn(outputs, targets)
    if not isinstance(loss, Tensor) or loss.ndim != 0:
        got = f"a tensor of shape {tuple(loss.shape)}" if isinstance(loss, Tensor) else repr(loss)
        raise TrainingError(
            f"loss_fn returned {got}, expected a scalar tensor; hint: reduce it "
            "(reduction='mean', or .mean())"
        )
    return loss


def accuracy(outputs: Tensor, targets: Tensor) -> float:
    """Fraction of rows whose arg-max logit is the target class."""
    return float((outputs.argmax(dim=-1) == targets).float().mean())


def _metric_fns(
    metrics: Mapping[str, Metric] | None, outputs: Any, targets: Any
) -> Mapping[str, Metric]:
    if metrics is not None:
        return metrics
    classify = (
        isinstance(outputs, Tensor)
        and isinstance(targets, Tensor)
        and outputs.ndim == 2
        and targets.ndim == 1
        and not targets.is_floating_point()
    )
    return {"accuracy": accuracy} if classify else {}


def _length(data: Iterable[Any]) -> int | None:
    try:
        return len(data)  # type: ignore[arg-type]
    except TypeError:
        return None


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


def _check_args(
    train_data: Iterable[Any], epochs: int, accumulate: int, every: int, interval: str
) -> None:
    for what, value in (
        ("epochs", epochs),
        ("accumulate", accumulate),
        ("checkpoint_every", every),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise TrainingError(f"fit({what}={value!r}): expected an integer >= 1")
    if interval not in ("batch", "epoch"):
        raise TrainingError(f"fit(scheduler_interval={interval!r}): expected 'batch' or 'epoch'")
    if not isinstance(train_data, Iterable) or iter(train_data) is train_data:
        raise TrainingError(
            f"train_data must be re-iterable (a DataLoader, a list of batches...), got "
            f"{type(train_data).__name__}; hint: a generator is used up after one epoch"
        )
    if _length(train_data) == 0:
        raise TrainingError(
            f"train_data is empty (len 0, a {type(train_data).__name__}); hint: check the "
            "dataset, and drop_last= with a batch size larger than the dataset"
        )


def _optimizer(
    model: nn.Module,
    schedule: Schedule | Sequence[Stage] | None,
    unfreezer: GradualUnfreezer | None,
    optimizer: Optimizer | OptimizerFactory | type[Optimizer] | None,
    epochs: int,
    total_steps: int | None,
    norm: NormMode = "eval",
    eval_frozen: bool = False,
) -> tuple[GradualUnfreezer | None, Optimizer]:
    if unfreezer is not None:
        if schedule is not None or optimizer is not None:
            raise ScheduleError(
                "fit() got an unfreezer and also schedule= or optimizer=; hint: the unfreezer "
                "holds both, pass it alone"
            )
        if unfreezer.model is not model:
            raise ScheduleError("the unfreezer was built over another model than fit()'s")
        return unfreezer, unfreezer.optimizer
    if schedule is not None:
        u = GradualUnfreezer(
            model,
            schedule,
            optimizer,
            norm=norm,
            eval_frozen=eval_frozen,
            total_epochs=epochs,
            total_steps=total_steps or None,
        )
        return u, u.optimizer
    if isinstance(optimizer, Optimizer):
        return None, optimizer
    factory: Callable[[Any], Any] = torch.optim.AdamW if optimizer is None else optimizer
    built = factory([p for p in model.parameters() if p.requires_grad])
    if not isinstance(built, Optimizer):
        raise OptimizerError(f"the optimizer factory returned {built!r}, not an Optimizer")
    return None, built


def _scheduler(
    scheduler: Scheduler | SchedulerFactory | None,
    optimizer: Optimizer,
    unfreezer: GradualUnfreezer | None,
    interval: str,
) -> Any:
    if scheduler is None:
        return None
    built = (
        scheduler
        if isinstance(scheduler, (LRScheduler, ReduceLROnPlateau))
        else scheduler(optimizer)
    )
    if not isinstance(built, (LRScheduler, ReduceLROnPlateau)):
        raise OptimizerError(
            "scheduler must be an LR scheduler or a factory f(optimizer) returning one, "
            f"got {built!r}"
        )
    if isinstance(built, ReduceLROnPlateau) and interval == "batch":
        raise OptimizerError(
            "ReduceLROnPlateau steps once per epoch; hint: scheduler_interval='epoch'"
        )
    if unfreezer is not None:
        unfreezer.attach(built)
    return built


def _amp_dtype(amp: bool | str | None, device: torch.device) -> torch.dtype | None:
    if amp is None:
        amp = device.type == "cuda"
    if amp is False:
        return None
    if amp is True:
        amp = "fp16" if device.type == "cuda" and not torch.cuda.is_bf16_supported() else "bf16"
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
    if amp not in dtypes:
        raise TrainingError(f"fit(amp={amp!r}): expected None, True, False, 'bf16' or 'fp16'")
    return dtypes[amp]
