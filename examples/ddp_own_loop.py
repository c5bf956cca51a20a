"""Gradual unfreezing in your own DistributedDataParallel loop.

Run on CPU with 2 processes (gloo):

    torchrun --nproc_per_node 2 examples/ddp_own_loop.py

On GPUs, use ``--nproc_per_node <gpus>``: the script picks NCCL and ``cuda:<LOCAL_RANK>``.
The data is synthetic so the example needs nothing but torch.
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import freezeflow as ff
import freezeflow.distributed as ffd


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(self.stem(x)).mean(dim=(2, 3)))


def main() -> None:
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(minutes=5))
    device = torch.device("cuda", ffd.local_rank()) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)

    torch.manual_seed(0)  # same initial weights everywhere (DDP also broadcasts rank 0's)
    model = Net().to(device)

    # 1. the unfreezer first: it freezes the model and builds the param groups
    schedule = ff.Schedule(
        [
            ff.Stage("fc", lr=1e-2, name="head"),
            ff.Stage("body", lr=1e-3, start=1, name="body"),
            ff.Stage(ff.everything(), lr=1e-3, start=2, lr_decay=0.5, name="all"),
        ]
    )
    uf = ff.GradualUnfreezer(model, schedule, torch.optim.AdamW, total_epochs=3)

    # 2. then DDP, through freezeflow: re-wrapped (after a cross-rank check) at every stage
    net = ffd.wrap_ddp(model, uf, device_ids=[device.index] if cuda else None)

    # 3. a sampler that gives each rank its shard
    gen = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(256, 3, 16, 16, generator=gen), torch.randint(0, 10, (256,)))
    sampler = ffd.distributed_sampler(data, shuffle=True, seed=0)
    loader = DataLoader(data, batch_size=16, sampler=sampler, shuffle=sampler is None)

    for epoch in range(3):
        uf.on_epoch_start(epoch)  # may change stage: net re-wraps itself
        if sampler is not None:
            sampler.set_epoch(epoch)
        net.train()
        total = 0.0
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            uf.optimizer.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(net(x), y)
            loss.backward()
            uf.optimizer.step()
            uf.step()  # step triggers may change stage mid-epoch, on every rank alike
            total += loss.item()
        mean_loss = ffd.all_reduce_mean(total / len(loader))  # the same value on every rank
        uf.observe(mean_loss)  # plateau triggers must see a rank-independent metric
        if ffd.is_main_process():
            print(
                f"epoch {epoch} stage {uf.stage_name!r}: loss {mean_loss:.4f}, "
                f"{uf.n_trainable} trainable values, DDP builds {net.rebuilds}"
            )

    if ffd.is_main_process():
        path = os.environ.get("FREEZEFLOW_EXAMPLE_CKPT")
        if path:  # save the plain model, no "module." prefix
            torch.save({"model": net.state_dict(), "unfreezer": uf.state_dict()}, path)
    ffd.barrier()
    net.close()
    dist.destroy_process_group()
    # gloo can abort at interpreter exit ("terminate called without an active exception")
    # even after destroy_process_group(), with or without freezeflow; see
    # docs/distributed.md. Exiting here skips that teardown.
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
