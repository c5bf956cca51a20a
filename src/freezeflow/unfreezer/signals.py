"""Per-window training signals that ``ff.auto`` reads from steps training already takes.

:class:`StepSignals` samples, before every ``EVERY``-th optimizer step (an optimizer step
pre-hook: the gradients are in place, already unscaled under AMP, on every engine), the
relative gradient norm ``||g|| / ||w||`` of each window of blocks that trains, and keeps
its mean per epoch. No extra forward or backward runs: one norm per trained tensor at a
sampled step (kept on the device until an epoch closes, so no synchronisation per
step).

``ff.auto(refreeze=True)`` reads it: the earliest window that trains has *converged* when
its mean over the last epoch moved by less than :data:`SETTLED` from the epoch before (its
gradient norm has stopped changing: AutoFreeze's rule, Liu et al., 2021, on the prefix
only), and freezes again. Its state (the means, the open epoch's sums, the step count)
is saved with the planner's, so a resumed run samples the same steps and decides the
same.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.linalg import vector_norm

from freezeflow.errors import StateError

__all__ = ["EVERY", "SETTLED", "StepSignals"]

EVERY = 4
"""Sample the signals before every ``EVERY``-th optimizer step."""
SETTLED = 0.1
"""A window whose mean relative gradient norm over the last epoch moved by less than this
fraction of the epoch before's has converged (its gradient norm no longer changes)."""


class StepSignals:
    """The mean relative gradient norm of each training window, per epoch."""

    def __init__(self) -> None:
        self.steps = 0
        """Optimizer steps seen (sampled when ``steps % EVERY == 0``, before counting)."""
        self.epoch = -1
        """The epoch the open sums belong to."""
        self.means: dict[int, list[float]] = {}
        """Each window's mean per closed epoch in which it trained (oldest first)."""
        self._sums: dict[int, Tensor] = {}
        self._counts: dict[int, int] = {}

    def sample(self, windows: Mapping[int, Sequence[nn.Parameter]]) -> None:
        """Before an optimizer step: count it, and on a sampled step add each window's
        relative gradient norm (its tensors with a gradient) to the open epoch's sums."""
        due = self.steps % EVERY == 0
        self.steps += 1
        if not due:
            return
        with torch.no_grad():
            for w, params in windows.items():
                pairs = [(p.grad, p.detach()) for p in params if p.grad is not None]
                if not pairs:
                    continue
                g = torch.stack([vector_norm(grad) for grad, _ in pairs])
                v = torch.stack([vector_norm(weight) for _, weight in pairs])
                g2, v2 = g.double().pow(2).sum(), v.double().pow(2).sum()
                rgn = torch.where(v2 > 0, (g2 / v2.clamp_min(1e-300)).sqrt(), 0.0)
                self._sums[w] = self._sums[w] + rgn if w in self._sums else rgn
                self._counts[w] = self._counts.get(w, 0) + 1

    def start_epoch(self, epoch: int) -> None:
        """Close the open epoch (its means join :attr:`means`) when ``epoch`` is a later
        one; the same epoch again (a resumed run re-entering it) closes nothing."""
        if epoch <= self.epoch:
            return
        for w in sorted(self._sums):
            mean = float(self._sums[w]) / self._counts[w]
            self.means.setdefault(w, []).append(mean)
        self._sums, self._counts, self.epoch = {}, {}, epoch

    def converged(self, w: int) -> tuple[bool, str]:
        """Whether window ``w`` has converged: its mean over the last closed epoch moved by
        less than :data:`SETTLED` of the mean of the epoch before (two closed epochs at
        least); and the numbers in words."""
        seen = self.means.get(w, [])
        if len(seen) < 2:
            return False, f"{len(seen)} epoch(s) of signals"
        before, last = seen[-2], seen[-1]
        change = abs(last - before) / before if before > 0 else 0.0
        shown = " -> ".join(f"{m:.3g}" for m in seen)
        return change < SETTLED, (
            f"relative gradient norm per epoch {shown}, {100 * change:.0f}% change in the "
            f"last (settled below {100 * SETTLED:.0f}%)"
        )

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """The signals as plain values, for the planner's state."""
        return {
            "steps": self.steps,
            "epoch": self.epoch,
            "means": {str(w): list(v) for w, v in self.means.items()},
            "open": {str(w): [float(self._sums[w]), self._counts[w]] for w in self._sums},
        }

    def load_state_dict(self, data: object, device: torch.device | None = None) -> None:
        """Restore what ``state_dict()`` returned (the open sums on ``device``); checks
        everything before changing anything."""
        if not isinstance(data, Mapping):
            raise StateError(f"the state's ff.auto step signals are malformed: {data!r}")
        try:
            steps, epoch = int(data["steps"]), int(data["epoch"])
            means = {int(w): [float(x) for x in v] for w, v in data["means"].items()}
            sums = {
                int(w): torch.tensor(float(s), dtype=torch.float64, device=device)
                for w, (s, _) in data["open"].items()
            }
            counts = {int(w): int(c) for w, (_, c) in data["open"].items()}
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise StateError(f"the state's ff.auto step signals are malformed: {data!r}") from exc
        self.steps, self.epoch, self.means, self._sums, self._counts = (
            steps, epoch, means, sums, counts,
        )  # fmt: skip
