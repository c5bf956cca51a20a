"""Schedules as data: stages, their triggers, and the presets.

A :class:`Stage` says *when* it starts (a trigger), *what* becomes trainable (a policy), and
*how fast* everything trainable learns from then on (base LR, weight decay, optional per-depth
LR decay). A :class:`Schedule` is an ordered, validated tuple of stages that round-trips
through a plain dict, so JSON and YAML files work.

Example:
    >>> import freezeflow as ff
    >>> sched = ff.Schedule([
    ...     ff.Stage(ff.name("fc"), lr=1e-3),
    ...     ff.Stage(ff.name("layer4"), lr=1e-5, start=ff.at_epoch(5)),
    ... ])
    >>> ff.Schedule.from_dict(sched.to_dict()) == sched
    True
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from freezeflow.core.policy import FreezePolicy, PolicyLike, as_policy
from freezeflow.core.serialize import policy_from_data, policy_to_data
from freezeflow.errors import (
    MissingDependencyError,
    ScheduleError,
    ScheduleTypeError,
    nearest,
)
from freezeflow.schedules.triggers import AtEpoch, Trigger, trigger_from_data

__all__ = ["Schedule", "Stage"]


def _positive_finite(what: str, value: object, *, allow_zero: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok:
        v = float(value)  # type: ignore[arg-type]
        ok = math.isfinite(v) and (v >= 0 if allow_zero else v > 0)
    if not ok:
        expected = "a finite number >= 0" if allow_zero else "a finite number > 0"
        raise ScheduleError(
            f"{what}={value!r} is invalid: expected {expected}; hint: fine-tuning LRs are "
            "typically 1e-5 to 1e-3"
        )
    return float(value)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Stage:
    """One stage of a schedule.

    Args:
        trainable: what becomes trainable at this stage (a policy, a name or a list of names).
            Stages accumulate: what earlier stages unfroze stays trainable, unless
            ``exclusive`` is true.
        lr: base learning rate of every trainable parameter from this stage on.
        weight_decay: weight decay from this stage on (never applied to biases and norm
            parameters by default). ``None`` keeps the previous stage's; while no stage has
            set one, the weight decay the optimizer was built with applies (AdamW's 0.01
            for ``AdamW(model.parameters())``, 0 for an optimizer without weight decay).
        start: when the stage begins: an epoch number, or a trigger (:func:`at_epoch`,
            :func:`at_step`, :func:`at_fraction`, :func:`on_plateau`). The first stage
            starts at epoch 0, and only the first.
        lr_decay: discriminative LRs: each block further from the output runs at
            ``lr_decay`` times the LR of the block after it (``1/2.6`` in ULMFiT, 0.65-0.75
            for layer-wise decay of transformers). ``None`` means one LR for all.
        reset_state: clear the optimizer state (moments, momentum) of every parameter when
            the stage begins, as Keras' recompile does. Default keeps it.
        exclusive: the trainable set is exactly ``trainable``: everything else is frozen
            (chain-thaw, progressive freezing).
        name: a label for tables and history (default ``stage<k>``).
    """

    trainable: FreezePolicy
    lr: float
    weight_decay: float | None = None
    start: Trigger = field(default_factory=lambda: AtEpoch(0))
    lr_decay: float | None = None
    reset_state: bool = False
    exclusive: bool = False
    name: str | None = None

    def __init__(
        self,
        trainable: PolicyLike,
        lr: float,
        *,
        weight_decay: float | None = None,
        start: int | Trigger | Mapping[str, Any] = 0,
        lr_decay: float | None = None,
        reset_state: bool = False,
        exclusive: bool = False,
        name: str | None = None,
    ) -> None:
        set_ = object.__setattr__
        set_(self, "trainable", as_policy(trainable, "Stage(trainable=...)"))
        set_(self, "lr", _positive_finite("Stage(lr)", lr))
        set_(
            self,
            "weight_decay",
            None
            if weight_decay is None
            else _positive_finite("Stage(weight_decay)", weight_decay, allow_zero=True),
        )
        set_(self, "start", trigger_from_data(start, "Stage(start)"))
        if lr_decay is not None:
            lr_decay = _positive_finite("Stage(lr_decay)", lr_decay)
            if lr_decay > 1:
                raise ScheduleError(
                    f"Stage(lr_decay={lr_decay!r}): expected a factor in (0, 1]; each block "
                    "further from the output runs at lr_decay times the LR of the next; hint: "
                    "ULMFiT uses 1/2.6"
                )
        set_(self, "lr_decay", lr_decay)
        for flag, value in (("reset_state", reset_state), ("exclusive", exclusive)):
            if not isinstance(value, bool):
                raise ScheduleTypeError(
                    f"Stage({flag}={value!r}): expected True or False, got a "
                    f"{type(value).__name__}; hint: Stage(..., {flag}=True)"
                )
        set_(self, "reset_state", reset_state)
        set_(self, "exclusive", exclusive)
        if name is not None and (not isinstance(name, str) or not name or "/" in name):
            raise ScheduleError(f"Stage(name={name!r}): expected a non-empty string without '/'")
        set_(self, "name", name)

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (JSON/YAML-ready); :meth:`Schedule.from_dict` reads it back."""
        out: dict[str, Any] = {
            "trainable": policy_to_data(self.trainable),
            "lr": self.lr,
            "start": self.start.to_data(),
        }
        for key in ("weight_decay", "lr_decay", "name"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        for key in ("reset_state", "exclusive"):
            if getattr(self, key):
                out[key] = True
        return out


_STAGE_KEYS = (
    "trainable",
    "lr",
    "weight_decay",
    "start",
    "lr_decay",
    "reset_state",
    "exclusive",
    "name",
)


DATA_READERS: dict[str, Callable[[Any], Schedule]] = {}
"""Readers of schedules written as ``{key: ...}`` instead of ``{"stages": [...]}``, by key
(:mod:`freezeflow.schedules.auto` registers ``"auto"``)."""


def _stage_from_dict(data: Any, k: int) -> Stage:
    where = f"stage {k}"
    if not isinstance(data, Mapping):
        raise ScheduleError(f"{where}: expected a mapping of stage keys, got {data!r}")
    unknown = [key for key in data if key not in _STAGE_KEYS]
    if unknown:
        raise ScheduleError(
            f"{where}: unknown key {unknown[0]!r}; expected some of {list(_STAGE_KEYS)}; "
            f"nearest: {nearest(str(unknown[0]), _STAGE_KEYS, n=1)[0]!r}"
        )
    for key in ("trainable", "lr"):
        if key not in data:
            raise ScheduleError(f"{where}: missing required key {key!r}")
    kwargs = dict(data)
    kwargs["trainable"] = policy_from_data(data["trainable"], f"{where}.trainable")
    return Stage(**kwargs)


# --------------------------------------------------------------------------- schedule


@dataclass(frozen=True)
class Schedule:
    """An ordered, validated tuple of stages.

    Validation on construction: at least one stage; the first starts at epoch 0 (or step 0),
    and no other does; epoch starts strictly increase, and so do step starts and fraction
    starts; stage names are unique. Binding to a model (:class:`~freezeflow.GradualUnfreezer`)
    checks the rest: every stage selects something; starts of different kinds follow each
    other when the run's length allows comparing them; a stage that re-selects part of what
    is already trainable is warned about.
    """

    stages: tuple[Stage, ...]

    planner: ClassVar[str] = "fixed"
    """The name of the stage planner that applies this schedule
    (:mod:`freezeflow.unfreezer.planner`): ``"fixed"`` trains each stage's selection as
    written; a schedule decided while training names its own (``ff.auto``: ``"auto"``)."""

    def __init__(self, stages: Sequence[Stage] | Schedule) -> None:
        if isinstance(stages, Schedule):
            stages = stages.stages
        if not isinstance(stages, (list, tuple)):
            raise ScheduleTypeError(
                f"Schedule needs a list of Stage, got {stages!r} of type "
                f"{type(stages).__name__}; hint: "
                "Schedule([Stage('fc', lr=1e-3), Stage('layer4', lr=1e-5, start=5)])"
            )
        if not stages:
            raise ScheduleError(
                "Schedule needs at least one Stage, got an empty list; hint: "
                "Schedule([Stage('fc', lr=1e-3), Stage('layer4', lr=1e-5, start=5)])"
            )
        for k, s in enumerate(stages):
            if not isinstance(s, Stage):
                raise ScheduleTypeError(
                    f"stage {k} is {s!r} of type {type(s).__name__}, not a Stage; hint: wrap "
                    "it as Stage(policy, lr=...)"
                )
        first = stages[0].start
        if not first.at_start():
            raise ScheduleError(
                f"the first stage must start at the beginning of training, but it starts at "
                f"{first!r}; hint: leave start out on the first stage"
            )
        for k, s in enumerate(stages[1:], 1):
            if s.start.at_start():
                raise ScheduleError(
                    f"stage {k} ({s.name or f'stage{k}'!r}) starts at {s.start.describe()}, "
                    "the beginning of training, like stage 0, which would then run for no "
                    "step; expected every stage after the first to start later; hint: merge "
                    "it into stage 0 (policies combine: a | b), or give it a later start"
                )
        last: dict[str, tuple[int, float]] = {}  # per kind of trigger: the latest start
        for k, s in enumerate(stages):
            value = s.start.order_value()
            if value is None:
                continue
            kind = s.start.kind
            if kind in last and value <= last[kind][1]:
                j, before = last[kind]
                raise ScheduleError(
                    f"stage {k} starts at {kind} {value:g}, not after stage {j} ({kind} "
                    f"{before:g}); stage starts must strictly increase; hint: order the "
                    "stages by when they begin"
                )
            last[kind] = (k, value)
        names = [s.name or f"stage{k}" for k, s in enumerate(stages)]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ScheduleError(f"stage names must be unique, {dupes[0]!r} is used twice")
        object.__setattr__(self, "stages", tuple(stages))

    def __len__(self) -> int:
        return len(self.stages)

    def __getitem__(self, k: int) -> Stage:
        return self.stages[k]

    @property
    def names(self) -> list[str]:
        """Stage labels (``name`` or ``stage<k>``)."""
        return [s.name or f"stage{k}" for k, s in enumerate(self.stages)]

    @property
    def needs_run_length(self) -> bool:
        """Whether a stage after the first starts at a fraction of the run
        (:func:`~freezeflow.at_fraction`), so that applying the schedule needs the run's
        length (``total_steps`` or ``total_epochs`` of the unfreezer).

        Example:
            >>> import freezeflow as ff
            >>> two = [ff.Stage("fc", lr=1), ff.Stage("layer4", lr=1, start=2)]
            >>> ff.Schedule(two).needs_run_length
            False
            >>> ff.presets.progressive_freezing(4).needs_run_length
            True
        """
        return any(s.start.needs_run_length for s in self.stages[1:])

    @property
    def uses_run_length(self) -> bool:
        """Whether applying the schedule uses the run's length when it is known: when it
        :attr:`needs_run_length`, and for schedules placed within a budget (``ff.auto``).
        The integrations pass the run's length to the unfreezer then."""
        return self.needs_run_length

    def to_dict(self) -> dict[str, Any]:
        """``{"stages": [...]}`` of plain values (JSON/YAML-ready)."""
        return {"stages": [s.to_dict() for s in self.stages]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Schedule:
        """Read a schedule from :meth:`to_dict`'s format (unknown keys are errors).

        Policies are written as data: ``"layer4"`` or ``["layer4", "fc"]`` (names),
        ``{"regex": ...}``, ``{"type": "torch.nn.Linear"}``, ``"norm_layers"``,
        ``"everything"``, ``{"last": 2}``, ``{"first": 2}``, ``{"blocks": [start, stop]}``,
        ``{"layers": [start, stop]}``, and ``{"or": [...]}``, ``{"and": [...]}``,
        ``{"minus": [a, b]}``, ``{"not": p}``.
        """
        if not isinstance(data, Mapping):
            raise ScheduleError(
                f"a schedule dict must be a mapping with key 'stages', got {data!r}"
            )
        if len(data) == 1 and (reader := DATA_READERS.get(next(iter(data)))) is not None:
            return reader(data[next(iter(data))])  # ff.auto's {"auto": {...}}
        unknown = [k for k in data if k != "stages"]
        if unknown or "stages" not in data:
            raise ScheduleError(
                "a schedule dict has exactly one key, 'stages' (or 'auto' for ff.auto); got "
                f"keys {list(data)}"
            )
        stages = data["stages"]
        if not isinstance(stages, Sequence) or isinstance(stages, (str, bytes)):
            raise ScheduleError(f"'stages' must be a list, got {stages!r}")
        return cls([_stage_from_dict(s, k) for k, s in enumerate(stages)])

    @classmethod
    def from_yaml(cls, source: str | Path) -> Schedule:
        """Read a schedule from a YAML file path or YAML text (``yaml.safe_load`` only;
        needs the ``yaml`` extra)."""
        try:
            import yaml
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise MissingDependencyError(
                "reading YAML needs PyYAML; hint: pip install 'freezeflow[yaml]'"
            ) from exc
        text = source
        if isinstance(source, Path) or (
            isinstance(source, str) and "\n" not in source and source.endswith((".yaml", ".yml"))
        ):
            path = Path(source)
            if not path.is_file():
                raise ScheduleError(f"schedule file {str(path)!r} does not exist")
            text = path.read_text(encoding="utf-8")
        try:
            data = yaml.load(str(text), Loader=_yaml_loader(yaml))  # a SafeLoader
        except yaml.YAMLError as exc:
            raise ScheduleError(f"the schedule is not valid YAML: {exc}") from exc
        return cls.from_dict(data)

    def to_yaml(self) -> str:
        """The schedule as YAML text (needs the ``yaml`` extra)."""
        import yaml

        return str(yaml.safe_dump(self.to_dict(), sort_keys=False))


def _yaml_loader(yaml: Any) -> Any:
    """``yaml.SafeLoader`` that also reads ``1e-5`` as a float.

    PyYAML follows YAML 1.1, where a float needs a dot (``1.0e-5``), so the way everyone
    writes a learning rate would load as the string ``'1e-5'`` and fail validation.
    """

    class Loader(yaml.SafeLoader):  # type: ignore[misc]
        pass

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
        list("-+0123456789"),
    )
    return Loader
