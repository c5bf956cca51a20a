"""Snapshots of the random number generators training draws from.

One snapshot format for every use: checkpoints save it (tensors and plain values only, so it
loads with ``torch.load(weights_only=True)``), a mid-epoch resume replays an epoch's start
from it, and the feature cache uses it to check that reading samples or running the frozen
prefix draws no random number (and to undo the draws when it does).

Example:
    >>> import random, torch
    >>> before = rng_state()
    >>> a = (torch.rand(1), random.random())
    >>> same_rng_state(before, rng_state())
    False
    >>> set_rng_state(before)
    >>> (torch.rand(1), random.random()) == a
    True
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from freezeflow.errors import CheckpointError

__all__ = ["data_generators", "rng_state", "same_rng_state", "set_rng_state"]


def data_generators(data: Any) -> list[torch.Generator]:
    """The CPU ``torch.Generator`` objects that decide a ``DataLoader``'s shuffle (the
    loader's, its sampler's, its batch sampler's sampler's), each once."""
    found: dict[int, torch.Generator] = {}
    sampler = getattr(data, "sampler", None)
    batch_sampler = getattr(data, "batch_sampler", None)
    for owner in (data, sampler, getattr(batch_sampler, "sampler", None)):
        g = getattr(owner, "generator", None)
        if isinstance(g, torch.Generator) and g.device.type == "cpu":
            found.setdefault(id(g), g)
    return list(found.values())


def rng_state(*, cuda: bool = False, generators: Sequence[torch.Generator] = ()) -> dict[str, Any]:
    """The states of torch's CPU RNG, Python's ``random`` and NumPy's global RNG (and of
    every CUDA device with ``cuda=True``, and of ``generators``), as tensors and plain
    values."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": [version, list(internal), gauss],
        "numpy": [kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), pos, has_gauss, cached],
        "generators": [g.get_state() for g in generators],
    }
    if cuda:
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(
    state: dict[str, Any], *, cuda: bool = True, generators: Sequence[torch.Generator] = ()
) -> None:
    """Put back what :func:`rng_state` returned (its CUDA states only with ``cuda=True``).

    Raises:
        CheckpointError: ``state`` holds another number of generator states than
            ``generators``.
    """
    if len(generators) != len(state["generators"]):
        raise CheckpointError(
            f"the checkpoint holds {len(state['generators'])} data-loader generator state(s), "
            f"this train_data has {len(generators)}; hint: resume with a DataLoader built the "
            "same way"
        )
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    for g, s in zip(generators, state["generators"]):
        g.set_state(s)
    if cuda and "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def same_rng_state(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two :func:`rng_state` snapshots are equal (no random number drawn between)."""
    if a.keys() != b.keys():
        return False
    return all(_equal(a[k], b[k]) for k in a)


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return bool(a == b)
