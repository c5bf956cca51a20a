"""Building a model on the meta device, without running its initialisation.

:func:`on_meta_device` lets a model be built for its structure alone (names, shapes, blocks):
no memory for its weights and none of the time its initialisers take, so that every timm or
transformers architecture can be inspected in a fraction of a second, before any download.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

__all__ = ["on_meta_device"]


class _SkipInPlace(TorchFunctionMode):
    """Returns a meta tensor's in-place operations (``normal_``, ``uniform_``, ``clamp_``,
    ``zero_``...) unperformed: on the meta device they compute nothing, but go through
    Python decompositions that cost more than the rest of building the model."""

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Sequence[type],
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
    ) -> Any:
        name = getattr(func, "__name__", "")
        if (
            name.endswith("_")
            and not name.endswith("__")
            and args
            and isinstance(args[0], torch.Tensor)
            and args[0].is_meta
        ):
            return args[0]
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def on_meta_device() -> Iterator[None]:
    """Build modules on the ``meta`` device, skipping their weight initialisation.

    Inside the block, parameters and buffers are created on the meta device (shapes, no
    data) and in-place initialisers on them are skipped. The model has every name, shape and
    module of the real one, so :func:`~freezeflow.find_blocks`, :func:`~freezeflow.summary`
    and every policy work on it; it cannot run a forward pass.

    Example:
        >>> import torchvision, freezeflow as ff
        >>> from freezeflow.core.meta import on_meta_device
        >>> with on_meta_device():
        ...     model = torchvision.models.resnet50()
        >>> model.fc.weight.is_meta, len(ff.find_blocks(model))
        (True, 18)
    """
    with torch.device("meta"), _SkipInPlace():
        yield
