"""Distributed training and ``torch.compile`` with a schedule that changes what trains.

DistributedDataParallel decides which parameters it all-reduces when it is built: the ones
that require grad *at that moment*. A parameter unfrozen later gets a local gradient on each
rank that is never averaged, so the ranks silently drift apart. :class:`DDPWrapper` (built
with :func:`wrap_ddp`) holds the DDP module and, at every stage transition of a
:class:`~freezeflow.GradualUnfreezer`,

1. checks that every rank agrees on the stage and on the trainable set (an ``all_gather`` of
   a 3-integer fingerprint; a disagreement raises :class:`DistributedError` on every rank),
2. drops the old DDP module and builds a new one over the same model, so the new trainable
   set is registered (and, with ``init_sync=True``, rank 0's parameters and buffers are
   broadcast again, so every rank starts the stage bit-identical).

The helpers (:func:`rank`, :func:`world_size`, :func:`all_reduce_mean`, :func:`barrier`,
:func:`distributed_sampler`...) are no-ops when ``torch.distributed`` is not initialised, so a
training loop can call them unconditionally.

``torch.compile``: :func:`compile_for_unfreezing` compiles a model and resets Dynamo's caches
at each transition, so each stage gets a fresh recompile budget; :func:`check_recompile_limit`
warns when a schedule has more distinct frozen sets than Dynamo's recompile limit.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable, Iterator, Sequence, Sized
from contextlib import nullcontext
from typing import Any, TypeVar, cast

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
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

from freezeflow.errors import FreezeflowWarning, TrainingError
from freezeflow.unfreezer import GradualUnfreezer, Transition

__all__ = [
    "CompiledForUnfreezing",
    "DDPWrapper",
    "DistributedError",
    "UnpaddedShardSampler",
    "all_gather_objects",
    "all_reduce_mean",
    "barrier",
    "broadcast_buffers",
    "check_recompile_limit",
    "compile_for_unfreezing",
    "distinct_trainable_sets",
    "distributed_sampler",
    "is_distributed",
    "is_main_process",
    "local_rank",
    "rank",
    "recompile_limit",
    "shard_loader",
    "trainable_fingerprint",
    "unwrap",
    "verify_trainable",
    "world_size",
    "wrap_ddp",
]

T = TypeVar("T", float, torch.Tensor)


class DistributedError(TrainingError):
    """Ranks disagree (on the stage or on the trainable set), or DDP cannot be built."""


# --------------------------------------------------------------------------- helpers


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
    import os

    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main_process() -> bool:
    """True on rank 0, and always when not distributed (log, save checkpoints there)."""
    return rank() == 0


def barrier() -> None:
    """Wait for every rank (no-op when not distributed)."""
    if is_distributed():
        dist.barrier()


def _collective_device(group: Any = None) -> torch.device:
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
        t = value.detach().to(_collective_device(), dtype=torch.float64, copy=True)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        out = (t / dist.get_world_size()).to(device=value.device)
        return out.to(value.dtype) if value.is_floating_point() else out
    t = torch.tensor([float(value)], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item()) / dist.get_world_size()


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
        raise DistributedError(
            f"distributed_sampler needs a dataset with a length, got {type(dataset).__name__}; "
            "hint: shard an IterableDataset yourself (e.g. by rank() and world_size())"
        )
    return DistributedSampler(dataset, shuffle=shuffle, seed=seed, drop_last=drop_last)


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
        if sampler.replacement or sampler._num_samples is not None:
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


def unwrap(model: Any) -> nn.Module:
    """The plain model inside a :class:`DDPWrapper`, DDP, a ``torch.compile`` module, what
    :func:`compile_for_unfreezing` returns, or any nesting of them (for checkpoints)."""
    while True:
        if isinstance(model, (DDPWrapper, CompiledForUnfreezing)):
            model = model.model
        elif isinstance(model, DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model, nn.Module):
            model = model._orig_mod
        elif isinstance(model, nn.Module):
            return model
        else:
            raise DistributedError(f"unwrap() expects a module, got {type(model).__name__}")


# --------------------------------------------------------------------------- consistency


def _trainable_names(model: nn.Module) -> list[str]:
    return sorted(n for n, p in model.named_parameters() if p.requires_grad)


def trainable_fingerprint(model: nn.Module, stage: int = -1) -> tuple[int, int, int]:
    """``(stage, hash, count)``: a cheap fingerprint of the trainable set.

    ``hash`` is the first 62 bits of SHA-256 over the sorted names of the parameters that
    require grad; ``count`` is how many there are.
    """
    names = _trainable_names(model)
    digest = hashlib.sha256("\n".join(names).encode()).digest()
    return int(stage), int.from_bytes(digest[:8], "big") >> 2, len(names)


def verify_trainable(
    model: nn.Module,
    stage: int = -1,
    *,
    stage_names: Sequence[str] | None = None,
    group: Any = None,
) -> None:
    """Check that every rank has the same stage and the same trainable parameters.

    A collective: every rank of ``group`` must call it at the same point. No-op when not
    distributed.

    Raises:
        DistributedError: on every rank, naming each rank's stage and trainable count, when
            the fingerprints differ.
    """
    if not is_distributed():
        return
    mine = torch.tensor(
        trainable_fingerprint(unwrap(model), stage),
        dtype=torch.int64,
        device=_collective_device(group),
    )
    n = dist.get_world_size(group)
    gathered = [torch.empty_like(mine) for _ in range(n)]
    dist.all_gather(gathered, mine, group=group)
    rows = [tuple(int(v) for v in t.tolist()) for t in gathered]
    if all(r == rows[0] for r in rows):
        return

    def label(s: int) -> str:
        if stage_names is not None and 0 <= s < len(stage_names):
            return f"stage {s} ({stage_names[s]!r})"
        return f"stage {s}"

    parts = [
        f"rank {r}: {label(s)}, {c} trainable tensors, set #{h:016x}"
        for r, (s, h, c) in enumerate(rows)
    ]
    odd = [r for r, row in enumerate(rows) if row != rows[0]]
    raise DistributedError(
        f"ranks disagree on what trains (rank {dist.get_rank(group)} checking; ranks "
        f"{odd} differ from rank 0): " + "; ".join(parts) + ". hint: give every rank the "
        "same model and schedule, and make stage triggers rank-independent (pass a metric "
        "averaged with all_reduce_mean() to unfreezer.observe())"
    )


# --------------------------------------------------------------------------- DDP


class DDPWrapper:
    """A DistributedDataParallel module that is rebuilt whenever the trainable set changes.

    Call it like the model (``out = wrapper(x)``); ``wrapper.module`` is the current DDP
    module (or the plain model when not distributed, or when nothing is trainable).
    Build it with :func:`wrap_ddp`.

    At each transition of ``unfreezer`` (a listener) it runs :func:`verify_trainable` and
    then re-wraps. With ``auto_rebuild=True`` (default) it also re-wraps at the next forward
    when the trainable set changed behind its back (e.g. after
    ``unfreezer.load_state_dict`` or a manual ``freeze``): that check walks the parameter
    list (microseconds) and, like everything that builds DDP, must happen on every rank.

    Args:
        model: the plain model (already on its device).
        unfreezer: optional; its transitions trigger the re-wrap and its stage index goes
            into the consistency check.
        on_wrap: called with each new DDP module (e.g. to register a comm hook again).
        compile: compile the DDP module after each (re)wrap: ``True`` or a dict of
            ``torch.compile`` arguments; Dynamo's caches are reset at each transition.
        auto_rebuild: re-wrap at the next forward when the trainable set changed without a
            transition.
        resync: re-wraps broadcast rank 0's parameters and buffers again (DDP's
            ``init_sync``), so every stage starts bit-identical on every rank. ``False``
            skips that broadcast (about 3x faster on resnet18; see docs/distributed.md).
        **ddp_kwargs: passed to :class:`~torch.nn.parallel.DistributedDataParallel` every
            time (``device_ids``, ``find_unused_parameters``, ``static_graph``,
            ``gradient_as_bucket_view``, ``init_sync``...).
    """

    def __init__(
        self,
        model: nn.Module,
        unfreezer: GradualUnfreezer | None = None,
        *,
        on_wrap: Callable[[DistributedDataParallel], None] | None = None,
        compile: bool | dict[str, Any] = False,
        auto_rebuild: bool = True,
        resync: bool = True,
        **ddp_kwargs: Any,
    ) -> None:
        if isinstance(model, (DistributedDataParallel, DDPWrapper)):
            raise DistributedError(
                "wrap_ddp() takes the plain model, not a DistributedDataParallel; hint: pass "
                "ddp.module and let freezeflow build DDP"
            )
        if not isinstance(model, nn.Module):
            raise DistributedError(f"wrap_ddp() needs an nn.Module, got {type(model).__name__}")
        if unfreezer is not None and unfreezer.model is not model:
            raise DistributedError(
                "the unfreezer manages another model than the one given to wrap_ddp(); hint: "
                "build both over the same (unwrapped) model"
            )
        self.model = model
        self.unfreezer = unfreezer
        self.ddp_kwargs = dict(ddp_kwargs)
        self.on_wrap = on_wrap
        self.compile_kwargs: dict[str, Any] | None = (
            dict(compile) if isinstance(compile, dict) else ({} if compile else None)
        )
        self.auto_rebuild = auto_rebuild
        self.resync = resync
        self.rebuilds = 0
        """How many times DDP was (re)built."""
        self.wrap_seconds: list[float] = []
        """Wall time of each (re)build, verification included."""
        self._params = [p for _, p in model.named_parameters()]
        self._flags: tuple[bool, ...] = ()
        self._ddp: DistributedDataParallel | None = None
        self._module: nn.Module = model
        self._closed = False
        self.rebuild()
        if unfreezer is not None:
            unfreezer.add_listener(self._on_transition)

    # -------------------------------------------------------------- views
    @property
    def module(self) -> nn.Module:
        """What forward runs: the (compiled) DDP module, or the model itself."""
        return self._module

    @property
    def ddp(self) -> DistributedDataParallel | None:
        """The current DDP module (None when not distributed or nothing trains)."""
        return self._ddp

    @property
    def stage(self) -> int:
        return self.unfreezer.stage if self.unfreezer is not None else -1

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self._closed:
            raise DistributedError("this DDPWrapper was closed")
        if self.auto_rebuild and self._current_flags() != self._flags:
            self.rebuild()
        return self._module(*args, **kwargs)

    forward = __call__

    def train(self, mode: bool = True) -> DDPWrapper:
        self.model.train(mode)
        return self

    def eval(self) -> DDPWrapper:
        return self.train(False)

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]:
        return self.model.parameters(recurse)

    def named_parameters(self, *args: Any, **kwargs: Any) -> Iterator[tuple[str, nn.Parameter]]:
        return self.model.named_parameters(*args, **kwargs)

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """The plain model's state dict (no ``module.`` prefix)."""
        return cast("dict[str, Any]", self.model.state_dict(*args, **kwargs))

    def load_state_dict(self, *args: Any, **kwargs: Any) -> Any:
        return self.model.load_state_dict(*args, **kwargs)

    def no_sync(self) -> Any:
        """DDP's ``no_sync()`` (gradient accumulation); a null context when not wrapped."""
        return self._ddp.no_sync() if self._ddp is not None else nullcontext()

    # -------------------------------------------------------------- (re)wrapping
    def _current_flags(self) -> tuple[bool, ...]:
        return tuple(p.requires_grad for p in self._params)

    def _on_transition(self, transition: Transition) -> None:
        if not self._closed:
            self.rebuild()

    def rebuild(self) -> None:
        """Verify that all ranks agree, then (re)build DDP over the current trainable set.

        A collective: call it on every rank at the same point (the unfreezer's listener
        does). Cheap to call when nothing changed: it still verifies and re-wraps.
        """
        import time

        start = time.perf_counter()
        self._flags = self._current_flags()
        names = self.unfreezer.schedule.names if self.unfreezer is not None else None
        verify_trainable(self.model, self.stage, stage_names=names)
        old, self._ddp, self._module = self._ddp, None, self.model
        # drop the old DDP module now: refcounting frees its reducer, which removes its
        # autograd hooks (an old reducer whose forward is not called is inert anyway)
        del old
        if self.compile_kwargs is not None and self.rebuilds > 0:
            torch._dynamo.reset()
        if is_distributed() and any(self._flags):
            try:
                kwargs = dict(self.ddp_kwargs)
                if self.rebuilds > 0 and not self.resync:
                    kwargs["init_sync"] = False
                ddp = DistributedDataParallel(self.model, **kwargs)
            except (RuntimeError, ValueError, TypeError) as exc:
                raise DistributedError(
                    f"building DistributedDataParallel at stage {self.stage} failed: {exc}"
                ) from exc
            if self.on_wrap is not None:
                self.on_wrap(ddp)
            self._ddp = ddp
            self._module = ddp
        if self.compile_kwargs is not None:
            self._module = cast(nn.Module, torch.compile(self._module, **self.compile_kwargs))
        self.rebuilds += 1
        self.wrap_seconds.append(time.perf_counter() - start)

    def close(self) -> None:
        """Drop the DDP module and stop following the unfreezer (the listener stays
        registered but does nothing)."""
        self._closed = True
        self._ddp = None
        self._module = self.model

    def __repr__(self) -> str:
        what = "DDP" if self._ddp is not None else "unwrapped"
        n = sum(self._flags)
        return (
            f"DDPWrapper({type(self.model).__name__}, {what}, stage {self.stage}, "
            f"{n}/{len(self._params)} trainable tensors, {self.rebuilds} builds)"
        )


