"""Checkpoints: atomic saves, safe loads, retention, and resuming a :func:`~freezeflow.fit`.

A checkpoint is one file written with ``torch.save`` that holds only tensors and plain
containers, so it loads with ``torch.load(path, weights_only=True)`` (no arbitrary
unpickling). It holds the model, optimizer, LR scheduler, unfreezer and grad-scaler states,
the RNG states (torch CPU and CUDA, NumPy, Python ``random``, and the ``torch.Generator`` of
the ``DataLoader``/sampler when it has one), the callbacks' states and the history.

Writes are atomic: a temporary file in the same directory is written, flushed and fsynced,
then renamed over the target with ``os.replace``, and the directory is fsynced. The
``latest.json`` manifest (the latest file, every file with its metric, the best) is written
the same way *after* the checkpoint, and old files are deleted only after that, so a crash at
any moment leaves a manifest that names a complete file.

File names: ``epoch-0003.pt`` after 3 epochs; ``epoch-0003-batch-000017.pt`` after 3 epochs
and 17 batches of the 4th (a Ctrl-C).
"""

from __future__ import annotations

import json
import os
import random
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from freezeflow.distributed.process_group import barrier, is_distributed, is_main_process
from freezeflow.errors import CheckpointError, StateError
from freezeflow.training.callbacks import Callback, lookup

if TYPE_CHECKING:
    from freezeflow.training.loop import Run

__all__ = [
    "Checkpoint",
    "atomic_save",
    "checkpoint_state",
    "find_checkpoint",
    "load_checkpoint",
    "restore",
    "rng_state",
    "set_rng_state",
]

FORMAT = "freezeflow.checkpoint/1"
MANIFEST = "latest.json"
_MANIFEST_FORMAT = "freezeflow.checkpoints/1"
_NAME = re.compile(r"epoch-(\d+)(?:-batch-(\d+))?\.pt")


# --------------------------------------------------------------------------- atomic files


def _fsync_dir(directory: Path) -> None:
    if os.name != "posix":  # pragma: no cover - Windows cannot open a directory
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save(obj, path)`` so that ``path`` holds either the old or the new content,
    never a partial file, even if the process dies."""
    path = Path(path)
    _atomic_write(path, lambda f: torch.save(obj, f))
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a freezeflow checkpoint with ``weights_only=True``.

    Raises:
        CheckpointError: the file is missing, truncated or corrupt, holds something other
            than tensors and plain containers, or is not a freezeflow checkpoint; the message
            names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {str(path)!r} does not exist")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        if "weights_only" in str(exc) or "Weights only" in str(exc):
            raise CheckpointError(
                f"refused to load {str(path)!r}: it holds pickled objects other than tensors "
                "and plain containers, and loading it would run arbitrary code "
                "(torch.load(weights_only=True) refused it); hint: only resume from files "
                "that fit() wrote"
            ) from exc
        raise CheckpointError(
            f"cannot read checkpoint {str(path)!r} ({path.stat().st_size} bytes): it is "
            f"truncated or corrupt ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
            "hint: resume from an older checkpoint with resume=<path>"
        ) from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(
            f"{str(path)!r} is not a freezeflow checkpoint (format {found!r}, expected {FORMAT!r})"
        )
    return data


# --------------------------------------------------------------------------- finding


def _position(name: str) -> tuple[int, int] | None:
    m = _NAME.fullmatch(name)
    return (int(m[1]), int(m[2] or 0)) if m else None


def _read_manifest(directory: Path) -> dict[str, Any] | None:
    path = directory / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data["format"] != _MANIFEST_FORMAT:
            raise ValueError(f"format {data['format']!r}")
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(
            f"the checkpoint manifest {str(path)!r} is corrupt ({exc}); hint: delete it to "
            "resume from the newest epoch-*.pt file, or pass resume=<file>"
        ) from exc
    return dict(data)


def find_checkpoint(resume: bool | str | Path, directory: str | Path | None) -> Path | None:
    """The file to resume from: ``resume`` itself when it is a file; else the latest
    checkpoint of the directory (``resume`` when it is a directory, else ``directory``) as
    its manifest names it, or the newest ``epoch-*.pt`` file when there is no manifest.
    ``None`` when ``resume=True`` and the directory holds no checkpoint yet."""
    if resume is False:
        return None
    if resume is True:
        if directory is None:
            raise CheckpointError(
                "resume=True needs checkpoint_dir=; hint: or pass resume=<checkpoint file>"
            )
        where = Path(directory)
    else:
        where = Path(resume)
        if where.is_file():
            return where
        if not where.is_dir():
            raise CheckpointError(f"cannot resume: {str(where)!r} does not exist")
    manifest = _read_manifest(where) if where.is_dir() else None
    if manifest is not None:
        latest = where / str(manifest["latest"])
        if not latest.is_file():
            raise CheckpointError(
                f"the manifest {str(where / MANIFEST)!r} names {str(latest)!r}, which does "
                "not exist; hint: pass resume=<file> to pick a checkpoint"
            )
        return latest
    found = {pos: p for p in where.glob("epoch-*.pt") if (pos := _position(p.name))}
    if found:
        return found[max(found)]
    if resume is True:
        return None
    raise CheckpointError(f"cannot resume: no checkpoint in {str(where)!r}")


# --------------------------------------------------------------------------- RNG states


def _generators(data: Any) -> list[torch.Generator]:
    """The torch.Generators that decide a DataLoader's shuffle (loader, sampler, batch
    sampler's sampler), each once."""
    found: dict[int, torch.Generator] = {}
    sampler = getattr(data, "sampler", None)
    batch_sampler = getattr(data, "batch_sampler", None)
    for owner in (data, sampler, getattr(batch_sampler, "sampler", None)):
        g = getattr(owner, "generator", None)
        if isinstance(g, torch.Generator) and g.device.type == "cpu":
            found.setdefault(id(g), g)
    return list(found.values())


