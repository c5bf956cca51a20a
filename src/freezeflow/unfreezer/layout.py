"""Param groups: named, with an ``lr_scale``, and no weight decay on biases and norm layers.

:func:`param_groups` is the standalone helper (give its result to any ``torch.optim``
optimizer). :func:`layout` is what :class:`~freezeflow.GradualUnfreezer` and
:func:`~freezeflow.plan` use: every parameter that any stage of a schedule makes trainable
gets exactly one group, up front, so the optimizer never gains or loses a group later and an
LR scheduler built over it keeps driving every group.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from freezeflow.core.index import ModelIndex
from freezeflow.core.policy import FreezePolicy, PolicyLike, as_policy, everything
from freezeflow.core.selectors import norm_layers, where
from freezeflow.errors import ScheduleError
from freezeflow.schedules.schedule import Schedule, Stage

__all__ = ["GroupSpec", "Layout", "default_no_decay", "layout", "param_groups"]


def _is_vector(name: str, param: nn.Parameter, module: nn.Module) -> bool:
    return param.ndim <= 1


_NO_DECAY: FreezePolicy = where(_is_vector, label="ndim<=1") | norm_layers()


def default_no_decay() -> FreezePolicy:
    """Parameters that get no weight decay by default: every parameter with ``ndim <= 1``
    (biases, norm scales, ViT class tokens and the like) and every norm-layer parameter."""
    return _NO_DECAY


@dataclass(frozen=True)
class GroupSpec:
    """One param group of a :class:`Layout`."""

    name: str
    params: tuple[int, ...]
    """Indices into :attr:`Layout.params`."""
    stage_index: int
    """Index of the stage that first makes these parameters trainable."""
    block: int | None
    """Block index when any stage uses per-depth LR decay, else None. A tied parameter is in
    the deepest (output-side) block of all its names."""
    decay: bool
    """Whether weight decay applies."""


@dataclass(frozen=True)
class Layout:
    """A schedule resolved on one model: trainable sets per stage and the param groups."""

    names: tuple[str, ...]
    """Primary name of every parameter of the model, in model order."""
    params: tuple[nn.Parameter, ...]
    selected_ids: tuple[frozenset[int], ...]
    """Per stage: the parameters its policy selects (indices into :attr:`params`)."""
    trainable_ids: tuple[frozenset[int], ...]
    """Per stage: the parameters trainable while it runs (indices into :attr:`params`)."""
    groups: tuple[GroupSpec, ...]
    n_blocks: int
    block_names: tuple[str, ...]
    """The model's blocks, input to output (:func:`~freezeflow.core.find_blocks`)."""
    param_block: tuple[int, ...]
    """The block index of each parameter of :attr:`params` (same order): a tied parameter
    is in the deepest (output-side) block of all its names, as the groups place it, and a
    parameter outside every block (possible with :func:`~freezeflow.core.set_blocks`) in the
    last."""
    overlaps: tuple[tuple[int, tuple[str, ...]], ...]
    """(stage, names) of parameters a stage selects that an earlier stage already made
    trainable."""

    def scale(self, stage: Stage, group: GroupSpec) -> float:
        """``lr_scale`` of ``group`` while ``stage`` runs."""
        if stage.lr_decay is None or group.block is None:
            return 1.0
        return float(stage.lr_decay ** (self.n_blocks - 1 - group.block))

    def lr(self, stage: Stage, group: GroupSpec) -> float:
        """Base LR (before any LR scheduler) of ``group`` while ``stage`` runs."""
        return stage.lr * self.scale(stage, group)

    def weight_decay(
        self, schedule: Schedule, k: int, group: GroupSpec, default: float = 0.0
    ) -> float:
        """Weight decay of ``group`` while stage ``k`` runs: that of the latest stage up to
        ``k`` that sets one, else ``default`` (the weight decay the optimizer was built with);
        0 for no-decay groups."""
        found = self.stage_weight_decay(schedule, k, group)
        return default if found is None else found

    def stage_weight_decay(self, schedule: Schedule, k: int, group: GroupSpec) -> float | None:
        """The weight decay the schedule gives ``group`` while stage ``k`` runs (0 for
        no-decay groups), or None when no stage up to ``k`` sets one."""
        if not group.decay:
            return 0.0
        for stage in reversed(schedule.stages[: k + 1]):
            if stage.weight_decay is not None:
                return stage.weight_decay
        return None

    def optimizer_groups(
        self, schedule: Schedule, weight_decay: float | None = 0.0
    ) -> list[dict[str, Any]]:
        """The param groups, each with the hyper-parameters of the stage that first trains
        it: ``params``, ``name``, ``lr`` (= ``base_lr``), ``lr_scale`` and ``weight_decay``.

        Args:
            schedule: the schedule this layout was resolved from.
            weight_decay: the weight decay of decay groups no stage gives one (the
                optimizer's own); None leaves ``weight_decay`` out of those groups, so that
                the optimizer they are given to fills in its default.
        """
        out = []
        for g in self.groups:
            stage = schedule.stages[g.stage_index]
            base = self.lr(stage, g)
            group: dict[str, Any] = {
                "params": [self.params[i] for i in g.params],
                "name": g.name,
                "lr": base,
                "base_lr": base,
                "lr_scale": self.scale(stage, g),
            }
            wd = self.stage_weight_decay(schedule, g.stage_index, g)
            if wd is None:
                wd = weight_decay
            if wd is not None:
                group["weight_decay"] = wd
            out.append(group)
        return out


