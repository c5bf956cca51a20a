"""One rank of the 2-process gloo runs of test_integration_lightning.py (started as a
subprocess with MASTER_ADDR, MASTER_PORT, RANK, LOCAL_RANK and WORLD_SIZE set: Lightning then
takes the processes as launched externally and starts none itself).

Usage: python _lightning_ddp_worker.py OUT_DIR SCENARIO[,SCENARIO...]. Writes
OUT_DIR/rank<r>.pt: {scenario: result}.

Scenarios (a 3-stage schedule, an epoch trigger and a mid-epoch step trigger, different
data on each rank through Lightning's DistributedSampler):
- ddp: ``strategy="ddp"`` with FreezeflowCallback (it rebuilds the DDP wrapper over what
  trains at each stage change).
- find_unused: ``strategy="ddp_find_unused_parameters_true"`` with the rebuild switched off:
  the configuration freezeflow needed before, DDP built once over every parameter.
- resume: ``ddp`` resumed from its checkpoint at the end of epoch 1 (run after ``ddp``).

Each result holds, per optimizer step, the bytes DDP all-reduced (counted by a comm hook
registered on every DDP module the strategy holds) and the stage of that step; the model's
state after every step; the parameters trainable in each stage; and how many DDP modules ran.
"""

from __future__ import annotations

import os
from typing import Any

import lightning.pytorch as pl
import torch
from _two_ranks import counting_hook, serve
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import DDPStrategy
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, TensorDataset

import freezeflow as ff
import freezeflow.integrations.lightning as ffl

BATCHES_PER_RANK = 3
EPOCHS = 4


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Linear(6, 12), nn.BatchNorm1d(12), nn.ReLU(),
            nn.Linear(12, 12), nn.BatchNorm1d(12), nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.backbone(x))
        return out


class Lit(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)  # the same initial weights on every rank
        self.net = Net()

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


def schedule() -> ff.Schedule:
    return ff.Schedule(
        [
            ff.Stage("head", lr=0.05, name="head"),
            ff.Stage("backbone.3", lr=0.05, start=1, name="mid"),  # epoch 1
            ff.Stage("backbone.0", lr=0.05, start=ff.at_step(8), name="low"),  # mid-epoch 2
        ]
    )


def loader() -> DataLoader[Any]:
    g = torch.Generator().manual_seed(1)
    n = 2 * 8 * BATCHES_PER_RANK  # Lightning's DistributedSampler gives each rank half
    x = torch.randn(n, 6, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=8, shuffle=False)


class Recorder(pl.Callback):
    """Placed after FreezeflowCallback: sees each step after its stage change."""

    def __init__(self, cb: ffl.FreezeflowCallback) -> None:
        self.cb = cb
        self.hooked: list[DistributedDataParallel] = []
        self.step = -1
        self.bytes: dict[int, int] = {}
        self.stage: dict[int, int] = {}
        self.states: dict[int, dict[str, torch.Tensor]] = {}
        self.trainable: dict[int, list[str]] = {}

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, idx: int) -> None:
        ddp = trainer.strategy.model
        assert isinstance(ddp, DistributedDataParallel), type(ddp)
        if not any(ddp is d for d in self.hooked):
            ddp.register_comm_hook(self, counting_hook)
            self.hooked.append(ddp)
        self.step = trainer.global_step
        self.bytes[self.step] = 0
        uf = self.cb.unfreezer
        assert uf is not None
        self.stage[self.step] = uf.stage_index
        self.trainable[uf.stage_index] = sorted(
            n for n, p in pl_module.net.named_parameters() if p.requires_grad
        )

    def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
        self.states[self.step] = {
            k: v.detach().clone() for k, v in pl_module.net.state_dict().items()
        }


def run(out_dir: str, scenario: str) -> dict[str, Any]:
    lit = Lit()
    initial = {k: v.detach().clone() for k, v in lit.net.state_dict().items()}
    cb = ffl.FreezeflowCallback(schedule(), module_attr="net")
    rec = Recorder(cb)
    strategy: Any = DDPStrategy(process_group_backend="gloo")
    if scenario == "find_unused":
        strategy = DDPStrategy(process_group_backend="gloo", find_unused_parameters=True)
    callbacks: list[Any] = [cb, rec]
    if scenario == "ddp":  # a checkpoint at the end of every epoch, for "resume"
        callbacks.append(ModelCheckpoint(dirpath=out_dir, filename="{epoch}", save_top_k=-1))
    trainer = pl.Trainer(
        accelerator="cpu", devices=2, strategy=strategy, max_epochs=EPOCHS,
        callbacks=callbacks, enable_progress_bar=False, enable_model_summary=False,
        logger=False, enable_checkpointing=scenario == "ddp", default_root_dir=out_dir,
        num_sanity_val_steps=0, deterministic=True,
    )  # fmt: skip
    # resume: from the end of epoch 1 (stage 1; stage 2 starts mid-epoch 2)
    ckpt = os.path.join(out_dir, "epoch=1.ckpt") if scenario == "resume" else None
    trainer.fit(lit, loader(), ckpt_path=ckpt)
    assert cb.unfreezer is not None
    return {
        "initial": initial,
        "bytes": rec.bytes,
        "stage": rec.stage,
        "states": rec.states,
        "trainable": rec.trainable,
        "ddp_modules": len(rec.hooked),
        "history": [(t.name, t.epoch, t.step) for t in cb.unfreezer.history],
        "numel": {n: p.numel() for n, p in lit.net.named_parameters()},
    }


def run_scenario(out_dir: str, name: str) -> dict[str, Any]:
    """:func:`run`; the find-unused configuration runs with freezeflow's DDP rebuild switched
    off (what freezeflow did before)."""
    rebuild = getattr(ffl, "_rebuild_ddp", None)  # None before freezeflow rebuilt DDP
    if name == "find_unused" and rebuild is not None:
        ffl._rebuild_ddp = lambda strategy: None
    try:
        return run(out_dir, name)
    finally:
        if rebuild is not None:
            ffl._rebuild_ddp = rebuild


if __name__ == "__main__":
    serve(run_scenario)
