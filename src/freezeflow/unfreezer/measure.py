"""How ``ff.auto``'s planner measures a window of blocks on the probe batches: the relative
gradient norm of candidate blocks from one backward, a trial (a few Adam steps on the
window, scored on other batches, then everything put back bit for bit), a trial of every
window (the winner keeps its trial's steps), successive halving over close windows (the
winner keeps its last trial's steps), and the choice among trials. A winning trial that
raised the probe loss more than ``RAISED``-fold is tried again with its window's LR
lowered (``BACKOFF``, at most ``BACKOFFS`` times): the first that does not raise it that
far keeps its steps and sets the window's LR; when none passes nothing is kept. Either
way a warning names the LR.

:class:`Measures` is a part of :class:`~freezeflow.unfreezer.auto.AutoPlanner` (its one
user), kept in its own module to keep each under about 450 lines.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from freezeflow.errors import TrainingError
from freezeflow.unfreezer.checks import Once
from freezeflow.unfreezer.layout import Layout
from freezeflow.unfreezer.planner import Probe
from freezeflow.unfreezer.restore import Restored

__all__ = ["BACKOFF", "BACKOFFS", "RAISED", "UNTRIED", "Measures", "Settled"]

RAISED = 1.5
"""A winning trial whose probe loss ends above this multiple of the loss before it keeps
nothing (the model stays as it was) and a warning names the LR: the best of the windows
made the loss worse this fast in a few steps, so training them at that LR is likely to
diverge. A useful first trial can raise the loss a little (5-7% on the benchmark's noise
task, kept and helpful); a run whose LR was too high raised it 1.75-fold, then collapsed."""

BACKOFF = 3.0
"""After a winning trial raised the loss past ``RAISED``: the same trial again with the
window's LR divided by this (the stage's other groups at the stage's LR), ..."""
BACKOFFS = 2
"""... at most this many times (the window's LR down to 1/9 of the stage's)."""


@dataclass(frozen=True)
class Settled:
    """How a winning trial ended (:meth:`Measures._settle`)."""

    kept: bool
    """Whether a trial's steps were kept (the winner's, or a lowered LR's)."""
    factor: float
    """The factor on the window's LR: 1 unless the winner raised the loss past ``RAISED``;
    then the first lowered LR whose trial did not, or when none did, the one whose trial
    ended lowest (1 included)."""
    score: float
    """The winner's probe loss at the stage's LR."""
    tried: tuple[tuple[float, float], ...] = ()
    """Each lowered LR's factor and the probe loss its trial ended at, in order."""


UNTRIED = Settled(True, 1.0, math.nan)
"""A decision that kept its winner's steps without a trial past ``RAISED`` to settle (no
trial at all, or none that raised the loss that far)."""


