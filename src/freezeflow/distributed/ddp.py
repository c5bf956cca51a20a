"""DistributedDataParallel with a schedule that changes what trains.

DistributedDataParallel decides which parameters it all-reduces when it is built: the ones
that require grad *at that moment*. A parameter unfrozen later gets a local gradient on each
rank that is never averaged, so the ranks silently drift apart. :class:`DDPWrapper` (built
with :func:`wrap_ddp`) holds the DDP module and, at every stage transition of a
:class:`~freezeflow.GradualUnfreezer`,

1. checks that every rank agrees on the stage and on the trainable set (an ``all_gather`` of
   a 3-integer fingerprint; a disagreement raises :class:`~freezeflow.errors.DistributedError`
   on every rank),
2. drops the old DDP module and builds a new one over the same model, so the new trainable
   set is registered (and, with ``init_sync=True``, rank 0's parameters and buffers are
   broadcast again, so every rank starts the stage bit-identical).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from typing import Any, cast

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from freezeflow._torch_internals import compiled_original
from freezeflow.compile import CompiledForUnfreezing
from freezeflow.distributed.process_group import collective_device, is_distributed
from freezeflow.errors import DistributedError, TrainingArgumentError, TrainingTypeError
from freezeflow.unfreezer.gradual import GradualUnfreezer
from freezeflow.unfreezer.transition import Transition

__all__ = [
    "DDPWrapper",
    "trainable_fingerprint",
    "unwrap",
    "verify_trainable",
    "wrap_ddp",
]


def unwrap(model: Any) -> nn.Module:
    """The plain model inside a :class:`DDPWrapper`, DDP, a ``torch.compile`` module, what
    :func:`compile_for_unfreezing` returns, or any nesting of them (for checkpoints)."""
    while True:
        if isinstance(model, (DDPWrapper, CompiledForUnfreezing)):
            model = model.model
        elif isinstance(model, DistributedDataParallel):
            model = model.module
        elif (original := compiled_original(model)) is not None:
            model = original
        elif isinstance(model, nn.Module):
            return model
        else:
            raise TrainingTypeError(
                f"unwrap() expects a module, got {model!r} of type {type(model).__name__}; "
                "hint: pass the model, a DistributedDataParallel or a compiled model"
            )


# --------------------------------------------------------------------------- consistency


def _trainable_names(model: nn.Module) -> list[str]:
    return sorted(n for n, p in model.named_parameters() if p.requires_grad)


def trainable_fingerprint(model: nn.Module, stage_index: int = -1) -> tuple[int, int, int]:
    """``(stage_index, hash, count)``: a cheap fingerprint of the trainable set.

    ``hash`` is the first 62 bits of SHA-256 over the sorted names of the parameters that
    require grad; ``count`` is how many there are.
    """
    names = _trainable_names(model)
    digest = hashlib.sha256("\n".join(names).encode()).digest()
    return int(stage_index), int.from_bytes(digest[:8], "big") >> 2, len(names)


def verify_trainable(
    model: nn.Module,
    stage_index: int = -1,
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
        trainable_fingerprint(unwrap(model), stage_index),
        dtype=torch.int64,
        device=collective_device(group),
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
            raise TrainingArgumentError(
                f"wrap_ddp() takes the plain model, not a {type(model).__name__}; hint: pass "
                "ddp.module and let freezeflow build DDP"
            )
        if not isinstance(model, nn.Module):
            raise TrainingTypeError(
                f"wrap_ddp() needs an nn.Module, got {model!r} of type {type(model).__name__}; "
                "hint: pass the model itself, not its parameters or state_dict"
            )
        if unfreezer is not None and unfreezer.model is not model:
            raise TrainingArgumentError(
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
    def stage_index(self) -> int:
        """The unfreezer's stage index (-1 without an unfreezer)."""
        return self.unfreezer.stage_index if self.unfreezer is not None else -1

    def current(self) -> nn.Module:
        """The module a forward runs now: :attr:`module`, re-wrapped first when
        ``auto_rebuild`` is on and the trainable set changed without a transition (a
        collective then: every rank must call it). For code that calls the DDP module itself
        instead of the wrapper (the Hugging Face integration's ``training_step``)."""
        if self._closed:
            raise DistributedError("this DDPWrapper was closed; hint: build a new one")
        if self.auto_rebuild and self._current_flags() != self._flags:
            self.rebuild()
        return self._module

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.current()(*args, **kwargs)

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
        verify_trainable(self.model, self.stage_index, stage_names=names)
        old, self._ddp, self._module = self._ddp, None, self.model
        # drop the old DDP module now: refcounting frees its reducer, which removes its
        # autograd hooks (an old reducer whose forward is not called is inert anyway)
        del old
        if self.compile_kwargs is not None and self.rebuilds > 0:
            torch.compiler.reset()
        if is_distributed() and any(self._flags):
            try:
                kwargs = dict(self.ddp_kwargs)
                if self.rebuilds > 0 and not self.resync:
                    kwargs["init_sync"] = False
                ddp = DistributedDataParallel(self.model, **kwargs)
            except (RuntimeError, ValueError, TypeError) as exc:
                raise DistributedError(
                    f"building DistributedDataParallel at stage {self.stage_index} failed: {exc}"
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
            f"DDPWrapper({type(self.model).__name__}, {what}, stage {self.stage_index}, "
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
        >>> uf = ff.GradualUnfreezer(model, ff.presets.ulmfit(2), torch.optim.AdamW)
        >>> net = wrap_ddp(model, uf)
        >>> loss = net(torch.randn(3, 4)).sum()
        >>> loss.backward(); uf.optimizer.step(); _ = uf.step()
        >>> [t.name for t in uf.on_epoch_start(1)]
        ['last2']
    """
    return DDPWrapper(model, unfreezer, **kwargs)
