"""Integrations with training frameworks.

Each integration lives in its own module and imports its framework only when that module is
imported, so ``import freezeflow`` never pulls in Lightning or transformers:

- :mod:`freezeflow.integrations.lightning`: ``FreezeflowCallback`` for ``lightning.Trainer``
  (extra ``freezeflow[lightning]``).
- :mod:`freezeflow.integrations.transformers`: ``FreezeflowTrainerCallback`` and
  ``FreezeflowTrainer`` for the Hugging Face ``Trainer`` (extra ``freezeflow[transformers]``).
"""

from __future__ import annotations

__all__: list[str] = []
