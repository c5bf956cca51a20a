"""Every transition verified: at the first optimizer step after a stage change, the parameters
the stage made trainable must have received a gradient, and the optimizer must hold them.

The public trackers are full of fine-tuning runs that look normal while a newly unfrozen layer
never learns: a ``torch.compile``'d model whose graph was traced while the layer was frozen,
a DDP or FSDP wrapper built before the change, reentrant gradient checkpointing over frozen
inputs, an optimizer built before unfreezing. Each of them shows the same symptom at the first
step after the change: no gradient for the layer. :class:`TransitionCheck` looks for it with a
one-shot step pre-hook on the optimizer (no tensor work, no extra pass), and refuses the step
with the blocks and the likely causes, before the optimizer changes anything; when the step
computes its own gradients (a closure, as Lightning's loop passes), it looks right after
that step instead, before any other. A block where
only some of the new parameters got no gradient (parameters a forward pass can leave unused)
is warned about once instead.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.optim import Optimizer
from torch.utils.hooks import RemovableHandle

from freezeflow.errors import TrainingError, quote_list
from freezeflow.unfreezer import agreement
from freezeflow.unfreezer.layout import Layout
from freezeflow.unfreezer.transition import Transition

__all__ = ["CAUSES", "TransitionCheck"]

CAUSES = (
    "a model compiled with torch.compile before the change keeps the graph it traced while "
    "they were frozen (use ff.compile_for_unfreezing, or torch.compiler.reset() at each "
    "change); a DistributedDataParallel or FSDP wrapper built before the change "
    "(ff.distributed.wrap_ddp rebuilds it); reentrant gradient checkpointing over frozen "
    "inputs (gradient_checkpointing_enable(gradient_checkpointing_kwargs={'use_reentrant': "
    "False})); or a forward pass that does not use them"
)
"""The likely causes of a newly trainable block without gradients, in the error's words."""