def rng_state(run: Run) -> dict[str, Any]:
    """Every RNG state a training run draws from, as tensors and plain values."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": [version, list(internal), gauss],
        "numpy": [kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), pos, has_gauss, cached],
        "generators": [g.get_state() for g in _generators(run.train_data)],
    }
    if run.device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(run: Run, state: dict[str, Any]) -> None:
    """Put back what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    gens = _generators(run.train_data)
    if len(gens) != len(state["generators"]):
        raise CheckpointError(
            f"the checkpoint holds {len(state['generators'])} data-loader generator state(s), "
            f"this train_data has {len(gens)}; hint: resume with a DataLoader built the same way"
        )
    for g, s in zip(gens, state["generators"]):
        g.set_state(s)
    if "cuda" in state and run.device.type == "cuda":
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------- save / restore


def _model_shapes(model: torch.nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def _callback_key(callbacks: list[Callback], i: int) -> str:
    cls = type(callbacks[i]).__name__
    return f"{cls}#{sum(type(c).__name__ == cls for c in callbacks[:i])}"


def checkpoint_state(run: Run) -> dict[str, Any]:
    """The checkpoint of ``run`` as it is now (plain values and tensors only)."""
    mid_epoch = run.batch > 0
    params = dict(run.model.named_parameters())
    return {
        "format": FORMAT,
        "position": {"epoch": run.epoch, "batch": run.batch, "step": run.step},
        "shapes": _model_shapes(run.model),
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": None if run.scheduler is None else run.scheduler.state_dict(),
        "unfreezer": None if run.unfreezer is None else run.unfreezer.state_dict(),
        "scaler": run.scaler.state_dict(),
        "rng": rng_state(run),
        "epoch_rng": run.epoch_rng if mid_epoch else None,
        "progress": {"loss_sum": run.loss_sum, "samples": run.samples, "seconds": run.seconds},
        "grads": {n: p.grad for n, p in params.items() if p.grad is not None and mid_epoch},
        "history": run.history.to_dicts(),
        "callbacks": {
            _callback_key(run.callbacks, i): cb.state_dict()
            for i, cb in enumerate(run.callbacks)
            if cb.state_dict()
        },
        "logs": dict(run.logs) if not mid_epoch else {},
    }


def restore(run: Run, path: str | Path) -> None:
    """Load the checkpoint at ``path`` into ``run`` (model, optimizer, scheduler,
    unfreezer, scaler, RNGs, history, callbacks, position).

    Raises:
        CheckpointError: the file is unreadable or unsafe, or it was saved for another
            model, schedule or optimizer; the message names the file. The model is left
            untouched when the model's or the schedule's fingerprint differs.
    """
    path = Path(path)
    ckpt = load_checkpoint(path)
    mine, theirs = _model_shapes(run.model), ckpt["shapes"]
    if mine != theirs:
        missing = sorted(set(mine) - set(theirs))[:3]
        extra = sorted(set(theirs) - set(mine))[:3]
        reshaped = [k for k in mine if k in theirs and mine[k] != theirs[k]][:3]
        raise CheckpointError(
            f"{str(path)!r} was saved for another model (not in it: {missing}, not in this "
            f"model: {extra}, other shapes: {reshaped}); hint: build the same model (same "
            "head) before resuming, or use another checkpoint_dir"
        )
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
            raise StateError("one of the checkpoint and this run has an LR scheduler")
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
    set_rng_state(run, ckpt["rng"])
    run.resume_rng, run.epoch_rng = ckpt["rng"], ckpt["epoch_rng"]
    pos, progress = ckpt["position"], ckpt["progress"]
    run.epoch, run.batch, run.step = int(pos["epoch"]), int(pos["batch"]), int(pos["step"])
    run.loss_sum, run.samples = float(progress["loss_sum"]), int(progress["samples"])
    run.seconds = float(progress["seconds"])
    run.history.records = list(ckpt["history"])
    run.logs = dict(ckpt["logs"])
    for i, cb in enumerate(run.callbacks):
        state = ckpt["callbacks"].get(_callback_key(run.callbacks, i))
        if state is not None:
            cb.load_state_dict(state)
    run.resumed = True


# --------------------------------------------------------------------------- the callback


class Checkpoint(Callback):
    """Save checkpoints of a :func:`~freezeflow.fit` run (``fit(checkpoint_dir=...)`` adds
    one; put it last in ``callbacks=`` when adding it yourself).

    Saves after every ``every`` epochs, at the end of training (the last epoch, early
    stopping, or Ctrl-C), and keeps the last ``keep_last`` files (``None``: all) plus the
    best by ``keep_best``. A failed run (an exception other than Ctrl-C) saves nothing, so
    the last good checkpoint stays the latest.

    Args:
        directory: where to write (created if needed). One run per directory: a fresh run
            (not resuming) refuses a directory that already holds checkpoints.
        every: epochs between saves.
        keep_last: how many recent checkpoints to keep.
        keep_best: a metric name (mode ``"min"`` if it ends in ``loss``, else ``"max"``) or
            a ``(name, mode)`` pair; the best checkpoint by it is kept too.

    Under ``torchrun`` only rank 0 touches the directory, and every rank waits for its save
    (a barrier), so every rank must run the same epochs (``fit`` keeps them in lockstep).
    An interrupted run (Ctrl-C) saves nothing there: the ranks stopped at different batches.
    """

    def __init__(
        self,
        directory: str | Path,
        every: int = 1,
        keep_last: int | None = 3,
        keep_best: str | tuple[str, Literal["min", "max"]] | None = None,
    ) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise CheckpointError(f"Checkpoint(every={every!r}): expected an integer >= 1")
        if keep_last is not None and (not isinstance(keep_last, int) or keep_last < 1):
            raise CheckpointError(f"Checkpoint(keep_last={keep_last!r}): expected >= 1 or None")
        if isinstance(keep_best, str):
            keep_best = (keep_best, "min" if keep_best.endswith("loss") else "max")
        if keep_best is not None and keep_best[1] not in ("min", "max"):
            raise CheckpointError(f"Checkpoint(keep_best={keep_best!r}): mode must be min or max")
        self.directory = Path(directory)
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

    def on_train_start(self, run: Run) -> None:
        main = is_main_process()
        if main:
            self.directory.mkdir(parents=True, exist_ok=True)
            for pattern in (".epoch-*.tmp", f".{MANIFEST}.*.tmp"):  # left by a killed save
                for stale in self.directory.glob(pattern):
                    stale.unlink(missing_ok=True)
        barrier()  # every rank reads the directory as rank 0 left it (all raise, or none)
        manifest = _read_manifest(self.directory)
        ours = sorted(p.name for p in self.directory.glob("epoch-*.pt") if _position(p.name))
        if not run.resumed and (manifest is not None or ours):
            raise CheckpointError(
                f"{str(self.directory)!r} already holds checkpoints of another run; hint: "
                "resume=True to go on with it, or choose another checkpoint_dir"
            )
        if manifest is not None:
            self.files = [f for f in manifest["files"] if (self.directory / f["name"]).is_file()]
            listed = {f["name"] for f in self.files}
            for name in ours:  # deleted by retention, but the process died before unlinking
                if main and name not in listed:
                    (self.directory / name).unlink(missing_ok=True)
        self._saved = (run.epoch, run.batch)

    def on_epoch_end(self, run: Run) -> None:
        if run.epoch % self.every == 0:
            self.save(run)

    def on_train_end(self, run: Run) -> None:
        if run.history.interrupted and is_distributed():
            return
        if self._saved != (run.epoch, run.batch):
            self.save(run)

    def save(self, run: Run) -> Path:
        """Write a checkpoint of ``run`` now, update ``latest.json``, apply retention.
        Under ``torchrun``: rank 0 writes, the others only keep the list of files, and all
        wait until the files are written (a collective)."""
        name = f"epoch-{run.epoch:04d}" + (f"-batch-{run.batch:06d}" if run.batch else "") + ".pt"
        value = None
        if self.keep_best is not None and run.batch == 0:
            value = float(lookup(run.logs, self.keep_best[0], "Checkpoint(keep_best=)"))
        path = self.directory / name
        main = is_main_process()
        if main:
            atomic_save(checkpoint_state(run), path)
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
        manifest = {
            "format": _MANIFEST_FORMAT,
            "latest": name,
            "best": best,
            "metric": None if self.keep_best is None else list(self.keep_best),
            "files": self.files,
        }
        if main:
            text = json.dumps(manifest, indent=1).encode()
            _atomic_write(self.directory / MANIFEST, lambda f: f.write(text))
            for old in gone:
                (self.directory / old).unlink(missing_ok=True)
        barrier()  # no rank goes on (or reads the directory) before rank 0 has saved
        self._saved = (run.epoch, run.batch)
        return path
