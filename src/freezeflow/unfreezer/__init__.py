"""The one place where the model meets the optimizer: :class:`GradualUnfreezer`, the
param-group layout of a schedule, LR-scheduler adoption, and the plan of a schedule.

Builds on :mod:`freezeflow.core` and :mod:`freezeflow.schedules`; never imports the training
loop or the integrations.
"""

from freezeflow.unfreezer.gradual import GradualUnfreezer, Transition
from freezeflow.unfreezer.layout import GroupSpec, Layout, default_no_decay, param_groups
from freezeflow.unfreezer.plan import Plan, StagePlan, plan

__all__ = [
    "GradualUnfreezer",
    "GroupSpec",
    "Layout",
    "Plan",
    "StagePlan",
    "Transition",
    "default_no_decay",
    "param_groups",
    "plan",
]
