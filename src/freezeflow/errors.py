"""The exceptions freezeflow raises.

Every error derives from :class:`FreezeflowError` and also from exactly one builtin kind:
a wrong *type* is a ``TypeError`` (the ``...TypeError`` classes, all under
:class:`FreezeflowTypeError`), a wrong *value* a ``ValueError``, a state that does not let the
work go on a ``RuntimeError``, a missing optional package an ``ImportError``, a name not in a
selection a ``KeyError``; so ``except ValueError`` keeps working. Messages name the offending
value, say what was expected and end with a hint. ``tests/test_errors.py`` walks the package
and checks both: every exception class is here and fits this family, and no ``raise`` under
``src/`` raises a builtin exception directly (an abstract method's ``NotImplementedError``
and ``__main__``'s ``SystemExit`` aside).
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
    "FreezeflowTypeError",
    "FreezeflowWarning",
    "HeadError",
    "HeadNotFoundError",
    "MissingDependencyError",
    "ModelChangedError",
    "NotSelectedError",
    "OptimizerError",
    "OptimizerTypeError",
    "PolicyError",
    "PolicyTypeError",
    "ScheduleError",
    "ScheduleTypeError",
    "StateError",
    "TiedParameterError",
    "TrainingArgumentError",
    "TrainingError",
    "TrainingTypeError",
]


class FreezeflowError(Exception):
    """Base class of every error raised by freezeflow."""


class FreezeflowWarning(UserWarning):
    """Base class of every warning emitted by freezeflow."""


class FreezeflowTypeError(FreezeflowError, TypeError):
    """An argument is of the wrong type; the message names the argument, the type expected
    and the value found. Base of every ``...TypeError`` here, and raised as itself for an
    argument of no family below (an unfreezer's listener or probe, a head's size)."""


class PolicyError(FreezeflowError, ValueError):
    """A policy cannot be resolved on this model (bad pattern, depth out of range...)."""


class EmptySelectionError(PolicyError):
    """A policy selected no parameter where at least one was required."""


class TiedParameterError(PolicyError):
    """A policy selects one name of a shared (tied) parameter and excludes another."""


class NotSelectedError(FreezeflowError, KeyError):
    """A name that is not one of a :class:`~freezeflow.core.Selection`'s parameters was
    looked up in it (a ``KeyError``, as a mapping's lookup raises)."""

    def __str__(self) -> str:  # the message as written, not KeyError's repr of it
        return str(self.args[0]) if self.args else ""


class PolicyTypeError(FreezeflowTypeError):
    """Something that is not a policy (or not a model, a module type, a pattern...) was given
    where a policy or one of its arguments was expected."""


class ScheduleError(FreezeflowError, ValueError):
    """A stage or schedule is invalid, or does not fit the model it is bound to."""


class ScheduleTypeError(FreezeflowTypeError):
    """Something that is not a stage, a trigger, a flag or a number was given where a
    schedule expected one."""


class OptimizerError(FreezeflowError, ValueError):
    """An optimizer or LR scheduler does not fit the model or the unfreezer."""


class OptimizerTypeError(FreezeflowTypeError):
    """Something that is not an optimizer, an LR scheduler or a factory of one was given
    where one was expected (or a factory built something else)."""


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


class TrainingArgumentError(FreezeflowError, ValueError):
    """An argument of :func:`~freezeflow.fit`, of a training callback or of an integration
    has a wrong value (``amp='fp8'``, ``EarlyStopping(mode='up')``...)."""


class TrainingTypeError(FreezeflowTypeError):
    """An argument of :func:`~freezeflow.fit`, of a training callback, of the DDP helpers or
    of an integration has the wrong type (a generator as ``train_data``, a non-module...)."""


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


class MissingDependencyError(FreezeflowError, ImportError):
    """An optional package that a feature needs is not installed; the hint names the
    ``pip install`` that brings it."""


class CacheRefused(FreezeflowError, RuntimeError):  # noqa: N818 - a refusal with a reason
    """A model or loader cannot be feature-cached; ``str()`` is the reason. Raised and caught
    inside :func:`~freezeflow.fit`, which then trains that stage uncached (and by
    :class:`~freezeflow.training.FeatureCache` to whoever builds one directly)."""


# The TypeError sibling of each value family, for check_int (a family without one uses
# FreezeflowTypeError itself).
_TYPE_ERRORS: dict[type[FreezeflowError], type[FreezeflowTypeError]] = {
    PolicyError: PolicyTypeError,
    ScheduleError: ScheduleTypeError,
    OptimizerError: OptimizerTypeError,
    TrainingArgumentError: TrainingTypeError,
    TrainingError: TrainingTypeError,
}


def type_error_for(error: type[FreezeflowError]) -> type[FreezeflowTypeError]:
    """The ``TypeError`` class of the family ``error`` belongs to: ``PolicyTypeError`` for
    :class:`PolicyError` and its subclasses, :class:`FreezeflowTypeError` for a family
    without one (``error`` itself when it already is a type error)."""
    if issubclass(error, FreezeflowTypeError):
        return error
    for cls in error.__mro__:
        if cls in _TYPE_ERRORS:
            return _TYPE_ERRORS[cls]
    return FreezeflowTypeError


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
    """``value`` when it is an integer ``>= low``, else an error naming ``what``, the value,
    what was expected and ``hint``: ``error`` (a value error) for an integer below ``low``,
    the ``TypeError`` of its family (:func:`type_error_for`) for anything that is not an
    integer (a bool, a float, a string...). The one check of "a count" or "an index"
    argument."""
    tail = f"; hint: {hint}" if hint else ""
    if isinstance(value, bool) or not isinstance(value, int):
        raise type_error_for(error)(
            f"{what}: expected an integer >= {low}, got {value!r} of type "
            f"{type(value).__name__}{tail}"
        )
    if value < low:
        raise error(f"{what}: expected an integer >= {low}, got {value!r}{tail}")
    return value
