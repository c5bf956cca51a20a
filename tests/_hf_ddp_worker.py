"""One rank of the 2-process gloo runs of test_integration_transformers.py (started as a
subprocess with MASTER_ADDR, MASTER_PORT, RANK, LOCAL_RANK and WORLD_SIZE set, as torchrun
would: the Trainer then trains with DDP on CPU).

Usage: python _hf_ddp_worker.py OUT_DIR SCENARIO[,SCENARIO...]. Writes OUT_DIR/rank<r>.pt:
{scenario: result}.

Scenarios (a tiny random BERT, a 3-stage schedule with an epoch trigger and a mid-epoch step
trigger, different data on each rank through the Trainer's DistributedSampler):
- ff: FreezeflowTrainer, which trains through a DDP module rebuilt at every stage change.
- once: the same with that rebuild switched off: the Trainer's DDP module, built once after
  the first stage froze the model (what freezeflow did before); the transition check finds
  the new gradients differ between the ranks and stops the first step after the change.
- find_unused: the rebuild switched off and every parameter trainable while the Trainer
  builds DDP (find_unused_parameters=True, the Trainer's default for a PreTrainedModel); the
  first stage freezes the model afterwards.
- plain: a plain Trainer with FreezeflowTrainerCallback: refused under DDP.
- resume: ff resumed on both ranks from its checkpoint at the end of epoch 1 (after ff).
- accumulate: ff with 2 micro-batches of half the size per optimizer step (the Trainer's
  no_sync() for the first one).

Each result holds, per optimizer step, the bytes DDP all-reduced (a comm hook on every DDP
module that trains) and the stage of that step; the parameters after every step; the
parameters trainable in each stage.
"""

from __future__ import annotations

import inspect
import os
from typing import Any

import torch
import transformers
from _two_ranks import counting_hook, serve
from torch.nn.parallel import DistributedDataParallel

import freezeflow as ff
from freezeflow.integrations.transformers import FreezeflowTrainer, FreezeflowTrainerCallback

STEPS_PER_EPOCH = 2
EPOCHS = 4
BATCH = 4


def bert() -> Any:
    cfg = transformers.BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=8,
        num_labels=2,  # type: ignore[call-arg]  # a PretrainedConfig keyword
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    torch.manual_seed(0)  # the same initial weights on every rank
    return transformers.BertForSequenceClassification(cfg)


