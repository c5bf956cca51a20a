"""Callbacks: what :func:`freezeflow.fit` does besides training lives here.

A callback is an object with any of the hooks of :class:`Callback`; each hook gets the
:class:`~freezeflow.training.Run` (model, optimizer, unfreezer, history, epoch, batch,
logs...).
Set ``run.stop`` to a reason to end training after the current epoch. Callbacks that hold
state implement ``state_dict``/``load_state_dict`` so checkpoints resume them too.

Order of calls for one epoch::

    on_epoch_start
      on_batch_start, on_batch_end        (each batch; on_stage_change inside when a step
                                           trigger fires)
    on_evaluate                           (after validation, with the logs so far)
    on_epoch_end                          (history record written, scheduler stepped)
"""

from __future__ import annotations

import math
import sys
import time
from typing import TYPE_CHECKING, Any, Literal, TextIO

from freezeflow.distributed.process_group import world_size
from freezeflow.errors import TrainingError
from freezeflow.schedules.triggers import PlateauTracker
from freezeflow.unfreezer.gradual import Transition

if TYPE_CHECKING:
    from freezeflow.training.loop import Run

__all__ = ["Callback", "EarlyStopping", "ProgressBar", "lookup"]


class Callback:
    """Base class: every hook does nothing. Override the ones you need."""

    def on_train_start(self, run: Run) -> None:
        """Before the first epoch (after a resume, if any)."""

    def on_train_end(self, run: Run) -> None:
        """After the last epoch, after early stopping, or after Ctrl-C
        (``run.history.interrupted`` is then true). Not called when training fails."""

    def on_epoch_start(self, run: Run) -> None:
        """At the start of epoch ``run.epoch`` (after the unfreezer's stage change, if any)."""

    def on_epoch_end(self, run: Run) -> None:
        """After the epoch's record is in ``run.history`` (``run.logs`` holds it flat)."""

    def on_batch_start(self, run: Run) -> None:
        """Before batch ``run.batch`` of the epoch (0-based)."""

    def on_batch_end(self, run: Run) -> None:
        """After a batch; ``run.batch`` counts the batches done, ``run.loss`` is its loss."""

    def on_stage_change(self, run: Run, transition: Transition) -> None:
        """After the unfreezer enters a new stage (model and optimizer already updated)."""

    def on_evaluate(self, run: Run, logs: dict[str, float]) -> None:
        """After validation; ``logs`` holds ``train_loss``, ``val_loss`` and ``val_<metric>``."""

    def on_note(self, run: Run, message: str) -> None:
        """A one-line message from the loop (e.g. whether the feature cache is used)."""

    def state_dict(self) -> dict[str, Any]:
        """What to save in a checkpoint (plain values only)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


def lookup(logs: dict[str, float], metric: str, who: str) -> float:
    """``logs[metric]``, or a :class:`TrainingError` that names what is there."""
    if metric not in logs:
        hint = " (val_* metrics need val_data=)" if metric.startswith("val_") else ""
        raise TrainingError(
            f"{who} watches {metric!r}, which is not logged; logged: {sorted(logs)}{hint}"
        )
    return logs[metric]


class EarlyStopping(Callback):
    """Stop when ``metric`` has not improved by more than ``min_delta`` for ``patience``
    epochs.

    Args:
        metric: a name in the epoch logs: ``train_loss``, ``val_loss`` or ``val_<metric>``.
        patience: epochs without improvement before stopping.
        min_delta: the smallest change that counts as an improvement.
        mode: ``"min"`` (losses) or ``"max"`` (accuracy).
    """

    def __init__(
        self,
        metric: str = "val_loss",
        *,
        patience: int = 3,
        min_delta: float = 0.0,
        mode: Literal["min", "max"] = "min",
    ) -> None:
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise TrainingError(f"EarlyStopping(patience={patience!r}): expected an int >= 1")
        if not math.isfinite(min_delta) or min_delta < 0:
            raise TrainingError(f"EarlyStopping(min_delta={min_delta!r}): expected >= 0")
        if mode not in ("min", "max"):
            raise TrainingError(f"EarlyStopping(mode={mode!r}): expected 'min' or 'max'")
        self.metric = metric
        self.tracker = PlateauTracker(patience, min_delta, mode)

    def on_epoch_end(self, run: Run) -> None:
        t = self.tracker
        if t.update(lookup(run.logs, self.metric, "EarlyStopping")):
            run.stop = (
                f"early stopping: {self.metric} did not improve on {t.best:.4g} for {t.bad} epochs"
            )

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.tracker.best, "bad": self.tracker.bad}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tracker.best, self.tracker.bad = state["best"], int(state["bad"])


def _si(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.3g}"


class ProgressBar(Callback):
    """Console output: a tqdm bar per epoch (stage, loss, LR, images/s), a line per stage
    change and a one-line summary per epoch. ``fit(quiet=True)`` leaves it out.

    Without tqdm (an optional dependency: ``pip install 'freezeflow[progress]'``), or with
    ``tqdm=False``, it prints a plain line every ``every`` batches instead (default: about
    ten lines per epoch).

    Args:
        tqdm: use tqdm (``None``: when installed).
        every: batches between plain progress lines.
        file: where to write (default ``sys.stdout`` for lines; tqdm writes to stderr).
    """

    def __init__(
        self, *, tqdm: bool | None = None, every: int | None = None, file: TextIO | None = None
    ) -> None:
        self._tqdm: Any = None
        if tqdm is not False:
            try:
                from tqdm.auto import tqdm as tqdm_cls
            except ImportError:
                if tqdm:
                    raise TrainingError(
                        "ProgressBar(tqdm=True) needs tqdm; hint: pip install "
                        "'freezeflow[progress]'"
                    ) from None
            else:
                self._tqdm = tqdm_cls
        self.every = every
        self.file = file
        self._bar: Any = None
        self._start = 0.0
        self._seen = 0

    def _write(self, line: str) -> None:
        if self._bar is not None:
            self._bar.write(line, file=self.file or sys.stdout)
        else:
            print(line, file=self.file or sys.stdout, flush=True)

    def on_train_start(self, run: Run) -> None:
        params = sum(p.numel() for p in run.model.parameters())
        where = f", resuming at epoch {run.epoch} batch {run.batch}" if run.resumed else ""
        ranks = f" x {world_size()} processes (DDP)" if run.ddp is not None else ""
        self._write(
            f"fit: {type(run.model).__name__} ({_si(params)} parameters) on {run.device}"
            f"{ranks}, {run.epochs} epochs{where}"
        )

    def on_epoch_start(self, run: Run) -> None:
        self._start, self._seen = time.perf_counter(), 0
        if self._tqdm is not None:
            self._bar = self._tqdm(
                total=run.batches_per_epoch,
                initial=run.batch,
                desc=f"epoch {run.epoch} ({run.epoch + 1}/{run.epochs})",
                leave=False,
                dynamic_ncols=True,
            )

    def on_batch_end(self, run: Run) -> None:
        self._seen += run.batch_size
        rate = self._seen / max(time.perf_counter() - self._start, 1e-9)
        lr = max(g["lr"] for g in run.optimizer.param_groups)
        if self._bar is not None:
            self._bar.set_postfix_str(
                f"{run.stage} loss {run.loss:.4f} lr {lr:.2e} {_si(rate)} img/s", refresh=False
            )
            self._bar.update(1)
            return
        every = self.every or max(1, (run.batches_per_epoch or 100) // 10)
        if run.batch % every == 0:
            total = f"/{run.batches_per_epoch}" if run.batches_per_epoch else ""
            self._write(
                f"  epoch {run.epoch} batch {run.batch}{total} [{run.stage}] "
                f"loss {run.loss:.4f} lr {lr:.2e} {_si(rate)} img/s"
            )

    def on_note(self, run: Run, message: str) -> None:
        self._write(message)

    def on_stage_change(self, run: Run, transition: Transition) -> None:
        lrs = sorted(set(transition.lrs.values()))
        lr = f"{lrs[0]:.2e}" if len(lrs) == 1 else f"{lrs[0]:.2e}..{lrs[-1]:.2e}"
        self._write(
            f"stage {transition.name!r} begins at epoch {transition.epoch}, step "
            f"{transition.step} ({transition.reason}): {_si(transition.trainable)} trainable, "
            f"lr {lr}"
        )

    def on_epoch_end(self, run: Run) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        record = run.history.epochs[-1]
        parts = [f"epoch {record['epoch']} ({record['epoch'] + 1}/{run.epochs})"]
        if record["stage"] is not None:
            parts.append(f"[{record['stage']}]")
        parts.append(f"train_loss {record['train_loss']:.4f}")
        if record["val_loss"] is not None:
            parts.append(f"val_loss {record['val_loss']:.4f}")
        parts += [f"{k} {v:.4f}" for k, v in record["metrics"].items()]
        parts.append(f"trainable {_si(record['trainable'])}")
        parts.append(f"{record['seconds']:.1f}s ({_si(record['images_per_s'])} img/s)")
        self._write(" ".join(parts))

    def on_train_end(self, run: Run) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if run.history.interrupted:
            self._write(f"interrupted in epoch {run.epoch} after {run.batch} batches")
        elif run.history.stop_reason:
            self._write(run.history.stop_reason)
