"""Frozen-prefix feature caching: compute the frozen front of a model once, train the rest.

When every block before some point is frozen and deterministic (its norm layers in eval mode,
no dropout or stochastic depth active, no random number drawn) and the training inputs are
deterministic (no random augmentation), the output of that *prefix* is the same every epoch.
:class:`FeatureCache` computes it once per stage and replays it: the prefix modules are
replaced, for the duration of a ``with cache.replaying():`` block, by stubs that pass their
input through, and the module that finishes the prefix returns the cached batch. Everything
after the cut runs as usual, in train mode, with its own dropout and norm layers.

A model can be cut at a block boundary when the prefix hands exactly one tensor to the rest
of the network. Rather than trusting a trace, :meth:`FeatureCache.check` runs the model both
ways on a few real samples and compares the outputs; models that cannot be cut this way
(skip connections across the cut, glue code that reshapes the input, stochastic frozen
blocks) are refused with a one-line reason, and training goes on without the cache.

Batches are replayed in the order the original ``DataLoader`` would produce them (its sampler
and generator are reused), so a cached run consumes random numbers exactly like an uncached
one and gives the same loss curve up to floating-point rounding.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, get_worker_info

from freezeflow.core.blocks import find_blocks, is_norm_layer
from freezeflow.errors import CacheRefused

__all__ = ["CachedEpoch", "FeatureCache", "Views", "frozen_prefix"]


class Views(Dataset[Any]):
    """A dataset whose samples come in a few deterministic variants ("views"), one of them
    drawn at random each time a sample is read: random augmentation that
    ``fit(cache=True)`` can still cache.

    Random augmentation normally rules the feature cache out, since the frozen prefix then
    sees different inputs every epoch. With a small, fixed set of views (the image and its
    mirror image, a few crops) the cache computes the prefix once per view and replays, for
    each sample of each batch, the view drawn for it, so a cached run draws the same random
    numbers and trains on the same views as an uncached one.

    Args:
        dataset: a map-style dataset of ``(inputs, target, ...)`` samples.
        views: functions applied to a sample's inputs, e.g. ``[lambda x: x, hflip]``; each
            must be deterministic.
        generator: the random generator of the draws (the global one by default).

    Example:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> data = TensorDataset(torch.arange(6.0).reshape(1, 1, 2, 3), torch.tensor([0]))
        >>> flips = Views(data, [lambda x: x, lambda x: x.flip(-1)])
        >>> flips.view(0, 1)[0].tolist()
        [[[2.0, 1.0, 0.0], [5.0, 4.0, 3.0]]]
    """

    def __init__(
        self,
        dataset: Dataset[Any],
        views: Sequence[Callable[[Any], Any]],
        *,
        generator: torch.Generator | None = None,
    ) -> None:
        if not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")):
            raise TypeError(
                f"Views(dataset={type(dataset).__name__}): expected a map-style dataset "
                "(with __getitem__ and __len__)"
            )
        views = list(views)
        if not views or not all(callable(v) for v in views):
            raise TypeError(
                f"Views(views={views!r}): expected a non-empty sequence of functions of a "
                "sample's inputs; hint: include the identity, lambda x: x, for the sample itself"
            )
        self.dataset = dataset
        self.views = views
        self.generator = generator

    def __len__(self) -> int:
        return len(self.dataset)

    def draw(self) -> int:
        """A random view index (one draw from the generator). In a ``DataLoader`` worker
        process the draw comes from the worker's own seeded RNG instead: a generator copied
        into every worker would repeat the same draws in each of them, every epoch."""
        generator = self.generator if get_worker_info() is None else None
        return int(torch.randint(len(self.views), (), generator=generator))

    def view(self, index: int, v: int) -> Any:
        """Sample ``index`` as seen through view ``v``."""
        item = self.dataset[index]
        if isinstance(item, tuple):
            return (self.views[v](item[0]), *item[1:])
        if isinstance(item, list):
            return [self.views[v](item[0]), *item[1:]]
        return self.views[v](item)

    def __getitem__(self, index: int) -> Any:
        return self.view(index, self.draw())


class _OneView(Dataset[Any]):
    def __init__(self, views: Views, v: int) -> None:
        self.views, self.v = views, v

    def __len__(self) -> int:
        return len(self.views)

    def __getitem__(self, index: int) -> Any:
        return self.views.view(index, self.v)


class _Stop(Exception):  # noqa: N818 - control flow
    pass


def frozen_prefix(model: nn.Module, *, will_train: Iterable[torch.Tensor] = ()) -> int:
    """How many leading blocks of ``model`` have only frozen parameters (at most all but the
    last block).

    ``will_train``: parameters that count as trainable although frozen now (those a later
    stage of a schedule unfreezes), to find the prefix that stays frozen for the rest of it.
    """
    later = {id(p) for p in will_train}
    blocks = find_blocks(model)
    modules = dict(model.named_modules(remove_duplicate=False))
    params = dict(model.named_parameters(remove_duplicate=False))
    k = 0
    for block in blocks[:-1]:
        owned = [p for path in block.modules for p in modules[path].parameters()]
        owned += [params[n] for n in block.params]
        if not owned or any(p.requires_grad or id(p) in later for p in owned):
            break
        k += 1
    return k


@dataclass
class _Plan:
    boundary: int
    modules: list[nn.Module]
    replay: nn.Module


def _first_tensor(batch: Any) -> torch.Tensor:
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    raise CacheRefused("batches must be tensors or (inputs, targets) tuples")


class FeatureCache:
    """Cached outputs of a model's frozen prefix over one data set.

    Args:
        model: the model; its first ``boundary`` blocks must be frozen.
        loader: a ``DataLoader`` over a map-style dataset yielding ``(inputs, targets)``.
        boundary: number of leading blocks to cache (default: :func:`frozen_prefix`).
        device: where the prefix runs and the features are kept in memory.
        max_bytes: memory budget for the features; above it they go to a memory-mapped file
            in ``disk_dir`` (a temporary directory by default), or caching is refused if
            ``disk_dir`` is ``False``.
        disk_dir: directory for the memory-mapped features, or ``False`` to forbid disk.
        source: a built cache of a shorter prefix over the same dataset: :meth:`build` then
            runs only the blocks between the two cuts, on ``source``'s features, instead of
            the whole prefix on the raw inputs (``fit`` keeps the prefix frozen for the whole
            schedule as such a source, so each stage costs only its own frozen blocks).

    Raises:
        CacheRefused: with a one-line reason when the model or loader cannot be cached.
    """

    def __init__(
        self,
        model: nn.Module,
        loader: Iterable[Any],
        *,
        boundary: int | None = None,
        device: torch.device | str | None = None,
        max_bytes: int = 2 << 30,
        disk_dir: str | os.PathLike[str] | bool | None = None,
        source: FeatureCache | None = None,
    ) -> None:
        if not isinstance(loader, DataLoader):
            raise CacheRefused("caching needs a torch DataLoader (got an iterable of batches)")
        dataset: Any = loader.dataset
        if not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")):
            raise CacheRefused("caching needs a DataLoader over a map-style dataset")
        if isinstance(dataset, Views) and loader.num_workers > 0:
            raise CacheRefused(
                f"the views are drawn in {loader.num_workers} DataLoader worker process(es), "
                "where a cached replay cannot draw the same ones; hint: num_workers=0 (epochs "
                "on cached features need no workers)"
            )
        self.views: Views | None = dataset if isinstance(dataset, Views) else None
        """The loader's dataset when it is a :class:`Views` (one cached block per view)."""
        self.model = model
        self.loader: DataLoader[Any] = loader
        self.device = torch.device(device) if device is not None else _model_device(model)
        self.max_bytes = max_bytes
        self.disk_dir = disk_dir
        k = frozen_prefix(model) if boundary is None else boundary
        if k < 1:
            raise CacheRefused("no frozen prefix: the first block is trainable")
        self.boundary = k
        if source is not None:
            if source.loader.dataset is not dataset:
                raise CacheRefused("the source cache was built over another dataset")
            if source.boundary >= k:
                raise CacheRefused(
                    f"the source cache ends after block {source.boundary - 1}, not before this "
                    f"cache's cut after block {k - 1}; use the source itself"
                )
            if source.features is None:
                raise CacheRefused("build() the source cache first")
        self.source = source
        self.features: torch.Tensor | None = None
        self.targets: torch.Tensor | None = None
        self._memmap_path: str | None = None
        self._dataset_draws = False
        self._plan = self._find_replay(k)
        self.signature = self._signature()

    # ------------------------------------------------------------------ structure
    def _prefix_modules(self, k: int) -> list[nn.Module]:
        modules = dict(self.model.named_modules(remove_duplicate=False))
        blocks = find_blocks(self.model)
        out: list[nn.Module] = []
        for block in blocks[:k]:
            if block.params:
                raise CacheRefused(
                    f"block {block.name!r} owns loose parameters ({block.params[0]!r}) that "
                    "the forward uses directly; the model cannot be cut there"
                )
            out += [modules[path] for path in block.modules if path]
        if not out:
            raise CacheRefused("the frozen prefix has no module to cut at")
        return out

    def _sample(self, n: int = 4) -> torch.Tensor:
        # a Views is read through view 0, without drawing from its generator
        dataset: Any = _OneView(self.views, 0) if self.views is not None else self.loader.dataset
        before = _global_rng()
        try:
            items = [dataset[i] for i in range(min(n, len(dataset)))]
        finally:  # reading samples here must not shift the training's random numbers
            self._dataset_draws = self._dataset_draws or not _same_rng(before, _global_rng())
            _set_global_rng(before)
        if not items:
            raise CacheRefused("the dataset is empty")
        collate: Any = self.loader.collate_fn
        return _first_tensor(collate(items)).to(self.device)

    def _find_replay(self, k: int) -> _Plan:
        prefix = self._prefix_modules(k)
        order: list[nn.Module] = []
        hooks = [m.register_forward_hook(lambda m, i, o: order.append(m)) for m in prefix]
        was_training = self.model.training
        try:
            self.model.eval()
            with torch.no_grad():
                self.model(self._sample(2))
        except Exception as exc:
            raise CacheRefused(f"a trial forward pass failed: {exc}") from exc
        finally:
            for h in hooks:
                h.remove()
            self.model.train(was_training)
        ran = [m for m in order if any(m is p for p in prefix)]
        if not ran:
            raise CacheRefused("the prefix modules are never called in forward")
        return _Plan(k, prefix, ran[-1])

    def _signature(self) -> tuple[int, tuple[int, ...]]:
        """Changes when the prefix changes (a parameter in it becomes trainable)."""
        flags = tuple(int(p.requires_grad) for m in self._plan.modules for p in m.parameters())
        return self.boundary, flags

    def still_valid(self) -> bool:
        """Whether the prefix is unchanged (same boundary, all still frozen)."""
        return frozen_prefix(self.model) >= self.boundary and not any(
            p.requires_grad for m in self._plan.modules for p in m.parameters()
        )

    # ------------------------------------------------------------------ running the prefix
    def prefix(self, inputs: torch.Tensor) -> torch.Tensor:
        """Output of the frozen prefix for ``inputs`` (no gradient)."""
        captured: list[torch.Tensor] = []

        def stop(module: nn.Module, args: Any, output: Any) -> None:
            if not isinstance(output, torch.Tensor):
                raise CacheRefused("the prefix's last module does not return one tensor")
            captured.append(output)
            raise _Stop

        handle = self._plan.replay.register_forward_hook(stop)
        try:
            with torch.no_grad():
                self.model(inputs)
        except _Stop:
            pass
        finally:
            handle.remove()
        if not captured:
            raise CacheRefused("the forward pass ended without reaching the cut")
        return captured[0].detach()

    @contextlib.contextmanager
    def replaying(self, features: torch.Tensor | None = None) -> Iterator[_Replay]:
        """Within the block, the prefix modules pass their input through and the cut returns
        the features set on the yielded handle (``handle.features = batch``)."""
        handle = _Replay(features)
        saved: list[tuple[nn.Module, Any]] = []
        for m in self._plan.modules:
            saved.append((m, m.__dict__.get("forward")))
            if m is self._plan.replay:
                m.__dict__["forward"] = handle
            else:
                m.__dict__["forward"] = _passthrough
        try:
            yield handle
        finally:
            for m, fwd in saved:
                if fwd is None:
                    m.__dict__.pop("forward", None)
                else:
                    m.__dict__["forward"] = fwd

    # ------------------------------------------------------------------ checks
    def check(self, atol: float = 1e-4, rtol: float = 1e-3) -> None:
        """Refuse (raise :class:`CacheRefused`) unless replaying cached features gives the
        model's own outputs, and the prefix is deterministic in the model's current mode."""
        x = self._sample(4)
        if self._dataset_draws:
            raise CacheRefused(
                "reading a sample draws random numbers (random augmentation?), so the inputs "
                "change every epoch; hint: ff.Views(dataset, [...]) for a few fixed variants"
            )
        was_training = self.model.training
        try:
            self.model.eval()
            with torch.no_grad():
                full = self.model(x)
            feats = self.prefix(x)
            with torch.no_grad(), self.replaying(feats):
                replayed = self.model(feats)
        except CacheRefused:
            raise
        except Exception as exc:
            raise CacheRefused(
                f"the model cannot be cut after block {self.boundary}: {exc}"
            ) from exc
        finally:
            self.model.train(was_training)
        if not isinstance(full, torch.Tensor) or not isinstance(replayed, torch.Tensor):
            raise CacheRefused("the model does not return a tensor")
        if full.shape != replayed.shape or not torch.allclose(full, replayed, atol=atol, rtol=rtol):
            raise CacheRefused(
                f"the model cannot be cut after block {self.boundary}: the rest of the "
                "network uses more than the prefix's last output (e.g. a skip connection)"
            )
        # batch statistics: a norm layer in train mode makes each output depend on its batch
        for m in self._plan.modules:
            for sub in m.modules():
                if (
                    is_norm_layer(sub)
                    and sub.training
                    and isinstance(sub, nn.modules.batchnorm._NormBase)
                ):
                    raise CacheRefused(
                        f"a {type(sub).__name__} in the frozen prefix is in train mode, so its "
                        "output depends on the batch and its statistics move (norm='ignore' or "
                        "'train'); hint: freeze with norm='eval'"
                    )
        # determinism in the current (training) mode: same output, no random number drawn
        cpu = torch.get_rng_state()
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        a = self.prefix(x)
        b = self.prefix(x)
        drew = not torch.equal(cpu, torch.get_rng_state()) or (
            cuda is not None
            and any(not torch.equal(u, v) for u, v in zip(cuda, torch.cuda.get_rng_state_all()))
        )
        if drew:
            torch.set_rng_state(cpu)
            if cuda is not None:
                torch.cuda.set_rng_state_all(cuda)
            raise CacheRefused(
                "the frozen prefix draws random numbers in train mode (dropout or stochastic "
                "depth in frozen blocks); hint: freeze with eval_frozen=True"
            )
        if not torch.equal(a, b):
            raise CacheRefused("the frozen prefix is not deterministic in train mode")

    # ------------------------------------------------------------------ building
    def build(self) -> FeatureCache:
        """Run the prefix once over the whole dataset (in dataset order); with a ``source``,
        only the blocks after its cut, on its features. A failed or interrupted build frees
        what it had written (memory-mapped file included) before raising."""
        try:
            if self.source is not None:
                return self._build_from_source(self.source)
            return self._build_from_inputs()
        except BaseException:
            self.close()
            raise

    def _build_from_inputs(self) -> FeatureCache:
        views = self.views
        parts: list[Any] = (
            [_OneView(views, v) for v in range(len(views.views))]
            if views is not None
            else [self.loader.dataset]
        )
        n = sum(len(part) for part in parts)
        feats: torch.Tensor | np.memmap[Any, Any] | None = None
        targets: list[torch.Tensor] = []
        pos = 0
        for part in parts:
            ordered = DataLoader(
                part,
                batch_size=self.loader.batch_size or 64,
                shuffle=False,
                num_workers=self.loader.num_workers,
                collate_fn=self.loader.collate_fn,
                generator=torch.Generator(),  # leave the global RNG untouched
            )
            for batch in ordered:
                if not isinstance(batch, (list, tuple)) or len(batch) < 2:
                    raise CacheRefused("batches must be (inputs, targets)")
                f = self.prefix(batch[0].to(self.device))
                feats = self._store(feats, n, pos, f)
                targets.append(torch.as_tensor(batch[1]))
                pos += len(f)
        if feats is None or pos != n:
            raise CacheRefused(f"the dataset yielded {pos} samples, expected {n}")
        self.features = feats if isinstance(feats, torch.Tensor) else torch.from_numpy(feats)
        self.targets = torch.cat(targets)
        return self

    def _build_from_source(self, source: FeatureCache) -> FeatureCache:
        if source.features is None or source.targets is None or not source.still_valid():
            raise CacheRefused("the source cache is gone or its prefix changed")
        n = len(source.targets)
        step = self.loader.batch_size or 64
        feats: torch.Tensor | np.memmap[Any, Any] | None = None
        for pos in range(0, n, step):
            inputs = source.features[pos : pos + step].to(self.device)
            with source.replaying(inputs):
                f = self.prefix(inputs)
            feats = self._store(feats, n, pos, f)
        if feats is None:
            raise CacheRefused("the dataset is empty")
        self.features = feats if isinstance(feats, torch.Tensor) else torch.from_numpy(feats)
        self.targets = source.targets
        return self

    def _store(
        self, feats: torch.Tensor | np.memmap[Any, Any] | None, n: int, pos: int, f: torch.Tensor
    ) -> torch.Tensor | np.memmap[Any, Any]:
        """Write the batch ``f`` at row ``pos`` of the ``n``-row store (allocated on first use)."""
        if feats is None:
            feats = self._allocate(n, f)
        if isinstance(feats, torch.Tensor):
            feats[pos : pos + len(f)] = f
        else:
            feats[pos : pos + len(f)] = f.cpu().numpy()
        return feats

    def _allocate(self, n: int, sample: torch.Tensor) -> torch.Tensor | np.memmap[Any, Any]:
        shape = (n, *sample.shape[1:])
        size = math.prod(shape) * sample.element_size()
        if size <= self.max_bytes:
            return torch.empty(shape, dtype=sample.dtype, device=sample.device)
        if self.disk_dir is False:
            raise CacheRefused(
                f"the features need {size / 2**20:.0f} MiB, over the {self.max_bytes / 2**20:.0f}"
                " MiB limit, and disk caching is off"
            )
        directory = None if self.disk_dir in (None, True) else os.fspath(self.disk_dir)  # type: ignore[arg-type]
        fd, path = tempfile.mkstemp(prefix="freezeflow-cache-", suffix=".npy", dir=directory)
        os.close(fd)
        self._memmap_path = path
        dtype = torch.empty((), dtype=sample.dtype).numpy().dtype
        return np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)

    def close(self) -> None:
        """Free the features (and delete the memory-mapped file, if any)."""
        self.features = None
        self.targets = None
        if self._memmap_path is not None:
            with contextlib.suppress(OSError):
                os.remove(self._memmap_path)
            self._memmap_path = None

    @property
    def nbytes(self) -> int:
        if self.features is None:
            return 0
        return self.features.numel() * self.features.element_size()

    # ------------------------------------------------------------------ replay
    def batches(self) -> CachedEpoch:
        """One epoch of ``(features, targets)`` batches, in the order the original loader
        would give them (its sampler and generator are reused)."""
        if self.features is None or self.targets is None:
            raise CacheRefused("build() the cache first")
        n = len(self.views) if self.views is not None else len(self.targets)
        order: DataLoader[int] = DataLoader(
            _Indices(n),
            batch_sampler=self.loader.batch_sampler,
            generator=self.loader.generator,
            collate_fn=_as_index_tensor,
        )
        return CachedEpoch(self, iter(order), n)

    def __len__(self) -> int:
        return len(self.loader)


