"""A stage change, as the :class:`~freezeflow.GradualUnfreezer` records and reports it."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from freezeflow.errors import StateError

__all__ = ["Transition"]

_RENAMED = {"stage": "stage_index", "trainable": "n_trainable"}
"""Keys of records written before the renames (old -> new), still read back."""


@dataclass(frozen=True)
class Transition:
    """A stage change, as recorded in :attr:`GradualUnfreezer.history
    <freezeflow.GradualUnfreezer.history>` (the first stage's start included).

    Example:
        >>> import torch.nn as nn, freezeflow as ff
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
        >>> two = [ff.Stage("1", lr=1e-3), ff.Stage("0", lr=1e-4, start=1)]
        >>> uf = ff.GradualUnfreezer(net, two)
        >>> t = uf.on_epoch_start(1)[0]
        >>> (t.stage_index, t.name, t.epoch, t.n_trainable, t.reason)
        (1, 'stage1', 1, 9, 'epoch 1')
    """

    stage_index: int
    """Index of the stage that begins."""
    name: str
    """Its name (``Stage.name`` or ``stage<k>``)."""
    epoch: int
    step: int
    """Optimizer steps done before it began."""
    n_trainable: int
    """Trainable parameter values after the transition."""
    lrs: dict[str, float]
    """Each active group's LR right after the transition."""
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (what :class:`~freezeflow.History` records hold)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Transition:
        """Read :meth:`to_dict`'s output back (records with the old keys ``stage`` and
        ``trainable`` too).

        Raises:
            StateError: a field is missing.
        """
        known = {f.name for f in fields(cls)}
        values = {_RENAMED.get(k, k): v for k, v in data.items()}
        missing = sorted(known - values.keys())
        if missing:
            raise StateError(f"a transition record lacks {missing}: {dict(data)!r}")
        return cls(**{k: values[k] for k in known})

    @property
    def stage(self) -> int:
        """Deprecated: use :attr:`stage_index`."""
        warnings.warn(
            "Transition.stage is deprecated; use Transition.stage_index",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.stage_index

    @property
    def trainable(self) -> int:
        """Deprecated: use :attr:`n_trainable`."""
        warnings.warn(
            "Transition.trainable is deprecated; use Transition.n_trainable",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.n_trainable
