"""Frozen-prefix feature caching: compute the frozen front of a model once, train the rest.

When every block before some point is frozen and deterministic (its norm layers in eval mode,
no dropout or stochastic depth active, no random number drawn) and the training inputs are
deterministic (no random augmentation), the output of that *prefix* is the same every epoch.
:class:`FeatureCache` computes it once per stage and replays it: the prefix modules are
replaced, for the duration of a ``with cache.replaying():`` block, by stubs that pass their
input through, and the module that finishes the prefix returns the cached batch. Everything
after the cut runs as usual, in train mode, with its own dropout and norm layers.

A model can be cut at a block boundary (:mod:`freezeflow.training.prefix`) when the prefix
hands exactly one tensor to the rest of the network. Rather than trusting a trace,
:meth:`FeatureCache.check` runs the model both ways on a few real samples and compares the
outputs; models that cannot be cut this way (skip connections across the cut, glue code that
reshapes the input, stochastic frozen blocks) are refused with a one-line reason, and
training goes on without the cache.

Batches are replayed in the order the original ``DataLoader`` would produce them (its sampler
and generator are reused), so a cached run consumes random numbers exactly like an uncached
one and gives the same loss curve up to floating-point rounding.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from freezeflow._torch_internals import NORM_BASE
from freezeflow.core.discovery import is_norm_layer
from freezeflow.errors import CacheRefused, TrainingError
from freezeflow.training.prefix import Cut, frozen_prefix
from freezeflow.training.rng import rng_state, same_rng_state, set_rng_state
from freezeflow.training.views import Views

__all__ = ["CachedEpoch", "FeatureCache"]


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
        self.cut = Cut(model, k, lambda: self._sample(2))
        """Where the model is cut (:class:`~freezeflow.training.prefix.Cut`)."""

    # ------------------------------------------------------------------ the cut
    def _sample(self, n: int = 4) -> torch.Tensor:
        # a Views is read through view 0, without drawing from its generator
        dataset: Any = self.views.only(0) if self.views is not None else self.loader.dataset
        before = rng_state()
        try:
            items = [dataset[i] for i in range(min(n, len(dataset)))]
        finally:  # reading samples here must not shift the training's random numbers
            self._dataset_draws = self._dataset_draws or not same_rng_state(before, rng_state())
            set_rng_state(before)
        if not items:
            raise CacheRefused("the dataset is empty")
        collate: Any = self.loader.collate_fn
        return _first_tensor(collate(items)).to(self.device)

    def still_valid(self) -> bool:
        """Whether the prefix is unchanged (same boundary, all still frozen)."""
        return self.cut.still_valid()

    def prefix(self, inputs: torch.Tensor) -> torch.Tensor:
        """Output of the frozen prefix for ``inputs`` (no gradient)."""
        return self.cut.prefix(inputs)

    def replaying(self, features: torch.Tensor | None = None) -> AbstractContextManager[Any]:
        """Within the block, the prefix modules pass their input through and the cut returns
        the features set on the yielded handle (``handle.features = batch``)."""
        return self.cut.replaying(features)

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
        for m in self.cut.modules:
            for sub in m.modules():
                if is_norm_layer(sub) and sub.training and isinstance(sub, NORM_BASE):
                    raise CacheRefused(
                        f"a {type(sub).__name__} in the frozen prefix is in train mode, so its "
                        "output depends on the batch and its statistics move (norm='ignore' or "
                        "'train'); hint: freeze with norm='eval'"
                    )
        # determinism in the current (training) mode: same output, no random number drawn
        cuda = torch.cuda.is_available()
        before = rng_state(cuda=cuda)
        a = self.prefix(x)
        b = self.prefix(x)
        if not same_rng_state(before, rng_state(cuda=cuda)):
            set_rng_state(before)
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
            [views.only(v) for v in range(len(views.views))]
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
            raise TrainingError(
                "the cache was closed during the epoch (features or targets are None); "
                "expected it open until the epoch ends; hint: close() a FeatureCache only "
                "after iterating over it"
            )
        if self.views is not None:  # one draw per sample, in order, as the uncached loader's
            idx = idx + self.n * torch.tensor([self.views.draw() for _ in range(len(idx))])
        return features[idx].to(self.cache.device), targets[idx]

    def rest_uncached(self) -> Iterator[Any]:
        """The rest of the epoch's batches, read from the dataset and collated."""
        dataset: Any = self.cache.loader.dataset
        collate: Any = self.cache.loader.collate_fn
        for idx in self.order:
            yield collate([dataset[int(i)] for i in idx])


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
