"""freezeflow: freeze and unfreeze layers of pretrained PyTorch networks.

Policies say *what* (``name``, ``regex``, ``of_type``, ``blocks``, ``layers``, ``where``,
combined with ``| & - ~``), ``freeze``/``unfreeze`` act on a model, and ``summary`` shows the
result.
"""

from freezeflow.blocks import Block, clear_blocks, find_blocks, is_norm_layer, set_blocks
from freezeflow.errors import (
    CheckpointError,
    EmptySelectionError,
    FreezeflowError,
    FreezeflowWarning,
    OptimizerError,
    PolicyError,
    PolicyTypeError,
    ScheduleError,
    StateError,
    TiedParameterError,
    TrainingError,
)
from freezeflow.freezing import NormMode, freeze, frozen, norm_mode, unfreeze
from freezeflow.policy import (
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
from freezeflow.selection import Selection
from freezeflow.summary import Summary, summary

__version__ = "0.1.0.dev0"

__all__ = [
    "ALL",
    "NONE",
    "Block",
    "CheckpointError",
    "EmptySelectionError",
    "FreezeflowError",
    "FreezeflowWarning",
    "NormMode",
    "OptimizerError",
    "Policy",
    "PolicyError",
    "PolicyTypeError",
    "ScheduleError",
    "Selection",
    "StateError",
    "Summary",
    "TiedParameterError",
    "TrainingError",
    "__version__",
    "as_policy",
    "blocks",
    "clear_blocks",
    "everything",
    "find_blocks",
    "first",
    "freeze",
    "frozen",
    "is_norm_layer",
    "last",
    "layers",
    "name",
    "norm_layers",
    "norm_mode",
    "nothing",
    "of_type",
    "regex",
    "set_blocks",
    "summary",
    "unfreeze",
    "where",
]
