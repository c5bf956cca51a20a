"""Checkpoints of a :func:`~freezeflow.fit` run: what one holds, resuming from one, and the
:class:`Checkpoint` callback that saves them.

A checkpoint is one file written with ``torch.save`` that holds only tensors and plain
containers, so it loads with ``torch.load(path, weights_only=True)`` (no arbitrary
unpickling). It holds the model, optimizer, LR scheduler, unfreezer and grad-scaler states,
the RNG states (torch CPU and CUDA, NumPy, Python ``random``, and the ``torch.Generator`` of
the ``DataLoader``/sampler when it has one), the run's :class:`~freezeflow.training.run.Progress`
(position, the epoch's sums, history, logs), the callbacks' states and, mid-epoch, the
gradients accumulated so far. Files, the manifest and atomic writes:
:mod:`freezeflow.training.checkpoint_files`.

The ``latest.json`` manifest is written *after* the checkpoint, and old files are deleted
only after that, so a crash at any moment leaves a manifest that names a complete file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import torch

import freezeflow.training.checkpoint_files as files
from freezeflow.distributed.process_group import barrier, is_distributed, is_main_process
from freezeflow.errors import (
    CheckpointError,
    StateError,
    TrainingArgumentError,
    TrainingTypeError,
    check_int,
)
from freezeflow.training.checkpoint_files import FORMAT, load_checkpoint
from freezeflow.training.rng import data_generators, rng_state, set_rng_state
from freezeflow.training.run import Callback, Run

__all__ = ["Checkpoint", "checkpoint_state", "restore"]


def _model_shapes(model: torch.nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def _callback_key(callbacks: tuple[Callback, ...], i: int) -> str:
    cls = type(callbacks[i]).__name__
    return f"{cls}#{sum(type(c).__name__ == cls for c in callbacks[:i])}"


def checkpoint_state(run: Run) -> dict[str, Any]:
    """The checkpoint of ``run`` as it is now (plain values and tensors only)."""
    progress = run.progress.state_dict()
    mid_epoch = run.progress.batch > 0
    params = dict(run.model.named_parameters())
    return {
        "format": FORMAT,
        "position": progress["position"],
        "shapes": _model_shapes(run.model),
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": None if run.scheduler is None else run.scheduler.state_dict(),
        "unfreezer": None if run.unfreezer is None else run.unfreezer.state_dict(),
        "scaler": run.scaler.state_dict(),
        "rng": rng_state(
            cuda=run.device.type == "cuda", generators=data_generators(run.train_data)
        ),
        "epoch_rng": progress["epoch_rng"],
        "progress": progress["progress"],
        "grads": {n: p.grad for n, p in params.items() if p.grad is not None and mid_epoch},
        "history": progress["history"],
        "callbacks": {
            _callback_key(run.callbacks, i): cb.state_dict()
            for i, cb in enumerate(run.callbacks)
            if cb.state_dict()
        },
        "logs": progress["logs"],
    }


def _check_model(path: Path, ckpt: dict[str, Any], model: torch.nn.Module) -> None:
    mine, theirs = _model_shapes(model), ckpt["shapes"]
    if mine != theirs:
        missing = sorted(set(mine) - set(theirs))[:3]
        extra = sorted(set(theirs) - set(mine))[:3]
        reshaped = [k for k in mine if k in theirs and mine[k] != theirs[k]][:3]
        raise CheckpointError(
            f"{str(path)!r} was saved for another model (not in it: {missing}, not in this "
            f"model: {extra}, other shapes: {reshaped}); hint: build the same model (same "
            "head) before resuming, or use another checkpoint directory"
        )


def restore(run: Run, path: str | Path, ckpt: dict[str, Any] | None = None) -> None:
    """Load the checkpoint at ``path`` (``ckpt``: its contents, when already read) into
    ``run`` through each part's ``load_state_dict`` (model, optimizer, scheduler, unfreezer,
    scaler, progress, callbacks), and put back the RNG states and the gradients accumulated
    so far.

    Raises:
        CheckpointError: the file is unreadable or unsafe, or it was saved for another
            model, schedule or optimizer; the message names the file. The model is left
            untouched when the model's or the schedule's fingerprint differs.
    """
    path = Path(path)
    ckpt = load_checkpoint(path) if ckpt is None else ckpt
    _check_model(path, ckpt, run.model)
    if (ckpt["unfreezer"] is None) != (run.unfreezer is None):
        raise CheckpointError(
            f"{str(path)!r} was saved {'with' if run.unfreezer is None else 'without'} a "
            "schedule, this run has the opposite; hint: pass the same schedule= as before"
        )
    try:
        if run.unfreezer is not None:
            run.unfreezer.load_state_dict(ckpt["unfreezer"])  # validates before changing
        run.model.load_state_dict(ckpt["model"])
        run.optimizer.load_state_dict(ckpt["optimizer"])
        if (ckpt["scheduler"] is None) != (run.scheduler is None):
            raise StateError(
                f"the checkpoint holds {'no' if ckpt['scheduler'] is None else 'an'} LR "
                f"scheduler state and this run has {'one' if run.scheduler else 'none'}"
            )
        if run.scheduler is not None:
            run.scheduler.load_state_dict(ckpt["scheduler"])
        run.scaler.load_state_dict(ckpt["scaler"])
    except (StateError, ValueError, RuntimeError, KeyError) as exc:
        raise CheckpointError(
            f"cannot resume from {str(path)!r}: {exc}; hint: resume with the same model, "
            "schedule, optimizer and scheduler as the run that saved it"
        ) from exc
    params = dict(run.model.named_parameters())
    for name, grad in ckpt["grads"].items():
        params[name].grad = grad.to(params[name].device)
    set_rng_state(
        ckpt["rng"], cuda=run.device.type == "cuda", generators=data_generators(run.train_data)
    )
    run.progress.load_state_dict(ckpt)
    for i, cb in enumerate(run.callbacks):
        state = ckpt["callbacks"].get(_callback_key(run.callbacks, i))
        if state is not None:
            cb.load_state_dict(state)


class Checkpoint(Callback):
    """Save checkpoints of a :func:`~freezeflow.fit` run, and resume from one:
    ``fit(..., callbacks=[Checkpoint("runs/x")])``; ``Checkpoint("runs/x", resume=True)`` goes
    on from the latest one. ``fit`` runs it after every other callback, wherever it stands in
    the list.

    Saves after every ``every`` epochs, at the end of training (the last epoch, early
    stopping, or Ctrl-C), and keeps the last ``keep_last`` files (``None``: all) plus the
    best by ``keep_best``. A failed run (an exception other than Ctrl-C) saves nothing, so
    the last good checkpoint stays the latest. ``fit`` calls it after every other callback,
    so that their states are saved as of the epoch's end.

    Args:
        directory: where to write (created if needed). One run per directory: a fresh run
            (not resuming) refuses a directory that already holds checkpoints.
        every: epochs between saves.
        keep_last: how many recent checkpoints to keep (``None``: all).
        keep_best: a metric name (mode ``"min"`` if it ends in ``loss``, else ``"max"``) or
            a ``(name, mode)`` pair; the best checkpoint by it is kept too.
        resume: ``True`` to go on from the latest checkpoint in ``directory`` (a fresh start
            when there is none), or the path of a checkpoint file or directory to go on from
            (its run continues in ``directory``); ``False``: a fresh run.

    Raises:
        TrainingTypeError: ``every`` or ``keep_last`` is not an integer (a bool is not), or
            ``resume`` is not a bool or a path.
        TrainingArgumentError: ``every`` or ``keep_last`` is below 1, or ``keep_best``'s mode
            is not ``"min"`` or ``"max"``.

    Under ``torchrun`` only rank 0 touches the directory, and every rank waits for its save
    (a barrier), so every rank must run the same epochs (``fit`` keeps them in lockstep).
    An interrupted run (Ctrl-C) saves nothing there: the ranks stopped at different batches.

    Example:
        >>> ckpt = Checkpoint("runs/demo", every=2, keep_last=None, keep_best="val_loss")
        >>> ckpt.keep_best
        ('val_loss', 'min')
        >>> try:
        ...     Checkpoint("runs/demo", keep_last=True)
        ... except TypeError as exc:
        ...     print(str(exc).split(";")[0])
        Checkpoint(keep_last=): expected an integer >= 1, got True of type bool
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        every: int = 1,
        keep_last: int | None = 3,
        keep_best: str | tuple[str, Literal["min", "max"]] | None = None,
        resume: bool | str | os.PathLike[str] = False,
    ) -> None:
        check_int("Checkpoint(every=)", every, 1, TrainingArgumentError)
        if keep_last is not None:
            check_int(
                "Checkpoint(keep_last=)",
                keep_last,
                1,
                TrainingArgumentError,
                "or None to keep every file",
            )
        if isinstance(keep_best, str):
            keep_best = (keep_best, "min" if keep_best.endswith("loss") else "max")
        if keep_best is not None and keep_best[1] not in ("min", "max"):
            raise TrainingArgumentError(
                f"Checkpoint(keep_best={keep_best!r}): expected the mode 'min' or 'max'; hint: "
                "keep_best=('val_loss', 'min') or ('val_accuracy', 'max')"
            )
        if not isinstance(resume, (bool, str, os.PathLike)):
            raise TrainingTypeError(
                f"Checkpoint(resume={resume!r}): expected True, False or the path of a "
                f"checkpoint file or directory, got a {type(resume).__name__}; hint: "
                "resume=True goes on from the latest checkpoint in the directory"
            )
        if not isinstance(directory, (str, os.PathLike)):
            raise TrainingTypeError(
                f"Checkpoint({directory!r}): expected the directory to write checkpoints in, "
                f"got a {type(directory).__name__}; hint: Checkpoint('runs/demo')"
            )
        self.directory = Path(directory)
        self.resume = resume if isinstance(resume, bool) else Path(resume)
        self.every, self.keep_last, self.keep_best = every, keep_last, keep_best
        self.files: list[dict[str, Any]] = []
        self._saved: tuple[int, int] | None = None

    @property
    def latest(self) -> Path | None:
        """The newest checkpoint file written or found."""
        return self.directory / self.files[-1]["name"] if self.files else None

    @property
    def best(self) -> Path | None:
        """The best checkpoint file by ``keep_best`` (``None`` without it)."""
        name = self._best()
        return None if name is None else self.directory / name

    def _best(self) -> str | None:
        if self.keep_best is None:
            return None
        scored = [f for f in self.files if f["value"] is not None]
        if not scored:
            return None
        sign = 1.0 if self.keep_best[1] == "min" else -1.0
        return str(min(scored, key=lambda f: sign * f["value"])["name"])

    def preflight(self, model: torch.nn.Module) -> tuple[Path, dict[str, Any]] | None:
        """What :func:`~freezeflow.fit` checks before it changes anything: the checkpoint to
        resume from, found, read and made for ``model`` (returned with its contents), or, for
        a fresh start (``None``), a directory that is not a file and holds no checkpoints of
        another run.

        Raises:
            CheckpointError: the directory is a file or holds another run's checkpoints, or
                the checkpoint is missing, unreadable, unsafe or saved for another model.
        """
        if self.directory.exists() and not self.directory.is_dir():
            raise CheckpointError(
                f"Checkpoint({str(self.directory)!r}) is a file, not a directory to save "
                "checkpoints in; hint: Checkpoint('runs/name') names a folder (made if missing)"
            )
        path = files.find_checkpoint(self.resume, self.directory)
        if path is None:
            if self.directory.is_dir() and (
                files.read_manifest(self.directory) is not None
                or files.checkpoint_files(self.directory)
            ):
                raise CheckpointError(self._not_ours())
            return None
        ckpt = load_checkpoint(path)
        _check_model(path, ckpt, model)
        return path, ckpt

    def _not_ours(self) -> str:
        return (
            f"{str(self.directory)!r} already holds checkpoints of another run; hint: "
            "Checkpoint(directory, resume=True) to go on with it, or choose another "
            "checkpoint directory"
        )

    def on_train_start(self, run: Run) -> None:
        main = is_main_process()
        if main:
            self.directory.mkdir(parents=True, exist_ok=True)
            files.remove_temporaries(self.directory)  # left by a killed save
        barrier()  # every rank reads the directory as rank 0 left it (all raise, or none)
        manifest = files.read_manifest(self.directory)
        ours = files.checkpoint_files(self.directory)
        if not run.progress.resumed and (manifest is not None or ours):
            raise CheckpointError(self._not_ours())
        if manifest is not None:
            self.files = [f for f in manifest["files"] if (self.directory / f["name"]).is_file()]
            listed = {f["name"] for f in self.files}
            for name in ours:  # deleted by retention, but the process died before unlinking
                if main and name not in listed:
                    (self.directory / name).unlink(missing_ok=True)
        self._saved = (run.progress.epoch, run.progress.batch)

    def on_epoch_end(self, run: Run) -> None:
        if run.progress.epoch % self.every == 0:
            self.save(run)

    def on_train_end(self, run: Run) -> None:
        if run.progress.history.interrupted and is_distributed():
            return
        if self._saved != (run.progress.epoch, run.progress.batch):
            self.save(run)

    def save(self, run: Run) -> Path:
        """Write a checkpoint of ``run`` now, update ``latest.json``, apply retention.
        Under ``torchrun``: rank 0 writes, the others only keep the list of files, and all
        wait until the files are written (a collective)."""
        p = run.progress
        name = files.checkpoint_name(p.epoch, p.batch)
        value = None
        if self.keep_best is not None and p.batch == 0:
            value = float(p.metric(self.keep_best[0], "Checkpoint(keep_best=)"))
        path = self.directory / name
        main = is_main_process()
        if main:
            files.atomic_save(checkpoint_state(run), path)
        self.files = [f for f in self.files if f["name"] != name]
        self.files.append({"name": name, "value": value})
        keep = {f["name"] for f in self.files[-self.keep_last :]} if self.keep_last else None
        best = self._best()
        gone = (
            []
            if keep is None
            else [f["name"] for f in self.files if f["name"] not in keep | {best}]
        )
        self.files = [f for f in self.files if f["name"] not in gone]
        if main:
            metric = None if self.keep_best is None else list(self.keep_best)
            files.write_manifest(self.directory, name, best, metric, self.files)
            for old in gone:
                (self.directory / old).unlink(missing_ok=True)
        barrier()  # no rank goes on (or reads the directory) before rank 0 has saved
        self._saved = (p.epoch, p.batch)
        return path
