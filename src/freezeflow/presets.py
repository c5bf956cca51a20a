"""Schedules for the common fine-tuning recipes (``ff.presets.two_stage(...)``).

A public namespace: the presets are defined in :mod:`freezeflow.schedules.presets`.
Every preset returns a plain :class:`~freezeflow.Schedule` you can print, edit and save;
the same idea has the same argument name in every preset (``head_lr``/``lr``,
``head_epochs``/``epochs_per_stage``, ``lr_decay``, ``weight_decay``).
"""

from freezeflow.schedules.presets import (
    chain_thaw,
    layerwise_decay,
    progressive_freezing,
    two_stage,
    ulmfit,
)

__all__ = ["chain_thaw", "layerwise_decay", "progressive_freezing", "two_stage", "ulmfit"]
