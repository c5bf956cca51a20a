"""Every rank agrees on what trains. Under ``torch.distributed`` (a process group of world size
greater than one), an unfreezer with ``verify=True`` checks two things, each with one small
collective (an ``all_gather`` of a few numbers per rank):

- at every epoch start, after the stage changes it made: that every rank is in the same stage
  with the same trainable set (a hash of the trainable parameters' names), so ranks whose
  plateau triggers read different local metrics, or whose models differ, stop at once with
  the same error, instead of training different parameters;
- at the first optimizer step after a stage change, once the transition check
  (:mod:`freezeflow.unfreezer.verify`) found gradients: that the newly trainable parameters'
  gradients are the same on every rank (a sum and a sum of magnitudes). Gradients that DDP
  all-reduced are bitwise equal on every rank; a DistributedDataParallel wrapper built before
  the change (by the user, once, after the first stage froze the model) does not all-reduce
  the parameters it did not hold then, and the ranks would drift apart without an error.
  Sharded gradients (FSDP2's DTensors) are left out: each rank holds its own shard.

Every rank raises the same :class:`~freezeflow.errors.DistributedError`, since each compares
the same gathered numbers. Single-process runs pay nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import nn

from freezeflow.errors import DistributedError, quote_list

__all__ = ["check_same_stage", "check_synchronized", "distributed"]


def distributed() -> bool:
    """Whether a process group of world size greater than one is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _gather(values: list[float]) -> list[list[float]]:
    backend = str(dist.get_backend())
    device = (
        torch.device("cuda", torch.cuda.current_device())
        if backend == "nccl"
        else torch.device("cpu")
    )
    mine = torch.tensor(values, dtype=torch.float64, device=device)
    out = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(out, mine)
    return [[float(v) for v in t.tolist()] for t in out]


def agreed_seconds(seconds: float) -> float:
    """The largest of every rank's ``seconds``, the same on every rank (a collective), so
    that time-capped decisions agree; ``seconds`` itself outside torch.distributed."""
    if not distributed():
        return seconds
    return max(row[0] for row in _gather([seconds]))


def names_hash(names: Sequence[str]) -> int:
    """A 52-bit hash of a set of names (exact in a float64)."""
    digest = hashlib.sha256("\n".join(sorted(names)).encode()).hexdigest()
    return int(digest[:13], 16)


def check_same_stage(
    stage_index: int, stage_names: Sequence[str], trainable: Sequence[str]
) -> None:
    """Raise :class:`~freezeflow.errors.DistributedError` on every rank unless every rank is
    in the same stage with the same trainable parameters (by name). A collective."""
    rows = _gather([float(stage_index), float(names_hash(trainable)), float(len(trainable))])
    if all(r == rows[0] for r in rows):
        return

    def label(row: list[float]) -> str:
        k = int(row[0])
        name = stage_names[k] if 0 <= k < len(stage_names) else "?"
        return f"stage {k} ({name!r}) with {int(row[2])} trainable tensors, set #{int(row[1]):013x}"

    ranks = "; ".join(f"rank {r}: {label(row)}" for r, row in enumerate(rows))
    raise DistributedError(
        f"the ranks disagree on what trains ({ranks}); expected every rank in the same stage "
        "with the same trainable parameters, or their gradients would be averaged over "
        "different sets; hint: a plateau trigger must read a metric reduced over the ranks "
        "(fit() and the integrations reduce them), and every rank must build the same model "
        "and schedule"
    )


def _is_local(grad: torch.Tensor | None, p: nn.Parameter) -> bool:
    """A gradient every rank holds whole: a plain tensor of the parameter's shape (not
    FSDP2's DTensor shard, not a flat parameter's shard)."""
    if grad is None or type(grad).__name__ == "DTensor" or type(p).__name__ == "DTensor":
        return False
    return tuple(grad.shape) == tuple(p.shape)


def check_synchronized(where: str, named: Sequence[tuple[str, nn.Parameter]]) -> None:
    """Raise :class:`~freezeflow.errors.DistributedError` on every rank unless the gradients
    of ``named`` (the parameters a stage change just made trainable) are the same on every
    rank. A collective."""
    total = magnitude = 0.0
    counted: list[str] = []
    for name, p in named:
        if _is_local(p.grad, p):
            g = p.grad.detach().double()  # type: ignore[union-attr]
            total += float(g.sum())
            magnitude += float(g.abs().sum())
            counted.append(name)
    rows = _gather([total, magnitude, float(len(counted))])
    if all(r == rows[0] for r in rows):
        return
    raise DistributedError(
        f"{where} made {quote_list([n for n, _ in named], 3)} trainable, but at the first "
        "optimizer step after it their gradients differ between the ranks (sums "
        f"{', '.join(f'{row[0]:.6g}' for row in rows)}): they are not all-reduced, and the "
        "ranks' weights would drift apart without an error; likely cause: a "
        "DistributedDataParallel wrapper built before the change, which all-reduces only the "
        "parameters that were trainable when it was built; hint: ff.distributed.wrap_ddp "
        "(rebuilt at every stage change), fit() under torchrun, or the Lightning and "
        "transformers integrations; GradualUnfreezer(verify=False) if the ranks train "
        "different models on purpose"
    )
