"""A table of what is frozen: per block (or per layer), counts and norm modes."""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from torch import nn

from freezeflow.core.discovery import is_norm_layer
from freezeflow.core.freezing import norm_mode
from freezeflow.core.index import ModelIndex
from freezeflow.errors import PolicyError

__all__ = ["Summary", "SummaryRow", "summary"]


@dataclass(frozen=True)
class SummaryRow:
    """One row of a :class:`Summary`."""

    index: int
    name: str
    params: int
    n_trainable: int
    """Trainable parameter values in this block or layer."""
    norm: str

    @property
    def status(self) -> str:
        if self.params == 0:
            return "-"
        if self.n_trainable == self.params:
            return "trainable"
        return "frozen" if self.n_trainable == 0 else "partial"


@dataclass(frozen=True)
class Summary:
    """What :func:`summary` returns: rows plus totals; prints as a text table and shows as
    an HTML table in notebooks."""

    model_name: str
    unit: str
    rows: tuple[SummaryRow, ...]
    total: int
    n_trainable: int
    """Trainable parameter values in the model."""

    @property
    def frozen(self) -> int:
        return self.total - self.n_trainable

    def _table(self) -> tuple[list[str], list[list[str]], list[str]]:
        head = ["#", self.unit[:-1], "params", "trainable", "status", "norm"]
        body = [
            [str(r.index), r.name, f"{r.params:,}", f"{r.n_trainable:,}", r.status, r.norm]
            for r in self.rows
        ]
        pct = 100.0 * self.n_trainable / self.total if self.total else 0.0
        foot = ["", "total", f"{self.total:,}", f"{self.n_trainable:,}", f"{pct:.1f}%", ""]
        return head, body, foot

    def __str__(self) -> str:
        head, body, foot = self._table()
        widths = [max(len(r[i]) for r in [head, *body, foot]) for i in range(len(head))]
        right = {0, 2, 3}

        def fmt(row: Sequence[str]) -> str:
            cells = [
                c.rjust(w) if i in right else c.ljust(w)
                for i, (c, w) in enumerate(zip(row, widths))
            ]
            return "  ".join(cells).rstrip()

        rule = "  ".join("-" * w for w in widths)
        title = (
            f"{self.model_name}: {self.n_trainable:,} of {self.total:,} parameters "
            f"trainable ({self.frozen:,} frozen)"
        )
        return "\n".join([title, fmt(head), rule, *map(fmt, body), rule, fmt(foot)])

    def __repr__(self) -> str:
        return str(self)

    def _repr_html_(self) -> str:
        head, body, foot = self._table()

        def row(cells: Sequence[str], tag: str) -> str:
            return "<tr>" + "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in cells) + "</tr>"

        return (
            f"<p><b>{html.escape(self.model_name)}</b></p><table>"
            + row(head, "th")
            + "".join(row(r, "td") for r in body)
            + row(foot, "th")
            + "</table>"
        )


def _norm_label(modules: Sequence[nn.Module]) -> str:
    norms = [m for m in modules if is_norm_layer(m)]
    if not norms:
        return ""
    modes = sorted({norm_mode(m) or ("train" if m.training else "eval") for m in norms})
    return "/".join(modes)


def summary(model: nn.Module, *, by: Literal["blocks", "layers"] = "blocks") -> Summary:
    """Per block (or per layer): parameter count, trainable count, status and norm mode.

    The norm column shows ``eval``/``frozen`` for norm layers freezeflow locked, otherwise the
    layer's current mode (``train``/``eval``).

    Example:
        >>> import torchvision, freezeflow as ff
        >>> model = torchvision.models.resnet18()
        >>> _ = ff.freeze(model, ~ff.name("fc"))
        >>> print(str(ff.summary(model)).splitlines()[0])
        ResNet: 513,000 of 11,689,512 parameters trainable (11,176,512 frozen)
    """
    if by not in ("blocks", "layers"):
        raise PolicyError(
            f"summary(by={by!r}): expected 'blocks' or 'layers'; hint: 'layers' shows every "
            "leaf module with parameters"
        )
    idx = ModelIndex.build(model)
    unit_of = idx.block_of_alias() if by == "blocks" else idx.layer_of_alias()
    names = [b.name for b in idx.blocks] if by == "blocks" else list(idx.layers)
    counted: set[int] = set()
    params = [0] * len(names)
    trainable = [0] * len(names)
    for a, unit in enumerate(unit_of):
        pid = idx.alias_param[a]
        if unit < 0 or pid in counted:
            continue
        counted.add(pid)
        p = idx.params[pid]
        params[unit] += p.numel()
        trainable[unit] += p.numel() if p.requires_grad else 0
    rows = []
    for i, unit_name in enumerate(names):
        if by == "blocks":
            block = idx.blocks[i]
            mods = [m for path in block.modules for m in idx.modules[path].modules()]
        else:
            mods = [idx.modules[unit_name]]
        rows.append(SummaryRow(i, unit_name, params[i], trainable[i], _norm_label(mods)))
    total = sum(p.numel() for p in idx.params)
    train = sum(p.numel() for p in idx.params if p.requires_grad)
    return Summary(type(model).__name__, by, tuple(rows), total, train)
