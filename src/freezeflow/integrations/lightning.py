"""Lightning integration: a callback that runs a freezeflow schedule inside ``lightning.Trainer``.

:class:`FreezeflowCallback` does what :class:`~freezeflow.GradualUnfreezer` does in a plain
loop, at the matching Lightning hooks:

==========================  ================================================================
``on_fit_start``            freeze everything the first stage does not train; rebuild the
                            optimizer from ``configure_optimizers`` in place (same object)
                            with one param group per stage, and hand it the LR schedulers
                            from ``configure_optimizers``; restore the state from a
                            checkpoint when resuming
``on_train_epoch_start``    epoch triggers (``at_epoch``, plateau, fraction of epochs)
``on_train_batch_end``      step triggers (``at_step``, fraction of steps), counted in
                            optimizer steps (``trainer.global_step``)
``on_validation_end``       feed a plateau trigger from ``trainer.callback_metrics``
``state_dict``              the unfreezer's state, saved in every Lightning checkpoint
==========================  ================================================================

Why ``on_fit_start``: Lightning calls it after ``configure_optimizers`` and after callback
states are loaded from a checkpoint, but *before* the optimizer and LR scheduler states are
loaded. The param groups the callback creates are a pure function of the model and the
schedule, so on resume the optimizer has the same groups it had when the checkpoint was saved,
and Lightning's own optimizer restore then fills in moments and LRs. Lightning's
``BaseFinetuning`` instead freezes again in ``setup`` on resume and adds groups back later
(Lightning issue #21901); this callback restores ``requires_grad`` and the norm-layer modes
from the checkpoint.

DDP (``strategy="ddp"`` and the other :class:`~lightning.pytorch.strategies.DDPStrategy`
variants): Lightning wraps the model in ``DistributedDataParallel`` before ``on_fit_start``,
over every parameter. After freezing in ``on_fit_start``, after a restore, and at every stage
change, the callback checks that every rank agrees on what trains
(:func:`~freezeflow.distributed.verify_trainable`) and has the strategy build a new DDP wrapper
over the parameters that train now, as :func:`~freezeflow.distributed.wrap_ddp` does: frozen
parameters are never all-reduced and plain ``strategy="ddp"`` works (no
``find_unused_parameters``).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.lr_scheduler import LRScheduler

from freezeflow.core.freezing import NormMode
from freezeflow.core.policy import PolicyLike
from freezeflow.distributed.ddp import verify_trainable
from freezeflow.errors import (
    MissingDependencyError,
    OptimizerError,
    StateError,
    TrainingArgumentError,
    TrainingError,
    TrainingTypeError,
)
from freezeflow.integrations._common import MissingMetric, StrictMetric
from freezeflow.schedules.schedule import Schedule, Stage
from freezeflow.training.probe import probe_over
from freezeflow.unfreezer.gradual import GradualUnfreezer
from freezeflow.unfreezer.planner import Probe
from freezeflow.unfreezer.transition import Transition

try:
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import Callback
    from lightning.pytorch.strategies import DDPStrategy
    from lightning.pytorch.utilities import rank_zero_info
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise MissingDependencyError(
        "freezeflow.integrations.lightning needs Lightning (the `lightning` package, >= 2.2); "
        "hint: pip install 'freezeflow[lightning]'"
    ) from exc

__all__ = ["FreezeflowCallback"]

ModuleSelector = Callable[["pl.LightningModule"], nn.Module]


def _rebuild_ddp(strategy: DDPStrategy) -> None:
    """Drop ``strategy``'s DistributedDataParallel wrapper and have the strategy build a new
    one over the LightningModule's parameters that require grad now (none when nothing
    trains: the module is then left unwrapped, as DDP refuses such a module).

    The one place that relies on how Lightning's ``DDPStrategy`` holds its wrapper, each
    access checked by ``test_lightning_ddp_internals_freezeflow_relies_on``:

    - ``strategy.model``: the wrapper (a property with a setter); set to the plain
      ``strategy.lightning_module`` first, which is what ``configure_ddp`` wraps;
    - ``strategy.configure_ddp()``: wraps ``strategy.model`` with the strategy's own
      ``_setup_model`` (its DDP arguments and device ids) and registers its
      ``ddp_comm_hook`` again (``_register_ddp_hooks``, CUDA only);
    - ``strategy._pl_static_graph_delay_done`` (private): with manual optimization and
      ``static_graph=True`` the strategy flushes the first backward of a DDP module once;
      a new module needs that flush again.
    """
    module = strategy.lightning_module
    if module is None:  # pragma: no cover - only after teardown
        raise TrainingError(
            "the DDP strategy holds no LightningModule to wrap; expected one between setup and "
            "teardown; hint: this is a freezeflow bug if Trainer.fit raised it, please report it"
        )
    strategy.model = module  # the old wrapper goes (its reducer with it)
    if any(p.requires_grad for p in module.parameters()):
        strategy.configure_ddp()
    if hasattr(strategy, "_pl_static_graph_delay_done"):
        strategy._pl_static_graph_delay_done = False


class FreezeflowCallback(StrictMetric, Callback):
    """Run a freezeflow schedule in a ``lightning.Trainer``.

    Args:
        schedule: a :class:`~freezeflow.Schedule` or a list of :class:`~freezeflow.Stage`.
            Its stage LRs and weight decays replace those of the optimizer returned by
            ``configure_optimizers``; the other hyper-parameters (betas, momentum, eps) are
            kept.
        module_attr: which ``nn.Module`` the schedule's policies refer to. ``None`` (default):
            the LightningModule itself (names look like ``model.fc``); a string: an attribute
            path on it (``"model"``, ``"net.backbone"``); or a function
            ``LightningModule -> nn.Module``. The optimizer must hold only parameters of that
            module.
        norm: norm mode for frozen norm layers (see :func:`freezeflow.freeze`): ``"eval"``
            keeps frozen BatchNorm layers in inference mode so their running statistics do not
            drift.
        no_decay: parameters that get no weight decay (default: ``ndim <= 1`` and norm
            layers).
        strict: raise when a plateau trigger's metric is missing from
            ``trainer.callback_metrics`` after validation (else warn once and wait).
        verbose: print each stage change (rank zero only).

    Attributes:
        unfreezer: the :class:`~freezeflow.GradualUnfreezer`, from ``on_fit_start`` on.
        missing_metric: what happens when the metric a plateau trigger waits for is not
            logged (raise with ``strict``, else warn once); ``strict`` reads and sets it.

    The LR schedulers returned by ``configure_optimizers`` keep working: they are handed to
    the unfreezer (:meth:`~freezeflow.GradualUnfreezer.attach`), which extends them from the
    optimizer's single group to every group and rescales them at each stage change, so a group
    trains at ``stage.lr * lr_scale * f(t)`` where ``f`` is the scheduler's factor.

    Example:
        >>> import freezeflow as ff
        >>> from freezeflow.integrations.lightning import FreezeflowCallback
        >>> cb = FreezeflowCallback(
        ...     [ff.Stage("head", lr=1e-3), ff.Stage("backbone.2", lr=1e-4, start=1)],
        ...     module_attr="net",
        ... )
        >>> # lightning.Trainer(max_epochs=4, callbacks=[cb]).fit(lit_module)
    """

    def __init__(
        self,
        schedule: Schedule | Sequence[Stage],
        *,
        module_attr: str | ModuleSelector | None = None,
        norm: NormMode = "eval",
        no_decay: PolicyLike | None = None,
        strict: bool = True,
        verbose: bool = False,
    ) -> None:
        super().__init__()
        self.schedule = schedule if isinstance(schedule, Schedule) else Schedule(schedule)
        if module_attr is not None and not (isinstance(module_attr, str) or callable(module_attr)):
            raise TrainingTypeError(
                f"module_attr must be None, an attribute path or a function, got "
                f"{module_attr!r} of type {type(module_attr).__name__}; hint: "
                "module_attr='backbone' or module_attr=lambda m: m.backbone"
            )
        self.module_attr = module_attr
        self.norm: NormMode = norm
        self.no_decay = no_decay
        self.missing_metric = MissingMetric(strict)
        self.verbose = verbose
        self.unfreezer: GradualUnfreezer | None = None
        self._pending: dict[str, Any] | None = None
        self._ddp: DDPStrategy | None = None
        self._stage_lr: LRScheduler | None = None

    # ------------------------------------------------------------------ helpers
    def module(self, pl_module: pl.LightningModule) -> nn.Module:
        """The module the schedule applies to (see ``module_attr``)."""
        sel = self.module_attr
        if sel is None:
            module: object = pl_module
        elif isinstance(sel, str):
            try:
                module = operator.attrgetter(sel)(pl_module)
            except AttributeError as exc:
                raise TrainingArgumentError(
                    f"module_attr={sel!r}: {type(pl_module).__name__} has no attribute {sel!r}; "
                    "expected a dotted path to the module the schedule applies to; hint: "
                    "module_attr=None applies it to the LightningModule itself"
                ) from exc
        else:
            module = sel(pl_module)
        if not isinstance(module, nn.Module):
            raise TrainingTypeError(
                f"module_attr={sel!r} gave {module!r} of type {type(module).__name__}, "
                "not an nn.Module; hint: name the submodule whose layers the schedule selects"
            )
        return module

    def _run_length(self, trainer: pl.Trainer) -> tuple[int | None, int | None]:
        if not self.schedule.uses_run_length:
            return None, None
        steps: int | None = None
        epochs: int | None = None
        est = trainer.estimated_stepping_batches
        if isinstance(est, (int, float)) and math.isfinite(est) and est > 0:
            steps = int(est)
        if trainer.max_epochs is not None and trainer.max_epochs > 0:
            epochs = int(trainer.max_epochs)
        return steps, epochs

    def _report(self, transitions: list[Transition]) -> None:
        if self.verbose and self.unfreezer is not None:
            history = self.unfreezer.history
            for t in transitions:
                k = history.index(t)
                within = k > 0 and history[k - 1].stage_index == t.stage_index  # a refreeze
                rank_zero_info(
                    f"freezeflow: stage {t.stage_index} ({t.name!r})"
                    f"{'' if within else ' starts'} at epoch {t.epoch}, step {t.step} "
                    f"({t.reason}); {t.n_trainable:,} trainable values"
                )

    def _stop_if_out_of_time(self, trainer: pl.Trainer) -> None:
        """ff.auto(minutes=...): stop after the last epoch that fits the deadline."""
        uf = self.unfreezer
        if uf is not None and (why := uf.out_of_time()):
            trainer.should_stop = True
            if self.verbose:
                rank_zero_info(f"freezeflow: stopping: {why}")

    # ------------------------------------------------------------------ hooks
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        _refuse_engines(trainer.strategy)
        module = self.module(pl_module)
        optimizers = trainer.optimizers
        if len(optimizers) != 1:
            raise TrainingError(
                f"FreezeflowCallback needs exactly one optimizer from configure_optimizers, "
                f"got {len(optimizers)}; hint: return one optimizer (with its LR scheduler, "
                "if any): the unfreezer rebuilds its param groups stage by stage"
            )
        optimizer = optimizers[0]
        schedulers = [
            c.scheduler for c in trainer.lr_scheduler_configs if c.scheduler.optimizer is optimizer
        ]
        state = self._pending
        if state is None and self.unfreezer is not None and self.unfreezer.model is module:
            # fit() called again with the same callback and model: carry on, do not re-freeze
            state = self.unfreezer.state_dict()
        total_steps, total_epochs = self._run_length(trainer)
        try:
            uf = GradualUnfreezer(
                module,
                self.schedule,
                optimizer,
                scheduler=schedulers[0] if schedulers else None,
                norm=self.norm,
                no_decay=self.no_decay,
                total_steps=total_steps,
                total_epochs=total_epochs,
            )
        except OptimizerError as exc:
            raise OptimizerError(
                f"{exc}; note: with module_attr={self.module_attr!r} the schedule applies to "
                f"{type(module).__name__}, so configure_optimizers must build the optimizer "
                "over that module's parameters only"
            ) from exc
        for extra in schedulers[1:]:
            uf.attach(extra)
        if uf.needs_probe:  # ff.auto measures the training loss on a few batches
            uf.set_probe(_probe(trainer, pl_module))
        if state is not None:
            uf.load_state_dict(state)
        # the schedule's own LR curve (ff.auto's cosine) when configure_optimizers brings none
        self._stage_lr = None if schedulers else uf.lr_scheduler()
        self._pending = None
        self.unfreezer = uf
        strategy = trainer.strategy
        if isinstance(strategy, DDPStrategy) and isinstance(
            strategy.model, DistributedDataParallel
        ):
            # Lightning wrapped every parameter; wrap what trains now, and again at each stage
            self._ddp = strategy
            uf.add_listener(lambda t: self._rewrap(uf))
            self._rewrap(uf)
        self._report(uf.history[-1:] if state is None else [])

    def _rewrap(self, uf: GradualUnfreezer) -> None:
        """Check that every rank trains the same parameters, then rebuild the DDP wrapper
        over them (a collective: every rank gets here at the same stage change)."""
        strategy = self._ddp
        if strategy is None or uf is not self.unfreezer:
            return
        module = strategy.lightning_module
        if module is not None:
            verify_trainable(module, uf.stage_index, stage_names=uf.schedule.names)
        _rebuild_ddp(strategy)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._ddp = None  # Lightning unwraps the model; transitions after fit() do not re-wrap

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.unfreezer is not None:
            self._report(self.unfreezer.on_epoch_start(trainer.current_epoch))

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        uf = self.unfreezer
        if uf is not None:
            # trainer.global_step counts optimizer steps (not batches under accumulation)
            before = uf.global_step
            self._report(uf.catch_up(trainer.global_step))
            if (stage_lr := self._stage_lr) is not None:
                for _ in range(uf.global_step - before):
                    stage_lr.step()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stop_if_out_of_time(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        uf = self.unfreezer
        metric = None if uf is None or trainer.sanity_checking else uf.waiting_for
        if uf is None or metric is None:
            return
        value = trainer.callback_metrics.get(metric)
        if value is None:
            known = sorted(trainer.callback_metrics)
            self.missing_metric.report(
                f"the next stage waits for a plateau of {metric!r}, but it is not among "
                f"the logged metrics {known}; hint: self.log({metric!r}, ...) in "
                "validation_step, or name a logged metric in on_plateau(metric=...)",
            )
            return
        uf.observe(float(value))

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        if self.unfreezer is not None:
            return {"unfreezer": self.unfreezer.state_dict()}
        return {} if self._pending is None else {"unfreezer": self._pending}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = state_dict.get("unfreezer")
        if state is None:
            return
        if not isinstance(state, dict):
            raise StateError(
                f"not a FreezeflowCallback state: its 'unfreezer' is {state!r} of type "
                f"{type(state).__name__}, expected a dict; hint: resume from a checkpoint that "
                "FreezeflowCallback saved"
            )
        if self.unfreezer is not None:
            # strategies that restore callbacks after setup (e.g. DeepSpeed) land here
            self.unfreezer.load_state_dict(state)
        else:
            self._pending = state


ENGINES = {"DeepSpeedStrategy": "DeepSpeed", "FSDPStrategy": "FSDP"}
"""Lightning strategies (by class name, so that their packages need not be importable) that
set up their optimizer before any callback runs and never look at ``requires_grad`` again:
DeepSpeed's ZeRO flattens the param groups, FSDP1 flattens the parameters."""


