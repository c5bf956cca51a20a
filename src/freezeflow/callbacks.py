"""Callbacks for :func:`~freezeflow.fit` (``fit(callbacks=[...])``).

A public namespace: the classes are defined in :mod:`freezeflow.training`. Subclass
:class:`Callback` for your own; the hooks and the run state they receive are documented
there.
"""

from freezeflow.training.callbacks import Callback, EarlyStopping, ProgressBar
from freezeflow.training.checkpoint import Checkpoint

__all__ = ["Callback", "Checkpoint", "EarlyStopping", "ProgressBar"]