def wrap_ddp(
    model: nn.Module,
    unfreezer: GradualUnfreezer | None = None,
    **kwargs: Any,
) -> DDPWrapper:
    """Wrap ``model`` in DistributedDataParallel, re-wrapped at each of ``unfreezer``'s stage
    transitions after checking that all ranks agree on what trains.

    Build the unfreezer first (it freezes the model), then wrap; keep the optimizer built
    over ``model.parameters()`` (DDP shares them). Works unchanged when not distributed (the
    wrapper then just calls the model). Keyword arguments: see :class:`DDPWrapper`.

    Example (without a process group the wrapper just calls the model; under torchrun the
    same lines train with DDP, e.g. ``wrap_ddp(model, uf, device_ids=[local_rank()])`` on
    GPUs):

        >>> import torch, freezeflow as ff
        >>> from freezeflow.distributed import wrap_ddp
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
        >>> uf = ff.GradualUnfreezer(model, ff.ulmfit(2), torch.optim.AdamW)
        >>> net = wrap_ddp(model, uf)
        >>> loss = net(torch.randn(3, 4)).sum()
        >>> loss.backward(); uf.optimizer.step(); _ = uf.step()
        >>> [t.name for t in uf.on_epoch_start(1)]
        ['last2']
    """
    return DDPWrapper(model, unfreezer, **kwargs)


