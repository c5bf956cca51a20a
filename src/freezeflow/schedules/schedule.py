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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from freezeflow.core.policy import (
    Policy,
    PolicyLike,
    as_policy,
    blocks,
    everything,
    last,
    layers,
    policy_from_data,
    policy_to_data,
)
from freezeflow.errors import ScheduleError, nearest

__all__ = [
    "AtEpoch",
    "AtFraction",
    "AtStep",
    "OnPlateau",
    "Schedule",
    "Stage",
    "Trigger",
    "at_epoch",
    "at_fraction",
    "at_step",
    "chain_thaw",
    "layerwise_decay",
    "on_plateau",
    "progressive_freezing",
    "seed_keras",
    "seed_pytorch",
    "two_stage",
    "ulmfit",
]


# --------------------------------------------------------------------------- triggers


class Trigger:
    """When a stage starts. Build with :func:`at_epoch`, :func:`at_step`,
    :func:`at_fraction` or :func:`on_plateau`."""

    __slots__ = ()

    def to_data(self) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass(frozen=True)
class AtEpoch(Trigger):
    """Start at the beginning of epoch ``epoch`` (0-based)."""

    epoch: int

    def to_data(self) -> Any:
        return {"epoch": self.epoch}


@dataclass(frozen=True)
class AtStep(Trigger):
    """Start after ``step`` optimizer steps in all (0-based global step)."""

    step: int

    def to_data(self) -> Any:
        return {"step": self.step}


@dataclass(frozen=True)
class AtFraction(Trigger):
    """Start once ``fraction`` of training (steps, or epochs if steps are unknown) is done."""

    fraction: float

    def to_data(self) -> Any:
        return {"fraction": self.fraction}


@dataclass(frozen=True)
class OnPlateau(Trigger):
    """Start at the first epoch after the validation metric has not improved by more than
    ``min_delta`` for ``patience`` evaluations in the current stage, or at ``max_epoch``,
    whichever comes first."""

    patience: int = 2
    min_delta: float = 0.0
    mode: Literal["min", "max"] = "min"
    max_epoch: int | None = None
    metric: str = "val_loss"

    def to_data(self) -> Any:
        return {"plateau": {f.name: getattr(self, f.name) for f in fields(self)}}


def at_epoch(epoch: int) -> AtEpoch:
    """Trigger at the start of epoch ``epoch`` (0-based)."""
    _check_int("at_epoch", epoch, 0)
    return AtEpoch(epoch)


def at_step(step: int) -> AtStep:
    """Trigger after ``step`` optimizer steps (counted over the whole run)."""
    _check_int("at_step", step, 0)
    return AtStep(step)


def at_fraction(fraction: float) -> AtFraction:
    """Trigger once ``fraction`` (in [0, 1)) of training is done; needs the run's length
    (``total_steps`` or ``total_epochs`` on the unfreezer; :func:`freezeflow.fit` passes it)."""
    if (
        isinstance(fraction, bool)
        or not isinstance(fraction, (int, float))
        or not (0.0 <= float(fraction) < 1.0)
    ):
        raise ScheduleError(
            f"at_fraction({fraction!r}): expected a number in [0, 1); hint: at_fraction(0.5) "
            "starts half way through training"
        )
    return AtFraction(float(fraction))


def on_plateau(
    patience: int = 2,
    min_delta: float = 0.0,
    *,
    mode: Literal["min", "max"] = "min",
    max_epoch: int | None = None,
    metric: str = "val_loss",
) -> OnPlateau:
    """Trigger when ``metric`` stops improving (see :class:`OnPlateau`).

    Feed the metric with :meth:`GradualUnfreezer.observe` (``fit()`` does it for you).
    """
    _check_int("on_plateau(patience)", patience, 1)
    if not isinstance(min_delta, (int, float)) or not math.isfinite(min_delta) or min_delta < 0:
        raise ScheduleError(f"on_plateau(min_delta={min_delta!r}): expected a finite number >= 0")
    if mode not in ("min", "max"):
        raise ScheduleError(f"on_plateau(mode={mode!r}): expected 'min' (loss) or 'max' (accuracy)")
    if max_epoch is not None:
        _check_int("on_plateau(max_epoch)", max_epoch, 0)
    return OnPlateau(patience, float(min_delta), mode, max_epoch, metric)


