"""The private parts of torch that freezeflow reads, each in one place.

Each is a named constant or a small function whose docstring says what it reads and why no
public API gives it. ``tests/test__torch_internals.py`` pins every one to the torch release it
was read from, so a release that moves one fails that test, loudly, instead of giving a
silently wrong answer somewhere else. Where torch has a public API, freezeflow calls it
directly instead (``torch.compiler.reset()``, ``RandomSampler.num_samples``, and
``torch.compiler.config.recompile_limit`` where it exists). The LR
schedulers' private attributes are the exception: they live with the code that adopts and
rescales schedulers, in :mod:`freezeflow.unfreezer.lr_schedulers`, with tests of their own.

This module sits at the bottom of the package, beside :mod:`freezeflow.errors`: every layer
may import it, and it imports nothing of freezeflow.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "COMPILED_ORIGINAL",
    "DEFAULT_RECOMPILE_LIMIT",
    "NORM_BASE",
    "RECOMPILE_LIMIT_KEYS",
    "compiled_original",
    "recompile_limit",
]

NORM_BASE: type[nn.Module] = nn.modules.batchnorm._NormBase
"""``torch.nn.modules.batchnorm._NormBase``: the one base class of every BatchNorm and
InstanceNorm (``BatchNorm1d/2d/3d``, ``SyncBatchNorm``, the ``Lazy...`` variants and their
subclasses in other libraries), the norm layers that hold running statistics and a
``track_running_stats`` flag. torch has no public base class for them, and a tuple of the
public classes would miss a subclass of the private bases (``_BatchNorm``,
``_InstanceNorm``, ``_LazyNormBase``). Read for norm-layer discovery and for the feature
cache's check that no frozen norm layer still moves its statistics."""

RECOMPILE_LIMIT_KEYS: tuple[str, ...] = ("recompile_limit", "cache_size_limit")
"""The names, newest first, of Dynamo's per-function limit on compiled variants
(``recompile_limit`` since torch 2.6, ``cache_size_limit`` before; later releases keep the
old name as an alias)."""

DEFAULT_RECOMPILE_LIMIT = 8
"""What :func:`recompile_limit` returns when neither key is found (torch's default)."""

COMPILED_ORIGINAL = "_orig_mod"
"""The attribute of the ``OptimizedModule`` that ``torch.compile(module)`` returns which
holds ``module`` itself."""


def recompile_limit() -> int:
    """Dynamo's per-function limit on compiled variants: the public
    ``torch.compiler.config.recompile_limit`` where torch has it (torch 2.14.1 does, as an
    alias of the private setting), else the private ``torch._dynamo.config`` under one of
    :data:`RECOMPILE_LIMIT_KEYS`, where older releases without that public API keep it. Past
    the limit Dynamo stops compiling a function and runs it eagerly, which a schedule with
    many frozen sets reaches; :mod:`freezeflow.compile` warns before that happens."""
    public = getattr(torch.compiler, "config", None)
    for cfg in (public, torch._dynamo.config):
        for key in RECOMPILE_LIMIT_KEYS:
            value = getattr(cfg, key, None)
            if isinstance(value, int) and not isinstance(value, bool):
                return value
    return DEFAULT_RECOMPILE_LIMIT


def compiled_original(module: object) -> nn.Module | None:
    """The module that ``torch.compile`` wrapped when ``module`` is what it returned (its
    :data:`COMPILED_ORIGINAL` attribute), else ``None``. torch has no public API for it: the
    wrapper's class (``torch._dynamo.eval_frame.OptimizedModule``) is private as well. Read
    to unwrap a compiled model for checkpoints and for DDP."""
    if not isinstance(module, nn.Module):
        return None
    inner = getattr(module, COMPILED_ORIGINAL, None)
    return inner if isinstance(inner, nn.Module) else None
