"""freezeflow: freeze and unfreeze layers of pretrained PyTorch networks.

The names below are what a user types. Policies say *what* (``name``, ``regex``,
``of_type``, ``norm_layers``, ``where``, ``blocks``, ``layers``, ``first``, ``last``, combined
with ``| & - ~``); ``freeze``/``unfreeze`` act on a model and ``summary`` shows the result; a
``Schedule`` of ``Stage`` objects says *when* (or ``auto`` decides it while training); the
``GradualUnfreezer`` applies it to a model and its optimizer; ``fit`` trains. The rest
lives in namespaces: :mod:`freezeflow.presets`, :mod:`freezeflow.callbacks`,
:mod:`freezeflow.distributed`, :mod:`freezeflow.errors`, and the layers
:mod:`freezeflow.core`, :mod:`freezeflow.schedules`, :mod:`freezeflow.unfreezer`,
:mod:`freezeflow.training` (docs/design.md).
"""

from freezeflow import (
    callbacks,
    core,
    distributed,
    errors,
    presets,
    schedules,
    training,
    unfreezer,
)
from freezeflow.core.depth import blocks, first, last, layers
from freezeflow.core.discovery import find_blocks, set_blocks
from freezeflow.core.freezing import freeze, frozen, unfreeze
from freezeflow.core.heads import replace_head
from freezeflow.core.policy import FreezePolicy, everything, name, nothing
from freezeflow.core.selectors import norm_layers, of_type, regex, where
from freezeflow.core.summary import summary
from freezeflow.errors import (
    CheckpointError,
    FreezeflowError,
    FreezeflowWarning,
    OptimizerError,
    PolicyError,
    ScheduleError,
    TrainingError,
)
from freezeflow.schedules.auto import auto
from freezeflow.schedules.schedule import Schedule, Stage
from freezeflow.schedules.triggers import at_epoch, at_fraction, at_step, on_plateau
from freezeflow.training.cache import FeatureCache
from freezeflow.training.checkpoint import Checkpoint
from freezeflow.training.checkpoint_files import load_checkpoint
from freezeflow.training.history import History
from freezeflow.training.loop import fit
from freezeflow.training.views import Views
from freezeflow.unfreezer.gradual import GradualUnfreezer
from freezeflow.unfreezer.layout import param_groups
from freezeflow.unfreezer.plan import plan

__version__ = "0.1.0"

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "FeatureCache",
    "FreezePolicy",
    "FreezeflowError",
    "FreezeflowWarning",
    "GradualUnfreezer",
    "History",
    "OptimizerError",
    "PolicyError",
    "Schedule",
    "ScheduleError",
    "Stage",
    "TrainingError",
    "Views",
    "__version__",
    "at_epoch",
    "at_fraction",
    "at_step",
    "auto",
    "blocks",
    "callbacks",
    "core",
    "distributed",
    "errors",
    "everything",
    "find_blocks",
    "first",
    "fit",
    "freeze",
    "frozen",
    "last",
    "layers",
    "load_checkpoint",
    "name",
    "norm_layers",
    "nothing",
    "of_type",
    "on_plateau",
    "param_groups",
    "plan",
    "presets",
    "regex",
    "replace_head",
    "schedules",
    "set_blocks",
    "summary",
    "training",
    "unfreeze",
    "unfreezer",
    "where",
]