def _refuse_engines(strategy: object) -> None:
    """Refuse, before anything changes, a strategy under which the callback cannot rebuild
    the optimizer's groups (:data:`ENGINES`)."""
    names = [cls.__name__ for cls in type(strategy).__mro__]
    engine = next((ENGINES[n] for n in names if n in ENGINES), None)
    if engine is None:
        return
    raise TrainingError(
        f"FreezeflowCallback under Lightning's {type(strategy).__name__}: {engine} sets up the "
        "optimizer (flattening its param groups) before any callback runs and never looks at "
        "requires_grad again, so the callback cannot give it one group per stage and layers "
        "unfrozen later would never train; expected a strategy that follows requires_grad "
        "(ddp, fsdp2 via ModelParallelStrategy, single device); hint: with DeepSpeed, build "
        "the unfreezer yourself in configure_optimizers, with soft freezing: "
        "self.unfreezer = ff.GradualUnfreezer(self, schedule, torch.optim.AdamW, "
        "freezing='soft'); return self.unfreezer.optimizer; and call "
        "self.unfreezer.on_epoch_start(self.current_epoch) in on_train_epoch_start and "
        "self.unfreezer.step() in on_train_batch_end"
    )


def _mute(*args: Any, **kwargs: Any) -> None:
    """Stands in for ``LightningModule.log`` while ``ff.auto`` measures."""