class Data(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    def __init__(self) -> None:
        n = 2 * BATCH * STEPS_PER_EPOCH  # the DistributedSampler gives each rank half
        g = torch.Generator().manual_seed(0)
        self.x = torch.randint(0, 50, (n, 8), generator=g)
        self.y = torch.randint(0, 2, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.x[i], "labels": self.y[i]}


def schedule() -> ff.Schedule:
    return ff.Schedule(
        [
            ff.Stage(["classifier", "bert.pooler"], lr=1e-2, name="head"),
            ff.Stage("bert.encoder.layer.1", lr=1e-2, start=1, name="top"),  # epoch 1
            ff.Stage("bert.encoder.layer.0", lr=1e-2, start=ff.at_step(5), name="low"),
        ]
    )


def arguments(out_dir: str, scenario: str) -> Any:
    accumulate = 2 if scenario == "accumulate" else 1  # same batches per optimizer step
    return transformers.TrainingArguments(
        output_dir=out_dir, num_train_epochs=EPOCHS,
        per_device_train_batch_size=BATCH // accumulate,
        gradient_accumulation_steps=accumulate,
        learning_rate=0.5, lr_scheduler_type="constant", report_to=[], use_cpu=True,
        save_strategy="epoch" if scenario == "ff" else "no", logging_strategy="no",
        disable_tqdm=True, seed=0, dataloader_num_workers=0, ddp_backend="gloo",
    )  # fmt: skip


class Recorder(transformers.TrainerCallback):
    def __init__(self) -> None:
        self.trainer: Any = None
        self.rebuilds = False
        self.hooked: list[DistributedDataParallel] = []
        self.step = -1
        self.bytes: dict[int, int] = {}
        self.stage: dict[int, int] = {}
        self.states: dict[int, dict[str, torch.Tensor]] = {}
        self.trainable: dict[int, list[str]] = {}

    def hook(self, ddp: DistributedDataParallel) -> None:
        if not any(ddp is d for d in self.hooked):
            ddp.register_comm_hook(self, counting_hook)
            self.hooked.append(ddp)

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if not self.rebuilds:  # the Trainer's own DDP module trains
            self.hook(self.trainer.model_wrapped)

    def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        uf = self.trainer.freezeflow_callback().unfreezer
        self.step = state.global_step
        self.bytes[self.step] = 0
        self.stage[self.step] = uf.stage_index
        self.trainable[uf.stage_index] = sorted(
            n for n, p in kw["model"].named_parameters() if p.requires_grad
        )

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.states[self.step] = {n: p.detach().clone() for n, p in kw["model"].named_parameters()}


class Once(FreezeflowTrainer):
    """The rebuild switched off: the Trainer's own DDP module trains."""

    def training_step(self, model: Any, inputs: Any, num_items_in_batch: Any = None) -> Any:
        return transformers.Trainer.training_step(self, model, inputs, num_items_in_batch)


class FindUnused(Once):
    """The Trainer builds DDP while every parameter is trainable (the first stage's state
    is applied at on_train_begin, after the wrap)."""

    def create_optimizer(self, model: Any = None) -> Any:
        opt = super().create_optimizer(model)
        cb = self.freezeflow_callback()
        assert cb.unfreezer is not None
        cb._pending = cb.unfreezer.state_dict()  # the first stage, applied in on_train_begin
        for p in cb.unfreezer.model.parameters():
            p.requires_grad_(True)
        return opt


def run(out_dir: str, scenario: str) -> dict[str, Any]:
    model = bert()
    rec = Recorder()
    common: dict[str, Any] = {
        "model": model, "args": arguments(os.path.join(out_dir, scenario), scenario),
        "train_dataset": Data(),
        "callbacks": [rec],
    }  # fmt: skip
    if scenario == "plain":
        cb = FreezeflowTrainerCallback(schedule())
        opt = cb.create_optimizer(model, common["args"])
        common["callbacks"] = [cb]
        trainer = transformers.Trainer(optimizers=(opt, None), **common)
        try:
            trainer.train()
        except ff.errors.TrainingError as exc:
            return {"error": str(exc)}
        return {"error": None}
    cls: Any = {"once": Once, "find_unused": FindUnused}.get(scenario, FreezeflowTrainer)
    # before freezeflow rebuilt DDP, FreezeflowTrainer had no on_ddp_wrap
    rebuilds = "on_ddp_wrap" in inspect.signature(cls).parameters
    rec.rebuilds = rebuilds and cls is FreezeflowTrainer
    if rec.rebuilds:
        common["on_ddp_wrap"] = rec.hook
    trainer = cls(schedule=schedule(), **common)
    rec.trainer = trainer
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    # resume: from ff's checkpoint at the end of epoch 1 (stage 1; stage 2 starts at step 5)
    ckpt = f"checkpoint-{2 * STEPS_PER_EPOCH}"
    error = None
    try:
        trainer.train(os.path.join(out_dir, "ff", ckpt) if scenario == "resume" else None)
    except ff.errors.DistributedError as exc:  # "once": the first step after a change
        error = str(exc)
    uf = trainer.freezeflow_callback().unfreezer
    return {
        "error": error,
        "initial": initial,
        "bytes": rec.bytes,
        "stage": rec.stage,
        "states": rec.states,
        "trainable": rec.trainable,
        "ddp_modules": len(rec.hooked),
        "history": [(t.name, t.epoch, t.step) for t in uf.history],
        "numel": {n: p.numel() for n, p in model.named_parameters()},
    }


if __name__ == "__main__":
    serve(run)
