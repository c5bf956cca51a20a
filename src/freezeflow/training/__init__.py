"""Training: :func:`~freezeflow.fit`, its run state and history, callbacks, checkpoints and
the feature cache of frozen blocks.

The top layer of the library below the integrations and the command line. Its modules, from
the top: ``loop`` (``fit``), ``setup`` (from arguments to a run), the callbacks that carry
its features (``checkpoint``, ``caching``, ``torchrun``, ``callbacks``), what they build on
(``checkpoint_files``, ``cache``, ``prefix``, ``views``, ``batch``), the run itself
(``run``: :class:`Run`, :class:`Progress`, :class:`Callback`), ``history`` and ``rng``.
"""

from freezeflow.training.batch import accuracy
from freezeflow.training.cache import FeatureCache
from freezeflow.training.caching import FeatureCaching
from freezeflow.training.callbacks import ClipGradNorm, EarlyStopping, ProgressBar
from freezeflow.training.checkpoint import Checkpoint
from freezeflow.training.checkpoint_files import find_checkpoint, load_checkpoint
from freezeflow.training.history import History
from freezeflow.training.loop import fit
from freezeflow.training.prefix import frozen_prefix
from freezeflow.training.run import Callback, Progress, Run
from freezeflow.training.setup import pick_device, seed_everything
from freezeflow.training.views import Views

__all__ = [
    "Callback",
    "Checkpoint",
    "ClipGradNorm",
    "EarlyStopping",
    "FeatureCache",
    "FeatureCaching",
    "History",
    "Progress",
    "ProgressBar",
    "Run",
    "Views",
    "accuracy",
    "find_checkpoint",
    "fit",
    "frozen_prefix",
    "load_checkpoint",
    "pick_device",
    "seed_everything",
]
