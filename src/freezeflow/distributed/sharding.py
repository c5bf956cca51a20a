"""Giving each rank its share of the data: samplers and rebuilt DataLoaders."""

from __future__ import annotations

from collections.abc import Iterator, Sized
from typing import Any, cast

from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    DistributedSampler,
    IterableDataset,
    RandomSampler,
    Sampler,
    SequentialSampler,
)

from freezeflow.distributed.process_group import is_distributed, rank, world_size
from freezeflow.errors import TrainingTypeError

__all__ = ["UnpaddedShardSampler", "distributed_sampler", "shard_loader"]


def distributed_sampler(
    dataset: Dataset[Any], shuffle: bool = True, seed: int = 0, drop_last: bool = False
) -> DistributedSampler[Any] | None:
    """A :class:`~torch.utils.data.DistributedSampler` over ``dataset`` when distributed,
    else None (let the DataLoader shuffle as usual).

    Pass it as ``DataLoader(dataset, sampler=sampler, shuffle=False)`` and call
    ``sampler.set_epoch(epoch)`` at the start of every epoch, or every epoch sees the same
    order. Each rank gets ``ceil(len / world_size)`` samples (padded by repetition unless
    ``drop_last``), so every rank runs the same number of steps, which step-based stage
    triggers need.
    """
    if not is_distributed():
        return None
    if not isinstance(dataset, Sized):
        raise TrainingTypeError(
            f"distributed_sampler needs a dataset with a length, got {type(dataset).__name__}; "
            "hint: shard an IterableDataset yourself (e.g. by rank() and world_size())"
        )
    return DistributedSampler(dataset, shuffle=shuffle, seed=seed, drop_last=drop_last)


class UnpaddedShardSampler(Sampler[int]):
    """Rank ``r``'s indices ``r, r + W, r + 2W, ...`` of ``range(len(dataset))``, in order,
    with no padding (ranks differ by at most one sample), so metrics summed over ranks are
    exact. For evaluation only: ranks may get different batch counts, which training under
    DDP cannot have (use :class:`~torch.utils.data.DistributedSampler` there)."""

    def __init__(self, dataset: Sized, num_replicas: int | None = None, rank_: int | None = None):
        self.size = len(dataset)
        self.num_replicas = world_size() if num_replicas is None else num_replicas
        self.rank = rank() if rank_ is None else rank_

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.size, self.num_replicas))

    def __len__(self) -> int:
        return len(range(self.rank, self.size, self.num_replicas))


def _rebuildable(loader: DataLoader[Any]) -> str | None:
    """Why ``loader`` cannot be rebuilt over a per-rank sampler, or None when it can."""
    data = loader.dataset
    if isinstance(data, IterableDataset) or not isinstance(data, Sized) or not loader.batch_size:
        return "an IterableDataset or batch_size=None"
    if type(loader.batch_sampler) is not BatchSampler:
        return f"a custom batch_sampler ({type(loader.batch_sampler).__name__})"
    sampler = loader.sampler
    if isinstance(sampler, RandomSampler):
        # the public num_samples is len(dataset) unless num_samples= was given; given as
        # len(dataset) it draws the same permutation as the default, so rebuilding is exact
        if sampler.replacement or sampler.num_samples != len(data):
            return "a RandomSampler with replacement= or num_samples="
        return None
    if type(sampler) is not SequentialSampler:
        return f"a {type(sampler).__name__}"
    return None


def shard_loader(
    loader: DataLoader[Any], *, train: bool, seed: int = 0
) -> tuple[DataLoader[Any], str | None]:
    """``loader`` rebuilt so that this rank reads only its share of the dataset.

    Training (``train=True``): a :class:`~torch.utils.data.DistributedSampler`, shuffled when
    ``loader`` used a ``RandomSampler``, with ``seed`` (call ``set_epoch`` every epoch); it
    pads by repetition so every rank runs the same number of steps. Evaluation: an
    :class:`UnpaddedShardSampler` (no padding, exact metrics). Batch size, ``collate_fn``,
    workers, ``drop_last``, pinning and the generator are kept.

    Returns ``(loader, None)`` unchanged when not distributed or when its sampler already is
    a ``DistributedSampler``; ``(loader, reason)`` unchanged when it cannot be rebuilt (an
    ``IterableDataset``, a custom sampler or batch sampler): then every rank reads all of
    it, so shard it yourself.
    """
    if world_size() < 2 or isinstance(loader.sampler, DistributedSampler):
        return loader, None
    if isinstance(getattr(loader.batch_sampler, "sampler", None), DistributedSampler):
        return loader, None
    why = _rebuildable(loader)
    if why is not None:
        return loader, why
    dataset = cast(Sized, loader.dataset)
    sampler: Sampler[int] = (
        DistributedSampler(
            loader.dataset, shuffle=isinstance(loader.sampler, RandomSampler), seed=seed
        )
        if train
        else UnpaddedShardSampler(dataset)
    )
    kwargs: dict[str, Any] = {
        "batch_size": loader.batch_size,
        "sampler": sampler,
        "num_workers": loader.num_workers,
        "collate_fn": loader.collate_fn,
        "pin_memory": loader.pin_memory,
        "drop_last": loader.drop_last,
        "timeout": loader.timeout,
        "worker_init_fn": loader.worker_init_fn,
        "multiprocessing_context": loader.multiprocessing_context,
        "generator": loader.generator,
        "persistent_workers": loader.persistent_workers,
        "pin_memory_device": loader.pin_memory_device,
        "in_order": getattr(loader, "in_order", True),
    }
    if loader.num_workers > 0:
        kwargs["prefetch_factor"] = loader.prefetch_factor
    return DataLoader(loader.dataset, **kwargs), None
