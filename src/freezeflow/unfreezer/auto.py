"""The decisions of :func:`freezeflow.auto`: which window of blocks a stage unfreezes, at which
LR per block, and (with ``refreeze``) which converged window freezes again.

:class:`AutoPlanner` is the stage planner (:mod:`freezeflow.unfreezer.planner`) that
:class:`~freezeflow.schedules.auto.AutoSchedule` names: the unfreezer asks it, when an
``auto<k>`` stage begins, for the stage's trainable set and per-block LR scales. Measuring
needs training batches and the loss: a :class:`~freezeflow.unfreezer.planner.Probe`, which
``fit()`` gives the unfreezer (:meth:`~freezeflow.GradualUnfreezer.set_probe`). Without one
the planner falls back to the window nearest the output, and says so in the decision. Its
in-stage cosine is an LR scheduler (:meth:`AutoPlanner.lr_scheduler`) that ``fit()``
attaches when the run brings none.

This is the only module besides :mod:`freezeflow.schedules.auto` that names the auto
schedule's class (an import contract).

Every decision leaves the optimizer and the random generators as it found them, and the
model too, except that the trial that wins keeps its steps: the trials train copies of
nothing; they train the model in place and then copy every parameter and buffer back, bit
for bit, and the winner's trained weights and buffers are then copied in, as its trial
left them (its steps count as training, not as a cost of deciding), unless its trial
raised the probe loss more than ``RAISED``-fold: then its trial runs again with the
window's LR lowered, and the first that passes keeps its steps and sets the window's LR
(when none does, nothing is kept), with a warning either way.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from freezeflow.errors import ScheduleError, ScheduleTypeError, StateError, TrainingError
from freezeflow.schedules.auto import SEPARATION, STAGE_LR_FACTORS, AutoSchedule, stage_caps
from freezeflow.schedules.schedule import Schedule
from freezeflow.unfreezer.layout import Layout
from freezeflow.unfreezer.lr_schedulers import StageLR
from freezeflow.unfreezer.measure import RAISED, UNTRIED, Measures, Settled
from freezeflow.unfreezer.planner import (
    PlannedStage,
    Probe,
    StageChoice,
    StagePlanner,
    StageTime,
    register_planner,
)
from freezeflow.unfreezer.restore import OtherRngs, rng_devices
from freezeflow.unfreezer.signals import StepSignals

__all__ = ["AutoPlanner", "Decision"]

MIN_SCALE = 0.1
"""The smallest LR scale a block of a new window gets (relative gradient norm over the
window's largest)."""


@dataclass(frozen=True)
class Decision:
    """What an ``auto`` stage decided when it began (plain values; saved in the state)."""

    stage_index: int
    window: int
    """The window unfrozen, by index; -1 for none, where the decision is a change within
    the stage that only froze ``refrozen`` again."""
    blocks: tuple[int, ...]
    """Its blocks (indices into the model's blocks)."""
    scales: dict[str, float]
    """LR scale of each of its blocks, by block name."""
    rgn: dict[str, float]
    """Relative gradient norm ``||g|| / ||w||`` of the blocks measured, by block name: every
    block of the windows it chose between (from each trial's first backward, or the one
    measuring backward of ``decide="signals"`` over every candidate block); a last window's
    own blocks; empty without a probe."""
    refrozen: tuple[int, ...]
    """Windows frozen again (``refreeze``)."""
    text: str
    """The one-line explanation (also in the stage change's reason)."""


def _settled_text(s: Settled, before: float, lr: float) -> str:
    """The end of a decision, after the winner's probe loss: whose steps were kept."""
    if not s.tried:
        return ", its steps kept"
    lowered = ", ".join(f"{x / before:.2f}x at {lr * f:.0e}" for f, x in s.tried)
    rose = f"the loss rose {s.score / before:.2f}x (over {RAISED}x)"
    if s.kept:
        return (
            f"; at {lr:.0e} {rose}, at a lower window LR {lowered}: the window trains at "
            f"1/{1 / s.factor:.0f} of the stage's LR, that trial's steps kept"
        )
    return (
        f"; its steps not kept: {rose}, and {lowered} with the window's LR lowered: the LR "
        f"is likely too high (the window trains at {lr * s.factor:.0e})"
    )


def _split(items: list[int], parts: int) -> list[tuple[int, ...]]:
    """``items`` cut into ``parts`` contiguous runs as equal as possible (fewer when there
    are fewer items)."""
    parts = min(parts, len(items))
    out, start = [], 0
    for k in range(parts):
        size = len(items) // parts + (1 if k < len(items) % parts else 0)
        out.append(tuple(items[start : start + size]))
        start += size
    return out


@register_planner("auto")
class AutoPlanner(Measures, StagePlanner):
    """Decides the ``auto`` stages of one unfreezer (see :func:`freezeflow.auto`)."""

    warns_overlap = False  # its stages re-select every candidate by design
    supports_soft = False  # its measurements flip requires_grad

    def __init__(self, model: nn.Module, schedule: Schedule, layout: Layout) -> None:
        if not isinstance(schedule, AutoSchedule):
            raise ScheduleTypeError(
                f"the 'auto' stage planner applies schedules made by ff.auto(), got "
                f"{type(schedule).__name__}; hint: build it with ff.auto(epochs)"
            )
        super().__init__(model, schedule, layout)
        self.settings = schedule.settings
        self.block_names = list(layout.block_names)
        candidates = layout.selected_ids[1]
        self.block_params: dict[int, tuple[int, ...]] = {}
        for j in sorted(candidates):  # the layout's block of each parameter (tied: output side)
            b = layout.param_block[j]
            self.block_params[b] = (*self.block_params.get(b, ()), j)
        later = len(schedule) - 1
        if len(self.block_params) < later:
            raise ScheduleError(
                f"ff.auto on {type(model).__name__}: {len(self.block_params)} block(s) below "
                f"the head can train, but the schedule has {later} stages after the head, each "
                "unfreezing at least one block; hint: a longer schedule needs a deeper model, "
                "or split it with ff.set_blocks"
            )
        asked = self.settings.windows
        if asked > len(self.block_params):
            raise ScheduleError(
                f"auto(windows={asked}) cuts the blocks below the head into {asked} windows, but "
                f"{type(model).__name__} has {len(self.block_params)} block(s) below the head "
                f"that can train; expected windows <= {len(self.block_params)}; hint: "
                f"auto(windows={len(self.block_params)}) (one block per window), or split the "
                "model into more blocks with ff.set_blocks"
            )
        self.windows = _split(sorted(self.block_params), asked)
        self.decisions: list[Decision] = []
        self.signals = StepSignals()
        """Per-window relative gradient norms of the training steps (``refreeze``)."""
        self.watches_steps = self.settings.refreeze
        minutes = self.settings.minutes
        self.time_budget = None if minutes is None else 60.0 * minutes
        self._live: tuple[int, dict[int, list[nn.Parameter]]] = (-1, {})

    def check_run(self, total_steps: int | None, total_epochs: int | None) -> None:
        budget = self.settings.epochs
        if total_epochs is not None and total_epochs != budget:
            raise ScheduleError(
                f"the run lasts {total_epochs} epochs but the ff.auto schedule was given a "
                f"budget of {budget} epochs, and its stages are placed within that budget; "
                f"expected the same number of epochs; hint: ff.auto(epochs={total_epochs}), "
                f"or train for {budget} epochs (fit(epochs={budget}))"
            )

    @property
    def needs_probe(self) -> bool:
        return self.probe is None

    # ------------------------------------------------------------------ views
    def window_name(self, w: int) -> str:
        blocks = self.windows[w]
        first, last = self.block_names[blocks[0]], self.block_names[blocks[-1]]
        return first if len(blocks) == 1 else f"{first} .. {last}"

    def unfrozen_windows(self) -> list[int]:
        """Windows trainable now, in the order they were unfrozen (refrozen ones left out)."""
        out: list[int] = []
        for d in self.decisions:
            out = [w for w in out if w not in d.refrozen] + ([d.window] if d.window >= 0 else [])
        return out

    def remaining(self) -> list[int]:
        done = {d.window for d in self.decisions if d.window >= 0}
        return [w for w in range(len(self.windows)) if w not in done]

    def window_params(self, w: int) -> frozenset[int]:
        return frozenset(j for b in self.windows[w] for j in self.block_params[b])

    def trained_later(self, trainable: frozenset[int], stage_index: int) -> frozenset[int]:
        """What may still train: what trains now, and every window a later stage may pick."""
        out = set(trainable)
        if stage_index + 1 < len(self.schedule):
            for w in self.remaining():
                out |= self.window_params(w)
        return frozenset(out)

    def stage_end_epoch(self, k: int) -> int:
        """The epoch at which stage ``k`` ends at the latest (the next cap, or the budget)."""
        caps = stage_caps(self.settings.epochs)
        return caps[k] if k < len(caps) else self.settings.epochs

    def lr_scheduler(self, optimizer: Optimizer, now: Callable[[], StageTime]) -> StageLR | None:
        """The in-stage cosine (``anneal``): every group's LR goes from its base LR down to
        0.1x over the stage's expected length (to its cap, or the budget's end), restarting
        at each stage; None with ``anneal=False``. Flat while the run's length is unknown."""
        if not self.settings.anneal:
            return None

        def curve_for() -> Callable[[int], float]:
            t = now()
            if not (t.total_steps and t.total_epochs):
                return lambda n: 1.0
            per_epoch = t.total_steps / t.total_epochs
            length = max(1.0, (self.stage_end_epoch(t.stage_index) - t.started[0]) * per_epoch)

            def cosine(n: int) -> float:
                done = min(1.0, n / self._timed_length(now(), length, per_epoch))
                return MIN_SCALE + (1 - MIN_SCALE) * 0.5 * (1 + math.cos(math.pi * done))

            return cosine

        t = now()
        return StageLR(optimizer, curve_for, steps_done=max(0, t.step - t.started[1]))

    def _timed_length(self, t: StageTime, length: float, per_epoch: float) -> float:
        """The running stage's expected length in steps: ``length`` (to its epoch cap or
        the budget's end), or less with ``minutes`` when fewer epochs fit in the time left
        to the stage's time cap (epochs as long as the last one; the next stage starts at
        the first epoch start past its cap) or to the deadline (the run stops after the
        last epoch that ends before it). Re-estimated at each epoch start."""
        if self.time_budget is None or t.seconds is None or not t.last_epoch:
            return length
        caps = stage_caps(self.settings.epochs)
        k = t.stage_index
        if k < len(caps):  # a time cap: epochs start until the cap is passed
            left = self.time_budget * caps[k] / self.settings.epochs - t.seconds
            more = math.ceil(left / t.last_epoch)
        else:  # the deadline: epochs run while one more ends before it
            more = math.floor((self.time_budget - t.seconds) / t.last_epoch)
        epochs = (t.epoch - t.started[0]) + max(1, more)
        return max(1.0, min(length, epochs * per_epoch))

    # ------------------------------------------------------------------ deciding
    def choose(self, k: int, trainable: frozenset[int]) -> StageChoice:
        """Decide stage ``k``: its trainable set (indices into the layout's parameters), the
        LR scale of each block of the new window, and the one-line explanation."""
        if k == 0:  # the head, as written
            return StageChoice(self.layout.trainable_ids[0])
        s = self.settings
        lay = self.layout
        model = self.model
        remaining = self.remaining()
        lr = s.lr * STAGE_LR_FACTORS[k]
        if not remaining:  # more stages than windows: nothing left to add
            raise ScheduleError(
                f"ff.auto: stage {k} found no window left to unfreeze; hint: "
                f"auto(windows=...) must be at least the number of stages after the head"
            )
        probe = self.probe
        rgn: dict[int, float] = {}
        refrozen: tuple[int, ...] = ()
        why = ""
        settled = UNTRIED  # until a trial settles otherwise
        if probe is None:
            chosen, detail = remaining[-1], "no probe batches (the loop gave none): the window "
            detail += "nearest the output"
        else:
            seed = s.seed * 1000 + k
            lone = len(remaining) == 1  # nothing to choose between: no trial, no score
            n = 1 if lone else s.trial_steps + s.probe_batches
            trials: dict[int, float] = {}
            signal: tuple[int, str] | None = None
            if s.refreeze and k >= 2:
                refrozen, why = self._converged(starting=True)
            keep = trainable - frozenset(j for w in refrozen for j in self.window_params(w))
            # every random stream is left as found: torch's (CPU and CUDA), NumPy's global
            # generator and Python's (a dataset may draw from them while probe batches load)
            with OtherRngs(), torch.random.fork_rng(devices=rng_devices(lay.params)):
                drawn = list(probe.batches(n, seed))
                batches, scored = drawn[: s.trial_steps], drawn[s.trial_steps :]
                if lone and drawn:  # one backward on one batch, for its blocks' LR scales
                    rgn = self._rgn(model, probe, drawn[:1], remaining)
                    self._finite_last(k, remaining[0], rgn)
                    signal = (remaining[0], "the only window left, so no trial")
                elif batches and scored:
                    before = self._score(model, probe, scored, seed)
                    if s.decide == "signals":
                        rgn = self._rgn(model, probe, scored)
                        signal, settled = self._by_signals(
                            k, model, probe, keep, remaining, rgn, lr, batches, scored, seed,
                            before,
                        )  # fmt: skip
                    else:  # the winner keeps its trial's steps
                        chosen, trials, rgn, settled = self._trials(
                            k, model, probe, keep, remaining, lr, batches, scored, seed, before
                        )
            if signal is not None:
                chosen, detail = signal
                if "{before}" in detail:
                    detail = detail.replace("{before}", f"{before:.3f}")
            elif lone:
                chosen = remaining[0]
                detail = "the only window left; the probe gave no batch to scale its LRs by"
            elif not trials:
                chosen = remaining[-1]
                detail = (
                    f"the probe gave {len(drawn)} batch(es), fewer than a trial needs ({n}): "
                    "the window nearest the output"
                )
            else:
                others = ", ".join(
                    f"{self.window_name(w)} {trials[w]:.3f}" for w in remaining if w != chosen
                )
                detail = (
                    f"a {s.trial_steps}-step trial took the probe loss from {before:.3f} to "
                    f"{trials[chosen]:.3f}"
                    + (f" (other windows: {others})" if others else "")
                    + _settled_text(settled, before, lr)
                )
        blocks = self.windows[chosen]
        top = max((rgn.get(b, 0.0) for b in blocks), default=0.0)
        scales = {
            b: settled.factor * (max(MIN_SCALE, rgn[b] / top) if top > 0 and b in rgn else 1.0)
            for b in blocks
        }
        spread = ""
        if rgn and top > 0:
            med = sorted(rgn.values())[len(rgn) // 2]
            lo, hi = min(scales.values()), max(scales.values())
            spread = (
                f", per-block LR x{lo:.2f}-{hi:.2g} by relative gradient norm ({top / med:.1f}x "
            )
            spread += "the median at most)" if med > 0 else "the median)"
        again = ""
        if refrozen:
            again = f"; froze again (converged): {why}"
        text = f"+{self.window_name(chosen)} at {lr:.0e}{spread}: {detail}{again}"
        decision = Decision(
            stage_index=k,
            window=chosen,
            blocks=blocks,
            scales={self.block_names[b]: v for b, v in scales.items()},
            rgn={self.block_names[b]: v for b, v in rgn.items()},
            refrozen=refrozen,
            text=text,
        )
        self.decisions.append(decision)
        off = frozenset(j for w in refrozen for j in self.window_params(w))
        return StageChoice((trainable - off) | self.window_params(chosen), scales, text)

    def planned(self, k: int, before: frozenset[int]) -> PlannedStage:
        """Stage ``k`` as far as it is decided: the head stage as written; a decided stage
        as decided; a stage still to come trains what the one before it trains, and lists
        the windows it will choose from."""
        if k == 0:
            return PlannedStage(self.layout.trainable_ids[0], {})
        scales: dict[int, float] = {}
        for earlier in self.decisions:
            if earlier.stage_index <= k:
                scales.update({b: earlier.scales[self.block_names[b]] for b in earlier.blocks})
        made = [d for d in self.decisions if d.stage_index == k]
        if not made:
            windows = ", ".join(self.window_name(w) for w in range(len(self.windows)))
            return PlannedStage(
                before, scales, f"decided when the stage begins, one window of: {windows}"
            )
        now = before
        for d in made:  # the stage's start, then what froze again within it
            now = now - frozenset(j for w in d.refrozen for j in self.window_params(w))
            if d.window >= 0:
                now = now | self.window_params(d.window)
        texts = "; then ".join(d.text for d in made)
        return PlannedStage(now, scales, f"decided: {texts}")

    def _finite_last(self, k: int, w: int, rgn: dict[int, float]) -> None:
        """Refuse a last window whose relative gradient norms are not finite: its LRs could
        not be scaled, and training it would go on from NaN (no trial says so first)."""
        bad = {b: rgn[b] for b in self.windows[w] if b in rgn and not math.isfinite(rgn[b])}
        if bad:
            shown = ", ".join(f"{self.block_names[b]} {v}" for b, v in bad.items())
            raise TrainingError(
                f"ff.auto: stage {k} measured a non-finite relative gradient norm in its last "
                f"window, {self.window_name(w)} ({shown}); expected finite gradients; hint: "
                "look for NaN/inf in the inputs or the loss, or lower auto(lr=...)"
            )

    def _by_signals(
        self,
        k: int,
        model: nn.Module,
        probe: Probe,
        keep: frozenset[int],
        remaining: list[int],
        rgn: dict[int, float],
        lr: float,
        batches: Sequence[Any],
        scored: Sequence[Any],
        seed: int,
        before: float,
    ) -> tuple[tuple[int, str], Settled]:
        """``auto(decide="signals")``: the window with the largest mean relative gradient
        norm when it leads the next by ``SEPARATION``, without a trial; else successive
        halving over the windows within that factor of it (the winner keeps its trial's
        steps). Returns the window and the explanation (``{before}``: the probe loss before,
        filled in by the caller), and how a trial settled. Called with two windows or more
        (:meth:`choose` takes a last window without measuring anything else)."""
        means = {
            w: sum(rgn.get(b, 0.0) for b in self.windows[w]) / len(self.windows[w])
            for w in remaining
        }
        order = sorted(remaining, key=lambda w: (-means[w], -w))
        best = order[0]
        shown = ", ".join(f"{self.window_name(w)} {means[w]:.2g}" for w in order)
        lead = means[best] / means[order[1]] if means[order[1]] > 0 else math.inf
        if lead >= SEPARATION:
            if not math.isfinite(means[best]):
                raise TrainingError(
                    f"ff.auto: stage {k} measured a non-finite relative gradient norm ({shown}), "
                    "so the windows cannot be compared; expected finite gradients; hint: look "
                    "for NaN/inf in the inputs or the loss, or lower auto(lr=...)"
                )
            no_trial = f"relative gradient norms ({shown}): ahead by {lead:.1f}x, no trial"
            return (best, no_trial), UNTRIED
        close = [w for w in order if means[w] * SEPARATION > means[best]]
        winner, scores, steps, settled = self._halving(
            k, model, probe, keep, close, lr, batches, scored, seed, before
        )
        tried = ", ".join(f"{self.window_name(w)} {scores[w]:.3f}" for w in close)
        end = f"; the winner's {steps} trial step(s) kept"
        if settled.tried:
            end = _settled_text(settled, before, lr)
        return (winner, (
            f"relative gradient norms ({shown}) within {SEPARATION}x: successive halving "
            f"over {len(close)} window(s) took the probe loss from {{before}} to "
            f"{scores[winner]:.3f} ({tried})" + end
        )), settled  # fmt: skip

    def _converged(self, starting: bool = False) -> tuple[tuple[int, ...], str]:
        """The earliest trainable window when its step signals say it has converged
        (:meth:`~freezeflow.unfreezer.signals.StepSignals.converged`), with the reason; but
        never one that a window before it may still join (no later stage can unfreeze a
        window before it: what freezes again stays a prefix from the input), and within a
        stage never the window unfrozen last (the newest window keeps training beside the
        head; at a stage's start, ``starting``, a new window joins as it freezes)."""
        live = self.unfrozen_windows()
        if not live or (not starting and len(live) < 2):
            return (), ""
        w = min(live)
        if (not starting and w == live[-1]) or any(r < w for r in self.remaining()):
            return (), ""
        done, why = self.signals.converged(w)
        return ((w,), f"{self.window_name(w)}: {why}") if done else ((), "")

    # ------------------------------------------------------------------ between stages
    def on_optimizer_step(self) -> None:
        """Sample the step signals of the windows training now (``refreeze``)."""
        if self._live[0] != len(self.decisions):
            live = self.unfrozen_windows()
            self._live = (
                len(self.decisions),
                {w: self._params(self.window_params(w)) for w in live},
            )
        self.signals.sample(self._live[1])

    def on_epoch_start(self, epoch: int) -> None:
        self.signals.start_epoch(epoch)

    def epoch_mark(self) -> object:
        return copy.deepcopy(self.signals)  # a few numbers (the open sums stay on the device)

    def undo_epoch_start(self, mark: object) -> None:
        assert isinstance(mark, StepSignals)
        self.signals = mark

    def between(self, k: int, trainable: frozenset[int]) -> StageChoice | None:
        """With ``refreeze``: freeze the earliest trainable window again once it has
        converged, at any epoch start within a stage (a stage start does it in
        :meth:`choose`). Recorded as a decision with ``window=-1``."""
        if not self.settings.refreeze or k < 1:
            return None
        refrozen, why = self._converged()
        if not refrozen:
            return None
        text = f"froze again (converged): {why}"
        self.decisions.append(
            Decision(
                stage_index=k, window=-1, blocks=(), scales={}, rgn={}, refrozen=refrozen,
                text=text,
            )
        )  # fmt: skip
        off = frozenset(j for w in refrozen for j in self.window_params(w))
        return StageChoice(trainable - off, None, text)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            "decisions": [asdict(d) for d in self.decisions],
            "signals": self.signals.state_dict(),
        }

    def load_state_dict(self, state: object) -> None:
        if not isinstance(state, dict) or not isinstance(state.get("decisions"), list):
            raise StateError(f"the state's ff.auto decisions are malformed: {state!r}")
        data = state["decisions"]
        signals = StepSignals()
        signals.load_state_dict(state.get("signals"), self.layout.params[0].device)
        try:
            decisions = [
                Decision(
                    stage_index=int(d["stage_index"]),
                    window=int(d["window"]),
                    blocks=tuple(int(b) for b in d["blocks"]),
                    scales={str(n): float(v) for n, v in d["scales"].items()},
                    rgn={str(n): float(v) for n, v in d["rgn"].items()},
                    refrozen=tuple(int(w) for w in d["refrozen"]),
                    text=str(d["text"]),
                )
                for d in data
            ]
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise StateError(f"the state's ff.auto decisions are malformed: {exc!r}") from exc
        n = len(self.windows)
        if any(
            not (0 <= d.window < n or (d.window == -1 and d.refrozen))
            or not all(0 <= w < n for w in d.refrozen)
            for d in decisions
        ):
            raise StateError("the state's ff.auto decisions name windows this model lacks")
        self.decisions, self.signals = decisions, signals
        self._live = (-1, {})  # the windows sampled: worked out again from these decisions
