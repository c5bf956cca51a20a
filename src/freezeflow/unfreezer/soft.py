"""Soft freezing, for engines that build their optimizer once: DeepSpeed ZeRO, FSDP1's flat
parameters, an optimizer ``accelerate`` has prepared. They take the trainable set when they
are set up and never look at ``requires_grad`` again, so a parameter unfrozen later would
silently never train.

In soft mode (``GradualUnfreezer(freezing="soft")``) every parameter some stage trains
requires gradients and sits in the optimizer from the start; a frozen one is kept still by
the unfreezer instead:

- its gradient is zeroed as soon as backward has accumulated it (a post-accumulate-grad
  hook), so gradient clipping and the gradient norm see what hard freezing gives them, and an
  engine that reduces gradients in its own hooks (DeepSpeed) still finds one;
- before every optimizer step its gradient is dropped, and its group gets LR 0 and weight
  decay 0 for the step (put back after it, so an LR scheduler computes from the group's
  real LR); where the engine owns the gradients (ZeRO's flat partitions, one per param
  group), a frozen group's partition is dropped as a whole.

torch's optimizers skip a parameter without a gradient, so a frozen parameter's weights stay
bit for bit and its optimizer state stays empty, as with hard freezing. What soft mode costs:
the backward runs through every block and allocates the frozen parameters' gradients, so
compute, activation and gradient memory are those of full fine-tuning; only the optimizer
state of the frozen parameters is saved. Parameters no stage ever trains are frozen for real
and left out of the optimizer, as in hard mode. Use it only where an engine needs it.
"""

from __future__ import annotations

from typing import Any, Literal, TypeAlias

import torch
from torch.optim import Optimizer
from torch.utils.hooks import RemovableHandle

from freezeflow.unfreezer.layout import Layout

__all__ = ["FreezingMode", "SoftFreezing"]

FreezingMode: TypeAlias = Literal["hard", "soft"]
"""``"hard"`` (``requires_grad`` flipped) or ``"soft"`` (this module)."""


class SoftFreezing:
    """Keeps the frozen parameters of one unfreezer still while they require gradients.

    Args:
        optimizer: the unfreezer's optimizer (its groups in the layout's order).
        layout: the unfreezer's layout.
    """

    def __init__(self, optimizer: Optimizer, layout: Layout) -> None:
        self.optimizer, self.layout = optimizer, layout
        self.held = frozenset(j for g in layout.groups for j in g.params)
        """Indices of the parameters some stage trains: they always require gradients."""
        self.trainable: frozenset[int] = frozenset()
        self._frozen: set[int] = set()  # id() of the held parameters frozen now
        self._frozen_groups: set[str] = set()  # names: an engine may step one group at a time
        self._saved: list[tuple[dict[str, Any], Any, Any]] = []
        self._handles: list[RemovableHandle] = [
            optimizer.register_step_pre_hook(self._before_step),
            optimizer.register_step_post_hook(self._after_step),
        ]
        for j in sorted(self.held):
            hook = layout.params[j].register_post_accumulate_grad_hook
            self._handles.append(hook(self._zero_if_frozen))  # type: ignore[no-untyped-call]

    def set_trainable(self, trainable: frozenset[int]) -> None:
        """Make ``trainable`` (indices into the layout's parameters) the parameters that
        move; every held parameter requires gradients again (the hard freeze that decided
        the norm layers' modes has just cleared some flags)."""
        self.trainable = frozenset(trainable)
        params = self.layout.params
        self._frozen = {id(params[j]) for j in self.held - self.trainable}
        self._frozen_groups = {
            spec.name
            for spec in self.layout.groups
            if spec.params and not any(j in self.trainable for j in spec.params)
        }
        for j in sorted(self.held):
            p = params[j]
            p.requires_grad_(True)
            if id(p) in self._frozen:
                p.grad = None

    def harden(self) -> None:
        """Give the frozen parameters ``requires_grad=False`` for the moment, so that the
        hard freeze a stage change runs (which decides the norm layers' and the frozen
        blocks' modes from the flags) sees what is frozen; :meth:`set_trainable` raises the
        flags again."""
        for j in sorted(self.held - self.trainable):
            self.layout.params[j].requires_grad_(False)

    def _zero_if_frozen(self, p: torch.Tensor) -> None:
        if id(p) in self._frozen and p.grad is not None:
            p.grad.zero_()

    def _before_step(self, optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        # groups by name, not position: ZeRO steps its optimizer over one group at a time
        for g in optimizer.param_groups:
            if g.get("name") in self._frozen_groups:
                self._saved.append((g, g.get("lr"), g.get("weight_decay")))
                lr = g.get("lr")
                g["lr"] = lr * 0 if isinstance(lr, torch.Tensor) else 0.0
                if "weight_decay" in g:
                    g["weight_decay"] = 0.0
                for p in g["params"]:  # by group: an engine's flat partition of it too
                    p.grad = None
            else:
                for p in g["params"]:
                    if id(p) in self._frozen:
                        p.grad = None

    def _after_step(self, optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        for g, lr, wd in self._saved:
            g["lr"] = lr
            if wd is not None:
                g["weight_decay"] = wd
        self._saved.clear()

    def close(self) -> None:
        """Remove the hooks (the parameters keep their flags)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