class TransitionCheck:
    """Checks the first optimizer step after each stage change of one unfreezer.

    Args:
        optimizer: the unfreezer's optimizer (the check is a step pre-hook on it).
        layout: the unfreezer's layout (parameters, their blocks and block names).
        warn: called with a warning's key and message (the unfreezer's one-time warnings).
        soft: the unfreezer freezes softly (:mod:`freezeflow.unfreezer.soft`).
    """

    def __init__(self, optimizer: Optimizer, layout: Layout, warn: Any, soft: bool = False) -> None:
        self.optimizer, self.layout, self.warn, self.soft = optimizer, layout, warn, soft
        self.pending: tuple[Transition, frozenset[int]] | None = None
        self._handle: RemovableHandle | None = None

    def arm(self, transition: Transition, new: frozenset[int]) -> None:
        """Check, at the next optimizer step, the parameters ``new`` (indices into the
        layout's parameters) that ``transition`` made trainable."""
        if not new:
            return
        self.pending = (transition, new)
        if self._handle is None:
            self._handle = self.optimizer.register_step_pre_hook(self._before_step)

    def disarm(self) -> None:
        """Forget a pending check (after a resume, or when the unfreezer is done with it)."""
        self.pending = None
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _before_step(self, optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        pending = self.pending
        self.disarm()
        if pending is None:
            return
        closure = kwargs.get("closure", args[1] if len(args) > 1 else None)  # args[0]: self
        if closure is not None:
            # the closure computes the gradients inside step() (Lightning's loop does): look
            # right after it, before anything else trains
            self.pending = pending
            self._handle = optimizer.register_step_post_hook(self._after_step)
            return
        self.check(*pending)

    def _after_step(self, optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        pending = self.pending
        self.disarm()
        if pending is not None:
            self.check(*pending)

    def check(self, transition: Transition, new: frozenset[int]) -> None:
        """Raise :class:`~freezeflow.errors.TrainingError` when a whole block of ``new`` got
        no gradient or the optimizer does not hold them; warn (once) when only part of a
        block got none."""
        lay = self.layout
        held = {id(p) for g in self.optimizer.param_groups for p in g["params"]}
        where = f"stage {transition.stage_index} ({transition.name!r})"
        if not any(id(p) in held for p in lay.params):
            # an engine (DeepSpeed ZeRO) replaced the groups' parameters by flat copies
            unseen = self._check_engine_groups(where, new)
            if unseen:  # ZeRO steps one group at a time: look again at the next step call
                self.pending = (transition, unseen)
                self._handle = self.optimizer.register_step_pre_hook(self._before_step)
            return
        lost = [lay.names[i] for i in sorted(new) if id(lay.params[i]) not in held]
        if lost:
            raise TrainingError(
                f"{where} made {quote_list(lost, 3)} trainable, but the optimizer does not "
                "hold them, so they would never move; expected the optimizer the "
                "GradualUnfreezer built its groups in; hint: build or rebuild the optimizer "
                "before the unfreezer (or pass it to the unfreezer), never after"
            )
        by_block: dict[int, list[int]] = {}
        for i in sorted(new):
            by_block.setdefault(lay.param_block[i], []).append(i)
        silent = [b for b, ids in by_block.items() if all(_no_grad(lay.params[i]) for i in ids)]
        if silent:
            names = [lay.block_names[b] for b in silent]
            raise TrainingError(
                f"{where} made {sum(len(by_block[b]) for b in silent)} parameter(s) of the "
                f"block(s) {quote_list(names, 4)} trainable, but the first optimizer step "
                "after it found no gradient for any of them: they would silently never "
                "train; expected gradients for a newly unfrozen block; likely causes: "
                f"{CAUSES}; hint: fix the cause, or pass GradualUnfreezer(verify=False) if the "
                "block really takes no part in this step"
            )
        if agreement.distributed():  # the new gradients all-reduced: the same on every rank
            agreement.check_synchronized(
                where, [(lay.names[i], lay.params[i]) for i in sorted(new)]
            )
        partial = [
            lay.names[i] for ids in by_block.values() for i in ids if _no_grad(lay.params[i])
        ]
        if partial:
            self.warn(
                "partial-gradients",
                f"{where} made {quote_list(partial, 3)} trainable, but the first optimizer "
                "step after it found no gradient for them (other parameters of their blocks "
                "got one): a forward pass that leaves them unused trains them never; "
                "expected every trainable parameter to take part; hint: freeze what the "
                "forward does not use, or check the model's branches",
            )

    def _check_engine_groups(self, where: str, new: frozenset[int]) -> frozenset[int]:
        """The check when an engine holds flat copies of each group: soft freezing put
        every parameter in them from the start, and each group the stage made trainable
        must have a gradient; hard freezing cannot have (the engine copied only what was
        trainable when it was set up). Groups are found by name (ZeRO steps one group at a
        time); returns the parameters of ``new`` whose groups this step did not show."""
        lay = self.layout
        names = [lay.names[i] for i in sorted(new)]
        if not self.soft:
            raise TrainingError(
                f"{where} made {quote_list(names, 3)} trainable, but the optimizer's param "
                "groups hold tensors that are not the model's parameters: an engine (DeepSpeed "
                "ZeRO, FSDP1) flattened them when it was set up, from what was trainable then, "
                "so these would silently never train; expected an optimizer that follows "
                "requires_grad, or soft freezing; hint: GradualUnfreezer(freezing='soft'), "
                "built before the engine is set up"
            )
        shown = {g.get("name"): g for g in self.optimizer.param_groups}
        silent, unseen = [], set()
        for spec in lay.groups:
            ids = [j for j in spec.params if j in new]
            if not ids:
                continue
            group = shown.get(spec.name)
            if group is None:
                unseen.update(ids)
            elif group["params"] and all(_no_grad(p) for p in group["params"]):
                silent.append(spec.name)
        if silent:
            raise TrainingError(
                f"{where} made the param group(s) {quote_list(silent, 4)} trainable, but the "
                "first optimizer step after it found no gradient in them: they would "
                "silently never train; expected the engine's gradients for every group; "
                f"likely causes: {CAUSES}; hint: fix the cause, or pass "
                "GradualUnfreezer(verify=False) if the groups really take no part in this step"
            )
        return frozenset(unseen)


def _no_grad(p: nn.Parameter) -> bool:
    return p.grad is None
