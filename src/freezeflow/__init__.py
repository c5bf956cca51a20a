"""freezeflow: freeze and unfreeze layers of pretrained PyTorch networks.

Policies say *what* (``name``, ``regex``, ``of_type``, ``blocks``, ``layers``, ``where``,
combined with ``| & - ~``), ``freeze``/``unfreeze`` act on a model, and ``summary`` shows the
result.
"""

from freezeflow.core.blocks import Block, clear_blocks, find_blocks, is_norm_layer, set_blocks
from freezeflow.core.freezing import NormMode, freeze, frozen, norm_mode, unfreeze
from freezeflow.core.heads import replace_head
from freezeflow.core.policy import (
    ALL,
    NONE,
    Policy,
    as_policy,
    blocks,
    everything,
    first,
    last,
    layers,
    name,
    norm_layers,
    nothing,
    of_type,
    regex,
    where,
)
from freezeflow.core.selection import Selection
from freezeflow.core.summary import Summary, summary
from freezeflow.errors import (
    CheckpointError,
    EmptySelectionError,
    FreezeflowError,
    FreezeflowWarning,
    HeadNotFoundError,
    OptimizerError,
    PolicyError,
    PolicyTypeError,
    ScheduleError,
    StateError,
    TiedParameterError,
    TrainingError,
)
from freezeflow.schedules.schedule import (
    Schedule,
    Stage,
    at_epoch,
    at_fraction,
    at_step,
    chain_thaw,
    layerwise_decay,
    on_plateau,
    progressive_freezing,
    seed_keras,
    seed_pytorch,
    two_stage,
    ulmfit,
)
from freezeflow.training.cache import FeatureCache, Views
from freezeflow.training.callbacks import Callback, EarlyStopping, ProgressBar
from freezeflow.training.checkpoint import Checkpoint, load_checkpoint
from freezeflow.training.loop import History, Run, fit
from freezeflow.unfreezer.gradual import GradualUnfreezer, Transition
from freezeflow.unfreezer.layout import default_no_decay, param_groups
from freezeflow.unfreezer.plan import Plan, plan

__version__ = "0.1.0.dev0"

__all__ = [
    "ALL",
    "NONE",
    "Block",
    "Callback",
    "Checkpoint",
    "CheckpointError",
    "EarlyStopping",
    "EmptySelectionError",
    "FeatureCache",
    "FreezeflowError",
    "FreezeflowWarning",
    "GradualUnfreezer",
    "HeadNotFoundError",
    "History",
    "NormMode",
    "OptimizerError",
    "Plan",
    "Policy",
    "PolicyError",
    "PolicyTypeError",
    "ProgressBar",
    "Run",
    "Schedule",
    "ScheduleError",
    "Selection",
    "Stage",
    "StateError",
    "Summary",
    "TiedParameterError",
    "TrainingError",
    "Transition",
    "Views",
    "__version__",
    "as_policy",
    "at_epoch",
    "at_fraction",
    "at_step",
    "blocks",
    "chain_thaw",
    "clear_blocks",
    "default_no_decay",
    "everything",
    "find_blocks",
    "first",
    "fit",
    "freeze",
    "frozen",
    "is_norm_layer",
    "last",
    "layers",
    "layerwise_decay",
    "load_checkpoint",
    "name",
    "norm_layers",
    "norm_mode",
    "nothing",
    "of_type",
    "on_plateau",
    "param_groups",
    "plan",
    "progressive_freezing",
    "regex",
    "replace_head",
    "seed_keras",
    "seed_pytorch",
    "set_blocks",
    "summary",
    "two_stage",
    "ulmfit",
    "unfreeze",
    "where",
]
