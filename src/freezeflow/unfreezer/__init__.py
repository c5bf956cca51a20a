"""The one place where the model meets the optimizer.

- :mod:`~freezeflow.unfreezer.gradual`: :class:`GradualUnfreezer`, which applies a schedule.
- :mod:`~freezeflow.unfreezer.layout`: the param groups of a schedule on a model.
- :mod:`~freezeflow.unfreezer.optimizer`: the optimizer the unfreezer manages.
- :mod:`~freezeflow.unfreezer.lr_schedulers`: LR schedulers adopted and rescaled (the only
  module that touches torch's scheduler internals).
- :mod:`~freezeflow.unfreezer.transition`: :class:`Transition`, a recorded stage change.
- :mod:`~freezeflow.unfreezer.state`: the saved state, to resume mid-schedule.
- :mod:`~freezeflow.unfreezer.plan`: what a schedule will do, before training.
- :mod:`~freezeflow.unfreezer.planner`: stage planners, chosen once per unfreezer by the
  schedule: what each stage trains and at which LR scales.
- :mod:`~freezeflow.unfreezer.auto`: the planner of an :func:`~freezeflow.auto` schedule
  (its measurements in ``freezeflow.unfreezer.measure``, the step signals of its speed
  mode in :mod:`~freezeflow.unfreezer.signals`).
- :mod:`~freezeflow.unfreezer.clock`: the run's wall clock, for a time budget.

Builds on :mod:`freezeflow.core` and :mod:`freezeflow.schedules`; never imports the training
loop or the integrations.
"""

from freezeflow.unfreezer.auto import AutoPlanner, Decision
from freezeflow.unfreezer.gradual import GradualUnfreezer
from freezeflow.unfreezer.layout import GroupSpec, Layout, default_no_decay, param_groups
from freezeflow.unfreezer.plan import Plan, StagePlan, plan
from freezeflow.unfreezer.planner import Probe, StagePlanner, register_planner
from freezeflow.unfreezer.transition import Transition

__all__ = [
    "AutoPlanner",
    "Decision",
    "GradualUnfreezer",
    "GroupSpec",
    "Layout",
    "Plan",
    "Probe",
    "StagePlan",
    "StagePlanner",
    "Transition",
    "default_no_decay",
    "param_groups",
    "plan",
    "register_planner",
]
