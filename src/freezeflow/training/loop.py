"""``fit()``: a short training loop that drives a :class:`~freezeflow.GradualUnfreezer`.

Read :func:`fit` top to bottom: set up, then for each epoch: stage change, train on its
batches, evaluate, record. Every feature besides training (progress output, early stopping,
checkpoints, the feature cache, ``torchrun``) is a callback
(:mod:`freezeflow.training.run` documents the hooks); the :class:`~freezeflow.training.run.Run`
they receive holds what is fixed for the run and its progress.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.optim import Optimizer
from torch.optim.lr_scheduler import ReduceLROnPlateau

from freezeflow.errors import TrainingArgumentError, TrainingError, check_int
from freezeflow.schedules.schedule import Schedule, Stage
from freezeflow.training.batch import (
    batch_size,
    compute_loss,
    forward,
    metric_fns,
    split_batch,
    to_device,
)
from freezeflow.training.checkpoint import restore
from freezeflow.training.first_batch import check_first_batch
from freezeflow.training.history import History
from freezeflow.training.probe import probe_for
from freezeflow.training.rng import data_generators, rng_state, set_rng_state
from freezeflow.training.run import Callback, Metric, Run
from freezeflow.training.setup import (
    SchedulerArg,
    amp_dtype,
    batch_count,
    build_optimizer,
    build_scheduler,
    build_unfreezer,
    check_data,
    check_interval,
    check_resumable,
    check_watched_metrics,
    feature_callbacks,
    pick_device,
)
from freezeflow.training.torchrun import rank_device, shard_data
from freezeflow.unfreezer.gradual import GradualUnfreezer, OptimizerFactory

__all__ = ["fit"]


def fit(
    model: nn.Module,
    train_data: Iterable[Any],
    *,
    epochs: int,
    schedule: Schedule | Sequence[Stage] | None = None,
    unfreezer: GradualUnfreezer | None = None,
    optimizer: Optimizer | OptimizerFactory | type[Optimizer] | None = None,
    scheduler: SchedulerArg = None,
    scheduler_interval: Literal["epoch", "batch"] = "epoch",
    loss_fn: Callable[[Any, Any], Tensor] = F.cross_entropy,
    val_data: Iterable[Any] | None = None,
    metrics: Mapping[str, Metric] | None = None,
    device: str | torch.device = "auto",
    amp: bool | Literal["bf16", "fp16"] | None = None,
    accumulate: int = 1,
    callbacks: Sequence[Callback] = (),
    progress: bool = True,
) -> History:
    """Train ``model`` on ``train_data`` for ``epochs`` epochs, following a schedule.

    Under ``torchrun`` (a process group of world size > 1, initialised by you) it trains
    with DistributedDataParallel: data loaders are sharded, metrics are reduced over the
    ranks, and only rank 0 prints and saves (docs/distributed.md, "fit() under torchrun").
    Seed first with :func:`~freezeflow.training.seed_everything` for a reproducible run.

    Args:
        model: the model; moved to ``device``.
        train_data: a ``DataLoader`` or any re-iterable of ``(inputs, targets)`` batches;
            the model is called as ``model(inputs)``.
        epochs: total number of epochs (a resumed run goes on up to this number).
        schedule: what trains when: a :class:`~freezeflow.Schedule` or a list of
            :class:`~freezeflow.Stage`; ``fit`` builds the
            :class:`~freezeflow.GradualUnfreezer` (with ``total_epochs`` and, when
            ``len(train_data)`` is known, ``total_steps``). ``None`` (and no ``unfreezer``):
            everything trainable trains.
        unfreezer: a :class:`~freezeflow.GradualUnfreezer` you built (to choose ``norm=``,
            ``eval_frozen=``, ``no_decay=``); its schedule and optimizer are used, and it is
            told the run's length. Not with ``schedule=`` or ``optimizer=``.
        optimizer: an optimizer, or a class / factory called with the param groups
            (default ``torch.optim.AdamW``).
        scheduler: an LR scheduler over the optimizer, or a factory ``f(optimizer)``.
            ``ReduceLROnPlateau`` is given the plateau metric (``val_loss``, else
            ``train_loss``). None: the schedule's own LR curve when it has one (``ff.auto``'s
            in-stage cosine), else a constant LR per stage.
        scheduler_interval: step ``scheduler`` once per epoch (``"epoch"``) or after every
            optimizer step (``"batch"``).
        loss_fn: ``loss_fn(outputs, targets)``, a scalar tensor.
        val_data: batches to evaluate on after each epoch (``val_loss`` and metrics).
        metrics: ``{name: fn(outputs, targets)}`` averaged over validation samples and logged
            as ``val_<name>``. Default: ``accuracy`` when outputs look like class logits.
        device: ``"auto"`` (CUDA, then MPS, then CPU) or a torch device.
        amp: mixed precision: ``"bf16"``, ``"fp16"`` (with a ``GradScaler``), ``True`` (bf16
            where supported) or ``False``. ``None``: on for CUDA, off elsewhere.
        accumulate: batches per optimizer step (gradient accumulation).
        callbacks: :class:`~freezeflow.callbacks.Callback` objects, called in order, and the
            features, each a callback: :class:`~freezeflow.Checkpoint` (saves, and resumes
            with ``resume=``; run last), :class:`~freezeflow.training.FeatureCaching` (when
            your training inputs are deterministic, the frozen prefix of the model is
            computed once per stage and the rest trains on its output; run first),
            :class:`~freezeflow.callbacks.ClipGradNorm`,
            :class:`~freezeflow.callbacks.EarlyStopping`, a
            :class:`~freezeflow.callbacks.ProgressBar` set up your way.
        progress: print progress (``False``: nothing).

    Returns:
        The :class:`~freezeflow.History`; ``history.interrupted`` is true after Ctrl-C.

    Before anything changes (the model's flags, the optimizer, files), ``fit`` checks its
    arguments, the checkpoint to resume from and the first training batch: the model and
    ``loss_fn`` run once on it, without gradients and without a trace
    (:mod:`freezeflow.training.first_batch`), so an output the loss cannot take or labels of
    the wrong dtype or range are refused in your words.

    Raises:
        TrainingError: empty data, a first batch the model or the loss cannot take, a
            non-scalar or non-finite loss, mismatched devices...
        CheckpointError: a checkpoint to resume from is missing, corrupt, unsafe or from
            another model or schedule.

    Example:
        >>> import torch, freezeflow as ff
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> x = torch.randn(64, 4)
        >>> data = [(x[i : i + 16], (x[i : i + 16, 0] > 0).long()) for i in range(0, 64, 16)]
        >>> sched = ff.Schedule([ff.Stage("2", lr=1e-2), ff.Stage("0", lr=1e-2, start=2)])
        >>> ff.training.seed_everything(0)
        >>> history = fit(model, data, schedule=sched, epochs=3, progress=False)
        >>> [r["stage"] for r in history.epochs]
        ['stage0', 'stage0', 'stage1']
        >>> [(t["name"], t["epoch"]) for t in history.transitions]
        [('stage0', 0), ('stage1', 2)]
    """
    check_int("fit(epochs=)", epochs, 1, TrainingArgumentError)
    check_int("fit(accumulate=)", accumulate, 1, TrainingArgumentError)
    interval = check_interval(scheduler_interval)
    check_data(train_data)
    notes = check_watched_metrics(schedule, unfreezer, val_data, epochs)
    _check_something_trains(model, schedule or unfreezer)
    hooks, ckpt = feature_callbacks(callbacks, progress)
    resume = None if ckpt is None else ckpt.preflight(model)  # refused before any change
    check_resumable(resume, schedule, unfreezer)
    dev = rank_device(pick_device(device))
    dtype = amp_dtype(amp, dev)
    train_data, val_data = shard_data(train_data, val_data)  # no-op without torchrun
    with _moved_back_on_error(model):
        model.to(dev)
        check_first_batch(model, train_data, loss_fn, dev, dtype)  # before any other change
    n_batches = batch_count(train_data)
    steps = n_batches and epochs * math.ceil(n_batches / accumulate)
    unfreezer = build_unfreezer(model, schedule, unfreezer, optimizer, epochs, steps)
    opt = unfreezer.optimizer if unfreezer is not None else build_optimizer(model, optimizer)
    if unfreezer is not None and unfreezer.needs_probe:  # what an ff.auto schedule measures
        unfreezer.set_probe(probe_for(train_data, loss_fn, dev))
    sched, interval = build_scheduler(scheduler, interval, opt, unfreezer)
    scaler = torch.amp.GradScaler(dev.type, enabled=dtype == torch.float16)
    run = Run(
        model=model, optimizer=opt, unfreezer=unfreezer, scheduler=sched,
        scheduler_interval=interval, scaler=scaler, amp_dtype=dtype, device=dev,
        train_data=train_data, val_data=val_data, loss_fn=loss_fn, metrics=metrics,
        epochs=epochs, accumulate=accumulate, callbacks=tuple(hooks),
        batches_per_epoch=n_batches,
    )  # fmt: skip
    p = run.progress
    for t in unfreezer.history if unfreezer is not None else []:  # the first stage's start
        p.history.add_transition(t)
    for message in notes:
        run.note(message)
    if resume is not None:
        restore(run, *resume)
    try:
        try:
            run.emit("on_train_start")
            while p.epoch < epochs and p.stop is None:
                started = _start_epoch(run)
                with _epoch_batches(run) as batches:
                    for batch in batches:
                        _train_batch(run, batch, started)
                _finish_training(run)
                p.logs = _evaluate(run)
                run.emit("on_evaluate", p.logs)
                _end_epoch(run)
                run.emit("on_epoch_end")
        except KeyboardInterrupt:
            p.history.interrupted = True
        p.history.stop_reason = p.stop
        run.emit("on_train_end")
    finally:
        run.emit("on_teardown")
    return p.history


@contextlib.contextmanager
def _moved_back_on_error(model: nn.Module) -> Iterator[None]:
    """Move ``model`` back to the one device it was on when the body raises (``fit()``
    refusing the first batch leaves the model where it found it)."""
    devices = {t.device for t in itertools.chain(model.parameters(), model.buffers())}
    try:
        yield
    except BaseException:
        if len(devices) == 1:
            model.to(next(iter(devices)))
        raise


def _check_something_trains(model: nn.Module, schedule: object) -> None:
    """Refuse, before anything is moved or built, a model with no trainable parameter and
    no schedule to unfreeze one (torch would fail later with "optimizer got an empty
    parameter list", or train nothing with an optimizer passed in)."""
    if schedule is not None:
        return
    named = list(model.named_parameters())
    if any(p.requires_grad for _, p in named):
        return
    if not named:
        raise TrainingError(
            f"fit() got a {type(model).__name__} with no parameters at all, so there is "
            "nothing to train; expected a model with at least one trainable parameter; "
            "hint: check that the model was built as intended"
        )
    last = named[-1][0].rpartition(".")[0] or named[-1][0]
    raise TrainingError(
        f"fit() got a {type(model).__name__} whose {len(named)} parameter tensors are all "
        "frozen (requires_grad=False) and schedule=None, so no stage unfreezes any and "
        "there is nothing to train; expected at least one trainable parameter, or a "
        f"schedule; hint: pass schedule=[ff.Stage({last!r}, lr=1e-3)] (or a preset such as "
        f"ff.presets.two_stage), or call ff.unfreeze(model, {last!r}) before fit()"
    )


# --------------------------------------------------------------------------- one epoch


def _start_epoch(run: Run) -> float:
    """Enter the stage due at this epoch, announce the epoch, put the model in train mode;
    the clock of the epoch's training (its seconds so far after a resume)."""
    if run.unfreezer is not None:
        run.stage_changed(run.unfreezer.on_epoch_start(run.progress.epoch))
    run.emit("on_epoch_start")
    run.model.train()
    return time.perf_counter() - run.progress.seconds


def _rng(run: Run) -> dict[str, Any]:
    return rng_state(cuda=run.device.type == "cuda", generators=data_generators(run.train_data))


def _set_rng(run: Run, state: dict[str, Any]) -> None:
    cuda = run.device.type == "cuda"
    set_rng_state(state, cuda=cuda, generators=data_generators(run.train_data))


@contextlib.contextmanager
def _closing(supplied: Iterator[Any] | None) -> Iterator[None]:
    """Close the batches a callback supplied, when they can be closed (a generator that
    replays cached features restores the model's modules on closing), even on an error."""
    try:
        yield
    finally:
        close = getattr(supplied, "close", None)
        if callable(close):
            close()


@contextlib.contextmanager
def _epoch_batches(run: Run) -> Iterator[Iterator[Any]]:
    """This epoch's training batches (a callback's, e.g. cached features, or the data's).
    After a mid-epoch resume the epoch's start is replayed with the RNG states it had (same
    shuffle), the batches already done are skipped, and the RNGs are put back as they were
    at the interruption."""
    p = run.progress
    resuming = p.batch > 0 and p.epoch_rng is not None
    if resuming:
        _set_rng(run, p.epoch_rng)  # type: ignore[arg-type]
    else:
        p.epoch_rng = _rng(run)
    supplied = run.first("batches", True)
    batches: Iterator[Any] = supplied if supplied is not None else iter(run.train_data)
    with _closing(supplied):
        if resuming:
            for k in range(p.batch):
                if next(batches, None) is None:
                    raise TrainingError(
                        f"resuming epoch {p.epoch} after {p.batch} batches, but train_data "
                        f"has only {k} batches now; hint: resume with the same data"
                    )
            if p.resume_rng is not None:
                _set_rng(run, p.resume_rng)
                p.resume_rng = None
        yield batches


def _train_batch(run: Run, batch: Any, started: float) -> None:
    p = run.progress
    run.emit("on_batch_start")
    inputs, targets = to_device(split_batch(batch), run.device)
    net = run.first("train_forward")  # the DDP module under torchrun
    with run.autocast():
        outputs = forward(run, net if net is not None else run.model, inputs)
        loss = compute_loss(run, outputs, targets)
    p.loss, p.batch_size = loss.item(), batch_size(inputs)
    if not math.isfinite(p.loss):
        raise TrainingError(
            f"the loss is {p.loss} at epoch {p.epoch}, batch {p.batch} "
            f"(optimizer step {p.step}); training stopped and nothing was saved "
            "after the last good checkpoint; hint: lower the learning rate, set "
            "grad_clip=, or look for NaN/inf in the inputs"
        )
    run.scaler.scale(loss / run.accumulate).backward()  # type: ignore[no-untyped-call]
    p.batch += 1
    if p.batch % run.accumulate == 0:
        _optimizer_step(run)
    p.loss_sum += p.loss * p.batch_size
    p.samples += p.batch_size
    p.seconds = time.perf_counter() - started
    run.emit("on_batch_end")


def _optimizer_step(run: Run) -> None:
    opt = run.optimizer
    run.emit("on_before_optimizer_step")
    run.scaler.step(opt)
    run.scaler.update()
    opt.zero_grad(set_to_none=True)
    run.progress.step += 1
    if run.scheduler is not None and run.scheduler_interval == "batch":
        run.scheduler.step()
    if run.unfreezer is not None:
        run.stage_changed(run.unfreezer.step())


def _finish_training(run: Run) -> None:
    """After the epoch's batches: refuse an epoch without any, and step on the last, partial
    accumulation window."""
    if run.progress.batch == 0:
        raise TrainingError(
            f"train_data yielded no batches in epoch {run.progress.epoch}; hint: check that "
            "the dataset is not empty (and drop_last= with a batch size above its size)"
        )
    if any(p.grad is not None for g in run.optimizer.param_groups for p in g["params"]):
        _optimizer_step(run)


def _evaluate(run: Run) -> dict[str, float]:
    """``train_loss`` and the ``val_*`` metrics: sample-weighted means (over all processes,
    through the callbacks' ``reduce``)."""
    run.emit("on_evaluate_start")
    sums: dict[str, float] = defaultdict(float)
    n = 0
    if run.val_data is not None:
        run.model.eval()
        supplied = run.first("batches", False)
        batches = supplied if supplied is not None else run.val_data
        with torch.no_grad(), run.autocast(), _closing(supplied):
            for batch in batches:
                inputs, targets = to_device(split_batch(batch), run.device)
                outputs = forward(run, run.model, inputs)  # no collective per batch
                k = batch_size(inputs)
                sums["val_loss"] += float(compute_loss(run, outputs, targets)) * k
                for name, fn in metric_fns(run.metrics, outputs, targets).items():
                    sums[f"val_{name}"] += float(fn(outputs, targets)) * k
                n += k
        run.model.train()
    for cb in run.callbacks:
        sums, n = cb.reduce(run, sums, n)
    p = run.progress
    logs = {"train_loss": p.loss_sum / max(p.samples, 1)}
    if run.val_data is None:
        return logs
    if n == 0:
        raise TrainingError("val_data yielded no batches; hint: pass val_data=None to skip it")
    return logs | {name: total / n for name, total in sums.items()}


def _end_epoch(run: Run) -> None:
    """Record the epoch, feed the plateau trigger and the scheduler, move to the next."""
    p, logs = run.progress, run.progress.logs
    p.history.add_epoch(
        epoch=p.epoch,
        stage=run.stage_name,
        train_loss=logs["train_loss"],
        val_loss=logs.get("val_loss"),
        metrics={k: v for k, v in logs.items() if k not in ("train_loss", "val_loss")},
        lrs={
            g.get("name", f"group{i}"): float(g["lr"])
            for i, g in enumerate(run.optimizer.param_groups)
        },
        n_trainable=sum(t.numel() for t in run.model.parameters() if t.requires_grad),
        steps=p.step,
        seconds=p.seconds,
        images_per_s=p.samples / max(p.seconds, 1e-9),
    )
    u = run.unfreezer
    watched = None if u is None else u.waiting_for
    if u is not None and watched is not None and (watched in logs or run.val_data is not None):
        u.observe(p.metric(watched, "the on_plateau trigger"))  # else: its cap decides
    if isinstance(run.scheduler, ReduceLROnPlateau):
        run.scheduler.step(logs.get("val_loss", logs["train_loss"]))
    elif run.scheduler is not None and run.scheduler_interval == "epoch":
        run.scheduler.step()
    if u is not None and (why := u.out_of_time()):
        p.stop = why  # ff.auto(minutes=...): the next epoch would end past the deadline
    p.next_epoch()
