"""What a schedule will do to a model, before training: a table per stage and a plot."""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

from torch import nn
from torch.optim import Optimizer

from freezeflow.core.policy import PolicyLike
from freezeflow.schedules.schedule import Schedule, Stage
from freezeflow.unfreezer.layout import Layout, layout
from freezeflow.unfreezer.optimizer import weight_decay_of
from freezeflow.unfreezer.planner import StagePlanner, planner_for

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
        planner: StagePlanner | None = None,
    ) -> Plan:
        """The plan of ``schedule`` resolved as ``lay`` on ``model``; ``weight_decay`` is the
        optimizer's, which decay groups get while no stage sets one. ``planner`` is the
        running unfreezer's (with what it decided so far); by default a new one, so a stage
        a planner decides while training shows what it will choose from."""
        planner = planner_for(model, schedule, lay) if planner is None else planner
        total = sum(p.numel() for p in lay.params)
        out = []
        prev: frozenset[int] = frozenset()
        for k, stage in enumerate(schedule.stages):
            planned = planner.planned(k, prev)
            now, scales = planned.trainable, planned.scales
            policy = planned.policy
            if policy is None:
                policy = repr(stage.trainable) + (" (exclusive)" if stage.exclusive else "")
            blocks = sorted({lay.param_block[i] for i in now - prev})
            groups = []
            for g in lay.groups:
                if any(i in now for i in g.params):
                    block = -1 if g.block is None else g.block
                    lr = lay.lr(stage, g) if scales is None else stage.lr * scales.get(block, 1.0)
                    groups.append(
                        (
                            g.name,
                            lr,
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
                    new_blocks=tuple(lay.block_names[b] for b in blocks),
                    n_trainable=sum(lay.params[i].numel() for i in now),
                    total=total,
                    groups=tuple(groups),
                    reset_state=stage.reset_state,
                )
            )
            prev = now
        overlaps = lay.overlaps if planner.warns_overlap else ()
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
            x = s.start.expected_epoch(total_epochs, steps_per_epoch)
            if x is None:
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
