"""Random augmentation that the feature cache can still cache: a few fixed views of each
sample, one drawn at random each time it is read."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset, get_worker_info

from freezeflow.errors import TrainingTypeError

__all__ = ["Views"]


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
            raise TrainingTypeError(
                f"Views(dataset={type(dataset).__name__}): expected a map-style dataset "
                "(with __getitem__ and __len__); hint: wrap an iterable dataset's samples in a "
                "list, or cache without views"
            )
        views = list(views)
        if not views or not all(callable(v) for v in views):
            raise TrainingTypeError(
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

    def only(self, v: int) -> Dataset[Any]:
        """The dataset seen through view ``v`` alone (reading it draws nothing)."""
        return _OneView(self, v)


class _OneView(Dataset[Any]):
    def __init__(self, views: Views, v: int) -> None:
        self.views, self.v = views, v

    def __len__(self) -> int:
        return len(self.views)

    def __getitem__(self, index: int) -> Any:
        return self.views.view(index, self.v)
