"""Callbacks for :func:`~freezeflow.fit` (``fit(callbacks=[...])``): every feature of the loop
besides training is one.

A public namespace: the classes are defined in :mod:`freezeflow.training`. Subclass
:class:`Callback` for your own; the hooks, their order and the run state they receive are
documented in :mod:`freezeflow.training.run`. :class:`Checkpoint` always runs last and
:class:`FeatureCaching` first, wherever they stand in the list.
"""

from freezeflow.training.caching import FeatureCaching
from freezeflow.training.callbacks import ClipGradNorm, EarlyStopping, ProgressBar
from freezeflow.training.checkpoint import Checkpoint
from freezeflow.training.run import Callback

__all__ = [
    "Callback",
    "Checkpoint",
    "ClipGradNorm",
    "EarlyStopping",
    "FeatureCaching",
    "ProgressBar",
]
