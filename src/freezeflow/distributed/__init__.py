"""Training on several processes (``torchrun``) with a schedule that changes what trains.

- :mod:`~freezeflow.distributed.process_group`: rank, world size, collectives that are
  no-ops without a process group.
- :mod:`~freezeflow.distributed.sharding`: each rank's share of the data.
- :mod:`~freezeflow.distributed.ddp`: :func:`wrap_ddp`, a DDP wrapper rebuilt at every stage
  change, and the check that every rank trains the same parameters.

``torch.compile`` helpers live in :mod:`freezeflow.compile`.
"""

from freezeflow.distributed.ddp import (
    DDPWrapper,
    trainable_fingerprint,
    unwrap,
    verify_trainable,
    wrap_ddp,
)
from freezeflow.distributed.process_group import (
    all_gather_objects,
    all_reduce_mean,
    barrier,
    broadcast_buffers,
    is_distributed,
    is_main_process,
    local_rank,
    rank,
    world_size,
)
from freezeflow.distributed.sharding import (
    UnpaddedShardSampler,
    distributed_sampler,
    shard_loader,
)
from freezeflow.errors import DistributedError

__all__ = [
    "DDPWrapper",
    "DistributedError",
    "UnpaddedShardSampler",
    "all_gather_objects",
    "all_reduce_mean",
    "barrier",
    "broadcast_buffers",
    "distributed_sampler",
    "is_distributed",
    "is_main_process",
    "local_rank",
    "rank",
    "shard_loader",
    "trainable_fingerprint",
    "unwrap",
    "verify_trainable",
    "world_size",
    "wrap_ddp",
]