# --------------------------------------------------------------------------- torch.compile


def recompile_limit() -> int:
    """Dynamo's per-function limit on compiled variants (``recompile_limit``, called
    ``cache_size_limit`` before torch 2.6)."""
    cfg = torch._dynamo.config
    for key in ("recompile_limit", "cache_size_limit"):
        value = getattr(cfg, key, None)
        if isinstance(value, int):
            return value
    return 8


def distinct_trainable_sets(unfreezer: GradualUnfreezer) -> int:
    """How many different trainable sets the unfreezer's schedule goes through."""
    return len(set(unfreezer.layout.trainable))


def check_recompile_limit(
    unfreezer: GradualUnfreezer,
    *,
    modes: int = 2,
    reset_on_transition: bool = False,
    stacklevel: int = 2,
) -> int:
    """Warn (:class:`~freezeflow.FreezeflowWarning`) when a compiled model would exceed
    Dynamo's recompile limit over this schedule; returns the number of variants expected.

    Each distinct trainable set is a separate compiled graph, times ``modes`` (2 when the
    loop also runs the model in eval mode). Past the limit Dynamo runs the model eagerly
    (still correct, no longer compiled) and only logs it. With ``reset_on_transition``
    (what :func:`compile_for_unfreezing` does) the caches are emptied at every transition,
    so only one stage's variants count.
    """
    limit = recompile_limit()
    sets = distinct_trainable_sets(unfreezer)
    expected = modes if reset_on_transition else sets * modes
    if expected > limit:
        warnings.warn(
            f"the schedule goes through {sets} distinct frozen sets ({expected} compiled "
            f"variants with {modes} train/eval mode(s)), more than torch._dynamo's recompile "
            f"limit of {limit}: later stages would run eagerly (uncompiled); hint: use "
            "compile_for_unfreezing() (resets Dynamo at each transition) or raise "
            "torch._dynamo.config.recompile_limit",
            FreezeflowWarning,
            stacklevel=stacklevel,
        )
    return expected