def _check_int(what: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ScheduleError(f"{what}: expected an integer >= {low}, got {value!r}")


def _trigger_from_data(data: Any, where: str) -> Trigger:
    if isinstance(data, Trigger):
        return data
    if isinstance(data, int) and not isinstance(data, bool):
        return at_epoch(data)
    if isinstance(data, Mapping) and len(data) == 1:
        ((key, value),) = data.items()
        if key == "epoch":
            return at_epoch(value)
        if key == "step":
            return at_step(value)
        if key == "fraction":
            return at_fraction(value)
        if key == "plateau":
            if not isinstance(value, Mapping):
                raise ScheduleError(f"{where}: 'plateau' takes a mapping, got {value!r}")
            known = {f.name for f in fields(OnPlateau)}
            bad = [k for k in value if k not in known]
            if bad:
                raise ScheduleError(
                    f"{where}: unknown plateau option {bad[0]!r}; expected some of {sorted(known)}"
                )
            return on_plateau(**value)
    raise ScheduleError(
        f"{where}: {data!r} is not a trigger; expected an epoch number, or one of "
        "{'epoch': N}, {'step': N}, {'fraction': F}, {'plateau': {...}}"
    )


# --------------------------------------------------------------------------- stages


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
            parameters by default). ``None`` keeps the previous stage's (0 for the first).
        start: when the stage begins: an epoch number, or a trigger (:func:`at_epoch`,
            :func:`at_step`, :func:`at_fraction`, :func:`on_plateau`). The first stage
            starts at epoch 0.
        lr_decay: discriminative LRs: each block further from the output runs at
            ``lr_decay`` times the LR of the block after it (``1/2.6`` in ULMFiT, 0.65-0.75
            for layer-wise decay of transformers). ``None`` means one LR for all.
        reset_state: clear the optimizer state (moments, momentum) of every parameter when
            the stage begins, as Keras' recompile does. Default keeps it.
        exclusive: the trainable set is exactly ``trainable``: everything else is frozen
            (chain-thaw, progressive freezing).
        name: a label for tables and history (default ``stage<k>``).
    """

    trainable: Policy
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
        set_(self, "start", _trigger_from_data(start, "Stage(start)"))
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
                raise ScheduleError(f"Stage({flag}={value!r}): expected True or False")
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

    Validation on construction: at least one stage; the first starts at epoch 0 (or step 0);
    epoch starts strictly increase, and so do step starts and fraction starts; stage names are
    unique. Binding to a model (:class:`~freezeflow.GradualUnfreezer`) checks the rest: every
    stage selects something, and overlaps are reported.
    """

    stages: tuple[Stage, ...]

    def __init__(self, stages: Sequence[Stage] | Schedule) -> None:
        if isinstance(stages, Schedule):
            stages = stages.stages
        if not isinstance(stages, (list, tuple)) or not stages:
            raise ScheduleError(
                f"Schedule needs a non-empty list of Stage, got {stages!r}; hint: "
                "Schedule([Stage('fc', lr=1e-3), Stage('layer4', lr=1e-5, start=5)])"
            )
        for k, s in enumerate(stages):
            if not isinstance(s, Stage):
                raise ScheduleError(
                    f"stage {k} is {s!r} of type {type(s).__name__}, not a Stage; hint: wrap "
                    "it as Stage(policy, lr=...)"
                )
        first = stages[0].start
        if not (
            (isinstance(first, AtEpoch) and first.epoch == 0)
            or (isinstance(first, AtStep) and first.step == 0)
            or (isinstance(first, AtFraction) and first.fraction == 0)
        ):
            raise ScheduleError(
                f"the first stage must start at the beginning of training, but it starts at "
                f"{first!r}; hint: leave start out on the first stage"
            )
        for kind, attr in ((AtEpoch, "epoch"), (AtStep, "step"), (AtFraction, "fraction")):
            prev: tuple[int, float] | None = None
            for k, s in enumerate(stages):
                if isinstance(s.start, kind):
                    value = getattr(s.start, attr)
                    if prev is not None and value <= prev[1]:
                        raise ScheduleError(
                            f"stage {k} starts at {attr} {value}, not after stage {prev[0]} "
                            f"({attr} {prev[1]}); stage starts must strictly increase; hint: "
                            "order the stages by when they begin"
                        )
                    prev = (k, value)
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
        unknown = [k for k in data if k != "stages"]
        if unknown or "stages" not in data:
            raise ScheduleError(
                f"a schedule dict has exactly one key, 'stages'; got keys {list(data)}"
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
            raise ScheduleError(
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


# --------------------------------------------------------------------------- presets


def seed_pytorch(
    head: PolicyLike = "fc",
    block: PolicyLike = "layer4",
    *,
    head_epochs: int = 5,
    head_lr: float = 1e-3,
    finetune_lr: float = 1e-5,
) -> Schedule:
    """The seed tutorial's PyTorch ResNet18 recipe, as it writes it.

    Train the new head (Adam, 1e-3) for 5 epochs with everything else frozen, then unfreeze
    ``layer4`` and train everything trainable at 1e-5. Source: the tutorial this project grew
    from (a ResNet18-on-CIFAR-10 listing: ``for param in model.layer4.parameters():
    param.requires_grad = True`` then ``optim.Adam(model.parameters(), lr=1e-5)``). That new
    optimizer starts with empty state, so the second stage resets the optimizer state too.
    """
    return Schedule(
        [
            Stage(head, lr=head_lr, name="head"),
            Stage(block, lr=finetune_lr, start=head_epochs, reset_state=True, name="finetune"),
        ]
    )


def seed_keras(
    head: PolicyLike = "fc",
    *,
    n_layers: int = 6,
    head_epochs: int = 5,
    head_lr: float = 1e-3,
    finetune_lr: float = 1e-5,
) -> Schedule:
    """The seed tutorial's Keras ResNet50 recipe: head first, then the backbone's last
    layers at 1e-5 with a fresh optimizer (Keras recompiles, so optimizer state is reset).

    Source: the tutorial's Keras listing, ``for layer in base_model.layers[-10:]:
    layer.trainable = True`` then ``model.compile(optimizer=Adam(1e-5))``. Keras counts layers
    without weights too: the last 10 layers of Keras' ResNet50 are ``conv5_block3``'s
    ``1_conv, 1_bn, 1_relu, 2_conv, 2_bn, 2_relu, 3_conv, 3_bn, add, out``, of which 6 have
    weights. freezeflow counts only layers with parameters (:func:`~freezeflow.layers`), so
    the faithful equivalent on torchvision's ResNet50 is ``n_layers=6``: ``layer4.2``'s
    ``conv1, bn1, conv2, bn2, conv3, bn3``. With norm mode ``"eval"`` (the default), frozen
    BatchNorm layers run in inference mode and the unfrozen ones train, as in Keras.
    """
    backbone = ~as_policy(head)
    return Schedule(
        [
            Stage(head, lr=head_lr, name="head"),
            Stage(
                layers(-n_layers, among=backbone),
                lr=finetune_lr,
                start=head_epochs,
                reset_state=True,
                name="finetune",
            ),
        ]
    )


def two_stage(
    head: PolicyLike = "fc",
    body: PolicyLike | None = None,
    *,
    head_epochs: int = 1,
    head_lr: float = 1e-3,
    lr: float = 1e-4,
    lr_decay: float | None = None,
    weight_decay: float | None = None,
) -> Schedule:
    """Linear probe, then fine-tune: train the head, then ``body`` (default: everything) at
    ``lr`` with optional discriminative decay. The common recipe of fastai's ``fine_tune``
    (``freeze_epochs=1``, then unfreeze all) and of "LP-FT" (Kumar et al., 2022)."""
    return Schedule(
        [
            Stage(head, lr=head_lr, weight_decay=weight_decay, name="head"),
            Stage(
                everything() if body is None else body,
                lr=lr,
                start=head_epochs,
                lr_decay=lr_decay,
                name="finetune",
            ),
        ]
    )


def ulmfit(
    n_stages: int,
    *,
    lr: float = 1e-3,
    lr_decay: float = 1 / 2.6,
    epochs_per_stage: int = 1,
    weight_decay: float | None = None,
) -> Schedule:
    """ULMFiT's gradual unfreezing (Howard & Ruder, 2018): unfreeze one more block from the
    output each epoch, with discriminative LRs divided by 2.6 per block."""
    _check_int("ulmfit(n_stages)", n_stages, 1)
    return Schedule(
        [
            Stage(
                last(k + 1),
                lr=lr,
                start=k * epochs_per_stage,
                lr_decay=lr_decay,
                weight_decay=weight_decay,
                name=f"last{k + 1}",
            )
            for k in range(n_stages)
        ]
    )


def chain_thaw(
    head: PolicyLike,
    parts: Sequence[PolicyLike],
    *,
    lr: float = 1e-3,
    part_lr: float = 1e-4,
    epochs_per_stage: int = 1,
) -> Schedule:
    """Chain-thaw (Felbo et al., 2017, DeepMoji): train the new head alone, then each part
    alone from the first (input side) on, then everything together."""
    stages = [Stage(head, lr=lr, exclusive=True, name="head")]
    for k, part in enumerate(parts):
        stages.append(
            Stage(
                part,
                lr=part_lr,
                start=(k + 1) * epochs_per_stage,
                exclusive=True,
                name=f"part{k}",
            )
        )
    stages.append(
        Stage(everything(), lr=part_lr, start=(len(parts) + 1) * epochs_per_stage, name="all")
    )
    return Schedule(stages)


def layerwise_decay(
    lr: float = 1e-3, decay: float = 0.75, *, weight_decay: float | None = 0.05
) -> Schedule:
    """One stage, everything trainable, layer-wise LR decay (BEiT, Bao et al., 2021; timm's
    ``param_groups_layer_decay``): each block from the output runs at ``decay`` times the LR
    of the next."""
    return Schedule(
        [Stage(everything(), lr=lr, lr_decay=decay, weight_decay=weight_decay, name="llrd")]
    )


def progressive_freezing(
    n_blocks: int,
    *,
    lr: float = 1e-3,
    start: float = 0.5,
    end: float = 0.9,
    cubic: bool = True,
    lr_decay: float | None = None,
    weight_decay: float | None = None,
) -> Schedule:
    """Freeze the first blocks progressively during training, FreezeOut-style (Brock et al.,
    2017), to save time: a frozen prefix is not back-propagated through, and once it is
    frozen and deterministic, :func:`freezeflow.fit` can cache its output.

    Everything trains at first; then block 0 freezes at fraction ``start`` of training, block
    1 later, ... block ``n_blocks - 1`` at ``end``. With ``cubic`` the freezing times follow
    FreezeOut's cubic spacing (``t_i = start + (end - start) * (i / (n - 1)) ** 3``: early
    blocks freeze sooner), else they are evenly spaced. Needs the run's length (``fit()``
    passes it).
    """
    _check_int("progressive_freezing(n_blocks)", n_blocks, 1)
    if not (0.0 < start < end < 1.0 or (n_blocks == 1 and 0.0 < start < 1.0)):
        raise ScheduleError(
            f"progressive_freezing(start={start!r}, end={end!r}): expected 0 < start < end < 1"
        )
    stages = [Stage(everything(), lr=lr, lr_decay=lr_decay, weight_decay=weight_decay, name="all")]
    for i in range(n_blocks):
        x = i / (n_blocks - 1) if n_blocks > 1 else 0.0
        at = start + (end - start) * (x**3 if cubic else x)
        stages.append(
            Stage(
                blocks(i + 1, None),
                lr=lr,
                start=at_fraction(at),
                lr_decay=lr_decay,
                exclusive=True,
                name=f"freeze{i}",
            )
        )
    return Schedule(stages)
