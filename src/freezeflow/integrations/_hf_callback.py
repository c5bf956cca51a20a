"""The Hugging Face ``Trainer`` callback behind :mod:`freezeflow.integrations.transformers`:
:class:`FreezeflowTrainerCallback` builds the optimizer's groups, applies the stage changes,
feeds plateau triggers, measures for ``ff.auto`` and saves the schedule's state beside each
checkpoint. Import it from :mod:`freezeflow.integrations.transformers`, which documents why
the Trainer needs both it and :class:`~freezeflow.integrations.transformers.FreezeflowTrainer`.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from freezeflow.core.freezing import NormMode
from freezeflow.core.policy import PolicyLike
from freezeflow.errors import (
    CheckpointError,
    FreezeflowWarning,
    MissingDependencyError,
    OptimizerError,
    OptimizerTypeError,
    StateError,
    TrainingError,
    TrainingTypeError,
)
from freezeflow.integrations._common import MissingMetric, StrictMetric
from freezeflow.schedules.schedule import Schedule, Stage
from freezeflow.training.batch import to_device
from freezeflow.training.probe import probe_over
from freezeflow.unfreezer.gradual import GradualUnfreezer
from freezeflow.unfreezer.planner import Probe

try:
    from transformers import (
        PreTrainedModel,
        Trainer,
        TrainerCallback,
        TrainerControl,
        TrainerState,
        TrainingArguments,
    )
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise MissingDependencyError(
        "freezeflow.integrations.transformers needs transformers (>= 4.46) and accelerate; "
        "hint: pip install 'freezeflow[transformers]'"
    ) from exc

__all__ = ["STATE_NAME", "FreezeflowTrainerCallback"]

STATE_NAME = "freezeflow_state.json"
"""File the callback writes into each checkpoint folder."""

_UNSUPPORTED_KWARGS = ("params", "model", "optimizer_dict")


def _engine(args: TrainingArguments) -> str | None:
    """The engine named by ``args`` that builds its optimizer once and never looks at
    ``requires_grad`` again (``"DeepSpeed"``, ``"FSDP"``), or None."""
    if getattr(args, "deepspeed", None) or getattr(args, "deepspeed_plugin", None):
        return "DeepSpeed"
    if getattr(args, "fsdp", None):
        return "FSDP"
    return None


def freezing_for(args: TrainingArguments, freezing: str) -> Literal["hard", "soft"]:
    """The freezing mode for a run with ``args``: ``"soft"`` under an engine that builds its
    optimizer once (``"auto"`` picks it), ``"hard"`` otherwise; ``"hard"`` under such an
    engine is refused before anything changes."""
    engine = _engine(args)
    if freezing == "hard" and engine is not None:
        raise OptimizerError(
            f"freezing='hard' under {engine}: {engine} builds its optimizer (flat parameter "
            "groups) once, from the parameters trainable at the start, and never looks at "
            "requires_grad again, so layers unfrozen later would never train; expected "
            "freezing='soft' (frozen parameters keep requiring gradients, but their gradients "
            "are dropped and their LR is 0); hint: freezing='soft', or leave freezing out"
        )
    if freezing == "soft" or (freezing == "auto" and engine is not None):
        return "soft"
    return "hard"


def _is_factory(cls: Any) -> bool:
    try:
        from transformers.trainer_optimizer import is_optimizer_factory
    except ImportError:  # pragma: no cover - older transformers have no factories
        return False
    return bool(is_optimizer_factory(cls))


def _trainer_step(folder: Path) -> int | None:
    """The ``global_step`` in ``folder``'s ``trainer_state.json``, or None without one."""
    try:
        step = json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    value = step.get("global_step") if isinstance(step, dict) else None
    return value if isinstance(value, int) else None