class _CompiledModel:
    """Holds the compiled module for :func:`compile_for_unfreezing`."""

    def __init__(self, model: nn.Module, kwargs: dict[str, Any]) -> None:
        self.model = model
        self.kwargs = kwargs
        self.compiled: nn.Module = cast(nn.Module, torch.compile(model, **kwargs))
        self.resets = 0

    def on_transition(self, transition: Transition) -> None:
        torch._dynamo.reset()
        self.compiled = cast(nn.Module, torch.compile(self.model, **self.kwargs))
        self.resets += 1


class CompiledForUnfreezing(nn.Module):
    """The module :func:`compile_for_unfreezing` returns: forwards to the current compiled
    module (``.compiled``); ``.model`` is the plain one. Its state dict is the model's."""

    def __init__(self, holder: _CompiledModel) -> None:
        super().__init__()
        self._holder = holder
        self.model = holder.model

    @property
    def compiled(self) -> nn.Module:
        return self._holder.compiled

    @property
    def resets(self) -> int:
        """Dynamo resets done so far (one per transition)."""
        return self._holder.resets

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self._holder.compiled(*args, **kwargs)

    def state_dict(self, *args: Any, **kwargs: Any) -> Any:
        return self.model.state_dict(*args, **kwargs)

    def load_state_dict(self, *args: Any, **kwargs: Any) -> Any:
        return self.model.load_state_dict(*args, **kwargs)


