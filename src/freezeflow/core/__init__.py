"""What trains, without optimizers: the model's blocks, policies and their algebra,
selections, freezing and norm modes, summaries, and replacing a head.

Nothing here imports :mod:`freezeflow.schedules`, :mod:`freezeflow.unfreezer` or
:mod:`freezeflow.training` (an import-linter contract, docs/design.md).
"""

from freezeflow.core.depth import blocks, first, last, layers
from freezeflow.core.discovery import Block, clear_blocks, find_blocks, is_norm_layer, set_blocks
from freezeflow.core.freezing import NormMode, freeze, frozen, norm_mode, unfreeze
from freezeflow.core.heads import replace_head
from freezeflow.core.index import ModelIndex
from freezeflow.core.meta import on_meta_device
from freezeflow.core.policy import FreezePolicy, PolicyLike, as_policy, everything, name, nothing
from freezeflow.core.selection import Selection
from freezeflow.core.selectors import norm_layers, of_type, regex, where
from freezeflow.core.serialize import policy_from_data, policy_to_data
from freezeflow.core.summary import Summary, summary

__all__ = [
    "Block",
    "FreezePolicy",
    "ModelIndex",
    "NormMode",
    "PolicyLike",
    "Selection",
    "Summary",
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
    "on_meta_device",
    "policy_from_data",
    "policy_to_data",
    "regex",
    "replace_head",
    "set_blocks",
    "summary",
    "unfreeze",
    "where",
]
