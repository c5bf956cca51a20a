"""What a schedule will do to a model, before training: a table per stage and a plot."""

from __future__ import annotations

import html
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn
from torch.optim import Optimizer

from freezeflow.core.index import ModelIndex
from freezeflow.core.policy import PolicyLike
from freezeflow.schedules.auto import AutoSchedule
from freezeflow.schedules.schedule import Schedule, Stage
from freezeflow.schedules.triggers import AtEpoch, AtFraction, AtStep, OnPlateau
from freezeflow.unfreezer.auto import AutoPlanner, Decision
from freezeflow.unfreezer.layout import Layout, layout
from freezeflow.unfreezer.optimizer import weight_decay_of

__all__ = ["Plan", "StagePlan", "plan"]


@dataclass(frozen=True)
class StagePlan:
    """One stage of a :class:`Plan`."""

    index: int
    name: str
    start: str
    policy: str
    new_blocks: tuple[str, ...]
    """Blocks with parameters that become trainable at this stage."""
    n_trainable: int
    """Parameter values trainable while the stage runs."""
    total: int
    groups: tuple[tuple[str, float, float, int], ...]
    """(group name, base LR, weight decay, parameter values) of each active group."""
    reset_state: bool

    @property
    def percent(self) -> float:
        return 100.0 * self.n_trainable / self.total if self.total else 0.0

    @property
    def trainable(self) -> int:
        """Deprecated: use :attr:`n_trainable`."""
        warnings.warn(
            "StagePlan.trainable is deprecated; use StagePlan.n_trainable",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.n_trainable


@dataclass(frozen=True)
class Plan:
    """The plan of a schedule on a model. ``print(plan)`` shows the tables; in a notebook it
    renders as HTML; :meth:`plot` draws LRs and trainable counts over the run."""

    model_name: str
    stages: tuple[StagePlan, ...]
    overlaps: tuple[tuple[int, tuple[str, ...]], ...]
    schedule: Schedule

    @classmethod
    def build(
        cls,
        model: nn.Module,
        schedule: Schedule,
        lay: Layout,
        weight_decay: float = 0.0,
        decisions: Sequence[Decision] = (),
    ) -> Plan:
        """The plan of ``schedule`` resolved as ``lay`` on ``model``; ``weight_decay`` is the
        optimizer's, which decay groups get while no stage sets one. For an
        :func:`freezeflow.auto` schedule, ``decisions`` are those made so far: a stage not
        decided yet lists the windows it will choose from."""
        auto = AutoPlanner(model, schedule, lay) if isinstance(schedule, AutoSchedule) else None
        decided = {d.stage_index: d for d in decisions}
        idx = ModelIndex.build(model)
        block_of = idx.block_of_alias()
        param_block: dict[int, int] = {}
        for a, b in enumerate(block_of):
            param_block.setdefault(idx.alias_param[a], b)
        total = sum(p.numel() for p in lay.params)
        out = []
        prev: frozenset[int] = frozenset()
        scales: dict[int, float] = {}  # ff.auto: the LR scale decided for each block
        for k, stage in enumerate(schedule.stages):
            now = lay.trainable_ids[k]
            policy = repr(stage.trainable) + (" (exclusive)" if stage.exclusive else "")
            if auto is not None and k > 0:
                now, policy = (
                    prev,
                    "decided when the stage begins, one window of: "
                    + ", ".join(auto.window_name(w) for w in range(len(auto.windows))),
                )
                if (d := decided.get(k)) is not None:
                    off = frozenset(j for w in d.refrozen for j in auto.window_params(w))
                    now = (prev - off) | auto.window_params(d.window)
                    policy = f"decided: {d.text}"
                    for b in d.blocks:
                        scales[b] = d.scales[idx.blocks[b].name]
            new = now - prev
            blocks = sorted({param_block.get(i, -1) for i in new} - {-1})
            groups = []
            for g in lay.groups:
                if any(i in now for i in g.params):
                    groups.append(
                        (
                            g.name,
                            lay.lr(stage, g)
                            if auto is None
                            else stage.lr * scales.get(-1 if g.block is None else g.block, 1.0),
                            lay.weight_decay(schedule, k, g, weight_decay),
                            sum(lay.params[i].numel() for i in g.params),
                        )
                    )
            out.append(
                StagePlan(
                    index=k,
                    name=schedule.names[k],
                    start=stage.start.describe(),
                    policy=policy,
                    new_blocks=tuple(idx.blocks[b].name for b in blocks),
                    n_trainable=sum(lay.params[i].numel() for i in now),
                    total=total,
                    groups=tuple(groups),
                    reset_state=stage.reset_state,
                )
            )
            prev = now
        overlaps = lay.overlaps if auto is None else ()  # auto stages re-select by design
        return cls(type(model).__name__, tuple(out), overlaps, schedule)

    def __str__(self) -> str:
        lines = [f"Plan for {self.model_name}: {len(self.stages)} stage(s)"]
        for s in self.stages:
            lines.append("")
            reset = ", optimizer state reset" if s.reset_state else ""
            lines.append(f"[{s.index}] {s.name}: starts at {s.start}{reset}")
            lines.append(f"    trainable: {s.policy}")
            if s.new_blocks:
                shown = ", ".join(s.new_blocks[:6])
                more = f" (+{len(s.new_blocks) - 6} more)" if len(s.new_blocks) > 6 else ""
                lines.append(f"    new blocks: {shown}{more}")
            lines.append(
                f"    trainable parameters: {s.n_trainable:,} of {s.total:,} ({s.percent:.1f}%)"
            )
            width = max(len(g[0]) for g in s.groups) if s.groups else 5
            lines.append(f"    {'group'.ljust(width)}  {'lr':>9}  {'wd':>7}  {'params':>11}")
            for gname, lr, wd, n in s.groups:
                lines.append(f"    {gname.ljust(width)}  {lr:9.3g}  {wd:7.3g}  {n:11,}")
        if self.overlaps:
            counts = ", ".join(f"stage {k}: {len(names)}" for k, names in self.overlaps)
            lines.append("")
            lines.append(
                f"note: some stages select parameters already trainable ({counts}); stages "
                "accumulate, so these stay trainable"
            )
        return "\n".join(lines)

    def __repr__(self) -> str:
        return str(self)

    def _repr_html_(self) -> str:
        rows = []
        for s in self.stages:
            for j, (gname, lr, wd, n) in enumerate(s.groups):
                head = (
                    f"<td>{s.index}</td><td>{html.escape(s.name)}</td>"
                    f"<td>{html.escape(s.start)}</td><td>{s.n_trainable:,} ({s.percent:.1f}%)</td>"
                    if j == 0
                    else "<td></td>" * 4
                )
                rows.append(
                    f"<tr>{head}<td>{html.escape(gname)}</td><td>{lr:.3g}</td>"
                    f"<td>{wd:.3g}</td><td>{n:,}</td></tr>"
                )
        return (
            f"<p><b>Plan for {html.escape(self.model_name)}</b></p><table><tr><th>#</th>"
            "<th>stage</th><th>starts</th><th>trainable</th><th>group</th><th>lr</th>"
            "<th>wd</th><th>params</th></tr>" + "".join(rows) + "</table>"
        )

    def starts(self, total_epochs: int, steps_per_epoch: int = 1) -> list[float]:
        """Approximate start epoch of each stage (plateau stages at their cap, else at the
        previous stage's start + 1)."""
        out: list[float] = []
        for s in self.schedule.stages:
            t = s.start
            if isinstance(t, AtEpoch):
                x = float(t.epoch)
            elif isinstance(t, AtStep):
                x = t.step / steps_per_epoch
            elif isinstance(t, AtFraction):
                x = t.fraction * total_epochs
            elif isinstance(t, OnPlateau) and t.max_epoch is not None:
                x = float(t.max_epoch)
            else:
                x = (out[-1] + 1.0) if out else 0.0
            out.append(max(x, out[-1] if out else 0.0))
        return out

    def plot(self, total_epochs: int, *, steps_per_epoch: int = 1, ax: Any = None) -> Any:
        """Each group's base LR (log scale) and the trainable-parameter count over the run.

        Needs matplotlib (``pip install 'freezeflow[plot]'``). Returns the figure.
        """
        import matplotlib.pyplot as plt

        starts = self.starts(total_epochs, steps_per_epoch)
        ends = [*starts[1:], float(total_epochs)]
        if ax is None:
            fig, ax = plt.subplots(figsize=(8, 4))
        else:
            fig = ax.figure
        names = list(dict.fromkeys(g[0] for s in self.stages for g in s.groups))
        for gname in names:
            xs: list[float] = []
            ys: list[float] = []
            for s, a, b in zip(self.stages, starts, ends):
                lr = next((g[1] for g in s.groups if g[0] == gname), None)
                if lr is not None and b > a:
                    xs += [a, b]
                    ys += [lr, lr]
                elif xs:
                    xs.append(float("nan"))
                    ys.append(float("nan"))
            ax.plot(xs, ys, label=gname)
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel("base LR")
        twin = ax.twinx()
        xs2 = [x for a, b in zip(starts, ends) for x in (a, b)]
        ys2 = [s.n_trainable for s in self.stages for _ in (0, 1)]
        twin.plot(xs2, ys2, color="black", linestyle="--", label="trainable params")
        twin.set_ylabel("trainable parameters")
        for a in starts[1:]:
            ax.axvline(a, color="grey", alpha=0.3)
        if len(names) <= 12:
            ax.legend(fontsize="x-small", loc="lower right")
        ax.set_title(f"{self.model_name}: schedule plan")
        fig.tight_layout()
        return fig


def plan(
    model: nn.Module,
    schedule: Schedule | list[Stage],
    *,
    no_decay: PolicyLike | None = None,
    optimizer: Optimizer | type[Optimizer] | None = None,
) -> Plan:
    """What ``schedule`` will do to ``model``, without changing either.

    Weight decay is the stages' where they set one, else that of ``optimizer`` (an
    optimizer, or an optimizer class; default ``torch.optim.AdamW``, the unfreezer's and
    ``fit()``'s default, with 0.01), as the unfreezer will set it.

    Example:
        >>> import torchvision, freezeflow as ff
        >>> two = ff.presets.two_stage("fc", "layer4", head_epochs=5, lr=1e-5)
        >>> p = ff.plan(torchvision.models.resnet18(), two)
        >>> print(str(p).splitlines()[2])
        [0] head: starts at epoch 0
    """
    sched = schedule if isinstance(schedule, Schedule) else Schedule(schedule)
    return Plan.build(model, sched, layout(model, sched, no_decay), weight_decay_of(optimizer))
