"""Callbacks for :func:`~freezeflow.fit` (``fit(callbacks=[...])``).

A public namespace: the classes are defined in :mod:`freezeflow.training`. Subclass
:class:`Callback` for your own; the hooks, their order and the run state they receive are
documented in :mod:`freezeflow.training.run`. ``fit(checkpoint=...)`` and
``fit(progress=...)`` also take a :class:`Checkpoint` and a :class:`ProgressBar`
(``fit(cache=...)`` takes a :class:`~freezeflow.training.FeatureCaching`).
"""

from freezeflow.training.callbacks import EarlyStopping, ProgressBar
from freezeflow.training.checkpoint import Checkpoint
from freezeflow.training.run import Callback

__all__ = ["Callback", "Checkpoint", "EarlyStopping", "ProgressBar"]
