"""Measuring without a trace: what a planner's trials and probes change, put back bit for
bit (parameters, buffers, ``requires_grad`` flags, gradients, train/eval modes, and the
random streams torch, NumPy and Python draw from)."""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

__all__ = ["OtherRngs", "Restored", "rng_devices"]


def rng_devices(params: Sequence[nn.Parameter]) -> list[int]:
    """The CUDA devices ``params`` live on (for ``torch.random.fork_rng``)."""
    return sorted({p.device.index or 0 for p in params if p.device.type == "cuda"})


class OtherRngs:
    """Put NumPy's global generator and Python's ``random`` back as they were on exit."""

    def __enter__(self) -> None:
        self.numpy, self.python = np.random.get_state(), random.getstate()

    def __exit__(self, *exc: object) -> None:
        np.random.set_state(self.numpy)
        random.setstate(self.python)


class Restored:
    """Put every parameter and buffer of ``model``, the ``requires_grad`` flags, the
    gradients and the train/eval modes back as they were on exit."""

    def __init__(self, model: nn.Module, params: Sequence[nn.Parameter]) -> None:
        self.model, self.params = model, params

    def __enter__(self) -> None:
        self.flags = [p.requires_grad for p in self.params]
        self.grads = [p.grad for p in self.params]
        self.tensors = [t.detach().clone() for t in self.params] + [
            b.detach().clone() for b in self.model.buffers()
        ]
        self.modes = [m.training for m in self.model.modules()]

    def __exit__(self, *exc: object) -> None:
        with torch.no_grad():
            live = [*self.params, *self.model.buffers()]
            for t, saved in zip(live, self.tensors):
                t.copy_(saved)
        for p, flag, grad in zip(self.params, self.flags, self.grads):
            p.requires_grad_(flag)
            p.grad = grad
        for m, mode in zip(self.model.modules(), self.modes):
            m.training = mode
