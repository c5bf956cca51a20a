"""The exceptions freezeflow raises.

Every error derives from :class:`FreezeflowError` and also from the builtin that fits
(``ValueError``, ``TypeError``, ``RuntimeError``...), so ``except ValueError`` keeps working.
Messages name the offending value, say what was expected and end with a hint.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence

__all__ = [
    "CacheRefused",
    "CheckpointError",
    "CliError",
    "DistributedError",
    "EmptySelectionError",
    "FreezeflowError",
    "FreezeflowWarning",
    "HeadError",
    "HeadNotFoundError",
    "ModelChangedError",
    "OptimizerError",
    "PolicyError",
    "PolicyTypeError",
    "ScheduleError",
    "StateError",
    "TiedParameterError",
    "TrainingError",
]


class FreezeflowError(Exception):
    """Base class of every error raised by freezeflow."""


class FreezeflowWarning(UserWarning):
    """Base class of every warning emitted by freezeflow."""


class PolicyError(FreezeflowError, ValueError):
    """A policy cannot be resolved on this model (bad pattern, depth out of range...)."""


class EmptySelectionError(PolicyError):
    """A policy selected no parameter where at least one was required."""


class TiedParameterError(PolicyError):
    """A policy selects one name of a shared (tied) parameter and excludes another."""


class PolicyTypeError(FreezeflowError, TypeError):
    """Something that is not a policy was given where a policy was expected."""


class ScheduleError(FreezeflowError, ValueError):
    """A stage or schedule is invalid, or does not fit the model it is bound to."""


class OptimizerError(FreezeflowError, ValueError):
    """An optimizer or LR scheduler does not fit the model or the unfreezer."""


class ModelChangedError(FreezeflowError, RuntimeError):
    """The model's parameters are no longer the ones a
    :class:`~freezeflow.GradualUnfreezer` was built over (a module replaced, or parameters
    re-created by a conversion, after the unfreezer was built)."""


class StateError(FreezeflowError, ValueError):
    """A saved state does not belong to this model, schedule or optimizer."""


class CheckpointError(FreezeflowError, RuntimeError):
    """A checkpoint file is missing, corrupt, unsafe or from another run."""


class TrainingError(FreezeflowError, RuntimeError):
    """Training cannot go on (non-finite loss, empty data, wrong shapes or devices)."""


class DistributedError(TrainingError):
    """Ranks disagree (on the stage or on the trainable set), or DDP cannot be built."""


class HeadError(FreezeflowError, ValueError):
    """An argument of :func:`~freezeflow.replace_head` is invalid (``num_classes``,
    ``hidden``...)."""


class HeadNotFoundError(HeadError):
    """The model has no classification head that :func:`~freezeflow.replace_head` can
    replace."""


class CliError(FreezeflowError, ValueError):
    """A command-line argument is wrong (unknown model, missing demo script...)."""


class CacheRefused(Exception):  # noqa: N818 - a refusal with a reason, not an error
    """A model or loader cannot be feature-cached; ``str()`` is the reason. Raised and caught
    inside :func:`~freezeflow.fit`, which then trains that stage uncached."""


def nearest(word: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """The candidates closest to ``word`` (for "did you mean" hints)."""
    pool = list(dict.fromkeys(candidates))
    close = difflib.get_close_matches(word, pool, n=n, cutoff=0.3)
    if close:
        return close
    stripped = word.strip("*?[]")
    contains = [c for c in pool if stripped and stripped in c]
    return contains[:n] if contains else pool[:n]


def quote_list(items: Sequence[str], limit: int = 5) -> str:
    """``'a', 'b', 'c'`` with at most ``limit`` items and a count of the rest."""
    shown = ", ".join(repr(i) for i in items[:limit])
    rest = len(items) - limit
    return shown + (f" (+{rest} more)" if rest > 0 else "")


def check_int(
    what: str,
    value: object,
    low: int,
    error: type[FreezeflowError] = ScheduleError,
    hint: str = "",
) -> int:
    """``value`` when it is an integer ``>= low`` (a bool is not), else raise ``error``
    naming ``what``, the value, what was expected and ``hint``. The one check of "a count"
    or "an index" argument."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        tail = f"; hint: {hint}" if hint else ""
        raise error(f"{what}: expected an integer >= {low}, got {value!r}{tail}")
    return value
