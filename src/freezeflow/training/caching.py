"""``fit(cache=True)``: the :class:`FeatureCaching` callback, which computes the frozen prefix
of the model once per stage and feeds the loop cached features instead of inputs.

With a schedule, the blocks that stay frozen until it ends are computed once, as a shared
*base*; each stage's cache is then built from the base's features by running only the frozen
blocks after it, and a stage whose frozen prefix is the base (or whose own cut is refused)
replays the base. A stage that cannot be cached trains on the inputs, with a one-line note
saying why; so does the rest of an epoch in which a step trigger unfreezes cached blocks.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from freezeflow.distributed.process_group import world_size
from freezeflow.errors import CacheRefused, TrainingArgumentError, check_int
from freezeflow.training.cache import CachedEpoch, FeatureCache
from freezeflow.training.prefix import frozen_prefix
from freezeflow.training.run import Callback, Run
from freezeflow.unfreezer.gradual import Transition

__all__ = ["FeatureCaching"]


def _mib(train: FeatureCache, val: FeatureCache | None) -> str:
    return f"{(train.nbytes + (val.nbytes if val is not None else 0)) / 2**20:.1f} MiB"


class FeatureCaching(Callback):
    """Train on cached features of the frozen prefix (``fit(cache=True)`` adds one; pass
    ``fit(cache=FeatureCaching(...))`` to choose where large caches go).

    For training inputs that are deterministic (no random augmentation, or a
    :class:`~freezeflow.Views`): at each stage, the frozen prefix of the model is computed
    once over the training and validation data (:class:`~freezeflow.FeatureCache`) and the
    rest of the model trains on its output. Needs ``DataLoader`` objects over map-style
    datasets and a deterministic frozen prefix (norm layers in eval mode; ``eval_frozen=True``
    on the :class:`~freezeflow.GradualUnfreezer` for dropout or stochastic depth in frozen
    blocks). Results equal the uncached run up to float rounding. Off under ``torchrun``
    (with a note): the cache would hold the whole dataset, not this rank's shard.

    Args:
        directory: where features above ``max_bytes`` go, as a memory-mapped file (default:
            a temporary directory).
        max_bytes: how many bytes of features (training and validation, each) to keep in
            memory.

    Raises:
        TrainingArgumentError: ``max_bytes`` is an integer < 0 (``TrainingTypeError``: not
            an integer).

    Example:
        >>> FeatureCaching(max_bytes=1 << 20).max_bytes
        1048576
    """

    def __init__(self, directory: str | Path | None = None, max_bytes: int = 2 << 30) -> None:
        self.directory = directory
        self.max_bytes = check_int(
            "FeatureCaching(max_bytes=)", max_bytes, 0, TrainingArgumentError
        )
        self.enabled = True
        self.cache: FeatureCache | None = None
        self.val_cache: FeatureCache | None = None
        self.base: FeatureCache | None = None
        """The blocks frozen until the schedule ends, cached once for all stages."""
        self.val_base: FeatureCache | None = None
        self.cached_for: int | None = None
        """The frozen prefix (in blocks) the caches were last set up, or refused, for."""
        self._stage_changed = False

    # ------------------------------------------------------------------ hooks
    def on_train_start(self, run: Run) -> None:
        if world_size() > 1:
            self.enabled = False
            run.note(
                "feature caching is off under DDP: the cache is built per process over the "
                "whole dataset and replays batches in its own order, not this rank's shard"
            )

    def on_epoch_start(self, run: Run) -> None:
        if self.enabled:
            self._refresh(run)

    def on_stage_change(self, run: Run, transition: Transition) -> None:
        self._stage_changed = True

    def batches(self, run: Run, train: bool) -> Iterator[Any] | None:
        cache = self.cache if train else self.val_cache
        if cache is None:
            return None
        epoch = cache.batches()  # now: it draws the epoch's shuffle, as iter(loader) would
        if not train:
            return self._replay(cache, epoch)
        self._stage_changed = False
        return self._train_batches(run, cache, epoch)

    def on_teardown(self, run: Run) -> None:
        self._close(keep_base=False)

    # ------------------------------------------------------------------ replay
    @staticmethod
    def _replay(cache: FeatureCache, epoch: CachedEpoch) -> Iterator[Any]:
        with cache.replaying() as replay:
            for features, targets in epoch:
                replay.features = features
                yield features, targets

    def _train_batches(self, run: Run, cache: FeatureCache, epoch: CachedEpoch) -> Iterator[Any]:
        """The epoch's cached batches; when a stage begins mid-epoch and unfreezes cached
        blocks, the rest of the epoch (and its evaluation) runs on the inputs, and the next
        epoch caches the new prefix."""
        with cache.replaying() as replay:
            for features, targets in epoch:
                replay.features = features
                yield features, targets
                if self._stage_changed:  # a step trigger fired during that batch
                    self._stage_changed = False
                    if not cache.still_valid():
                        break
            else:
                return
        run.note("a stage unfroze cached blocks mid-epoch: the rest of the epoch runs uncached")
        self._close(keep_base=True)
        self.cached_for = None
        yield from epoch.rest_uncached()

    # ------------------------------------------------------------------ building
    def _refresh(self, run: Run) -> None:
        """(Re)build the caches when the frozen prefix changed (a new stage), or say in one
        line why this stage trains without them."""
        model = run.model
        k = frozen_prefix(model)
        if self.cached_for == k and (self.cache is None or self.cache.still_valid()):
            return  # set up (or refused) for this prefix already
        self._close(keep_base=True)
        self.cached_for = k
        floor = k
        if run.unfreezer is not None:
            floor = min(k, frozen_prefix(model, will_train=run.unfreezer.trained_later()))
        was_training = model.training
        try:
            if 0 < floor < k:
                self._ensure_base(run, floor)
            base = self.base
            if base is not None and not (base.still_valid() and base.boundary <= k):
                self._close(keep_base=False)  # its blocks are no longer all frozen
                base = None
            if base is not None and base.boundary == k:
                self.cache, self.val_cache = base, self.val_base
                run.note(f"replaying the cached blocks 0-{k - 1}")
                return
            started = time.perf_counter()
            try:
                self.cache, self.val_cache = self._pair(run, None, base, self.val_base)
            except CacheRefused as why:
                if base is None:
                    run.note(f"training without the feature cache this stage: {why}")
                    return
                self.cache, self.val_cache = base, self.val_base
                run.note(f"replaying only the cached blocks 0-{base.boundary - 1}: {why}")
                return
            first = base.boundary if base is not None else 0
            run.note(
                f"caching the frozen prefix (blocks {first}-{self.cache.boundary - 1}"
                f"{' on the cached blocks before them' if base is not None else ''}): "
                f"{_mib(self.cache, self.val_cache)} of features in "
                f"{time.perf_counter() - started:.1f} s"
            )
        finally:
            model.train(was_training)

    def _ensure_base(self, run: Run, floor: int) -> None:
        """Build the shared caches of the ``floor`` blocks frozen until the schedule ends
        (once; left unset when they cannot be cached, and each stage then caches on its
        own)."""
        base = self.base
        if base is not None and base.still_valid() and base.boundary == floor:
            return
        self._close(keep_base=False)
        started = time.perf_counter()
        try:
            self.base, self.val_base = self._pair(run, floor, None, None)
        except CacheRefused:
            return
        run.note(
            f"caching blocks 0-{floor - 1}, frozen for the rest of the schedule: "
            f"{_mib(self.base, self.val_base)} of features in "
            f"{time.perf_counter() - started:.1f} s"
        )

    def _pair(
        self,
        run: Run,
        boundary: int | None,
        base: FeatureCache | None,
        val_base: FeatureCache | None,
    ) -> tuple[FeatureCache, FeatureCache | None]:
        """Build and return the training cache (in train mode) and the validation cache (in
        eval mode, as evaluation computes it) of the prefix of ``boundary`` blocks (default:
        the frozen prefix), from ``base``'s features when given. On any failure both are
        freed."""
        options: dict[str, Any] = {"disk_dir": self.directory, "max_bytes": self.max_bytes}
        train = val = None
        try:
            run.model.train()
            train = FeatureCache(
                run.model,
                run.train_data,
                boundary=boundary,
                device=run.device,
                source=base,
                **options,
            )
            train.check()
            if run.val_data is not None:
                val = FeatureCache(
                    run.model,
                    run.val_data,
                    boundary=train.boundary,
                    device=run.device,
                    source=val_base if base is not None else None,
                    **options,
                )
            train.build()
            run.model.eval()
            if val is not None:
                val.build()
        except BaseException:
            for c in (train, val):
                if c is not None:
                    c.close()
            raise
        return train, val

    def _close(self, *, keep_base: bool) -> None:
        """Free the stage caches (and the shared base unless ``keep_base``)."""
        keep = {id(self.base), id(self.val_base)} if keep_base else set()
        for c in (self.cache, self.val_cache, self.base, self.val_base):
            if c is not None and id(c) not in keep:
                c.close()
        self.cache = self.val_cache = None
        if not keep_base:
            self.base = self.val_base = None
