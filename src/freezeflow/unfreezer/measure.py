"""How ``ff.auto``'s planner measures a window of blocks on the probe batches: the relative
gradient norm of candidate blocks from one backward, a trial (a few Adam steps on the
window, scored on other batches, then everything put back bit for bit), a trial of every
window (the winner keeps its trial's steps), successive halving over close windows (the
winner keeps its last trial's steps), and the choice among trials. A winning trial that
raised the probe loss more than ``RAISED``-fold keeps nothing, with a warning: its blocks
are likely to diverge at that LR.

:class:`Measures` is a part of :class:`~freezeflow.unfreezer.auto.AutoPlanner` (its one
user), kept in its own module to keep each under about 450 lines.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from freezeflow.errors import TrainingError
from freezeflow.unfreezer.checks import Once
from freezeflow.unfreezer.layout import Layout
from freezeflow.unfreezer.planner import Probe
from freezeflow.unfreezer.restore import Restored

__all__ = ["RAISED", "Measures"]

RAISED = 1.5
"""A winning trial whose probe loss ends above this multiple of the loss before it keeps
nothing (the model stays as it was) and a warning names the LR: the best of the windows
made the loss worse this fast in a few steps, so training them at that LR is likely to
diverge. A useful first trial can raise the loss a little (5-7% on the benchmark's noise
task, kept and helpful); a run whose LR was too high raised it 1.75-fold, then collapsed."""


class Measures:
    """The measurements of :class:`~freezeflow.unfreezer.auto.AutoPlanner`."""

    layout: Layout
    windows: list[tuple[int, ...]]
    block_params: dict[int, tuple[int, ...]]

    def window_params(self, w: int) -> frozenset[int]:  # pragma: no cover - the planner's
        raise NotImplementedError

    def window_name(self, w: int) -> str:  # pragma: no cover - the planner's
        raise NotImplementedError

    def _params(self, ids: frozenset[int] | set[int]) -> list[nn.Parameter]:
        return [self.layout.params[j] for j in sorted(ids)]

    def _block_rgn(self, b: int) -> float:
        """Relative gradient norm ``||g|| / ||w||`` of block ``b`` from the gradients in place."""
        g2 = w2 = 0.0
        for j in self.block_params[b]:
            p = self.layout.params[j]
            if p.grad is not None:
                g2 += float(p.grad.detach().double().pow(2).sum())
            w2 += float(p.detach().double().pow(2).sum())
        return math.sqrt(g2 / w2) if w2 > 0 else 0.0

    def _rgn(
        self,
        model: nn.Module,
        probe: Probe,
        batches: Sequence[Any],
        windows: Sequence[int] | None = None,
    ) -> dict[int, float]:
        """Relative gradient norm of every block of ``windows`` (default: every candidate
        block) over ``batches`` (summed loss), from one backward per batch."""
        windows = range(len(self.windows)) if windows is None else windows
        measured = frozenset(j for w in windows for j in self.window_params(w))
        with Restored(model, self.layout.params):
            for p in self.layout.params:
                p.requires_grad_(False)
                p.grad = None
            for p in self._params(measured):
                p.requires_grad_(True)
            for batch in batches:
                probe.loss(model, batch).backward()  # type: ignore[no-untyped-call]
            return {b: self._block_rgn(b) for w in windows for b in self.windows[w]}

    def _trial(
        self,
        model: nn.Module,
        probe: Probe,
        train: frozenset[int],
        lr: float,
        batches: Sequence[Any],
        scored: Sequence[Any],
        seed: int,
        reached: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
        first: tuple[Sequence[int], dict[int, float]] | None = None,
    ) -> float:
        """The probe loss after ``len(batches)`` Adam steps on ``train``; the model is then
        restored bit for bit. With ``reached``, the trained parameters and the buffers as
        the trial left them are put there (``(tensor, value)`` pairs), for a winner to keep.
        With ``first`` (blocks, out): the relative gradient norm of each of those blocks
        from the first step's backward (before any step: at the weights every trial starts
        from) is put in ``out``."""
        with Restored(model, self.layout.params):
            for p in self.layout.params:
                p.requires_grad_(False)
                p.grad = None
            params = self._params(train)
            for p in params:
                p.requires_grad_(True)
            opt = torch.optim.Adam(params, lr=lr)
            torch.manual_seed(seed)
            for i, batch in enumerate(batches):
                opt.zero_grad(set_to_none=True)
                probe.loss(model, batch).backward()  # type: ignore[no-untyped-call]
                if i == 0 and first is not None:
                    first[1].update({b: self._block_rgn(b) for b in first[0]})
                opt.step()
            score = self._loss_on(model, probe, scored, seed)
            if reached is not None:
                reached.extend((t, t.detach().clone()) for t in [*params, *model.buffers()])
        return score

    def _keep(
        self,
        k: int,
        w: int,
        score: float,
        before: float,
        lr: float,
        reached: list[tuple[torch.Tensor, torch.Tensor]],
    ) -> bool:
        """Put the weights and buffers the winning trial of window ``w`` reached
        (``_trial``'s ``reached``) into the model, so its steps count as training; unless its
        probe loss ``score`` (finite) ended above ``RAISED`` times a positive ``before``: then
        the model is left as it was and a warning says the stage's LR is likely too high (a
        ratio says nothing of a loss that can be zero or negative). Returns whether the
        steps were kept."""
        if before > 0 and score > RAISED * before:
            Once().warn(
                f"raised{k}",
                f"ff.auto: the best trial of stage {k} ({self.window_name(w)}) raised the "
                f"probe loss from {before:.3f} to {score:.3f} ({score / before:.2f}x; expected "
                f"at most {RAISED}x), so training these blocks at the stage's LR ({lr:.0e}) is "
                "likely to diverge; its steps were not kept; hint: lower auto(lr=...) and "
                "watch the validation loss of this stage",
            )
            return False
        with torch.no_grad():
            for t, value in reached:
                t.copy_(value)
        return True

    def _trials(
        self,
        k: int,
        model: nn.Module,
        probe: Probe,
        keep: frozenset[int],
        candidates: list[int],
        lr: float,
        batches: Sequence[Any],
        scored: Sequence[Any],
        seed: int,
        before: float,
    ) -> tuple[int, dict[int, float], dict[int, float], bool]:
        """A trial of every window of ``candidates`` (each training ``keep`` and the window,
        from the same weights, on the same batches); the window whose trial ended at the
        lowest probe loss (:meth:`_best`) wins and keeps its trial's steps (:meth:`_keep`,
        against the probe loss ``before``): the model ends as that trial left it (nothing
        changes when :meth:`_best` refuses). The relative gradient norms of the windows'
        blocks come from each trial's first backward (the same batch and weights for every
        window), so no other pass measures them. Returns the winner, each window's score,
        the blocks' norms and whether the steps were kept."""
        scores: dict[int, float] = {}
        rgn: dict[int, float] = {}
        kept: tuple[int, list[tuple[torch.Tensor, torch.Tensor]]] | None = None
        for w in candidates:
            reached: list[tuple[torch.Tensor, torch.Tensor]] = []
            scores[w] = self._trial(
                model, probe, keep | self.window_params(w), lr, batches, scored, seed,
                reached, (self.windows[w], rgn),
            )  # fmt: skip
            leads = kept is None or (scores[w], -w) < (scores[kept[0]], -kept[0])
            if math.isfinite(scores[w]) and leads:  # at most two trials' copies held at once
                kept = (w, reached)
        winner = self._best(k, scores, lr)  # refuses, before any change, when none is finite
        assert kept is not None and kept[0] == winner
        kept_steps = self._keep(k, winner, scores[winner], before, lr, kept[1])
        return winner, scores, rgn, kept_steps

    def _halving(
        self,
        k: int,
        model: nn.Module,
        probe: Probe,
        keep: frozenset[int],
        candidates: list[int],
        lr: float,
        batches: Sequence[Any],
        scored: Sequence[Any],
        seed: int,
        before: float,
    ) -> tuple[int, dict[int, float], int]:
        """Successive halving over ``candidates`` (windows): a trial of half the trial steps
        each, the better half (by the probe loss; at least one) on with the full steps,
        until one is left. The winner's last trial is kept (:meth:`_keep`, against the
        probe loss ``before``): the model ends as that trial left it. Returns the winner,
        each window's last score and the steps kept (0 when none were)."""
        alive = list(candidates)
        steps = max(1, len(batches) // 2)
        scores: dict[int, float] = {}
        while True:
            reached: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}
            for w in alive:
                reached[w] = []
                scores[w] = self._trial(
                    model, probe, keep | self.window_params(w), lr, batches[:steps], scored,
                    seed, reached[w],
                )  # fmt: skip
            finite = sorted(
                (w for w in alive if math.isfinite(scores[w])), key=lambda w: (scores[w], -w)
            )
            if not finite:
                self._best(k, {w: scores[w] for w in alive}, lr)  # raises: none finite
            alive = finite[: max(1, len(finite) // 2)]
            if len(alive) == 1 or steps >= len(batches):
                winner = alive[0]
                kept = self._keep(k, winner, scores[winner], before, lr, reached[winner])
                return winner, scores, steps if kept else 0
            steps = len(batches)

    def _score(self, model: nn.Module, probe: Probe, scored: Sequence[Any], seed: int) -> float:
        """The probe loss now (a forward pass only; the model is left as it was)."""
        with Restored(model, self.layout.params):
            return self._loss_on(model, probe, scored, seed)

    @staticmethod
    def _loss_on(model: nn.Module, probe: Probe, scored: Sequence[Any], seed: int) -> float:
        """The mean loss on the ``scored`` batches, without gradients (the same random
        numbers for every window: ``seed + 1``)."""
        torch.manual_seed(seed + 1)
        with torch.no_grad():
            losses = [float(probe.loss(model, b)) for b in scored]
        return sum(losses) / len(losses)

    def _best(self, k: int, trials: dict[int, float], lr: float) -> int:
        """The window whose trial ended at the lowest finite probe loss (a tie: the one
        nearer the output). A trial that diverged (NaN or infinite loss) never wins; when
        every trial did, the windows cannot be compared and the stage is refused."""
        finite = {w: v for w, v in trials.items() if math.isfinite(v)}
        if not finite:
            shown = ", ".join(f"{self.window_name(w)} {v}" for w, v in trials.items())
            raise TrainingError(
                f"ff.auto: every trial of stage {k} ended with a non-finite probe loss "
                f"({shown}), so the windows cannot be compared; expected finite losses; hint: "
                f"the trials train at the stage's LR ({lr:.0e}): lower auto(lr=...), or look "
                "for NaN/inf in the inputs or the loss"
            )
        return min(finite, key=lambda w: (finite[w], -w))