def compile_for_unfreezing(
    model: nn.Module,
    unfreezer: GradualUnfreezer,
    *,
    reset_on_transition: bool = True,
    modes: int = 2,
    **compile_kwargs: Any,
) -> nn.Module:
    """``torch.compile(model, **compile_kwargs)`` that stays correct and compiled across
    stage transitions.

    With ``reset_on_transition`` (default) each transition calls ``torch._dynamo.reset()``
    and compiles the model again, so every stage starts with a full recompile budget (the
    reset is process-wide: other compiled functions recompile on their next call too).
    Without it, Dynamo's own guards on ``requires_grad`` recompile at each transition and
    :func:`check_recompile_limit` warns when the schedule would exceed the limit.

    For DDP, use ``wrap_ddp(model, unfreezer, compile=True)`` instead (compiles the DDP
    module after every re-wrap).
    """
    if unfreezer.model is not model:
        raise DistributedError(
            "the unfreezer manages another model than the one given to compile_for_unfreezing()"
        )
    check_recompile_limit(
        unfreezer, modes=modes, reset_on_transition=reset_on_transition, stacklevel=3
    )
    holder = _CompiledModel(model, dict(compile_kwargs))
    if reset_on_transition:
        unfreezer.add_listener(holder.on_transition)
    return CompiledForUnfreezing(holder)
