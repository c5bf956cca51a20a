"""A stage change, as the :class:`~freezeflow.GradualUnfreezer` records and reports it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from freezeflow.errors import StateError

__all__ = ["Transition"]


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
        """Read :meth:`to_dict`'s output back.

        Raises:
            StateError: a field is missing, or a key is not a field.
        """
        known = [f.name for f in fields(cls)]
        missing = [k for k in known if k not in data]
        unknown = [k for k in data if k not in known]
        if missing or unknown:
            raise StateError(
                f"a transition record lacks {missing} and has unknown keys {unknown}: "
                f"{dict(data)!r}; expected the keys {known}; hint: pass what "
                "Transition.to_dict() wrote"
            )
        return cls(**{k: data[k] for k in known})
