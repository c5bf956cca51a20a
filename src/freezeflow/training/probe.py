"""The training batches and the loss that an :func:`freezeflow.auto` schedule measures when a
stage begins (:class:`~freezeflow.unfreezer.planner.Probe`), made from ``fit()``'s arguments.

Batches are drawn from the training *dataset* with their own seeded generator, never from
the loader's iterator, so measuring changes neither the order of the epoch's batches nor any
random stream training draws from; every rank of a torchrun job draws the same batches.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from freezeflow.errors import FreezeflowWarning
from freezeflow.training.batch import split_batch, to_device
from freezeflow.unfreezer.planner import Probe

__all__ = ["probe_for", "probe_over"]


def _draw(train_data: Iterable[Any], n: int, seed: int) -> list[Any]:
    loader = train_data if isinstance(train_data, DataLoader) else None
    dataset = getattr(loader, "dataset", None)
    size = loader.batch_size if loader is not None else None
    if dataset is not None and size and hasattr(dataset, "__len__") and len(dataset) > 0:
        if n * size > len(dataset):
            warnings.warn(
                f"ff.auto's probe needs {n} batches of {size} ({n * size} samples) but the "
                f"training data has {len(dataset)}, so the batches a trial is scored on repeat "
                "samples it trained on (the scores flatter every window alike); hint: fewer "
                "auto(trial_steps=, probe_batches=), or a smaller batch size",
                FreezeflowWarning,
                stacklevel=2,
            )
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
        picks = [int(i) for i in order.repeat(1 + (n * size) // len(dataset))[: n * size]]
        collate = loader.collate_fn if loader is not None else None
        assert collate is not None
        return [collate([dataset[i] for i in picks[k * size : (k + 1) * size]]) for k in range(n)]
    out: list[Any] = []  # an iterable of batches: its first batches, cycled if too few
    while len(out) < n:
        before = len(out)
        for batch in train_data:
            out.append(batch)
            if len(out) == n:
                break
        if len(out) == before:
            break
    return out


def probe_over(
    train_data: Callable[[], Iterable[Any]],
    loss: Callable[[nn.Module, Any], Tensor],
    move: Callable[[Any], Any],
) -> Probe:
    """A probe over the training data ``train_data()`` returns when a decision is made (a
    framework may build its loader late): batches drawn with the decision's seed from the
    loader's dataset (its collate function, its batch size), or the first batches of any
    other re-iterable, each put on the device by ``move``; ``loss(model, batch)``."""

    def batches(n: int, seed: int) -> Sequence[Any]:
        return [move(b) for b in _draw(train_data(), n, seed)]

    return Probe(batches=batches, loss=loss)


def probe_for(
    train_data: Iterable[Any],
    loss_fn: Callable[[Any, Any], Tensor],
    device: torch.device,
) -> Probe:
    """``fit()``'s probe: its training data, and ``loss_fn(model(inputs), targets)``."""

    def loss(model: nn.Module, batch: Any) -> Tensor:
        inputs, targets = split_batch(batch)
        return loss_fn(model(inputs), targets)

    return probe_over(lambda: train_data, loss, lambda b: to_device(b, device))