class CachedEpoch(Iterator[tuple[torch.Tensor, torch.Tensor]]):
    """An epoch of cached batches (:meth:`FeatureCache.batches`); :meth:`rest_uncached`
    gives the batches still to come as the original loader would (inputs, not features),
    for when the prefix stops being frozen in the middle of the epoch."""

    def __init__(self, cache: FeatureCache, order: Iterator[torch.Tensor], n: int) -> None:
        self.cache, self.order, self.n = cache, order, n
        self.views = cache.views

    def __iter__(self) -> CachedEpoch:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        idx = next(self.order)
        features, targets = self.cache.features, self.cache.targets
        if features is None or targets is None:
            raise RuntimeError("the cache was closed during the epoch")
        if self.views is not None:  # one draw per sample, in order, as the uncached loader's
            idx = idx + self.n * torch.tensor([self.views.draw() for _ in range(len(idx))])
        return features[idx].to(self.cache.device), targets[idx]

    def rest_uncached(self) -> Iterator[Any]:
        """The rest of the epoch's batches, read from the dataset and collated."""
        dataset: Any = self.cache.loader.dataset
        collate: Any = self.cache.loader.collate_fn
        for idx in self.order:
            yield collate([dataset[int(i)] for i in idx])


class _Replay:
    """Stands in for the module that ends the prefix: returns the cached batch."""

    def __init__(self, features: torch.Tensor | None) -> None:
        self.features = features

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.features is None:
            raise RuntimeError("no cached features set for this forward pass")
        return self.features


def _passthrough(x: Any, *args: Any, **kwargs: Any) -> Any:
    return x


class _Indices(Dataset[int]):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def _as_index_tensor(batch: Sequence[int]) -> torch.Tensor:
    return torch.as_tensor(batch, dtype=torch.long)


def _model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


_RngState = tuple[torch.Tensor, Any, Any]


def _global_rng() -> _RngState:
    """The global random states a dataset may draw from: torch (CPU), Python, NumPy."""
    return torch.get_rng_state(), random.getstate(), np.random.get_state()


def _same_rng(a: _RngState, b: _RngState) -> bool:
    return (
        torch.equal(a[0], b[0])
        and a[1] == b[1]
        and a[2][0] == b[2][0]
        and bool(np.array_equal(a[2][1], b[2][1]))
        and tuple(a[2][2:]) == tuple(b[2][2:])
    )


def _set_global_rng(state: _RngState) -> None:
    torch.set_rng_state(state[0])
    random.setstate(state[1])
    np.random.set_state(state[2])
