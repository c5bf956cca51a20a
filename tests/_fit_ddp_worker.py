"""One rank of the 2-process gloo runs of test_fit_ddp.py (started as a subprocess).

Usage: python _fit_ddp_worker.py OUT_DIR  with MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE
set. Runs every scenario below in one process group and writes OUT_DIR/rank<r>.pt:
{scenario: result}. Both ranks share OUT_DIR (checkpoint directories live there).

Scenarios:
- staged: fit() with a 3-stage schedule (a mid-epoch step trigger, an epoch trigger),
  ReduceLROnPlateau, EarlyStopping, a checkpoint directory and the ProgressBar, over DataLoaders
  that fit shards itself (75 training samples: DistributedSampler pads; 37 validation
  samples: split without padding).
- resume: the same run stopped after 2 epochs, then resumed from its checkpoint directory
  by a new fit() on every rank up to 3 epochs (must equal staged bit for bit).
- plain: no schedule (plain DDP), a user-given DistributedSampler (set_epoch recorded),
  fit(cache=True) (turned off with a note), progress=False.
- uneven: a list of batches per rank, 3 on rank 0 and 4 on rank 1; fit must raise on both.
"""

from __future__ import annotations

import os
import sys
import traceback
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.optim.lr_scheduler import ReduceLROnPlateau
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import freezeflow as ff
import freezeflow.training.checkpoint_files as files
from freezeflow.distributed import DistributedError
from freezeflow.training.loop import fit
from freezeflow.training.run import Callback, Run
from freezeflow.training.setup import seed_everything

N_TRAIN, N_VAL, BATCH = 75, 37, 8


class Net(nn.Module):
    """stem (linear + BatchNorm) -> body (linear + BatchNorm) -> head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU())
        self.body = nn.Sequential(nn.Linear(16, 16), nn.BatchNorm1d(16), nn.ReLU())
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.stem(x)))  # type: ignore[no-any-return]


def make_net() -> Net:
    torch.manual_seed(0)  # the same initial weights on every rank
    return Net()


def dataset(n: int, seed: int) -> TensorDataset:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=gen)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    return TensorDataset(x, y)


def schedule() -> ff.Schedule:
    return ff.Schedule(
        [
            ff.Stage("head", lr=0.05, name="head"),
            ff.Stage(["body"], lr=0.05, start=ff.at_step(4), name="body"),  # mid-epoch 0
            ff.Stage(ff.everything(), lr=0.02, start=ff.at_epoch(2), name="all"),
        ]
    )


class Recorder(Callback):
    """This rank's own view: local loss sums per epoch, what on_evaluate saw, notes."""

    def __init__(self) -> None:
        self.local: list[tuple[float, int]] = []
        self.logs: list[dict[str, float]] = []
        self.notes: list[str] = []

    def on_epoch_start(self, run: Run) -> None:
        self.local.append((0.0, 0))

    def on_batch_end(self, run: Run) -> None:
        s, n = self.local[-1]
        p = run.progress
        self.local[-1] = (s + p.loss * p.batch_size, n + p.batch_size)

    def on_evaluate(self, run: Run, logs: dict[str, float]) -> None:
        self.logs.append(dict(logs))

    def on_note(self, run: Run, message: str) -> None:
        self.notes.append(message)


WRITES = {"files": 0}


def _count_writes() -> None:
    """Count every file the checkpoint modules write on this rank (checkpoints + manifest)."""
    original = files.atomic_write

    def counting(path: Path, write: Any) -> None:
        WRITES["files"] += 1
        original(path, write)

    files.atomic_write = counting


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def staged_fit(out: Path, directory: str, epochs: int, resume: bool = False) -> dict[str, Any]:
    model = make_net()
    initial = state(model)
    train = DataLoader(dataset(N_TRAIN, 1), batch_size=BATCH, shuffle=True)
    val = DataLoader(dataset(N_VAL, 2), batch_size=BATCH)
    rec = Recorder()
    before = WRITES["files"]
    seed_everything(0)
    history = fit(
        model,
        train,
        val_data=val,
        epochs=epochs,
        schedule=schedule(),
        scheduler=lambda opt: ReduceLROnPlateau(opt, patience=0, factor=0.5),
        callbacks=[
            rec,
            ff.callbacks.EarlyStopping("val_loss", patience=5),
            ff.Checkpoint(out / directory, keep_best="val_accuracy", resume=resume),
        ],
        device="cpu",
    )
    return {
        "initial": initial,
        "final": state(model),
        "history": history.to_dicts(),
        "local": rec.local,
        "logs": rec.logs,
        "writes": WRITES["files"] - before,
        "files": sorted(p.name for p in (out / directory).iterdir()),
        "checkpoint": ff.load_checkpoint(out / directory / f"epoch-{epochs:04d}.pt")["model"],
    }


class RecordingSampler(DistributedSampler[Any]):
    epochs: list[int]

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)
        super().set_epoch(epoch)


def scenario_plain() -> dict[str, Any]:
    model = make_net()
    data = dataset(N_TRAIN, 3)
    sampler = RecordingSampler(data, shuffle=True, seed=5, drop_last=True)
    sampler.epochs = []
    rec = Recorder()
    history = fit(
        model,
        DataLoader(data, batch_size=BATCH, sampler=sampler),
        epochs=2,
        optimizer=lambda params: torch.optim.SGD(params, lr=0.1),
        callbacks=[rec, ff.callbacks.FeatureCaching()],
        progress=False,
        device="cpu",
    )
    return {
        "final": state(model),
        "history": history.to_dicts(),
        "set_epoch": list(sampler.epochs),
        "notes": rec.notes,
    }


def scenario_uneven() -> str:
    x, y = dataset(32, 4).tensors
    batches = [(x[i : i + 8], y[i : i + 8]) for i in range(0, 8 * (3 + dist.get_rank()), 8)]
    try:
        fit(make_net(), batches, epochs=1, progress=False, device="cpu")
    except DistributedError as exc:
        return str(exc)
    return "no error"


def main() -> None:
    out = Path(sys.argv[1])
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    _count_writes()
    results: dict[str, Any] = {}
    try:
        results["staged"] = staged_fit(out, "staged", epochs=3)
        dist.barrier()
        staged_fit(out, "resume", epochs=2)
        results["resume"] = staged_fit(out, "resume", epochs=3, resume=True)
        dist.barrier()
        results["plain"] = scenario_plain()
        results["uneven"] = scenario_uneven()
    except Exception:
        results["crash"] = traceback.format_exc()
        print(results["crash"], file=sys.stderr)
    finally:
        torch.save(results, out / f"rank{dist.get_rank()}.pt")
        dist.destroy_process_group()
    # gloo in this torch sometimes aborts at interpreter exit ("terminate called without an
    # active exception") even after destroy_process_group(); skip the teardown
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1 if "crash" in results else 0)


if __name__ == "__main__":
    main()