class FreezeflowTrainerCallback(StrictMetric, TrainerCallback):
    """Run a freezeflow schedule in a Hugging Face ``Trainer``.

    Use it with :class:`FreezeflowTrainer` (or pass
    ``optimizers=(callback.create_optimizer(model, args), None)`` to a plain ``Trainer``):
    the Trainer's own optimizer would leave out every parameter frozen when training starts.

    Args:
        schedule: a :class:`~freezeflow.Schedule` or a list of :class:`~freezeflow.Stage`.
            Stage LRs replace ``TrainingArguments.learning_rate``; the Trainer's LR scheduler
            multiplies them by its factor (warmup, decay). When the first stage sets no
            ``weight_decay``, ``TrainingArguments.weight_decay`` is used (never on biases and
            norm layers).
        norm: norm mode for frozen norm layers (see :func:`freezeflow.freeze`).
        freezing: ``"auto"`` (default): ``"soft"`` when ``TrainingArguments`` turn on DeepSpeed
            or FSDP, engines that build their optimizer once and never look at
            ``requires_grad`` again (:mod:`freezeflow.unfreezer.soft`), else ``"hard"``;
            ``"hard"`` under them is refused.
        no_decay: parameters that get no weight decay (default: ``ndim <= 1`` and norm
            layers, as the Trainer's own ``get_decay_parameter_names`` does for BERT-likes).
        strict: raise when a plateau trigger's metric is missing from the evaluation metrics
            (else warn once and wait).

    Attributes:
        unfreezer: the :class:`~freezeflow.GradualUnfreezer`, once the optimizer is built.
        missing_metric: what happens when the metric a plateau trigger waits for is not
            logged (raise with ``strict``, else warn once); ``strict`` reads and sets it.

    Plateau triggers read the metric ``on_plateau(metric=...)`` names from the evaluation
    metrics; the Trainer prefixes them with ``eval_``, so ``"eval_loss"``, ``"loss"`` and the
    default ``"val_loss"`` all find ``eval_loss``.
    """

    def __init__(
        self,
        schedule: Schedule | Sequence[Stage],
        *,
        norm: NormMode = "eval",
        no_decay: PolicyLike | None = None,
        strict: bool = True,
        freezing: Literal["auto", "hard", "soft"] = "auto",
    ) -> None:
        if freezing not in ("auto", "hard", "soft"):
            raise OptimizerError(
                f"FreezeflowTrainerCallback(freezing={freezing!r}): expected 'auto', 'hard' or "
                "'soft'; hint: leave it out ('auto': soft under DeepSpeed or FSDP, else hard)"
            )
        self.schedule = schedule if isinstance(schedule, Schedule) else Schedule(schedule)
        self.freezing = freezing
        self.norm: NormMode = norm
        self.no_decay = no_decay
        self.missing_metric = MissingMetric(strict)
        self.unfreezer: GradualUnfreezer | None = None
        self._pending: dict[str, Any] | None = None
        self._resumed = False
        self._training = False
        self._rewraps_ddp = False  # set by FreezeflowTrainer, which rebuilds DDP per stage

    # ------------------------------------------------------------------ optimizer
    def create_optimizer(
        self,
        model: nn.Module,
        args: TrainingArguments,
        optimizer_cls_and_kwargs: tuple[Any, dict[str, Any]] | None = None,
        *,
        total_steps: int | None = None,
    ) -> Optimizer:
        """Freeze ``model`` for the first stage and build the Trainer's optimizer over every
        parameter any stage trains, one param group per stage.

        The optimizer class and its arguments (betas, eps, ...) come from ``args.optim`` as
        the Trainer would choose them, or from ``optimizer_cls_and_kwargs``.

        Raises:
            OptimizerError: ``args.optim`` names an optimizer that does not take param groups.
        """
        if optimizer_cls_and_kwargs is None:
            pretrained = model if isinstance(model, PreTrainedModel) else None
            optimizer_cls_and_kwargs = Trainer.get_optimizer_cls_and_kwargs(args, pretrained)
        cls, kwargs = optimizer_cls_and_kwargs
        kwargs = dict(kwargs)
        if _is_factory(cls) or any(k in kwargs for k in _UNSUPPORTED_KWARGS):
            raise OptimizerError(
                f"optim={args.optim!r} builds its optimizer from the model, not from param "
                "groups, so freezeflow cannot give it one group per stage; hint: use an "
                "optimizer such as 'adamw_torch'"
            )

        def factory(groups: list[dict[str, Any]]) -> Optimizer:
            built = cls(groups, **kwargs)
            if not isinstance(built, Optimizer):
                raise OptimizerTypeError(
                    f"{cls!r} built {built!r} of type {type(built).__name__}, not a "
                    "torch.optim.Optimizer; hint: use an optimizer such as 'adamw_torch'"
                )
            return built

        schedule = self.schedule
        freezing = freezing_for(args, self.freezing)
        # TrainingArguments.weight_decay (0.0 included) is the optimizer's own, which decay
        # groups get while no stage sets one
        kwargs["weight_decay"] = float(args.weight_decay)
        needs_length = schedule.uses_run_length
        epochs = args.num_train_epochs
        self.unfreezer = GradualUnfreezer(
            model,
            schedule,
            factory,
            norm=self.norm,
            no_decay=self.no_decay,
            freezing=freezing,
            total_steps=total_steps if needs_length and total_steps else None,
            total_epochs=(
                math.ceil(epochs)
                if needs_length and not total_steps and epochs and epochs > 0
                else None
            ),
        )
        return self.unfreezer.optimizer

    # ------------------------------------------------------------------ resume
    def resume_from(self, checkpoint: str | os.PathLike[str]) -> None:
        """Load the state saved in checkpoint folder ``checkpoint``; it is applied when
        training begins. :class:`FreezeflowTrainer` calls this for
        ``train(resume_from_checkpoint=...)``.

        Raises:
            CheckpointError: the folder holds no freezeflow state.
        """
        path = Path(checkpoint) / STATE_NAME
        if not path.is_file():
            raise CheckpointError(
                f"{str(checkpoint)!r} holds no {STATE_NAME}: it was not saved with "
                "FreezeflowTrainerCallback, so which layers were unfrozen is unknown"
            )
        state = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(state, dict):
            raise StateError(
                f"{str(path)!r} is not a freezeflow state: it holds a {type(state).__name__}, "
                "expected a JSON object; hint: resume from a checkpoint folder that "
                "FreezeflowTrainerCallback saved"
            )
        self._pending = state
        self._resumed = True

    @staticmethod
    def _resumed_folder(args: TrainingArguments, step: int) -> Path:
        """The checkpoint folder a plain ``Trainer`` resumed from at global step ``step``.

        The Trainer does not tell callbacks which folder ``train(resume_from_checkpoint=...)``
        named, so this looks where that folder can be known: ``args.resume_from_checkpoint``
        (the field the Hugging Face example scripts pass on to ``train()``), then
        ``output_dir/checkpoint-<step>`` (where ``on_save`` writes). A folder counts when it
        holds the freezeflow state and its ``trainer_state.json`` (if any) is at ``step``.

        Raises:
            CheckpointError: neither holds the state; the message names both places.
        """
        looked: list[str] = []
        candidates = [
            args.resume_from_checkpoint,
            Path(args.output_dir or ".") / f"checkpoint-{step}",
        ]
        for where in candidates:
            if not isinstance(where, (str, os.PathLike)) or str(where) in looked:
                continue
            looked.append(str(where))
            folder = Path(where)
            if (folder / STATE_NAME).is_file() and _trainer_step(folder) in (None, step):
                return folder
        raise CheckpointError(
            f"the Trainer resumed at global step {step}, but FreezeflowTrainerCallback found "
            f"no {STATE_NAME} of that step in {' or '.join(repr(w) for w in looked)}: a plain "
            "Trainer does not tell callbacks which folder train(resume_from_checkpoint=...) "
            "names, so a checkpoint outside output_dir cannot be found; expected the "
            f"checkpoint folder you resume from (it holds {STATE_NAME} when it was saved with "
            "this callback); hint: use FreezeflowTrainer (its train() passes the folder on), "
            "or call callback.resume_from(folder) before trainer.train(...), or set "
            "TrainingArguments(resume_from_checkpoint=folder)"
        )

    # ------------------------------------------------------------------ events
    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        uf = self.unfreezer
        inner: Any = kwargs.get("optimizer")
        # accelerate's wrapper, and under DeepSpeed the ZeRO optimizer, hold ours as .optimizer
        while uf is not None and inner is not uf.optimizer and hasattr(inner, "optimizer"):
            inner = inner.optimizer
        if uf is None or inner is not uf.optimizer:
            raise TrainingError(
                "the Trainer built its optimizer without freezeflow, from the parameters "
                "trainable at the start only, so layers unfrozen later would never train; "
                "hint: use freezeflow.integrations.transformers.FreezeflowTrainer, or pass "
                "optimizers=(callback.create_optimizer(model, args), None) to Trainer"
            )
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        if world > 1 and not self._rewraps_ddp:
            raise TrainingError(
                f"a plain Trainer under DDP (world size {world}) wraps the model in "
                "DistributedDataParallel once, after freezeflow froze it for the first stage: "
                "parameters unfrozen later would never be all-reduced and the ranks would "
                "drift apart without an error; expected FreezeflowTrainer, which rebuilds "
                "DDP over what trains at every stage change; hint: "
                "FreezeflowTrainer(..., schedule=...) instead of Trainer(..., callbacks=[...])"
            )
        scheduler = kwargs.get("lr_scheduler")
        if isinstance(scheduler, (LRScheduler, ReduceLROnPlateau)):
            uf.attach(scheduler)
        if uf.needs_probe:  # ff.auto measures the training loss on a few batches
            uf.set_probe(_probe(kwargs.get("train_dataloader"), uf.model))
        if self._pending is None and not self._resumed and state.global_step > 0:
            self.resume_from(self._resumed_folder(args, state.global_step))
        if self._pending is not None:
            uf.load_state_dict(self._pending)
        self._pending = None
        self._resumed = False
        self._training = True

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._training = False

    def on_epoch_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.unfreezer is not None:
            # state.epoch is fractional (epochs done); the Trainer sets it to e + 1 exactly at
            # the end of epoch e, and to e + k / n when resuming mid-epoch
            self.unfreezer.on_epoch_start(math.floor((state.epoch or 0.0) + 1e-9))

    def on_epoch_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        uf = self.unfreezer
        if uf is not None and (why := uf.out_of_time()):
            control.should_training_stop = True  # ff.auto(minutes=...): the deadline
            if state.is_world_process_zero:
                print(f"freezeflow: stopping: {why}", flush=True)

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.unfreezer is not None:
            self.unfreezer.catch_up(state.global_step)

    def on_evaluate(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        uf = self.unfreezer
        name = None if uf is None or not self._training else uf.waiting_for
        if uf is None or name is None:
            return
        metrics: dict[str, Any] = kwargs.get("metrics") or {}
        keys = [name, f"eval_{name}"]
        if name.startswith("val_"):
            keys.append(f"eval_{name[4:]}")
        value = next((metrics[k] for k in keys if k in metrics), None)
        if value is None:
            self.missing_metric.report(
                f"the next stage waits for a plateau of {name!r}, but the evaluation metrics "
                f"are {sorted(metrics)}; hint: name one of them in on_plateau(metric=...)",
            )
            return
        uf.observe(float(value))

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        uf = self.unfreezer
        if uf is None or not state.is_world_process_zero:
            return
        folder = Path(args.output_dir or ".") / f"checkpoint-{state.global_step}"
        if not folder.is_dir():
            warnings.warn(
                f"freezeflow: no checkpoint folder {str(folder)!r} to save the schedule state "
                "in; resuming from this checkpoint will need callback.resume_from()",
                FreezeflowWarning,
                stacklevel=2,
            )
            return
        (folder / STATE_NAME).write_text(json.dumps(uf.state_dict(), indent=1), encoding="utf-8")


def _probe(loader: Any, model: nn.Module) -> Probe:
    """What an ``ff.auto`` schedule measures under the Trainer: batches of its training
    loader, and the loss the model returns for them (``labels`` in the batch)."""
    if loader is None:
        raise TrainingError(
            "ff.auto measures the training loss on a few batches, but the Trainer gave the "
            "callback no train_dataloader; hint: use FreezeflowTrainer"
        )

    def loss(net: nn.Module, batch: Any) -> torch.Tensor:
        out = net(**batch) if isinstance(batch, dict) else None
        value = getattr(out, "loss", None)
        if value is None:
            raise TrainingError(
                "ff.auto measures the training loss, but the model returned no loss for a "
                "training batch; expected batches with labels, as the Trainer trains on; hint: "
                "check that the training dataset has a labels column"
            )
        if not isinstance(value, torch.Tensor):
            raise TrainingTypeError(
                f"ff.auto measures the training loss, but the model's loss is {value!r} of "
                f"type {type(value).__name__}; expected a tensor; hint: the model's output "
                "should hold loss as a tensor"
            )
        return value

    def move(batch: Any) -> Any:
        return to_device(batch, next(model.parameters()).device)

    return probe_over(lambda: loader, loss, move)
