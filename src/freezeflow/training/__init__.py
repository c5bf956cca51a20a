"""Training: :func:`~freezeflow.fit`, its run state and history, callbacks, checkpoints and
the feature cache of frozen blocks.

The top layer of the library below the integrations and the command line.
"""

from freezeflow.training.cache import FeatureCache, Views, frozen_prefix
from freezeflow.training.callbacks import Callback, EarlyStopping, ProgressBar
from freezeflow.training.checkpoint import Checkpoint, find_checkpoint, load_checkpoint
from freezeflow.training.loop import History, Run, accuracy, fit, seed_everything

__all__ = [
    "Callback",
    "Checkpoint",
    "EarlyStopping",
    "FeatureCache",
    "History",
    "ProgressBar",
    "Run",
    "Views",
    "accuracy",
    "find_checkpoint",
    "fit",
    "frozen_prefix",
    "load_checkpoint",
    "seed_everything",
]