def layout(model: nn.Module, schedule: Schedule, no_decay: PolicyLike | None = None) -> Layout:
    """Resolve ``schedule`` on ``model``: selections, trainable sets and groups.

    The model is indexed once (one :class:`~freezeflow.core.index.ModelIndex`, one block
    discovery) and every stage's policy and the no-decay policy resolve against that index.

    Raises:
        ScheduleError: a stage selects nothing on this model (the message names the stage and
            the policy, with the underlying reason).
    """
    idx = ModelIndex.build(model)
    ids = {id(p): i for i, p in enumerate(idx.params)}
    selected: list[frozenset[int]] = []
    for k, stage in enumerate(schedule.stages):
        label = schedule.names[k]
        try:
            sel = stage.trainable.select(model, index=idx)
        except ValueError as exc:
            raise ScheduleError(
                f"stage {k} ({label!r}) cannot be bound to {type(model).__name__}: {exc}"
            ) from exc
        selected.append(frozenset(ids[id(p)] for p in sel.params))
    trainable: list[frozenset[int]] = []
    overlaps: list[tuple[int, tuple[str, ...]]] = []
    current: frozenset[int] = frozenset()
    for k, stage in enumerate(schedule.stages):
        again = selected[k] & current
        if again and not stage.exclusive:
            overlaps.append((k, tuple(idx.names[i] for i in sorted(again))))
        current = selected[k] if stage.exclusive else current | selected[k]
        trainable.append(current)

    nd_policy = default_no_decay() if no_decay is None else as_policy(no_decay, "no_decay")
    no_decay_sel = nd_policy.select(model, allow_empty=True, index=idx)
    no_decay_ids = {ids[id(p)] for p in no_decay_sel.params}
    by_depth = any(s.lr_decay is not None for s in schedule.stages)
    # a tied parameter takes the deepest (output-side) block of all its names: GPT-2's shared
    # embedding / output matrix trains at the output head's LR
    param_block = idx.block_of_param()
    first_stage: dict[int, int] = {}
    for k, chosen in enumerate(selected):
        for j in chosen:
            first_stage.setdefault(j, k)
    keyed: dict[tuple[int, int | None, bool], list[int]] = {}
    for j in sorted(first_stage):
        block = param_block[j] if by_depth else None
        keyed.setdefault((first_stage[j], block, j not in no_decay_ids), []).append(j)
    groups = []
    stage_names = schedule.names
    for (k, block, decay), members in sorted(
        keyed.items(), key=lambda kv: (kv[0][0], -1 if kv[0][1] is None else kv[0][1], kv[0][2])
    ):
        parts = [stage_names[k]]
        if block is not None:
            parts.append(idx.blocks[block].name if 0 <= block < len(idx.blocks) else "rest")
        parts.append("decay" if decay else "no_decay")
        groups.append(GroupSpec("/".join(parts), tuple(members), k, block, decay))
    return Layout(
        names=tuple(idx.names),
        params=tuple(idx.params),
        selected_ids=tuple(selected),
        trainable_ids=tuple(trainable),
        groups=tuple(groups),
        n_blocks=len(idx.blocks),
        block_names=tuple(b.name for b in idx.blocks),
        param_block=tuple(param_block),
        overlaps=tuple(overlaps),
    )


def param_groups(
    model: nn.Module,
    policy: PolicyLike | None = None,
    *,
    lr: float,
    weight_decay: float | None = None,
    lr_decay: float | None = None,
    no_decay: PolicyLike | None = None,
) -> list[dict[str, Any]]:
    """Param groups for any ``torch.optim`` optimizer, without a schedule.

    Groups are named (``decay``/``no_decay``, with the block name when ``lr_decay`` is set)
    and carry ``lr_scale``; ``lr`` is already multiplied by it. No-decay groups get
    ``weight_decay`` 0; decay groups get ``weight_decay``, or, when it is None, no
    ``weight_decay`` key, so the optimizer's own default applies (AdamW's 0.01).

    Example:
        >>> import torch, torchvision, freezeflow as ff
        >>> model = torchvision.models.resnet18()
        >>> groups = ff.param_groups(model, lr=1e-3, weight_decay=0.05, lr_decay=0.5)
        >>> [(g["name"], g["lr"]) for g in groups][-2:]
        [('fc/no_decay', 0.001), ('fc/decay', 0.001)]
        >>> opt = torch.optim.AdamW(groups)
    """
    stage = Stage(
        everything() if policy is None else policy,
        lr=lr,
        weight_decay=weight_decay,
        lr_decay=lr_decay,
        name="all",
    )
    schedule = Schedule([stage])
    out = layout(model, schedule, no_decay).optimizer_groups(schedule, weight_decay=None)
    for g in out:
        g["name"] = g["name"].removeprefix("all/")
        del g["base_lr"]
    return out