Again = Callable[[float, list[tuple[torch.Tensor, torch.Tensor]]], float]
"""The winner's trial run again with its window's LR times a factor, filling ``reached``."""


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
        slower: tuple[frozenset[int], float] | None = None,
    ) -> float:
        """The probe loss after ``len(batches)`` Adam steps on ``train``; the model is then
        restored bit for bit. With ``reached``, the trained parameters and the buffers as
        the trial left them are put there (``(tensor, value)`` pairs), for a winner to keep.
        With ``first`` (blocks, out): the relative gradient norm of each of those blocks
        from the first step's backward (before any step: at the weights every trial starts
        from) is put in ``out``. With ``slower`` (some of ``train``, factor): those train at
        ``lr`` times the factor."""
        with Restored(model, self.layout.params):
            for p in self.layout.params:
                p.requires_grad_(False)
                p.grad = None
            params = self._params(train)
            for p in params:
                p.requires_grad_(True)
            slow, factor = slower if slower is not None else (frozenset(), 1.0)
            groups = [
                {"params": self._params(train - slow), "lr": lr},
                {"params": self._params(train & slow), "lr": lr * factor},
            ]
            opt = torch.optim.Adam([g for g in groups if g["params"]], lr=lr)
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

    def _settle(
        self,
        k: int,
        w: int,
        score: float,
        before: float,
        lr: float,
        reached: list[tuple[torch.Tensor, torch.Tensor]],
        again: Again,
    ) -> Settled:
        """Put the weights and buffers the winning trial of window ``w`` reached
        (``_trial``'s ``reached``) into the model, so its steps count as training; unless its
        probe loss ``score`` (finite) ended above ``RAISED`` times a positive ``before`` (a
        ratio says nothing of a loss that can be zero or negative). Then the trial runs
        again (``again``) with the window's LR divided by ``BACKOFF``, at most ``BACKOFFS``
        times: the first whose loss ends within ``RAISED`` keeps its steps and sets the
        window's LR; when none does, the model is left as it was and the window trains at
        the LR whose trial ended lowest. A warning says which."""
        if not (before > 0 and score > RAISED * before):
            self._put(reached)
            return Settled(True, 1.0, score)
        tried: list[tuple[float, float]] = []
        for i in range(1, BACKOFFS + 1):
            factor = BACKOFF**-i
            got: list[tuple[torch.Tensor, torch.Tensor]] = []
            loss = again(factor, got)
            tried.append((factor, loss))
            if math.isfinite(loss) and loss <= RAISED * before:
                self._put(got)
                settled = Settled(True, factor, score, tuple(tried))
                break
        else:  # none passed: the LR whose trial ended lowest
            finite = [(x, f) for f, x in [(1.0, score), *tried] if math.isfinite(x)]
            settled = Settled(False, min(finite)[1] if finite else 1.0, score, tuple(tried))
        Once().warn(f"raised{k}", self._raised_warning(k, w, before, lr, settled))
        return settled

    @staticmethod
    def _put(reached: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        with torch.no_grad():
            for t, value in reached:
                t.copy_(value)

    def _raised_warning(self, k: int, w: int, before: float, lr: float, s: Settled) -> str:
        lowered = ", ".join(f"{x:.3f} at {lr * f:.0e}" for f, x in s.tried)
        head = (
            f"ff.auto: the best trial of stage {k} ({self.window_name(w)}) raised the probe "
            f"loss from {before:.3f} to {s.score:.3f} ({s.score / before:.2f}x; expected at "
            f"most {RAISED}x) at the stage's LR ({lr:.0e}), so training these blocks at that LR "
            f"is likely to diverge; with the window's LR lowered it ended at {lowered}"
        )
        if s.kept:
            return (
                f"{head}: the window trains at {lr * s.factor:.0e} (1/{1 / s.factor:.0f} of "
                "the stage's LR) and keeps that trial's steps; hint: lower auto(lr=...) (the "
                "stage's other blocks still train at the stage's LR)"
            )
        return (
            f"{head}: no trial's steps were kept, and the window trains at "
            f"{lr * s.factor:.0e} (its trial ended lowest); hint: lower auto(lr=...) and "
            "watch the validation loss of this stage"
        )

    def _again(
        self,
        model: nn.Module,
        probe: Probe,
        keep: frozenset[int],
        w: int,
        lr: float,
        batches: Sequence[Any],
        scored: Sequence[Any],
        seed: int,
    ) -> Again:
        """Window ``w``'s trial (training ``keep`` and the window) to run again with the
        window's LR times a factor."""
        window = self.window_params(w)

        def again(factor: float, reached: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
            return self._trial(
                model, probe, keep | window, lr, batches, scored, seed, reached,
                slower=(window, factor),
            )  # fmt: skip

        return again

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
    ) -> tuple[int, dict[int, float], dict[int, float], Settled]:
        """A trial of every window of ``candidates`` (each training ``keep`` and the window,
        from the same weights, on the same batches); the window whose trial ended at the
        lowest probe loss (:meth:`_best`) wins and keeps its trial's steps (:meth:`_settle`,
        against the probe loss ``before``): the model ends as that trial left it (nothing
        changes when :meth:`_best` refuses). The relative gradient norms of the windows'
        blocks come from each trial's first backward (the same batch and weights for every
        window), so no other pass measures them. Returns the winner, each window's score,
        the blocks' norms and how its trial settled."""
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
        again = self._again(model, probe, keep, winner, lr, batches, scored, seed)
        settled = self._settle(k, winner, scores[winner], before, lr, kept[1], again)
        return winner, scores, rgn, settled

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
    ) -> tuple[int, dict[int, float], int, Settled]:
        """Successive halving over ``candidates`` (windows): a trial of half the trial steps
        each, the better half (by the probe loss; at least one) on with the full steps,
        until one is left. The winner's last trial is kept (:meth:`_settle`, against the
        probe loss ``before``): the model ends as that trial left it. Returns the winner,
        each window's last score, the steps kept (0 when none were) and how its trial
        settled."""
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
                again = self._again(model, probe, keep, winner, lr, batches[:steps], scored, seed)
                settled = self._settle(
                    k, winner, scores[winner], before, lr, reached[winner], again
                )
                return winner, scores, steps if settled.kept else 0, settled
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
