"""The callbacks that come with :func:`~freezeflow.fit`: :class:`EarlyStopping`,
:class:`ClipGradNorm` and :class:`ProgressBar` (checkpoints:
:class:`~freezeflow.training.checkpoint.Checkpoint`; the feature cache:
:class:`~freezeflow.training.caching.FeatureCaching`).

A callback is a :class:`Callback` (defined with the run in :mod:`freezeflow.training.run`,
where the order of the hooks is documented) that overrides the hooks it needs.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any, Literal, TextIO

import torch

from freezeflow.distributed.process_group import world_size
from freezeflow.errors import MissingDependencyError, TrainingArgumentError, check_int
from freezeflow.schedules.plateau import PlateauTracker
from freezeflow.training.run import Callback, Run
from freezeflow.unfreezer.gradual import Transition

__all__ = ["Callback", "ClipGradNorm", "EarlyStopping", "ProgressBar"]


class ClipGradNorm(Callback):
    """Clip the norm of the trainable parameters' gradients to ``max_norm`` before every
    optimizer step (after unscaling them under fp16 mixed precision).

    Args:
        max_norm: the largest total gradient norm (a finite number > 0).
        norm_type: the p of the p-norm (2.0: Euclidean; ``math.inf``: the largest entry).

    Example:
        >>> import torch, freezeflow as ff
        >>> data = [(torch.randn(4, 3), torch.tensor([0, 1, 0, 1]))] * 2
        >>> clip = ff.callbacks.ClipGradNorm(1.0)
        >>> _ = ff.fit(torch.nn.Linear(3, 2), data, epochs=1, callbacks=[clip], progress=False)
        >>> clip.last_norm is not None
        True
    """

    def __init__(self, max_norm: float, norm_type: float = 2.0) -> None:
        for what, value in (("max_norm", max_norm), ("norm_type", norm_type)):
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or math.isnan(value)
                or value <= 0
                or (what == "max_norm" and math.isinf(value))
            ):
                raise TrainingArgumentError(
                    f"ClipGradNorm({what}={value!r}): expected a number > 0"
                    + (" (finite)" if what == "max_norm" else "")
                    + "; hint: ClipGradNorm(1.0) is a common choice for fine-tuning"
                )
        self.max_norm, self.norm_type = float(max_norm), float(norm_type)
        self.last_norm: float | None = None
        """The total norm before clipping at the last step."""

    def on_before_optimizer_step(self, run: Run) -> None:
        opt = run.optimizer
        run.scaler.unscale_(opt)
        params = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
        total = torch.nn.utils.clip_grad_norm_(params, self.max_norm, self.norm_type)
        self.last_norm = float(total)


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
        check_int("EarlyStopping(patience=)", patience, 1, TrainingArgumentError)
        if not math.isfinite(min_delta) or min_delta < 0:
            raise TrainingArgumentError(
                f"EarlyStopping(min_delta={min_delta!r}): expected a finite number >= 0; "
                "hint: 0.0 counts any improvement"
            )
        if mode not in ("min", "max"):
            raise TrainingArgumentError(
                f"EarlyStopping(mode={mode!r}): expected 'min' or 'max'; hint: 'min' for a "
                "loss, 'max' for an accuracy"
            )
        self.metric = metric
        self.tracker = PlateauTracker(patience, min_delta, mode)

    def on_epoch_end(self, run: Run) -> None:
        t = self.tracker
        if t.update(run.progress.metric(self.metric, "EarlyStopping")):
            run.progress.stop = (
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
    change, a line per note and a one-line summary per epoch. ``fit()`` adds one
    (``progress=True``, the default); put a ``ProgressBar(...)`` in ``callbacks=`` to set it
    up, ``progress=False`` for none. Under ``torchrun`` only rank 0 prints.

    Without tqdm (an optional dependency: ``pip install 'freezeflow[progress]'``), or with
    ``tqdm=False``, it prints a plain line every ``every`` batches instead (default: about
    ten lines per epoch).

    Args:
        tqdm: use tqdm (``None``: when installed).
        every: batches between plain progress lines.
        file: where to write (default ``sys.stdout`` for lines; tqdm writes to stderr).

    Example:
        >>> import io, torch, freezeflow as ff
        >>> out = io.StringIO()
        >>> data = [(torch.randn(4, 3), torch.tensor([0, 1, 0, 1]))] * 2
        >>> bar = ff.callbacks.ProgressBar(tqdm=False, every=1, file=out)
        >>> _ = ff.fit(torch.nn.Linear(3, 2), data, epochs=1, callbacks=[bar], device="cpu")
        >>> print(out.getvalue().splitlines()[0])
        fit: Linear (8 parameters) on cpu, 1 epochs
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
                    raise MissingDependencyError(
                        "ProgressBar(tqdm=True) needs tqdm; hint: pip install "
                        "'freezeflow[progress]'"
                    ) from None
            else:
                self._tqdm = tqdm_cls
        self.every = (
            None
            if every is None
            else check_int("ProgressBar(every=)", every, 1, TrainingArgumentError)
        )
        self.file = file
        self._bar: Any = None
        self._start = 0.0
        self._seen = 0

    def _write(self, line: str) -> None:
        if self._bar is not None:
            self._bar.write(line, file=self.file or sys.stdout)
        else:
            print(line, file=self.file or sys.stdout, flush=True)

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def on_train_start(self, run: Run) -> None:
        p = run.progress
        params = sum(t.numel() for t in run.model.parameters())
        where = f", resuming at epoch {p.epoch} batch {p.batch}" if p.resumed else ""
        ranks = f" x {world_size()} processes (DDP)" if world_size() > 1 else ""
        self._write(
            f"fit: {type(run.model).__name__} ({_si(params)} parameters) on {run.device}"
            f"{ranks}, {run.epochs} epochs{where}"
        )

    def on_epoch_start(self, run: Run) -> None:
        p = run.progress
        self._start, self._seen = time.perf_counter(), 0
        if self._tqdm is not None:
            self._bar = self._tqdm(
                total=run.batches_per_epoch,
                initial=p.batch,
                desc=f"epoch {p.epoch} ({p.epoch + 1}/{run.epochs})",
                leave=False,
                dynamic_ncols=True,
            )

    def on_batch_end(self, run: Run) -> None:
        p = run.progress
        self._seen += p.batch_size
        rate = self._seen / max(time.perf_counter() - self._start, 1e-9)
        lr = max(g["lr"] for g in run.optimizer.param_groups)
        if self._bar is not None:
            self._bar.set_postfix_str(
                f"{run.stage_name} loss {p.loss:.4f} lr {lr:.2e} {_si(rate)} img/s", refresh=False
            )
            self._bar.update(1)
            return
        every = self.every or max(1, (run.batches_per_epoch or 100) // 10)
        if p.batch % every == 0:
            total = f"/{run.batches_per_epoch}" if run.batches_per_epoch else ""
            self._write(
                f"  epoch {p.epoch} batch {p.batch}{total} [{run.stage_name}] "
                f"loss {p.loss:.4f} lr {lr:.2e} {_si(rate)} img/s"
            )

    def on_note(self, run: Run, message: str) -> None:
        self._write(message)

    def on_stage_change(self, run: Run, transition: Transition) -> None:
        lrs = sorted(set(transition.lrs.values()))
        lr = f"{lrs[0]:.2e}" if len(lrs) == 1 else f"{lrs[0]:.2e}..{lrs[-1]:.2e}"
        earlier = run.progress.history.transitions[:-1]
        within = bool(earlier) and earlier[-1]["stage_index"] == transition.stage_index
        what = "" if within else " begins"  # within: e.g. ff.auto's refreeze
        self._write(
            f"stage {transition.name!r}{what} at epoch {transition.epoch}, step "
            f"{transition.step} ({transition.reason}): {_si(transition.n_trainable)} "
            f"trainable, lr {lr}"
        )

    def on_epoch_end(self, run: Run) -> None:
        self._close_bar()
        record = run.progress.history.epochs[-1]
        parts = [f"epoch {record['epoch']} ({record['epoch'] + 1}/{run.epochs})"]
        if record["stage"] is not None:
            parts.append(f"[{record['stage']}]")
        parts.append(f"train_loss {record['train_loss']:.4f}")
        if record["val_loss"] is not None:
            parts.append(f"val_loss {record['val_loss']:.4f}")
        parts += [f"{k} {v:.4f}" for k, v in record["metrics"].items()]
        parts.append(f"trainable {_si(record['n_trainable'])}")
        parts.append(f"{record['seconds']:.1f}s ({_si(record['images_per_s'])} img/s)")
        self._write(" ".join(parts))

    def on_train_end(self, run: Run) -> None:
        self._close_bar()
        p = run.progress
        if p.history.interrupted:
            self._write(f"interrupted in epoch {p.epoch} after {p.batch} batches")
        elif p.history.stop_reason:
            self._write(p.history.stop_reason)

    def on_teardown(self, run: Run) -> None:
        self._close_bar()  # a failed run leaves no bar behind
