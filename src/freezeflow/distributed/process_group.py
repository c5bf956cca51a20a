"""Process-group helpers that are no-ops without ``torch.distributed``.

:func:`rank`, :func:`world_size`, :func:`all_reduce_mean`, :func:`barrier`... return the
single-process answer when no process group is initialised, so a training loop can call them
unconditionally.
"""

from __future__ import annotations

import os
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "all_gather_objects",
    "all_reduce_mean",
    "barrier",
    "broadcast_buffers",
    "collective_device",
    "is_distributed",
    "is_main_process",
    "local_rank",
    "rank",
    "world_size",
]

T = TypeVar("T", float, torch.Tensor)


def is_distributed() -> bool:
    """True when ``torch.distributed`` is available and a default process group exists."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's global rank (0 when not distributed)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of processes (1 when not distributed)."""
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    """Rank on this machine, from ``LOCAL_RANK`` (set by torchrun; 0 when unset)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main_process() -> bool:
    """True on rank 0, and always when not distributed (log, save checkpoints there)."""
    return rank() == 0


def barrier() -> None:
    """Wait for every rank (no-op when not distributed)."""
    if is_distributed():
        dist.barrier()


def collective_device(group: Any = None) -> torch.device:
    """Where tensors for a collective must live: the current CUDA device for NCCL, else CPU."""
    backend = str(dist.get_backend(group))
    if "nccl" in backend and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_mean(value: T) -> T:
    """Mean of ``value`` over all ranks (for metrics: loss, accuracy, a plateau metric).

    A float gives a float, a tensor a new tensor on its own device. Returns ``value``
    unchanged when not distributed. Every rank must call it (it is a collective).
    """
    if not is_distributed():
        return value
    if isinstance(value, torch.Tensor):
        t = value.detach().to(collective_device(), dtype=torch.float64, copy=True)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        out = (t / dist.get_world_size()).to(device=value.device)
        return out.to(value.dtype) if value.is_floating_point() else out
    t = torch.tensor([float(value)], dtype=torch.float64, device=collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item()) / dist.get_world_size()


def all_gather_objects(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` when not
    distributed). Pickles ``obj``: meant for a few numbers per epoch (metric sums), not
    tensors. A collective."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_buffers(model: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (BatchNorm running statistics...) into every rank's model.

    Under DDP each rank updates its buffers with its own batches after DDP's per-forward
    broadcast, so they differ slightly at the end of an epoch; call this before evaluating
    or saving so every rank holds the model that rank ``src`` checkpoints. A collective;
    no-op when not distributed.
    """
    if not is_distributed():
        return
    for buf in model.buffers():
        dist.broadcast(buf, src)