def _probe(trainer: pl.Trainer, pl_module: pl.LightningModule) -> Probe:
    """What an ``ff.auto`` schedule measures under Lightning: batches of the trainer's
    training loader, and the loss ``training_step`` returns (its logging muted)."""

    def loss(model: nn.Module, batch: Any) -> Tensor:
        saved = pl_module.__dict__.get("log"), pl_module.__dict__.get("log_dict")
        setattr(pl_module, "log", _mute)  # noqa: B010  (an instance attribute, removed below)
        setattr(pl_module, "log_dict", _mute)  # noqa: B010
        try:
            out = pl_module.training_step(batch, 0)
        finally:
            for name, value in zip(("log", "log_dict"), saved):
                if value is None:
                    pl_module.__dict__.pop(name, None)
                else:
                    setattr(pl_module, name, value)
        value = out.get("loss") if isinstance(out, Mapping) else out
        if value is None:
            raise TrainingError(
                f"ff.auto measures the training loss, but training_step returned {out!r}; "
                "expected the loss or a dict with 'loss'; hint: ff.auto needs automatic "
                "optimization, where training_step returns the loss"
            )
        if not isinstance(value, Tensor):
            raise TrainingTypeError(
                f"ff.auto measures the training loss, but training_step returned {out!r}, "
                f"whose loss is a {type(value).__name__}; expected a tensor; hint: return the "
                "loss tensor itself, not loss.item()"
            )
        return value

    def data() -> Any:
        return trainer.train_dataloader  # set up by the fit loop once training starts

    return probe_over(
        data,
        loss,
        lambda batch: trainer.strategy.batch_to_device(batch),
    )
