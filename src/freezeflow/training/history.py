"""What :func:`~freezeflow.fit` did: the :class:`History` of a run, one record per epoch and
per stage change."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from freezeflow.errors import MissingDependencyError, TrainingArgumentError
from freezeflow.unfreezer.gradual import Transition

__all__ = ["History"]

_HISTORY_FORMAT = "freezeflow.History/1"


@dataclass
class History:
    """What :func:`~freezeflow.fit` did: one record per epoch, per stage change and per note,
    in order.

    An epoch record (``kind == "epoch"``) holds ``epoch`` (0-based), ``stage`` (the stage's
    name, ``None`` without a schedule), ``train_loss`` (mean over the epoch's samples),
    ``val_loss`` (``None`` without validation data), ``metrics`` (``{"val_accuracy": ...}``),
    ``lrs`` (LR of each param group), ``n_trainable`` (trainable parameter values),
    ``steps`` (optimizer steps so far), ``seconds`` and ``images_per_s``. A transition record
    (``kind == "transition"``) holds the fields of :class:`~freezeflow.Transition`; a note
    (``kind == "note"``) holds ``epoch`` and a one-line ``message`` (e.g. what the feature
    cache does).

    Example:
        >>> h = History([{"kind": "note", "epoch": 0, "message": "hello"}])
        >>> History.from_json(h.to_json()) == h, len(h), h.to_dicts()[0]["message"]
        (True, 0, 'hello')
    """

    records: list[dict[str, Any]] = field(default_factory=list)
    interrupted: bool = False
    """True when training ended on Ctrl-C (``KeyboardInterrupt``)."""
    stop_reason: str | None = None
    """Why training ended early (e.g. early stopping), else ``None``."""

    @property
    def epochs(self) -> list[dict[str, Any]]:
        """The epoch records."""
        return [r for r in self.records if r["kind"] == "epoch"]

    @property
    def transitions(self) -> list[dict[str, Any]]:
        """The stage-change records (the first stage's start included)."""
        return [r for r in self.records if r["kind"] == "transition"]

    def add_transition(self, t: Transition) -> None:
        """Append a transition record."""
        self.records.append({"kind": "transition", **t.to_dict()})

    def add_epoch(self, **fields: Any) -> None:
        """Append an epoch record with ``fields``."""
        self.records.append({"kind": "epoch", **fields})

    def add_note(self, epoch: int, message: str) -> None:
        """Append a note: a one-line message about epoch ``epoch``."""
        self.records.append({"kind": "note", "epoch": epoch, "message": message})

    def to_dicts(self) -> list[dict[str, Any]]:
        """All records as plain dicts (a deep copy)."""
        return json.loads(json.dumps(self.records))  # type: ignore[no-any-return]

    def to_json(self, indent: int | None = None) -> str:
        """The history as JSON text; :meth:`from_json` reads it back."""
        data = {
            "format": _HISTORY_FORMAT,
            "interrupted": self.interrupted,
            "stop_reason": self.stop_reason,
            "records": self.records,
        }
        return json.dumps(data, indent=indent)

    @classmethod
    def from_json(cls, text: str) -> History:
        """Read what :meth:`to_json` wrote."""
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("format") != _HISTORY_FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise TrainingArgumentError(
                f"not a freezeflow History (found {found!r}, expected format "
                f"{_HISTORY_FORMAT!r}); hint: pass what History.to_json() wrote"
            )
        return cls(list(data["records"]), bool(data["interrupted"]), data["stop_reason"])

    def to_dataframe(self) -> Any:
        """The epoch records as a ``pandas.DataFrame``, one row per epoch, metrics and LRs
        flattened into columns (``val_accuracy``, ``lr/<group>``). Needs pandas."""
        try:
            import pandas as pd
        except ImportError:
            raise MissingDependencyError(
                "History.to_dataframe() needs pandas; hint: pip install pandas, or use "
                "History.to_dicts()"
            ) from None
        rows = []
        for r in self.epochs:
            row = {k: v for k, v in r.items() if k not in ("kind", "metrics", "lrs")}
            row.update(r["metrics"])
            row.update({f"lr/{g}": lr for g, lr in r["lrs"].items()})
            rows.append(row)
        return pd.DataFrame(rows)

    def plot(self, metrics: Sequence[str] | None = None) -> Any:
        """Loss curves (and metric curves, default: all logged) against epochs, with a dashed
        line where each stage begins. Returns a ``matplotlib.figure.Figure``. Needs
        matplotlib."""
        try:
            from matplotlib.figure import Figure
        except ImportError:
            raise MissingDependencyError(
                "History.plot() needs matplotlib; hint: pip install 'freezeflow[plot]'"
            ) from None
        epochs = self.epochs
        names = (
            list(metrics)
            if metrics is not None
            else sorted({m for r in epochs for m in r["metrics"]})
        )
        fig = Figure(figsize=(6 + 4 * bool(names), 4), layout="constrained")
        axes = fig.subplots(1, 1 + bool(names), squeeze=False)[0]
        x = [r["epoch"] + 1 for r in epochs]
        axes[0].plot(x, [r["train_loss"] for r in epochs], marker="o", label="train_loss")
        if any(r["val_loss"] is not None for r in epochs):
            axes[0].plot(x, [r["val_loss"] for r in epochs], marker="o", label="val_loss")
        for name in names:
            axes[1].plot(
                x, [r["metrics"].get(name, math.nan) for r in epochs], marker="o", label=name
            )
        for ax, title in zip(axes, ("loss", "metrics")):
            for t in self.transitions[1:]:
                ax.axvline(t["epoch"], color="grey", linestyle="--", linewidth=1)
                ax.text(
                    t["epoch"],
                    1,
                    f" {_label(t)}",
                    transform=ax.get_xaxis_transform(),
                    va="top",
                    fontsize=8,
                )
            ax.set(xlabel="epoch", title=title)
            ax.legend()
        return fig

    def __len__(self) -> int:
        """The number of epoch records."""
        return len(self.epochs)


def _label(transition: dict[str, Any]) -> str:
    """A stage change's label on the plot: its name, and for an ``ff.auto`` stage the window
    of blocks it unfroze (its reason reads ``...; +<window> at <lr>...``)."""
    reason = str(transition.get("reason", ""))
    if "; +" not in reason:
        return str(transition["name"])
    window = reason.split("; +", 1)[1].split(" at ", 1)[0]
    return f"{transition['name']}: +{window}"
