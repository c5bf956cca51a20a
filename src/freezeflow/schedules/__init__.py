"""When things train, as data: triggers, :class:`~freezeflow.Stage` and
:class:`~freezeflow.Schedule`, their file formats, and the presets
(:mod:`freezeflow.presets`).

Builds on :mod:`freezeflow.core` only; never imports the unfreezer or the training loop.
"""
