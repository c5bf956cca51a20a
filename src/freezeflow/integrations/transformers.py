"""Hugging Face ``Trainer`` integration.

Why a Trainer subclass and not only a callback: ``Trainer.create_optimizer`` builds the
optimizer from the parameters that have ``requires_grad=True`` at that moment, and it runs
inside ``train()`` *before* the first callback event of the run (``on_train_begin``); the LR
scheduler is then built over that optimizer. A callback alone can therefore either leave the
model unfrozen when the optimizer is built (and then freeze it: harmless, but the schedule's
per-stage LRs and groups do not exist) or freeze it earlier (then parameters unfrozen later are
in no param group and never train, silently). Adding groups afterwards does not help either:
the Trainer's LR scheduler was built over the original groups and does not drive new ones.

So :class:`FreezeflowTrainer` overrides ``create_optimizer``: the optimizer gets every
parameter any stage will ever train, in one group per stage (built by
:class:`~freezeflow.GradualUnfreezer`), and the Trainer builds its LR scheduler over that
optimizer afterwards, so the scheduler (linear warmup/decay, cosine, ...) drives every group
from the first step to the last. :class:`FreezeflowTrainerCallback` then applies the stage
changes (``on_epoch_begin``, ``on_step_end``), feeds plateau triggers from ``on_evaluate``, and
saves the unfreezer's state next to each checkpoint (``freezeflow_state.json``) so that
``train(resume_from_checkpoint=...)`` restores which layers are trainable.

With a Trainer subclass of your own, put :class:`FreezeflowTrainer` first in its bases, or
build the optimizer yourself and pass it in:
``Trainer(..., optimizers=(callback.create_optimizer(model, args), None))``.

Under DDP (torchrun), the Trainer wraps the model in ``DistributedDataParallel`` once, after
the first stage froze it, so later stages would never be all-reduced; ``FreezeflowTrainer``
trains through a DDP module rebuilt at every stage change instead (see its docstring), and a
plain Trainer with the callback is refused.

Not supported: DeepSpeed and FSDP (they build or shard the optimizer themselves) and optimizer
factories (``optim`` values such as Muon or LOMO that do not take param groups).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Literal, cast

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim import Optimizer

from freezeflow.core.freezing import NormMode
from freezeflow.distributed.ddp import DDPWrapper, wrap_ddp
from freezeflow.errors import (
    MissingDependencyError,
    TrainingError,
    TrainingTypeError,
)
from freezeflow.schedules.schedule import Schedule, Stage

try:
    from transformers import Trainer
    from transformers.trainer_utils import get_last_checkpoint
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise MissingDependencyError(
        "freezeflow.integrations.transformers needs transformers (>= 4.46) and accelerate; "
        "hint: pip install 'freezeflow[transformers]'"
    ) from exc

from freezeflow.integrations._hf_callback import STATE_NAME, FreezeflowTrainerCallback

FreezeflowTrainerCallback.__module__ = __name__  # documented and pickled as public here

__all__ = ["STATE_NAME", "FreezeflowTrainer", "FreezeflowTrainerCallback"]


class FreezeflowTrainer(Trainer):
    """A ``transformers.Trainer`` whose optimizer holds every parameter any stage trains.

    Pass the schedule with ``schedule=`` (a :class:`FreezeflowTrainerCallback` is added), or
    add a :class:`FreezeflowTrainerCallback` to ``callbacks`` yourself; everything else is
    the Trainer's. It overrides ``create_optimizer`` (see the module docstring for why),
    ``train`` (to restore the schedule state on ``resume_from_checkpoint``) and, for DDP,
    ``training_step``.

    Under DDP (``torchrun``) the Trainer wraps the model in ``DistributedDataParallel`` once,
    after the optimizer is built (so after the first stage froze the model), and keeps that
    module in a local variable of its loop. ``training_step`` therefore runs the forward and
    backward through a module of freezeflow's instead (:attr:`freezeflow_ddp`, a
    :class:`~freezeflow.distributed.DDPWrapper` built with the Trainer's DDP arguments):
    rebuilt at every stage change after checking that all ranks agree on what trains, it
    all-reduces exactly the parameters that train, and never the frozen ones. The Trainer's
    own DDP module never runs a forward, so its reducer stays idle.

    Args:
        schedule: the schedule (a :class:`FreezeflowTrainerCallback` is added for it).
        norm: norm mode for frozen norm layers.
        freezing: ``"auto"`` (default): ``"soft"`` under DeepSpeed or FSDP (engines that build
            their optimizer once, see :mod:`freezeflow.unfreezer.soft`), else ``"hard"``.
        on_ddp_wrap: called with every DDP module freezeflow builds (e.g. to register a
            comm hook on each: hooks on the Trainer's own DDP module are never used).
    """

    def __init__(
        self,
        *args: Any,
        schedule: Schedule | Sequence[Stage] | None = None,
        norm: NormMode = "eval",
        freezing: Literal["auto", "hard", "soft"] = "auto",
        on_ddp_wrap: Callable[[DistributedDataParallel], None] | None = None,
        **kwargs: Any,
    ) -> None:
        if schedule is not None:
            kwargs["callbacks"] = [
                *(kwargs.get("callbacks") or []),
                FreezeflowTrainerCallback(schedule, norm=norm, freezing=freezing),
            ]
        self.on_ddp_wrap = on_ddp_wrap
        self.freezeflow_ddp: DDPWrapper | None = None
        """Under DDP, the wrapper training runs through (rebuilt at every stage change)."""
        super().__init__(*args, **kwargs)
        self.freezeflow_callback()._rewraps_ddp = True  # fails early when there is none

    def freezeflow_callback(self) -> FreezeflowTrainerCallback:
        """The :class:`FreezeflowTrainerCallback` of this Trainer."""
        found = [
            cb
            for cb in self.callback_handler.callbacks
            if isinstance(cb, FreezeflowTrainerCallback)
        ]
        if len(found) != 1:
            raise TrainingError(
                f"FreezeflowTrainer needs exactly one FreezeflowTrainerCallback, found "
                f"{len(found)}; hint: FreezeflowTrainer(..., schedule=my_schedule)"
            )
        return found[0]

    def create_optimizer(self, model: nn.Module | None = None) -> Optimizer:
        if self.optimizer is None:
            opt_model = self.model if model is None else model
            if not isinstance(opt_model, nn.Module):
                raise TrainingTypeError(
                    f"FreezeflowTrainer needs a model, got {opt_model!r} of type "
                    f"{type(opt_model).__name__}; hint: FreezeflowTrainer(model=..., ...)"
                )
            self.optimizer = self.freezeflow_callback().create_optimizer(
                opt_model,
                self.args,
                getattr(self, "optimizer_cls_and_kwargs", None),
                total_steps=int(self.state.max_steps) or None,
            )
        return self.optimizer

    def train(
        self,
        resume_from_checkpoint: str | bool | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        checkpoint: str | None = None
        if isinstance(resume_from_checkpoint, bool):
            if resume_from_checkpoint:
                last = cast("Callable[[str], str | None]", get_last_checkpoint)
                checkpoint = last(self.args.output_dir or ".")
        elif resume_from_checkpoint is not None:
            checkpoint = str(resume_from_checkpoint)
        if checkpoint is not None:
            self.freezeflow_callback().resume_from(checkpoint)
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def training_step(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor | Any],
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor:
        net = self._ddp_module(model)
        if net is model:
            return super().training_step(model, inputs, num_items_in_batch)
        # the Trainer's no_sync() (gradient accumulation) was entered on its own DDP module
        sync: AbstractContextManager[Any] = nullcontext()
        accumulating = not getattr(model, "require_backward_grad_sync", True)
        if accumulating and isinstance(net, DistributedDataParallel):
            sync = net.no_sync()
        with sync:
            return super().training_step(net, inputs, num_items_in_batch)

    def _ddp_module(self, model: nn.Module) -> nn.Module:
        """``model``, or under DDP the module of :attr:`freezeflow_ddp` (built at the first
        training step, after a resume has restored what trains)."""
        uf = self.freezeflow_callback().unfreezer
        if uf is None or not (dist.is_available() and dist.is_initialized()):
            return model
        if dist.get_world_size() == 1 or uf.freezing == "soft":
            return model  # soft freezing: the engine (DeepSpeed) reduces every gradient itself
        if not (isinstance(model, DistributedDataParallel) and model.module is uf.model):
            raise TrainingError(
                f"FreezeflowTrainer trains under DDP by rebuilding DistributedDataParallel "
                f"over the model at each stage change, but the Trainer wrapped the model in "
                f"{type(model).__name__}, not DistributedDataParallel over the model the "
                "schedule applies to; expected plain DDP (torchrun without DeepSpeed, FSDP or "
                "torch_compile); hint: leave those options out with FreezeflowTrainer under "
                "several processes"
            )
        wrapper = self.freezeflow_ddp
        if wrapper is None or wrapper.unfreezer is not uf:
            if wrapper is not None:
                wrapper.close()
            handler = self.accelerator.ddp_handler
            kwargs: dict[str, Any] = handler.to_kwargs() if handler is not None else {}
            if model.device_ids is not None:
                kwargs["device_ids"] = model.device_ids
                kwargs["output_device"] = model.output_device
            on_wrap = self.on_ddp_wrap

            def wrapped(ddp: DistributedDataParallel) -> None:
                if handler is not None:
                    handler.register_comm_hook(ddp)  # DistributedDataParallelKwargs(comm_hook=)
                if on_wrap is not None:
                    on_wrap(ddp)

            wrapper = self.freezeflow_ddp = wrap_ddp(uf.model, uf, on_wrap=wrapped, **kwargs)
        return wrapper.current()
